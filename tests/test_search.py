"""The search algorithm (pure, synthetic fitness) and the search stage (kill/resume, two ranks)."""

import json
import re
import os
from collections import Counter
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import as_json, run_detnas, save_search_inputs

from detnas.flops import cost_table
from detnas.search import SearchSettings, best, run_search
from detnas.space import Arch, get_space


def additive(space, seed):
    """A known fitness: a random score per (block, choice), summed along the path."""
    w = np.random.default_rng(seed).random((space.num_blocks, 4))
    rows = np.arange(space.num_blocks)
    return (lambda arch: float(w[rows, arch.genes].sum())), Arch(tuple(int(i) for i in w.argmax(1)))


def search(space, fitness, settings, seed, feasible=lambda a: True, state=None, on_generation=None, scored=None):
    def score(cands):
        if scored is not None:
            scored.extend(cands)
        return [fitness(a) for a in cands]

    return run_search(space, score, feasible, settings, np.random.default_rng(seed), state=state,
                      on_generation=on_generation)


def test_never_scores_infeasible_or_duplicate():
    space = get_space("small")
    table = cost_table(space)
    limit = 290e6  # about half of the space is feasible
    feasible = lambda a: table.backbone_macs(a) <= limit  # noqa: E731
    fitness, _ = additive(space, 0)
    scored = []
    history = search(space, fitness, SearchSettings(population=20, parents=5, generations=8), 0, feasible, scored=scored)
    assert len(scored) == len(set(scored)) == len(history) == 160
    assert all(table.backbone_macs(a) <= limit for a in scored)
    assert [str(a) for a in scored] == [c.arch for c in history]
    assert table.backbone_macs(space.parse(best(history).arch)) <= limit


def test_same_seed_same_search():
    space = get_space("tiny")
    fitness, _ = additive(space, 1)
    s = SearchSettings(population=10, parents=3, generations=4)
    assert search(space, fitness, s, 7) == search(space, fitness, s, 7)
    assert search(space, fitness, s, 7) != search(space, fitness, s, 8)


def test_evolution_beats_random_at_the_same_budget():
    space = get_space("small")
    wins = 0
    for seed in range(20):
        fitness, _ = additive(space, 100 + seed)
        ea = best(search(space, fitness, SearchSettings(population=20, parents=5, generations=10), seed)).fitness
        rnd = best(search(space, fitness, SearchSettings(population=20, parents=5, generations=10, method="random"), seed)).fitness
        wins += ea > rnd
    assert wins >= 17, f"EA won {wins}/20"


def test_evolution_finds_the_optimum_of_a_small_space():
    space = get_space("tiny")  # 4^8 = 65,536 architectures; 1,000 evaluations
    found = 0
    for seed in range(5):
        fitness, optimum = additive(space, seed)
        history = search(space, fitness, SearchSettings(population=50, parents=10, generations=20), seed)
        found += best(history).arch == str(optimum)
    assert found >= 4


def test_random_search_has_the_same_budget():
    space = get_space("small")
    fitness, _ = additive(space, 0)
    assert len(search(space, fitness, SearchSettings(population=12, parents=3, generations=5, method="random"), 0)) == 60


def test_resumed_search_equals_uninterrupted():
    space = get_space("small")
    fitness, _ = additive(space, 3)
    s = SearchSettings(population=10, parents=3, generations=6)
    states = []
    full = search(space, fitness, s, 5, on_generation=lambda st: states.append(json.loads(json.dumps(st))))
    assert len(states) == 6
    scored = []
    resumed = search(space, fitness, s, 5, state=states[2], scored=scored)  # killed after generation 3
    assert resumed == full
    assert len(scored) == 30  # only generations 4-6 were scored again... none of them before
    assert not set(map(str, scored)) & {c["arch"] for c in states[2]["history"]}


def test_exhausted_space_stops_cleanly():
    space = get_space("tiny")
    fitness, _ = additive(space, 0)
    table = cost_table(space)
    every = np.array(np.meshgrid(*[range(4)] * space.num_blocks, indexing="ij")).reshape(space.num_blocks, -1).T
    macs = np.sort(table.stem_macs + table.macs[np.arange(space.num_blocks), every].sum(1))
    limit = macs[29]  # 30 feasible architectures (ties aside)
    n_feasible = int((macs <= limit).sum())
    feasible = lambda a: table.backbone_macs(a) <= limit  # noqa: E731
    history = search(space, fitness, SearchSettings(population=20, parents=5, generations=5), 0, feasible)
    # generations shrink when no new feasible architecture can be drawn; nothing is scored twice
    assert 0 < len(history) == len({c.arch for c in history}) <= n_feasible < 100
    assert all(feasible(space.parse(c.arch)) for c in history)


