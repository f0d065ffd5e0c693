"""The health check: a training whose loss rises at the end and a detector at chance are flagged, in
the job's log, final.json and the comparison; a network that learned is not."""

import json

import pandas as pd
import pytest
from conftest import evaluate_found_boxes

from detnas.health import chance_health, health_summary, loss_health, shifted_detections
from detnas.io import write_json_atomic
from detnas.stages.compare import run_compare

MLFLOW = {"experiment": "health", "run_name": "evaluate", "tags": {"stage": "evaluate"}}


def _history(losses):
    return [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]


FALLING = _history([2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.75, 0.7])
RISING = _history([2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 1.0, 1.2])  # the last quarter 1.1 against 0.85 before


def test_a_loss_that_rises_at_the_end_is_flagged_and_a_falling_one_is_not():
    rising = loss_health(RISING)
    assert rising["checked"] and rising["rising"] and rising["steps"] == [50, 80]
    assert rising["last"] == pytest.approx(1.1) and rising["before"] == pytest.approx(0.85)
    falling = loss_health(FALLING)
    assert falling["checked"] and not falling["rising"] and falling["rise"] < 0
    # a rise early on (Faster R-CNN's box loss as the RPN starts proposing objects) does not count
    assert not loss_health(_history([1.0, 1.4, 1.6, 1.5, 1.2, 1.0, 0.9, 0.8]))["rising"]
    short = loss_health(_history([1.0, 2.0, 3.0]))
    assert not short["checked"] and not short["rising"] and "too few" in short["reason"]
    assert not loss_health(_history([1.0, float("nan"), 1.0, 1.0]))["checked"]  # NaN is not a value


def test_shifted_detections_move_every_image_to_the_next():
    results = [{"image_id": 3, "bbox": [0, 0, 1, 1]}, {"image_id": 7, "bbox": [1, 1, 1, 1]}]
    assert [r["image_id"] for r in shifted_detections(results, [7, 3, 9])] == [7, 9]
    assert shifted_detections(results, [3]) == []  # one image: nothing to move to


def test_summary_names_each_flag():
    health = health_summary(losses={"classifier": loss_health(FALLING), "detector": loss_health(RISING)},
                            chance=chance_health(0.06, 0.03))
    assert not health["ok"] and len(health["flags"]) == 2
    assert health["flags"][0].startswith("detector loss rose +29%") and "no better than chance" in health["flags"][1]
    assert health_summary(losses={"classifier": loss_health(FALLING)}, chance=chance_health(0.9, 0.03))["ok"]
    assert not chance_health(None, 0.1)["checked"]


def test_a_detector_that_learned_is_not_flagged(tmp_path, test_file, monkeypatch, capsys):
    final, _ = evaluate_found_boxes(tmp_path, test_file, monkeypatch, primary="AP", mlflow=MLFLOW,
                                    classifier={"num_classes": 8, "top1": 0.9, "history": FALLING},
                                    detector_metrics={"history": FALLING}, pictures=True)
    health = final["health"]
    assert health["ok"] and health["flags"] == [] and set(health["losses"]) == {"classifier", "detector"}
    assert health["chance"]["AP50"] == pytest.approx(1.0) and health["chance"]["AP50_shifted"] < 0.5
    assert "health: ok" in capsys.readouterr().out
    assert (tmp_path / "detections.png").stat().st_size > 10_000  # the test images with their boxes


def test_a_detector_at_chance_and_a_rising_loss_are_flagged(tmp_path, test_file, monkeypatch, capsys):
    # every image gets the boxes of the next one: typical boxes, but not where this image's objects are
    final, data = evaluate_found_boxes(tmp_path, test_file, monkeypatch, primary="AP", mlflow=MLFLOW, shift=1,
                                       classifier={"num_classes": 8, "top1": 0.9, "history": FALLING},
                                       detector_metrics={"history": RISING})
    health = final["health"]
    assert not health["ok"] and health["chance"]["at_chance"] and health["losses"]["detector"]["rising"]
    out = capsys.readouterr().out
    assert "HEALTH WARNING: detnas: detector loss rose" in out and "no better than chance" in out

    # the comparison carries the flags, and its printed table marks the row
    ok = {**final, "method": "random", "health": health_summary(losses={}, chance=chance_health(0.9, 0.1))}
    finals = []
    for name, row in (("detnas", final), ("random", ok)):
        write_json_atomic(row, tmp_path / f"{name}.json")
        finals.append(tmp_path / f"{name}.json")
    capsys.readouterr()
    run_compare(finals=finals, histories={}, csv_out=tmp_path / "c.csv", png_out=tmp_path / "c.png", experiment="x",
                mlflow={"experiment": "x", "run_name": "compare"})
    table = pd.read_csv(tmp_path / "c.csv", dtype={"arch": str})
    assert table["health"][0].startswith("HEALTH: detector loss rose") and table["health"][1] == "ok"
    out = capsys.readouterr().out
    assert "HEALTH WARNING: detnas:" in out and "FLAGGED" in out
    assert json.loads((tmp_path / "final.json").read_text())["health"] == health
