"""The ``search`` stage: DetNAS (EA, fitness mmAP of the fine-tuned detection supernet), random
search (same fitness and budget), ClsNAS (EA, fitness top-1 of the pre-trained classification
supernet), all under the same backbone FLOPs constraint.

Cost: the images a candidate is scored on (search-validation and recalibration images) are decoded
and preprocessed once per job. Under torchrun, rank 0 runs the EA and each generation is scored in
parallel: rank r scores candidates r, r + w, ...; results are gathered on rank 0. A detection
candidate's COCO evaluation runs in another process while the same rank recalibrates and runs the
next candidate (``overlap_evaluation``, default on; ``DetectionScorer.score_many``). Every rank
appends each of its scores to its own file in the checkpoint folder as soon as it is known, flushed
and fsynced (``scores.jsonl`` rank 0, ``scores.rank<r>.jsonl`` rank r: one writer per file, as
appends of several processes to one file are not atomic on NFS), and the EA state is saved after
every generation, so a killed search resumes without re-scoring what any rank logged (a candidate
whose evaluation was in flight is scored again, once); rank 0 reads every ``scores*.jsonl`` on
resume. That state is kept only while the settings and the content of the supernet and annotation
files are the same.

Nothing read back is silently wrong: a score file whose last line was cut by a kill is truncated
back to its last whole line (the log says so), so the next append starts a line of its own; any
other line that does not parse is skipped with a note (that candidate is scored again). An
unreadable ``resume.json`` is moved aside (``<name>.corrupt-<UTC time>``) with the scores and
states it vouched for, and the search starts anew; an unreadable ``state_repeat<r>.json`` is moved
aside and that repeat restarts, answering from the score log (nothing is scored again).
The generations' broadcasts and gathers go over the gloo control group (``distributed``), whose
timeout is set for a rank that waits for another's whole candidate. A rank that fails exits at once
(no collective after its error), and torchrun ends the others.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..checkpoint import resume_key, stale_reason
from ..distributed import Dist, init_distributed, peak_gpu_memory_mb, set_threads
from ..flops import cost_table
from ..formatting import fmt_number
from ..latency import both, latency_bound
from ..io import move_aside, read_json, write_json_atomic, write_text_atomic
from ..plots import plot_search_curves
from ..precision import Precision
from ..scoring import ClassificationScorer, DetectionScorer, build_scorer, proxy_scorer, score_many
from ..search import Candidate, SearchSettings, best, run_search, top
from ..settings import known_keys
from ..space import Arch, SearchSpace
from ..tracking import StageRun

__all__ = ["ClassificationScorer", "DetectionScorer", "StageSearchSettings", "run_search_stage"]  # scorers re-exported


@dataclass(frozen=True)
class StageSearchSettings:
    """An experiment's ``search`` settings plus the method."""

    method: str  # detnas, random, clsnas, or a proxy of detnas.proxies (synflow, naswot, zico, mae_entropy)
    population: int = 50
    parents: int = 10
    generations: int = 20
    mutation_prob: float = 0.1
    mutations: int | None = None  # per generation; None: 40% of the population (20 of 50)
    crossovers: int | None = None  # likewise; random architectures fill the rest
    max_mflops: float | None = 300
    min_mflops: float | None = None
    # the backbone's latency on the deployment device, from the experiment's latency table (None: no bound)
    max_latency_ms: float | None = None
    recalibration_images: int = 500
    eval_images: int | None = None
    batch_size: int = 8
    seed: int = 0  # the images a candidate is scored on; repeat r searches with seed + r
    repeats: int = 1
    amp: str | bool = "auto"  # the scoring forwards: auto, bf16, fp16, off (detnas.precision)
    channels_last: bool | str = "auto"
    # a detection candidate's COCO evaluation in another process, overlapping the next candidate's
    # model work (same scores; off: one after the other, in this process)
    overlap_evaluation: bool = True
    # a proxy search (no supernet): the space, the proxy's square input, its training batches and seed
    space: str | None = None
    proxy_input_size: int | None = None
    proxy_batches: int = 2
    proxy_batch_size: int = 8
    proxy_seed: int = 0

    @property
    def proxy(self) -> bool:
        return self.method not in SUPERNET_METHODS

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageSearchSettings":
        s = cls(**known_keys(cls, d, "search"))
        from ..proxies import PROXIES

        if s.method not in SUPERNET_METHODS and s.method not in PROXIES:
            raise ValueError(f"search method must be detnas, random, clsnas or a proxy ({', '.join(PROXIES)}), "
                             f"got {s.method!r}")
        if s.proxy and (s.space is None or s.proxy_input_size is None):
            raise ValueError(f"a {s.method} search needs the settings space and proxy_input_size")
        if s.repeats < 1:
            raise ValueError(f"search repeats must be >= 1, got {s.repeats}")
        return s

    def repeat_seed(self, repeat: int) -> int:
        """The seed of the search's own random choices in repeat ``repeat`` (0-based)."""
        return self.seed + repeat

    def algorithm(self) -> SearchSettings:
        return SearchSettings(population=self.population, parents=self.parents, generations=self.generations,
                              mutation_prob=self.mutation_prob, method="random" if self.method == "random" else "evolution",
                              mutations=self.mutations, crossovers=self.crossovers)