# -- the stage ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search_inputs(det_source, tmp_path_factory):
    """An untrained tiny detection supernet saved as a fine-tuned one, and the split files."""
    return save_search_inputs(det_source, tmp_path_factory.mktemp("search"))


SEARCH = {"method": "detnas", "population": 6, "parents": 2, "generations": 3, "max_mflops": 40,
          "recalibration_images": 4, "eval_images": 6, "batch_size": 4, "seed": 0}


def search_args(root, out, settings=SEARCH):
    return ["search", "--settings", as_json(settings), "--supernet", str(root / "supernet.pt"),
            "--val", str(root / "search_val.json"), "--recal", str(root / "supernet_train.json"),
            "--arch-out", str(out / "arch.json"), "--history", str(out / "history.csv"),
            "--curve", str(out / "curve.png"), "--checkpoint-dir", str(out / "ck"), "--threads", "1"]


def _scores(out):
    """Every rank's logged scores (scores.jsonl, scores.rank<r>.jsonl), each line parsed."""
    return [json.loads(line) for f in sorted((out / "ck").glob("scores*.jsonl")) for line in f.read_text().splitlines()]


def _history_rows(path):
    """history.csv without the columns of how the work was done (its seconds, its rank)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"arch": str}).drop(columns=["seconds", "rank"]).to_dict("records")


def test_overlapped_search_killed_mid_evaluation_equals_the_serial_search(search_inputs, tmp_path):
    import pandas as pd

    # the outputs of a search; the reference scores each candidate in this process, one after the other; the killed search
    # overlaps each candidate's COCO evaluation (another process) with the next one's model work,
    # is SIGKILLed mid-generation while evaluations are in flight, and is rerun
    settings = {**SEARCH, "generations": 4}
    ref = tmp_path / "ref"
    run_detnas(*search_args(search_inputs, ref, {**settings, "overlap_evaluation": False}))
    chosen = json.loads((ref / "arch.json").read_text())
    history = pd.read_csv(ref / "history.csv", dtype={"arch": str})
    assert len(history) == chosen["evaluations"] == 24 and history["arch"].is_unique
    assert (history["mflops"] <= 40).all() and chosen["mflops"] <= 40
    assert chosen["fitness"] == history["fitness"].max()
    assert set(history["generation"]) == {0, 1, 2, 3}
    assert (ref / "curve.png").stat().st_size > 1000
    out = tmp_path / "killed"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "detnas", *search_args(search_inputs, out, settings)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        t = time.time()
        while not (out / "ck" / "scores.jsonl").exists() or len(_scores(out)) < 9:
            assert time.time() - t < 120 and proc.poll() is None
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the search and its evaluator process
        proc.wait()
    before = len(_scores(out))
    second = run_detnas(*search_args(search_inputs, out, settings))
    assert f"{before} candidates already scored" in second.stdout
    rows = _scores(out)
    assert len(rows) == len({r["arch"] for r in rows}) == 24  # every candidate scored exactly once
    assert 9 <= before < 24 and before % 6 != 0  # killed inside a generation: scores are logged one by one
    # row for row: the same candidates, generations, origins, fitness and metrics as the serial search
    assert _history_rows(out / "history.csv") == _history_rows(ref / "history.csv")
    assert json.loads((out / "arch.json").read_text())["arch"] == json.loads((ref / "arch.json").read_text())["arch"]


def test_two_ranks_score_every_candidate_once(search_inputs, tmp_path):
    run_detnas(*search_args(search_inputs, tmp_path), launcher=[sys.executable, "-m", "detnas.launch", "--nproc", "2"],
               env={"OMP_NUM_THREADS": "1"})
    rows = _scores(tmp_path)
    assert len(rows) == len({r["arch"] for r in rows}) == 18
    assert {r["rank"] for r in rows} == {0, 1}
    single = tmp_path / "single"
    run_detnas(*search_args(search_inputs, single))
    # scores do not depend on which rank computed them: the same search, the same choice
    assert json.loads((tmp_path / "arch.json").read_text())["arch"] == json.loads((single / "arch.json").read_text())["arch"]


def test_generation_mix_is_the_authors_20_20_10_at_population_50():
    space = get_space("small")
    fitness, _ = additive(space, 1)
    table = cost_table(space)
    feasible = lambda a: table.backbone_macs(a) <= 300e6  # noqa: E731
    history = search(space, fitness, SearchSettings(population=50, parents=10, generations=4), 0, feasible)
    assert len(history) == 200 and len({c.arch for c in history}) == 200  # no duplicates, within or across
    assert all(table.backbone_macs(space.parse(c.arch)) <= 300e6 for c in history)
    origins = Counter((c.generation, c.origin) for c in history)
    assert origins[(0, "random")] == 50
    for g in (1, 2, 3):
        assert (origins[(g, "mutation")], origins[(g, "crossover")], origins[(g, "random")]) == (20, 20, 10)


def test_generation_mix_as_settings_and_proportions():
    s = SearchSettings(population=20)
    assert (s.mutations, s.crossovers) == (8, 8)  # 40% each, random the remaining 20%
    assert (SearchSettings(population=50).mutations, SearchSettings(population=50).crossovers) == (20, 20)
    space = get_space("small")
    fitness, _ = additive(space, 2)
    history = search(space, fitness, SearchSettings(population=10, parents=3, generations=2, mutations=7, crossovers=0), 0)
    assert Counter(c.origin for c in history if c.generation == 1) == {"mutation": 7, "random": 3}
    with pytest.raises(ValueError, match="together at most the population"):
        SearchSettings(population=10, mutations=6, crossovers=5)


def test_random_architectures_are_distinct_feasible_and_seeded():
    from detnas.search import random_architectures

    space = get_space("small")
    table = cost_table(space)
    feasible = lambda a: 270e6 <= table.backbone_macs(a) <= 300e6  # noqa: E731
    archs = random_architectures(space, 20, feasible, seed=3)
    assert len(set(archs)) == 20 and all(feasible(a) for a in archs)
    assert random_architectures(space, 20, feasible, seed=3) == archs
    assert random_architectures(space, 25, feasible, seed=3)[:20] == archs  # a larger count extends the list
    assert random_architectures(space, 20, feasible, seed=4) != archs
    with pytest.raises(ValueError, match="found only"):
        random_architectures(get_space("tiny"), 5, lambda a: str(a) == "00000000", seed=0)


def test_repeats_use_their_own_seeds_and_the_best_over_all_is_chosen(search_inputs, tmp_path):
    """search.repeats: 3 runs with seeds seed, seed + 1, seed + 2; one history with a repeat column; the
    chosen architecture is the best over every repeat; the curves' data has a min-max band."""
    import pandas as pd

    from detnas.stages.search_curves import read_history, run_search_curves

    small = {**SEARCH, "population": 4, "generations": 2, "seed": 5}
    settings = {**small, "repeats": 3}
    run_detnas(*search_args(search_inputs, tmp_path, settings))
    chosen = json.loads((tmp_path / "arch.json").read_text())
    history = pd.read_csv(tmp_path / "history.csv", dtype={"arch": str})
    assert sorted(history["repeat"].unique()) == [0, 1, 2] and len(history) == chosen["evaluations"] == 24
    assert [b["seed"] for b in chosen["best_per_repeat"]] == [5, 6, 7]
    # different seeds, different searches: the first generations differ
    firsts = [tuple(history[(history["repeat"] == r) & (history["generation"] == 0)]["arch"]) for r in range(3)]
    assert len(set(firsts)) == 3
    for r in range(3):  # each repeat's best, as the history says
        rows = history[history["repeat"] == r]
        assert chosen["best_per_repeat"][r]["fitness"] == rows["fitness"].max()
    assert chosen["fitness"] == history["fitness"].max() == max(b["fitness"] for b in chosen["best_per_repeat"])
    assert chosen["arch"] in set(history[history["fitness"] == chosen["fitness"]]["arch"])
    # an architecture two repeats meet is scored once, with one fitness
    assert history.groupby("arch")["fitness"].nunique().max() == 1
    assert len(_scores(tmp_path)) == history["arch"].nunique() == chosen["distinct_evaluations"]

    # the repeat seeded like a single search is that search
    single = tmp_path / "single"
    run_detnas(*search_args(search_inputs, single, small))
    one = pd.read_csv(single / "history.csv", dtype={"arch": str})
    assert list(one["arch"]) == list(history[history["repeat"] == 0]["arch"])

    repeats = read_history(tmp_path / "history.csv")
    assert [len(r) for r in repeats] == [8, 8, 8]
    run_search_curves({"detnas": tmp_path / "history.csv", "random": single / "history.csv"}, population=4,
                      png_out=tmp_path / "curves.png", json_out=tmp_path / "curves.json", title="t: supernet")
    data = json.loads((tmp_path / "curves.json").read_text())["methods"]
    ea, rnd = data["detnas"], data["random"]
    assert ea["repeats"] == 3 and rnd["repeats"] == 1 and ea["generations"] == [0, 1]
    band = np.array(ea["best"]["max"]) - np.array(ea["best"]["min"])
    assert (band >= 0).all() and band.max() > 0  # three different searches: a band
    assert ea["best"]["max"][-1] == chosen["fitness"]
    per_repeat_best = [max(c.fitness for c in r) for r in repeats]
    assert ea["best"]["mean"][-1] == pytest.approx(np.mean(per_repeat_best))
    assert rnd["best"]["min"] == rnd["best"]["max"] == rnd["best"]["mean"]
    assert (tmp_path / "curves.png").stat().st_size > 5000


