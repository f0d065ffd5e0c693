"""Evolutionary search and random search over a space, as pure functions of a scoring function, a
feasibility check, settings and a random generator.

The EA (paper Sec. 3.3; the authors' ``arch_search_config.py``): the first generation is
``population`` random feasible architectures; every later generation is ``mutations`` mutations
(each gene redrawn with ``mutation_prob``) of random top-``parents`` architectures, ``crossovers``
uniform crossovers of two random top-``parents`` architectures, and random architectures for the
rest: 20 / 20 / 10 at population 50, the same proportions (40% / 40% / 20%) for other populations. The top-k are taken
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

__all__ = ["Candidate", "SearchSettings", "best", "random_architectures", "run_search", "top"]

_TRIES_PER_CANDIDATE = 100  # re-draws allowed per wanted candidate before giving up on that operator


MUTATION_SHARE = CROSSOVER_SHARE = 0.4  # of each generation after the first (20 of 50 each)


@dataclass(frozen=True)
class SearchSettings:
    """``mutations`` / ``crossovers`` per generation: None takes 40% of ``population`` each."""

    population: int = 50
    parents: int = 10
    generations: int = 20
    mutation_prob: float = 0.1
    method: str = "evolution"  # or "random"
    mutations: int | None = None
    crossovers: int | None = None

    def __post_init__(self) -> None:
        if self.mutations is None:
            object.__setattr__(self, "mutations", round(MUTATION_SHARE * self.population))
        if self.crossovers is None:
            object.__setattr__(self, "crossovers", round(CROSSOVER_SHARE * self.population))
        if self.mutations < 0 or self.crossovers < 0 or self.mutations + self.crossovers > self.population:
            raise ValueError(f"mutations ({self.mutations}) and crossovers ({self.crossovers}) must be >= 0 and "
                             f"together at most the population ({self.population})")
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
    origin: str = "random"  # how the EA made it: random, mutation or crossover


def top(history: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` best candidates (fitness descending, then encoding for a stable order)."""
    return sorted(history, key=lambda c: (-c.fitness, c.arch))[:k]


def best(history: Sequence[Candidate]) -> Candidate:
    return top(history, 1)[0]


def _draw(
    n: int, make: Callable[[], Arch], origin: str, feasible: Callable[[Arch], bool], seen: set[Arch],
    out: list[tuple[Arch, str]],
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
        out.append((arch, origin))


def _next_generation(
    space: SearchSpace,
    settings: SearchSettings,
    history: Sequence[Candidate],
    feasible: Callable[[Arch], bool],
    rng: np.random.Generator,
) -> list[tuple[Arch, str]]:
    """The next generation's new architectures, each with its origin."""
    seen = {space.parse(c.arch) for c in history}
    out: list[tuple[Arch, str]] = []
    if settings.method == "evolution" and history:
        parents = [space.parse(c.arch) for c in top(history, settings.parents)]

        def mutation() -> Arch:
            return space.mutate(parents[rng.integers(len(parents))], rng, settings.mutation_prob)

        def crossover() -> Arch:
            i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
            return space.crossover(parents[i], parents[j], rng)

        _draw(settings.mutations, mutation, "mutation", feasible, seen, out)
        _draw(settings.crossovers, crossover, "crossover", feasible, seen, out)
    _draw(settings.population - len(out), lambda: space.sample(rng), "random", feasible, seen, out)
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
        fitness = score([a for a, _ in candidates])
        if len(fitness) != len(candidates):
            raise RuntimeError(f"score returned {len(fitness)} values for {len(candidates)} candidates")
        history += [Candidate(str(a), generation, float(f), origin) for (a, origin), f in zip(candidates, fitness)]
        if on_generation is not None:
            on_generation({
                "space": space.name,
                "settings": asdict(settings),
                "generation": generation + 1,
                "rng": rng.bit_generator.state,
                "history": [asdict(c) for c in history],
            })
    return history


def random_architectures(space: SearchSpace, count: int, feasible: Callable[[Arch], bool], seed: int) -> list[Arch]:
    """``count`` distinct architectures drawn uniformly from the feasible part of ``space`` (rejection
    sampling with ``seed``): the paper's Table 5 baseline, each retrained as a standalone network.
    The same seed gives the same list, and a larger ``count`` extends it. ValueError when the FLOPs
    bounds leave fewer than ``count`` architectures to draw."""
    if count < 1:
        raise ValueError(f"random architectures: count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    out: list[tuple[Arch, str]] = []
    _draw(count, lambda: space.sample(rng), "random", feasible, set(), out)
    if len(out) < count:
        raise ValueError(f"random architectures: found only {len(out)} distinct feasible architectures of space "
                         f"{space.name!r} in {_TRIES_PER_CANDIDATE * count} draws; lower the count or widen the FLOPs bounds")
    return [a for a, _ in out]