SUPERNET_METHODS = ("detnas", "random", "clsnas")
SCORE_FILES = "scores*.jsonl"  # every rank's score log in the checkpoint folder


def _score_file(directory: Path, rank: int) -> Path:
    return directory / ("scores.jsonl" if rank == 0 else f"scores.rank{rank}.jsonl")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one score file. A partial last line (no newline: a kill mid-append) is dropped and
    the file truncated back to its last newline, so the next append starts a clean line; any other
    line that does not parse as a row is skipped. Both are said in the log."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
        print(f"{path}: dropped its partial last line ({len(data) - cut} bytes, a write cut short); truncated the "
              f"file to its last whole line", flush=True)
        data = data[:cut]
    rows, bad = [], []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if (isinstance(row, dict) and isinstance(row.get("arch"), str)
                and isinstance(row.get("fitness"), (int, float)) and not isinstance(row.get("fitness"), bool)):
            rows.append(row)
        elif line.strip():
            bad.append(number)
    if bad:
        print(f"{path}: skipped {len(bad)} line(s) that are not a score row (line {', '.join(map(str, bad[:10]))}"
              f"{', ...' if len(bad) > 10 else ''}); those candidates are scored again", flush=True)
    return rows


class _ScoreLog:
    """Scores on disk: one JSON line per candidate, appended (flushed, fsynced) as soon as it is known,
    each rank to its own file (``_score_file``). ``load`` (rank 0) reads every rank's file."""

    def __init__(self, directory: Path, rank: int = 0) -> None:
        self.directory = directory
        self.path = _score_file(directory, rank)
        self.known: dict[str, dict[str, Any]] = {}

    def load(self) -> "_ScoreLog":
        for path in sorted(self.directory.glob(SCORE_FILES)):
            for row in _read_rows(path):
                self.known.setdefault(row["arch"], row)
        return self

    def add(self, row: dict[str, Any]) -> None:
        """A row this rank scored: known, and appended to this rank's file."""
        self.known[row["arch"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remember(self, row: dict[str, Any]) -> None:
        """A row another rank scored (and logged in its own file)."""
        self.known[row["arch"]] = row


def _distributed_score(dist: Dist, scorer: Callable[[Arch], float], log: _ScoreLog, macs: Callable[[Arch], float],
                       progress: Callable[[dict[str, Any]], None]) -> Callable[[list[Arch]], list[float]]:
    """On rank 0: a generation -> its fitness, each rank scoring its share of the new candidates.
    Every rank logs its own scores to its own file as each is known; rank 0 learns the other ranks'
    at the generation's end."""

    def add(row: dict[str, Any]) -> None:
        if row["arch"] not in log.known:
            if row["rank"] == dist.rank:
                log.add(row)
            else:
                log.remember(row)
            progress(row)

    def score(candidates: list[Arch]) -> list[float]:
        todo = [a for a in candidates if str(a) not in log.known]
        dist.broadcast_object([str(a) for a in todo])
        for r in _score_share(dist, scorer, todo, macs, on_row=add):
            add(r)
        return [log.known[str(a)]["fitness"] for a in candidates]

    return score


def _score_share(dist: Dist, scorer: Callable[[Arch], float], todo: list[Arch], macs: Callable[[Arch], float],
                 on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """This rank's share of ``todo`` scored (``on_row`` called with each row as it is known); every
    rank's rows, gathered."""
    mine = []
    for s in score_many(scorer, todo[dist.rank::dist.world_size]):
        row = {"arch": str(s.arch), "fitness": s.fitness, "mflops": macs(s.arch) / 1e6, "seconds": s.seconds,
               "rank": dist.rank, **{f"metric_{k}": v for k, v in s.metrics.items()}}
        mine.append(row)
        if on_row is not None:
            on_row(row)
    gathered = dist.all_gather_object(mine)
    return [r for rows in gathered for r in rows]


def _worker_loop(dist: Dist, scorer: Callable[[Arch], float], space: SearchSpace, macs: Callable[[Arch], float],
                 checkpoint_dir: Path) -> None:
    """Ranks > 0: score the share of every generation rank 0 broadcasts, until it sends None; each
    score appended to this rank's file in ``checkpoint_dir`` as soon as it is known. (Rank 0 has
    read, repaired or wiped the folder's score files before its first broadcast.)"""
    log = _ScoreLog(checkpoint_dir, dist.rank)
    while True:
        todo = dist.broadcast_object(None)
        if todo is None:
            return
        _score_share(dist, scorer, [space.parse(a) for a in todo], macs, on_row=log.add)


def run_search_stage(
    settings: dict[str, Any],
    *,
    supernet: Path | None,
    val_file: Path,
    recal_file: Path | None,
    arch_out: Path,
    history_out: Path,
    curve_out: Path,
    checkpoint_dir: Path,
    mlflow: dict[str, Any],
    threads: int,
    device: str = "auto",
    latency_table: Path | None = None,
) -> None:
    """Search; write the chosen architecture (JSON), the full history (CSV) and the curves (PNG).

    ``latency_table`` (``detnas.latency``; needed with settings ``max_latency_ms``): a candidate is
    feasible when its backbone is also within the latency bound by the table's sum.

    detnas/random: ``supernet`` is the fine-tuned detection supernet, ``val_file`` the
    search-validation annotations, ``recal_file`` the supernet's training annotations. clsnas:
    ``supernet`` is the pre-trained classification supernet and ``val_file`` its split.json.
    """
    s = StageSearchSettings.from_dict(settings)
    if s.max_latency_ms is not None and latency_table is None:
        raise ValueError("search.max_latency_ms is set: give the experiment's latency table (--latency-table)")
    dist = init_distributed(device)
    precision = Precision.resolve(s.amp, s.channels_last, dist.device)
    set_threads(threads, dist.world_size)
    t0 = time.perf_counter()
    if not s.proxy and supernet is None:
        raise ValueError(f"a {s.method} search scores paths of a supernet: give --supernet")
    if s.proxy:  # a training-free search: the proxy of each candidate's own fresh network
        scorer = proxy_scorer(s.method, s.space, val_file, input_size=s.proxy_input_size, batches=s.proxy_batches,
                              batch_size=s.proxy_batch_size, seed=s.proxy_seed, device=dist.device)
        space = scorer.space
    else:
        scorer, space = build_scorer("classification" if s.method == "clsnas" else "detection", supernet, val_file,
                                     recal_file, eval_images=s.eval_images, recalibration_images=s.recalibration_images,
                                     batch_size=s.batch_size, seed=s.seed, device=dist.device, precision=precision,
                                     overlap=s.overlap_evaluation)
    prep_seconds = time.perf_counter() - t0
    try:
        if not dist.is_main:
            _worker_loop(dist, scorer, space, cost_table(space).backbone_macs, checkpoint_dir)
            dist.close()
            return

        # on failure no collective: the other ranks may be inside a generation's gather, and a
        # broadcast they do not expect would hang the job; the launcher ends them once this exits
        _lead(s, settings, space, scorer, dist, precision,
              inputs={"supernet": supernet, "val": val_file, "recal": recal_file, "latency_table": latency_table},
              checkpoint_dir=checkpoint_dir, mlflow=mlflow,
              arch_out=arch_out, history_out=history_out, curve_out=curve_out, prep_seconds=prep_seconds)
        dist.broadcast_object(None)  # release the workers
        dist.close()
    finally:
        scorer.close(wait=sys.exc_info()[0] is None)


def _lead(
    s: StageSearchSettings,
    settings: dict[str, Any],
    space: SearchSpace,
    scorer: Callable[[Arch], float],
    dist: Dist,
    precision: Precision,
    *,
    inputs: dict[str, Path | None],
    checkpoint_dir: Path,
    mlflow: dict[str, Any],
    arch_out: Path,
    history_out: Path,
    curve_out: Path,
    prep_seconds: float,
) -> None:
    """Rank 0: run the EA, scoring generations across the ranks; write the outputs."""
    table = cost_table(space)
    latency = (None if s.max_latency_ms is None else
               latency_bound(inputs["latency_table"], space, s.max_latency_ms, "search.max_latency_ms"))
    feasible = table.within(s.min_mflops, s.max_mflops)
    if latency is not None:
        feasible = both(feasible, latency.admits)

    # scores are valid only for the exact supernet, images and precision that produced them: a folder
    # of other settings or other input content is wiped, so every candidate is scored anew
    marker = checkpoint_dir / "resume.json"
    # whether evaluation overlaps model work changes no score: not part of the key
    scored_by = {k: v for k, v in settings.items() if k != "overlap_evaluation"}
    key = resume_key({"settings": scored_by, "space": space.name, "precision": precision.describe()}, inputs)
    saved = _read_marker(marker, checkpoint_dir)
    state_files = [checkpoint_dir / f"state_repeat{r}.json" for r in range(s.repeats)]
    reason = stale_reason(saved.get("resume_key"), key)
    if reason is not None:
        old = _search_state(checkpoint_dir)
        if old:
            print(f"search state in {checkpoint_dir} is stale: {reason}; deleted it, every candidate is scored anew",
                  flush=True)
        for f in old:
            f.unlink()
        saved = {}
    # one score log for every repeat: a candidate's fitness depends on the supernet and the scoring
    # images only (both seeded by `seed`), so an architecture two repeats meet is scored once
    log = _ScoreLog(checkpoint_dir).load()
    states = [_read_state(f) for f in state_files]
    if any(states) or log.known:
        done = [f"repeat {r + 1}: generation {st['generation']}" for r, st in enumerate(states) if st]
        print(f"resuming the search ({', '.join(done) or 'no generation finished'}; {len(log.known)} candidates "
              f"already scored)", flush=True)
    budget = s.population * s.generations * s.repeats
    print(f"search {s.method}: space {space.name}, {s.repeats} repeat(s) of {s.population * s.generations} "
          f"evaluations at most, FLOPs in [{s.min_mflops or 0}, {s.max_mflops or 'inf'}] M"
          f"{'' if latency is None else f', backbone latency <= {s.max_latency_ms} ms ({latency.table.device})'}, "
          f"{dist.world_size} process(es) (amp {precision.amp}, {precision.memory_format}); images prepared in "
          f"{prep_seconds:.1f} s", flush=True)

    with StageRun(**mlflow, params={**settings, "world_size": dist.world_size, "precision": precision.describe()},
                  resume_run_id=saved.get("mlflow_run_id")) as run:
        write_json_atomic({"resume_key": key, "mlflow_run_id": run.run_id}, marker)
        prefix = (lambda r: "") if s.repeats == 1 else (lambda r: f"repeat{r + 1}/")
        for r, state in enumerate(states):  # what a killed attempt had not sent
            for gen in range(1, state["generation"] + 1 if state else 1):
                done = [Candidate(**c) for c in state["history"] if c["generation"] < gen]
                run.log_metrics(_generation_metrics(done, s.population, prefix(r)), gen)
        counter = {"n": len(log.known)}
        histories: list[list[Candidate]] = []
        for r in range(s.repeats):
            tag = f"[search {s.method}]" if s.repeats == 1 else f"[search {s.method} repeat {r + 1}/{s.repeats}]"

            def progress(row: dict[str, Any], tag: str = tag) -> None:
                counter["n"] += 1
                print(f"{tag} {counter['n']} scored ({budget} at most) {row['arch']} fitness {fmt_number(row['fitness'])} "
                      f"{row['mflops']:.1f} MFLOPs ({row['seconds']:.1f} s, rank {row['rank']})", flush=True)

            def on_generation(st: dict[str, Any], r: int = r, tag: str = tag) -> None:
                write_json_atomic(st, state_files[r])
                hist = [Candidate(**c) for c in st["history"]]
                gen = st["generation"]
                run.log_metrics(_generation_metrics(hist, s.population, prefix(r)), gen)
                print(f"{tag} generation {gen}/{s.generations}: {len(hist)} scored, best {best(hist).arch} "
                      f"{fmt_number(best(hist).fitness)}", flush=True)

            history = run_search(space, _distributed_score(dist, scorer, log, table.backbone_macs, progress), feasible,
                                 s.algorithm(), np.random.default_rng(s.repeat_seed(r)), state=states[r],
                                 on_generation=on_generation)
            if not history:
                raise ValueError(f"no architecture of space {space.name} satisfies the FLOPs bounds "
                                 f"[{s.min_mflops}, {s.max_mflops}] M"
                                 + ("" if latency is None else f" and search.max_latency_ms {s.max_latency_ms}"))
            histories.append(history)
        # the best over every repeat: more search, same fitness function (the images do not change)
        chosen = best([c for h in histories for c in h])
        arch = space.parse(chosen.arch)
        rows = [{**log.known[c.arch], "repeat": r, "generation": c.generation, "origin": c.origin}
                for r, h in enumerate(histories) for c in h]
        seconds = [log.known[a]["seconds"] for a in {c.arch for h in histories for c in h}
                   if log.known[a].get("seconds") is not None]
        result = {
            "method": s.method,
            "arch": chosen.arch,
            "space": space.name,
            "fitness": chosen.fitness,
            "fitness_metric": s.method if s.proxy else "top1" if s.method == "clsnas" else "AP",
            "mflops": table.backbone_macs(arch) / 1e6,
            "backbone_params_m": table.backbone_params(arch) / 1e6,
            "predicted_latency_ms": None if latency is None else latency.table.backbone_ms(arch),
            "evaluations": sum(len(h) for h in histories),
            "distinct_evaluations": len({c.arch for h in histories for c in h}),
            "generations": max(c.generation for c in histories[0]) + 1,
            "repeats": s.repeats,
            "best_per_repeat": [{"repeat": r, "seed": s.repeat_seed(r), "arch": best(h).arch, "fitness": best(h).fitness}
                                for r, h in enumerate(histories)],
            "seconds_per_candidate": float(np.mean(seconds)) if seconds else None,
            "peak_gpu_memory_mb": peak_gpu_memory_mb(dist.device),
            "mlflow_run_id": run.run_id,
        }
        _write_history(rows, history_out)
        # by the workflow's method name (scratch runs the DetNAS EA): its colour in every figure
        plot_search_curves({mlflow.get("tags", {}).get("method", s.method): histories}, curve_out, population=s.population,
                           ylabel=(f"{s.method} (training-free proxy)" if s.proxy else
                                   "top-1 (held-out, 0-1)" if s.method == "clsnas" else "mmAP (search split, 0-1)"),
                           title=_curve_title(mlflow, s.method, space.name))
        write_json_atomic(result, arch_out)
        # the job's own method tag stays (DetNAS-scratch runs the detnas EA: method=scratch)
        run.set_tags({"arch": chosen.arch, "search_algorithm": s.method})
        run.log_metrics({"chosen_fitness": chosen.fitness, "chosen_mflops": result["mflops"]}, len(rows))
        run.log_artifacts(arch_out, history_out, curve_out)
        if s.repeats > 1:
            print("best per repeat: " + ", ".join(f"{b['arch']} {fmt_number(b['fitness'])} (seed {b['seed']})"
                                                  for b in result["best_per_repeat"]), flush=True)
        print(f"chosen: {chosen.arch} fitness {fmt_number(chosen.fitness)}, {result['mflops']:.1f} MFLOPs", flush=True)


def _search_state(checkpoint_dir: Path) -> list[Path]:
    """The search's resumable state in ``checkpoint_dir`` besides resume.json: every rank's score
    log and every repeat's EA state."""
    return sorted(f for f in [*checkpoint_dir.glob(SCORE_FILES), *checkpoint_dir.glob("state*.json")] if f.is_file())


def _read_marker(marker: Path, checkpoint_dir: Path) -> dict[str, Any]:
    """resume.json ({} if absent). Unreadable, it vouches for nothing: it is moved aside, and so are
    the scores and states it was written for (they cannot be told to belong to these inputs)."""
    if not marker.is_file():
        return {}
    try:
        saved = read_json(marker)
        if not isinstance(saved, dict):
            raise ValueError(f"{marker}: not a JSON object")
        return saved
    except ValueError as exc:
        aside = [move_aside(f, None).name for f in _search_state(checkpoint_dir)]
        also = f"moved aside with it the search state it was for ({', '.join(aside)}); " if aside else ""
        move_aside(marker, str(exc).removeprefix(f"{marker}: "), then=f"{also}every candidate is scored anew")
        return {}


_STATE_KEYS = {"space": str, "settings": dict, "generation": int, "rng": dict, "history": list}


def _read_state(path: Path) -> dict[str, Any] | None:
    """A repeat's EA state (None if absent). Unreadable, it is moved aside and the repeat restarts;
    the score log is kept, so its candidates are answered from it, not scored again."""
    if not path.is_file():
        return None
    try:
        state = read_json(path)
        if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in _STATE_KEYS.items()):
            raise ValueError(f"{path}: not a search state (expected the keys {', '.join(_STATE_KEYS)})")
        try:
            for c in state["history"]:
                Candidate(**c)
        except TypeError as exc:
            raise ValueError(f"{path}: a history entry is not a candidate ({exc})") from None
        return state
    except ValueError as exc:
        move_aside(path, str(exc).removeprefix(f"{path}: "),
                   then="this repeat restarts from its first generation; its logged scores are kept, nothing is "
                        "scored again")
        return None


SUPERNETS = {  # which supernet each search method scores paths of, as a figure title says it
    "detnas": "detection supernet fine-tuned from the pre-trained supernet",
    "random": "detection supernet fine-tuned from the pre-trained supernet",
    "scratch": "detection supernet trained from scratch",
    "clsnas": "pre-trained classification supernet",
}


def _curve_title(mlflow: dict[str, Any], method: str, space: str) -> str:
    """E.g. "coco_fpn: detnas search (space small), detection supernet fine-tuned from the pre-trained supernet"."""
    name = mlflow.get("tags", {}).get("method", method)
    where = f"{mlflow['experiment']}: " if mlflow.get("experiment") else ""
    what = SUPERNETS.get(name) or SUPERNETS.get(method) or f"training-free: {method} of each candidate's own randomly initialized network"
    return f"{where}{name} search (space {space})\n{what}"


def _generation_metrics(history: list[Candidate], population: int, prefix: str = "") -> dict[str, float]:
    """The search curve's point after a generation: best fitness so far, mean of the top ``population``
    (MLflow keys prefixed ``repeat<r>/`` when the search is repeated)."""
    return {f"{prefix}best_fitness": best(history).fitness,
            f"{prefix}top_k_mean": float(np.mean([c.fitness for c in top(history, population)]))}


def _write_history(rows: list[dict[str, Any]], path: Path) -> None:
    keys = ["repeat", "generation", "origin", "arch", "mflops", "fitness", "seconds", "rank"]
    extra = sorted({k for r in rows for k in r if k.startswith("metric_")})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys + extra, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text_atomic(buf.getvalue(), path)