# -- nothing silently wrong: every rank's scores kept, torn lines, corrupt state ----------------------

SHORT = {**SEARCH, "generations": 2}  # 12 candidates
TWO_RANKS = dict(launcher=[sys.executable, "-m", "detnas.launch", "--nproc", "2"], env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def serial_search(search_inputs, tmp_path_factory):
    """An uninterrupted one-process search of SHORT (its outputs and checkpoint folder; read only)."""
    out = tmp_path_factory.mktemp("serial")
    # its own MLflow store: a module's fixture is made before the per-test one is set
    run_detnas(*search_args(search_inputs, out, SHORT), env={"MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db"})
    assert len(_scores(out)) == 12
    return out


def _kill_tree(pid):
    """SIGKILL ``pid`` and every process below it at once, as a lost node would: each is stopped
    first, so none starts another or writes more meanwhile. (torchrun starts every rank in a session
    of its own, which a kill of the job's process group does not reach.)"""
    from pathlib import Path

    stopped = set()
    while True:
        children = {}
        for d in Path("/proc").iterdir():
            try:
                stat = (d / "stat").read_text() if d.name.isdigit() else None
            except OSError:
                continue
            if stat:
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
        tree, todo = [], [pid]
        while todo:
            tree.append(todo.pop())
            todo += children.get(tree[-1], [])
        new = [p for p in tree if p not in stopped]
        if not new:
            break
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        stopped.update(new)
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_two_ranks_killed_mid_generation_keep_every_logged_score(search_inputs, serial_search, tmp_path):
    # each rank scores 3 of a generation's 6 candidates; the job is SIGKILLed once rank 1 has logged
    # some, not all, of its share of generation 2: those scores are on disk, in rank 1's own file
    out = tmp_path / "killed"
    rank1 = out / "ck" / "scores.rank1.jsonl"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([*TWO_RANKS["launcher"], *search_args(search_inputs, out, SHORT)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **TWO_RANKS["env"]})
        t = time.time()
        while not (_lines(rank1) > 3 and _lines(rank1) % 3):
            assert time.time() - t < 120 and proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.01)
        _kill_tree(proc.pid)  # the launcher, torchrun, both ranks and their evaluator processes
        proc.wait()
    before = _scores(out)
    state = json.loads((out / "ck" / "state_repeat0.json").read_text())
    assert state["generation"] == 1  # killed inside generation 2...
    assert sum(r["rank"] == 1 for r in before) > 3  # ...after rank 1 had logged scores of it
    second = run_detnas(*search_args(search_inputs, out, SHORT), **TWO_RANKS)
    assert f"{len(before)} candidates already scored" in second.stdout, second.stdout + second.stderr
    rows = _scores(out)
    assert len(rows) == len({r["arch"] for r in rows}) == 12  # over both ranks' files: each candidate once
    assert all(r in rows for r in before)  # what was logged before the kill is kept, not scored again
    assert _history_rows(out / "history.csv") == _history_rows(serial_search / "history.csv")


