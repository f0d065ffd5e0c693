"""The latency bound (search.max_latency_ms) through the stages and the workflow: a hand-made table
(its entries chosen so that a bound cuts the space in two, the same on every machine) bounds the
search, the random architectures and the controls; an impossible bound stops `snakemake -n` with
its key path; a network's latency.json sets the table's prediction beside a real measurement, and a
table of another device is refused."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from detnas.flops import cost_table
from detnas.io import read_json, write_json_atomic
from detnas.latency import LatencyTable, bound_problem, latency_bound, measure_latency_table
from detnas.space import Arch, get_space
from workflow import edit_config, make_workdir, snakemake

SPACE = get_space("tiny")


def _table(**changes) -> LatencyTable:
    """Choice c of position k costs (k + 1) * (c + 1) * 0.1 ms: choice 3 (Xception) is dearest."""
    fields = dict(space="tiny", input_size=64, batch_size=1, device="cpu (test)", threads=1, torch="x",
                  torchvision="y", settings={"repeats": 3}, stem_ms=0.5, tail_ms=0.0, scale=1.1,
                  ms=tuple(tuple((k + 1) * (c + 1) * 0.1 for c in range(4)) for k in range(SPACE.num_blocks)))
    return LatencyTable(**(fields | changes))


@pytest.fixture()
def table_file(tmp_path) -> Path:
    path = tmp_path / "table.json"
    _table().save(path)
    return path


def _all_archs():
    return [Arch(g) for g in itertools.product(range(4), repeat=SPACE.num_blocks)]


def _bound(table: LatencyTable) -> float:
    """A bound that admits about a third of the tiny space."""
    times = sorted(table.backbone_ms(a) for a in _all_archs())
    return times[len(times) // 3]


def test_impossible_bound_names_the_setting_and_the_fastest_backbone(table_file):
    table = _table()
    lo, hi = table.bounds()
    assert min(table.backbone_ms(a) for a in _all_archs()) == pytest.approx(lo)
    with pytest.raises(ValueError) as err:
        latency_bound(table_file, SPACE, lo * 0.99, "search.max_latency_ms")
    assert str(err.value).startswith(f"search.max_latency_ms: {lo * 0.99} admits no architecture (latency table "
                                     f"{table_file}: fastest backbone ")
    assert bound_problem(table, lo, "x", "t") is None  # the fastest backbone itself is admitted
    with pytest.raises(ValueError, match="a latency table of space 'tiny', not 'small'"):
        latency_bound(table_file, get_space("small"), hi, "search.max_latency_ms")
    with pytest.raises(ValueError, match="must be a positive number"):
        latency_bound(table_file, SPACE, 0, "search.max_latency_ms")


def test_search_never_returns_an_architecture_over_the_bound(tmp_path, table_file, test_file):
    from detnas.stages.search import run_search_stage

    table = _table()
    bound = _bound(table)
    settings = {"method": "synflow", "space": "tiny", "proxy_input_size": 32, "population": 6, "parents": 2,
                "generations": 3, "max_mflops": None, "max_latency_ms": bound}
    out = tmp_path / "search"
    run_search_stage(settings, supernet=None, val_file=test_file, recal_file=None, arch_out=out / "arch.json",
                     history_out=out / "history.csv", curve_out=out / "curve.png", checkpoint_dir=out / "ckpt",
                     mlflow={"experiment": "x", "run_name": "s"}, threads=1, device="cpu", latency_table=table_file)
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) >= 6
    assert all(table.backbone_ms(r["arch"]) <= bound for r in rows)
    chosen = read_json(out / "arch.json")
    assert chosen["predicted_latency_ms"] == table.backbone_ms(chosen["arch"]) <= bound
    # without the table a bounded search refuses to start
    with pytest.raises(ValueError, match="give the experiment's latency table"):
        run_search_stage(settings, supernet=None, val_file=test_file, recal_file=None, arch_out=out / "a2.json",
                         history_out=out / "h2.csv", curve_out=out / "c2.png", checkpoint_dir=out / "ck2",
                         mlflow={"experiment": "x", "run_name": "s"}, threads=1, device="cpu")


def test_random_archs_and_controls_respect_the_bound(tmp_path, table_file):
    from detnas.stages.arch_files import run_control_arch, run_random_arch

    table = _table()
    bound = _bound(table)
    archs = [run_random_arch(space="tiny", index=i, count=i, seed=0, min_mflops=None, max_mflops=None,
                             out=tmp_path / f"r{i}.json", latency_table=table_file, max_latency_ms=bound)
             for i in range(1, 6)]
    assert all(table.backbone_ms(a["arch"]) <= bound for a in archs)
    assert all(a["predicted_latency_ms"] == table.backbone_ms(a["arch"]) for a in archs)
    macs = cost_table(SPACE).backbone_macs
    feasible = [a for a in _all_archs() if table.backbone_ms(a) <= bound]
    unbounded = run_control_arch(space="tiny", control="flops_max", min_mflops=None, max_mflops=None,
                                 out=tmp_path / "free.json")
    assert table.backbone_ms(unbounded["arch"]) > bound  # the bound binds: the dearest backbone is slow
    search = {"population": 8, "parents": 3, "generations": 4, "seed": 0}
    for control, count in (("flops_max", macs), ("params_max", cost_table(SPACE).backbone_params)):
        got = run_control_arch(space="tiny", control=control, min_mflops=None, max_mflops=None,
                               out=tmp_path / f"{control}.json", latency_table=table_file, max_latency_ms=bound,
                               search=search)
        assert table.backbone_ms(got["arch"]) <= bound
        assert got["control"]["evaluations"] <= 8 * 4
        # the EA's find (32 candidates, seeded) is near the feasible maximum (enumerated: 4^8 architectures)
        best = max(count(a) for a in feasible)
        assert 0.85 * best <= count(SPACE.parse(got["arch"])) <= best


def test_impossible_bound_fails_the_dry_run_with_its_key_path(tmp_path):
    wd = make_workdir(tmp_path / "wd")
    table = _table()
    write_json_atomic(table.to_json(), wd / "results" / "shapes_fpn" / "latency" / "table.json")
    lo = table.bounds()[0]
    # the micro config has no latency section: the bound alone brings the defaults (1 thread, batch 1,
    # the detector's 64 px), the hand-made table's settings
    edit_config(wd, "      max_mflops: 40\n", f"      max_mflops: 40\n      max_latency_ms: {lo / 2}\n")
    proc = snakemake(wd, "-n", check=False)
    assert proc.returncode != 0
    line = next(x for x in (proc.stderr + proc.stdout).splitlines() if "max_latency_ms" in x)
    assert line.startswith(f"experiments.shapes_fpn.search.max_latency_ms: {lo / 2} admits no architecture "
                           f"(latency table results/shapes_fpn/latency/table.json: fastest backbone ")
    # a bound the table's fastest backbone meets plans the searches on the table
    edit_config(wd, f"      max_latency_ms: {lo / 2}\n", f"      max_latency_ms: {lo * 1.5}\n")
    shell = snakemake(wd, "-n", "-p", "results/shapes_fpn/synflow/search/arch.json").stdout
    assert "--latency-table results/shapes_fpn/latency/table.json" in shell


def test_arch_latency_measures_here_and_refuses_another_device(tmp_path):
    from detnas.stages.latency import run_arch_latency

    measured = measure_latency_table(SPACE, input_size=32, threads=1, repeats=2, warmup=1, block_seconds=0.002,
                                     calibration_archs=2)
    path = tmp_path / "table.json"
    measured.save(path)
    arch = SPACE.sample(__import__("numpy").random.default_rng(0))
    write_json_atomic({"arch": str(arch), "space": "tiny", "method": "m"}, tmp_path / "arch.json")
    got = run_arch_latency(arch_file=tmp_path / "arch.json", table_file=path, out=tmp_path / "latency.json")
    assert got["predicted_ms"] == measured.backbone_ms(arch) and got["measured_ms"] > 0
    assert read_json(tmp_path / "latency.json") == json.loads(json.dumps(got))
    # an architecture of another (width-scaled) space: measured, no prediction from this table
    write_json_atomic({"arch": str(arch), "space": "tiny@w1.2500", "method": "s"}, tmp_path / "scaled.json")
    scaled = run_arch_latency(arch_file=tmp_path / "scaled.json", table_file=path, out=tmp_path / "s.json")
    assert scaled["predicted_ms"] is None and scaled["measured_ms"] > 0 and "not the table's" in scaled["note"]
    other = {**measured.to_json(), "device": "cpu (another CPU)"}
    write_json_atomic(other, tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"other\.json: latency table measured for another setup: device"):
        run_arch_latency(arch_file=tmp_path / "arch.json", table_file=tmp_path / "other.json",
                         out=tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
