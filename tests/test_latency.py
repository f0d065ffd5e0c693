"""The latency table (detnas.latency): coverage of the space, the sum the search uses, exact bounds,
reuse only on the machine and settings it was measured for, and validation against whole backbones.
Timings are short (tiny space, 64 px, few repeats): the tests pin the structure, not the speed."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detnas.blocks import CHOICES
from detnas.latency import (
    LatencyTable,
    latency_key,
    load_latency_table,
    measure_latency_table,
    validate_table,
)
from detnas.space import Arch, get_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import latency_table  # noqa: E402

SPACE = get_space("tiny")
SIZE = 64
QUICK = dict(repeats=2, warmup=1, block_seconds=0.002, calibration_archs=2)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return measure_latency_table(SPACE, input_size=SIZE, threads=1, **QUICK)


def _key(**changes):
    args = dict(space=SPACE, input_size=SIZE, batch_size=1, device="cpu", threads=1) | changes
    return latency_key(**args)


def test_table_covers_every_position_and_choice(table):
    assert len(table.ms) == len(SPACE.blocks()) == SPACE.num_blocks
    assert all(len(row) == len(CHOICES) for row in table.ms)
    assert all(math.isfinite(ms) and ms > 0 for row in table.ms for ms in row)
    assert table.stem_ms > 0 and table.tail_ms == 0.0  # the detection backbone ends at stage 4
    assert math.isfinite(table.scale) and table.scale > 0
    assert table.key == _key()
    assert table.settings == {"repeats": 2, "warmup": 1, "block_seconds": 0.002, "statistic": "median", "seed": 0,
                              "calibration_archs": 2}
    assert "cpu (" in table.device  # the CPU model is part of the device


def test_backbone_ms_is_the_scaled_sum_of_the_entries(table):
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = SPACE.sample(rng)
        by_hand = table.stem_ms + sum(table.ms[k][g] for k, g in enumerate(arch.genes)) + table.tail_ms
        assert table.sum_ms(arch) == pytest.approx(by_hand, rel=1e-12)
        assert table.backbone_ms(arch) == pytest.approx(table.scale * by_hand, rel=1e-12)
        assert table.backbone_ms(str(arch)) == table.backbone_ms(arch)


def test_bounds_are_the_brute_force_extremes_of_the_space(table):
    assert SPACE.size() == 4**8  # enumerable
    every = itertools.product(range(len(CHOICES)), repeat=SPACE.num_blocks)
    values = [table.backbone_ms(Arch(genes)) for genes in every]
    lo, hi = table.bounds()
    assert lo == pytest.approx(min(values), rel=1e-12)
    assert hi == pytest.approx(max(values), rel=1e-12)
    fastest = Arch(tuple(int(np.argmin(row)) for row in table.ms))
    assert table.backbone_ms(fastest) == pytest.approx(lo, rel=1e-12)


def test_within_agrees_with_backbone_ms(table):
    rng = np.random.default_rng(2)
    archs = [SPACE.sample(rng) for _ in range(50)]
    ms = sorted(table.backbone_ms(a) for a in archs)
    cap, floor = ms[len(ms) // 2], ms[len(ms) // 4]
    for a in archs:
        assert table.within(a, cap) == (table.backbone_ms(a) <= cap)
        assert table.within(a, cap, floor) == (floor <= table.backbone_ms(a) <= cap)
    lo, hi = table.bounds()
    assert all(table.within(a, hi, lo) for a in archs)


def test_save_load_round_trip(table, tmp_path):
    path = tmp_path / "latency.json"
    table.save(path)
    assert load_latency_table(path, _key()) == table
    assert LatencyTable.from_json(json.loads(path.read_text())) == table
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


@pytest.mark.parametrize("field, change", [
    ("input_size", {"input_size": 96}),
    ("batch_size", {"batch_size": 2}),
    ("threads", {"threads": 2}),
    ("space", {"space": get_space("small")}),
])
def test_load_refuses_a_table_of_other_settings(table, tmp_path, field, change):
    path = tmp_path / "latency.json"
    table.save(path)
    with pytest.raises(ValueError, match=field) as err:
        load_latency_table(path, _key(**change))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("field, value", [("device", "cuda:0 (NVIDIA H200)"), ("torch", "1.0.0"),
                                          ("torchvision", "0.1.0")])
def test_load_refuses_a_table_measured_elsewhere(table, tmp_path, field, value):
    path = tmp_path / "latency.json"
    dataclasses.replace(table, **{field: value}).save(path)
    with pytest.raises(ValueError, match=field) as err:
        load_latency_table(path, _key())
    assert str(path) in str(err.value) and value in str(err.value)


def test_load_names_every_field_that_differs(table, tmp_path):
    path = tmp_path / "latency.json"
    table.save(path)
    with pytest.raises(ValueError) as err:
        load_latency_table(path, _key(input_size=320, batch_size=4))
    assert "input_size" in str(err.value) and "batch_size" in str(err.value) and "threads" not in str(err.value)


def test_missing_or_corrupt_file_is_a_one_line_error_naming_it(table, tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ValueError, match="none.json") as err:
        load_latency_table(missing, _key())
    assert "\n" not in str(err.value)
    corrupt = tmp_path / "corrupt.json"
    table.save(corrupt)
    corrupt.write_text(corrupt.read_text()[:100])  # truncated
    with pytest.raises(ValueError, match="corrupt.json") as err:
        load_latency_table(corrupt, _key())
    assert "\n" not in str(err.value)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "detnas-latency-table", "version": 1, "space": "tiny"}))
    with pytest.raises(ValueError, match="other.json.*not a valid latency table"):
        load_latency_table(other, _key())
    short = table.to_json() | {"ms": table.to_json()["ms"][:3]}  # not every position
    other.write_text(json.dumps(short))
    with pytest.raises(ValueError, match="other.json"):
        load_latency_table(other, _key())


def test_validate_table_returns_n_finite_entries(table):
    v = validate_table(table, SPACE, n=3, seed=0)
    assert len(v.entries) == 3
    for e in v.entries:
        assert SPACE.parse(e.arch)
        assert e.predicted_ms == pytest.approx(table.backbone_ms(e.arch))
        assert e.uncalibrated_ms == pytest.approx(table.sum_ms(e.arch))
        assert all(math.isfinite(x) for x in (e.predicted_ms, e.measured_ms, e.error_pct, e.uncalibrated_error_pct))
        assert e.measured_ms > 0
    assert v.worst_abs_error_pct >= v.mean_abs_error_pct >= 0
    # the validation draws other architectures than the calibration, deterministically for a seed
    assert not {e.arch for e in v.entries} & {a for a, _, _ in table.calibration}
    assert [e.arch for e in validate_table(table, SPACE, n=3, seed=0, repeats=1).entries] == [e.arch for e in v.entries]


def test_min_statistic(table):
    v = validate_table(table, SPACE, n=2, statistic="min")
    assert all(e.measured_ms > 0 for e in v.entries)
    with pytest.raises(ValueError, match="statistic"):
        validate_table(table, SPACE, n=1, statistic="mean")


def test_validate_table_refuses_a_table_of_another_machine(table):
    with pytest.raises(ValueError, match="device"):
        validate_table(dataclasses.replace(table, device="cpu (Some Other CPU)"), SPACE, n=1)


def test_measurement_leaves_the_thread_count_as_it_was():
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    t = measure_latency_table(SPACE, input_size=SIZE, threads=threads, **(QUICK | {"calibration_archs": 1}))
    assert t.threads == threads
    assert torch.get_num_threads() == before
    validate_table(t, SPACE, n=1)
    assert torch.get_num_threads() == before


def test_detector_ms_is_the_detector_without_its_backbone(table):
    settings = {"name": "faster_rcnn_fpn", "fpn_channels": 16, "head_conv_channels": 16, "head_fc_channels": 32,
                "anchor_sizes": [12, 24, 48, 96, 160], "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20}
    t = measure_latency_table(SPACE, input_size=SIZE, threads=1, detector=settings, num_classes=3,
                              **(QUICK | {"calibration_archs": 1}))
    assert t.detector_ms is not None and t.detector_ms > 0
    assert t.detector["min_size"] == t.detector["max_size"] == SIZE and t.detector["num_classes"] == 3
    arch = SPACE.uniform(1)
    assert t.detector_total_ms(arch) == pytest.approx(t.backbone_ms(arch) + t.detector_ms)
    with pytest.raises(ValueError, match="detector_ms"):
        table.detector_total_ms(arch)
    with pytest.raises(ValueError, match="num_classes"):
        measure_latency_table(SPACE, input_size=SIZE, detector="retinanet")


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="input_size"):
        measure_latency_table(SPACE, input_size=8)
    with pytest.raises(ValueError, match="threads"):
        measure_latency_table(SPACE, input_size=SIZE, threads=0)
    with pytest.raises(ValueError, match="statistic"):
        measure_latency_table(SPACE, input_size=SIZE, statistic="mean")


def test_benchmark_runs(capsys):
    latency_table.main(["--input-size", str(SIZE), "--n", "2", "--repeats", "2",
                        "--calibration-archs", "9",  # more than blocks: several between two positions
                        "--statistic", "min", "--block-seconds", "0.002"])
    out = capsys.readouterr().out
    assert "mean |error|" in out and "calibration scale" in out and "table measured in" in out