def test_score_log_repairs_a_torn_last_line(tmp_path, capsys):
    from detnas.stages.search import _ScoreLog

    rows = [{"arch": f"0000000{i}", "fitness": 0.1 * i, "rank": 0} for i in range(4)]
    path = tmp_path / "scores.jsonl"
    lines = [json.dumps(r) for r in rows]
    path.write_text(lines[0] + "\n" + "not json\n" + lines[1] + "\n" + lines[2][:15])  # killed mid-append
    log = _ScoreLog(tmp_path).load()
    assert list(log.known) == [rows[0]["arch"], rows[1]["arch"]]
    out = capsys.readouterr().out
    assert f"{path}: dropped its partial last line (15 bytes" in out and "truncated the file" in out
    assert f"{path}: skipped 1 line(s) that are not a score row (line 2)" in out
    assert path.read_text() == lines[0] + "\n" + "not json\n" + lines[1] + "\n"  # back to its last newline
    log.add(rows[2])
    again = _ScoreLog(tmp_path).load()
    assert list(again.known) == [r["arch"] for r in rows[:3]] and again.known[rows[2]["arch"]] == rows[2]
    # rank r > 0 appends to its own file; rank 0 reads every rank's
    _ScoreLog(tmp_path, rank=1).add(rows[3])
    assert (tmp_path / "scores.rank1.jsonl").read_text() == lines[3] + "\n"
    assert list(_ScoreLog(tmp_path).load().known) == [r["arch"] for r in rows]


