"""Evolutionary search and random search over a space, as pure functions of a scoring function, a
feasibility check, settings and a random generator.

The EA (paper Sec. 3.3; SPOS): the first generation is ``population`` random feasible
architectures; every later generation is ``population // 2`` mutations (each gene redrawn with
``mutation_prob``) of random top-``parents`` architectures, ``population // 2`` uniform crossovers
of two random top-``parents`` architectures, topped up with random samples. The top-k are taken
over every architecture scored so far. An infeasible architecture (FLOPs out of bounds) is rejected
and re-drawn, and an architecture already scored is never scored again, in the same generation or
a later one. Random search is the same loop with every generation drawn at random: the same number
of evaluations.

``score`` takes a whole generation (so a caller can spread it over processes) and may answer from
a cache; the state after every generation is a plain dict (JSON-able), and ``run_search`` resumed
from it continues exactly as the uninterrupted search would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .space import Arch, SearchSpace

__all__ = ["Candidate", "SearchSettings", "best", "run_search", "top"]

_TRIES_PER_CANDIDATE = 100  # re-draws allowed per wanted candidate before giving up on that operator


@dataclass(frozen=True)
class SearchSettings:
    population: int = 50
    parents: int = 10
    generations: int = 20
    mutation_prob: float = 0.1
    method: str = "evolution"  # or "random"

    def __post_init__(self) -> None:
        if self.method not in ("evolution", "random"):
            raise ValueError(f"search method must be 'evolution' or 'random', got {self.method!r}")
        if self.population < 2 or self.parents < 1 or self.generations < 1:
            raise ValueError(
                f"need population >= 2, parents >= 1, generations >= 1; got {self.population}, "
                f"{self.parents}, {self.generations}"
            )
        if self.parents > self.population:
            raise ValueError(f"parents ({self.parents}) cannot exceed the population ({self.population})")


@dataclass(frozen=True)
class Candidate:
    arch: str
    generation: int
    fitness: float


def top(history: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` best candidates (fitness descending, then encoding for a stable order)."""
    return sorted(history, key=lambda c: (-c.fitness, c.arch))[:k]


def best(history: Sequence[Candidate]) -> Candidate:
    return top(history, 1)[0]


def _draw(
    n: int, make: Callable[[], Arch], feasible: Callable[[Arch], bool], seen: set[Arch], out: list[Arch]
) -> None:
    """Append up to ``n`` new, feasible, unseen architectures from ``make`` to ``out``."""
    wanted = len(out) + n
    tries = 0
    while len(out) < wanted and tries < _TRIES_PER_CANDIDATE * n:
        tries += 1
        arch = make()
        if arch in seen or not feasible(arch):
            continue
        seen.add(arch)
        out.append(arch)


def _next_generation(
    space: SearchSpace,
    settings: SearchSettings,
    history: Sequence[Candidate],
    feasible: Callable[[Arch], bool],
    rng: np.random.Generator,
) -> list[Arch]:
    seen = {space.parse(c.arch) for c in history}
    out: list[Arch] = []
    if settings.method == "evolution" and history:
        parents = [space.parse(c.arch) for c in top(history, settings.parents)]

        def mutation() -> Arch:
            return space.mutate(parents[rng.integers(len(parents))], rng, settings.mutation_prob)

        def crossover() -> Arch:
            i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
            return space.crossover(parents[i], parents[j], rng)

        _draw(settings.population // 2, mutation, feasible, seen, out)
        _draw(settings.population // 2, crossover, feasible, seen, out)
    _draw(settings.population - len(out), lambda: space.sample(rng), feasible, seen, out)
    return out


def run_search(
    space: SearchSpace,
    score: Callable[[list[Arch]], list[float]],
    feasible: Callable[[Arch], bool],
    settings: SearchSettings,
    rng: np.random.Generator,
    *,
    state: dict[str, Any] | None = None,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
) -> list[Candidate]:
    """Run the search; return every scored candidate in scoring order.

    ``state`` (from ``on_generation``) resumes a search: the generator's state and the history are
    restored and the search continues with the next generation. ``on_generation`` receives the
    state after every generation.
    """
    history: list[Candidate] = []
    start = 0
    if state is not None:
        if state.get("settings") != asdict(settings) or state.get("space") != space.name:
            raise ValueError("the saved search state belongs to other settings or another space")
        history = [Candidate(**c) for c in state["history"]]
        start = state["generation"]
        rng.bit_generator.state = state["rng"]
    for generation in range(start, settings.generations):
        candidates = _next_generation(space, settings, history, feasible, rng)
        if not candidates:
            print(f"search: generation {generation}: no new feasible architecture left; stopping", flush=True)
            break
        fitness = score(candidates)
        if len(fitness) != len(candidates):
            raise RuntimeError(f"score returned {len(fitness)} values for {len(candidates)} candidates")
        history += [Candidate(str(a), generation, float(f)) for a, f in zip(candidates, fitness)]
        if on_generation is not None:
            on_generation({
                "space": space.name,
                "settings": asdict(settings),
                "generation": generation + 1,
                "rng": rng.bit_generator.state,
                "history": [asdict(c) for c in history],
            })
    return history