def _resume_from(serial_search, out):
    """``out`` with a copy of the serial search's checkpoint folder (the same inputs: it resumes)."""
    import shutil

    shutil.copytree(serial_search / "ck", out / "ck")
    return out / "ck"


def _scored(stdout):
    return len(re.findall(r"\] \d+ scored \(", stdout))


def test_search_resumes_past_a_torn_score_line(search_inputs, serial_search, tmp_path):
    ck = _resume_from(serial_search, tmp_path)
    lines = (ck / "scores.jsonl").read_text().splitlines()
    (ck / "scores.jsonl").write_text("".join(f"{line}\n" for line in lines[:5]) + lines[5][:20])  # killed mid-append
    (ck / "state_repeat0.json").unlink()
    proc = run_detnas(*search_args(search_inputs, tmp_path, SHORT))
    assert "scores.jsonl: dropped its partial last line (20 bytes" in proc.stdout
    assert "5 candidates already scored" in proc.stdout and _scored(proc.stdout) == 7
    rows = _scores(tmp_path)  # every line parses: the first append after the torn line is not swallowed
    assert [r["arch"] for r in rows] == [json.loads(line)["arch"] for line in lines]  # each candidate once
    assert _history_rows(tmp_path / "history.csv") == _history_rows(serial_search / "history.csv")


def test_corrupt_search_state_is_moved_aside_and_the_repeat_restarts(search_inputs, serial_search, tmp_path):
    ck = _resume_from(serial_search, tmp_path)
    (ck / "state_repeat0.json").write_text('{"space": "tiny", "generation": 2, "hist')  # half a file
    proc = run_detnas(*search_args(search_inputs, tmp_path, SHORT))
    (aside,) = ck.glob("state_repeat0.json.corrupt-*")
    assert aside.read_text().startswith('{"space": "tiny"')
    assert re.search(rf"{re.escape(str(ck / 'state_repeat0.json'))} cannot be read \(not valid JSON .*\); moved it "
                     rf"aside to {aside.name}; this repeat restarts", proc.stdout)
    assert "12 candidates already scored" in proc.stdout and _scored(proc.stdout) == 0  # the log answers
    assert json.loads((ck / "state_repeat0.json").read_text())["generation"] == 2
    assert len(_scores(tmp_path)) == 12
    assert _history_rows(tmp_path / "history.csv") == _history_rows(serial_search / "history.csv")


def test_corrupt_resume_marker_moves_the_search_state_aside(search_inputs, serial_search, tmp_path):
    ck = _resume_from(serial_search, tmp_path)
    (ck / "resume.json").write_text("")  # e.g. a file system that lost it
    proc = run_detnas(*search_args(search_inputs, tmp_path, SHORT))
    (marker,) = ck.glob("resume.json.corrupt-*")
    (scores,) = ck.glob("scores.jsonl.corrupt-*")
    (state,) = ck.glob("state_repeat0.json.corrupt-*")
    assert marker.read_text() == "" and scores.read_text() == (serial_search / "ck" / "scores.jsonl").read_text()
    line = next(x for x in proc.stdout.splitlines() if "resume.json cannot be read" in x)
    assert f"moved it aside to {marker.name}" in line and scores.name in line and state.name in line
    assert line.endswith("every candidate is scored anew")
    assert "resuming the search" not in proc.stdout and _scored(proc.stdout) == 12
    assert _history_rows(tmp_path / "history.csv") == _history_rows(serial_search / "history.csv")
