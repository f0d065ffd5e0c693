"""`detect` (a retrained detector on one's own image files) and `export` (the detector as ONNX, checked
against PyTorch), on a tiny random detector whose score threshold is 0 so that every image has
detections to compare."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DETECTOR
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detnas.cli import main
from detnas.detectors import DetectorSettings, build_detector, detector_from_checkpoint
from detnas.io import save_checkpoint, write_json_atomic
from detnas.space import get_space
from detnas.supernet import SinglePathNet

CLASSES = ["circle", "square", "triangle", "cross", "ring"]  # the synthetic data's, ids 1..5


def _save_detector(path: Path, *, seed: int = 0, **settings) -> Path:
    """A tiny standalone detector (random weights, seeded) saved as ``run_finetune`` saves one."""
    space = get_space("tiny")
    arch = str(space.uniform(0))
    # anchors of the synthetic shapes' sizes (13-29 px): the untrained detector's boxes hit a few
    # shapes, so that its test AP is above 0 and the AP comparison is not 0 = 0
    detector = {**TINY_DETECTOR, "anchor_sizes": [16, 20, 24, 32, 40], "score_threshold": 0.0, **settings}
    torch.manual_seed(seed)
    model = build_detector(SinglePathNet(space, arch), num_classes=len(CLASSES),
                           settings=DetectorSettings.from_dict(detector))
    if detector.get("name") == "retinanet":
        # torchvision initializes RetinaNet's head with std 0.01, so that untrained it scores every
        # anchor alike (its prior, ~0.01, to 1e-7): which of thousands of tied candidates NMS keeps
        # is then rounding, in either runtime. Variance-keeping weights tell them apart by score,
        # as a trained head does.
        with torch.no_grad():
            for conv in model.head.classification_head.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    save_checkpoint({"kind": "detector", "space": "tiny", "arch": arch, "detector": detector,
                     "precision": {"amp": "auto", "channels_last": "auto"}, "num_classes": len(CLASSES),
                     "category_ids": [1, 2, 3, 4, 5], "category_names": CLASSES, "state_dict": model.state_dict()},
                    path)
    return path


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    return _save_detector(tmp_path_factory.mktemp("detector") / "detector.pt")


@pytest.fixture(scope="module")
def test_images(det_source) -> Path:
    return det_source / "images" / "test"


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _coco_ap(ann_file: Path, results_file: Path) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_detections_score_the_evaluate_stage_ap(tmp_path, detector_file, test_images, test_file, capsys):
    from detnas.stages.evaluate import run_evaluate

    out = tmp_path / "detect"
    code, err = _cli(["detect", "--checkpoint", str(detector_file), str(test_images), "--out", str(out),
                      "--classes-from", str(test_file), "--batch-size", "4", "--device", "cpu"], capsys)
    assert code == 0, err
    results = json.loads((out / "detections.json").read_text())
    mapping = json.loads((out / "images.json").read_text())
    gt = json.loads(test_file.read_text())
    # every test image found under its own id, at its size; the results name those ids and the classes
    assert {(i["id"], i["file_name"], i["width"], i["height"]) for i in mapping["images"]} == {
        (i["id"], i["file_name"], i["width"], i["height"]) for i in gt["images"]}
    assert mapping["categories"] == [{"id": i, "name": n} for i, n in enumerate(CLASSES, 1)]
    assert len(results) == 100 * len(gt["images"])  # score threshold 0: detections_per_image on each
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}

    arch = torch.load(detector_file, weights_only=True)["arch"]
    write_json_atomic({"arch": arch}, tmp_path / "arch.json")
    write_json_atomic({"num_classes": 8, "top1": 0.5}, tmp_path / "cls.json")
    run_evaluate(detector=detector_file, test_file=test_file, arch_file=tmp_path / "arch.json",
                 classifier_metrics=tmp_path / "cls.json", out=tmp_path / "final.json", info={"experiment": "x"},
                 primary_metric="AP", batch_size=4, mlflow={"experiment": "detect-vs-evaluate", "run_name": "evaluate"},
                 threads=0, device="cpu")
    final = json.loads((tmp_path / "final.json").read_text())
    ap = _coco_ap(test_file, out / "detections.json")  # pycocotools on the files as written
    assert ap == final["AP"]
    assert ap > 0


def test_every_image_is_drawn(tmp_path, detector_file, test_images):
    from detnas.stages.detect import run_detect

    mapping = run_detect(checkpoint=detector_file, images=[test_images], out=tmp_path / "out", score_threshold=0.1,
                         device="cpu")
    files = sorted(test_images.iterdir())
    drawn = sorted(p.name for p in (tmp_path / "out").glob("*.jpg"))
    assert drawn == [f"{f.stem}.jpg" for f in files] == [i["annotated"] for i in mapping["images"]]
    for f in files:
        with Image.open(tmp_path / "out" / f"{f.stem}.jpg") as im, Image.open(f) as src:
            assert im.format == "JPEG" and im.size == src.size
    # without an annotation file: ids 1..N in file order, class names from the checkpoint
    assert [i["id"] for i in mapping["images"]] == list(range(1, len(files) + 1))
    assert [c["name"] for c in mapping["categories"]] == CLASSES
    assert mapping["detect"]["drawn_detections"] > 0


def test_grayscale_and_unlisted_images(tmp_path, detector_file, test_images, test_file):
    from detnas.stages.detect import run_detect

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8), mode="L").save(tmp_path / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    first = sorted(test_images.iterdir())[0]
    mapping = run_detect(checkpoint=detector_file, images=[tmp_path / "gray.jpg", first, tmp_path / "gray.png"],
                         out=tmp_path / "out", classes_from=test_file, device="cpu")
    entries = mapping["images"]
    top = max(i["id"] for i in json.loads(test_file.read_text())["images"])
    assert [(e["width"], e["height"]) for e in entries] == [(80, 60), (64, 64), (70, 50)]
    assert entries[0]["id"] == top + 1 and entries[2]["id"] == top + 2  # not images of the file: new ids
    assert entries[1]["file_name"] == "test/000000.png" and entries[1]["id"] <= top
    assert [e["annotated"] for e in entries] == ["gray.jpg", "000000.jpg", "gray-2.jpg"]  # one stem, two files
    found = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["image_id"] for r in found} == {e["id"] for e in entries}  # the grayscale images have detections
    with Image.open(tmp_path / "out" / "gray.jpg") as im:
        assert im.mode == "RGB" and im.size == (80, 60)


def _one_line_error(code: int, err: str, path: Path) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err, err


def test_bad_checkpoints_and_images_are_one_line_errors(tmp_path, detector_file, test_images, capsys):
    truncated = tmp_path / "truncated.pt"
    data = detector_file.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a checkpoint" * 20)  # unpickling errors are several lines in torch
    classifier = tmp_path / "classifier.pt"
    save_checkpoint({"kind": "single_path", "state_dict": {}}, classifier)
    for bad in (truncated, garbage, classifier):
        _one_line_error(*_cli(["detect", "--checkpoint", str(bad), str(test_images), "--out", str(tmp_path / "o"),
                               "--device", "cpu"], capsys), bad)
        _one_line_error(*_cli(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "e"), "--images",
                               str(test_images)], capsys), bad)
    broken = tmp_path / "images" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    first = sorted(test_images.iterdir())[0]
    _one_line_error(*_cli(["detect", "--checkpoint", str(detector_file), str(first), str(broken.parent), "--out",
                           str(tmp_path / "o"), "--device", "cpu"], capsys), broken)
    assert not (tmp_path / "o").exists()  # stopped before writing anything
    missing = tmp_path / "nowhere"
    _one_line_error(*_cli(["detect", "--checkpoint", str(detector_file), str(missing), "--out", str(tmp_path / "o")],
                          capsys), missing)


def _export(tmp_path: Path, checkpoint: Path, images: Path, capsys, *extra: str) -> dict:
    out = tmp_path / "onnx"
    code, err = _cli(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--images", str(images),
                      *extra], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["backbone.onnx", "detector.onnx", "export.json"]
    return json.loads((out / "export.json").read_text())


def _ort(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})


@pytest.mark.parametrize("name", ["faster_rcnn_fpn", "retinanet"])
def test_onnx_computes_what_pytorch_does(tmp_path, detector_file, test_images, capsys, name):
    from detnas.data.images import read_rgb8
    from detnas.onnx_export import BackboneFeatures, FixedSizeDetector, letterbox

    checkpoint = detector_file if name == "faster_rcnn_fpn" else _save_detector(tmp_path / "r.pt", name="retinanet")
    record = _export(tmp_path, checkpoint, test_images, capsys, "--max-images", "4")
    parity = record["parity"]
    assert parity["passed"] and parity["images"] == 4 and parity["mismatches"] == 0
    assert parity["detections_compared"] >= 0.9 * 400  # 100 per image, a few may swap at the top-k cut
    assert parity["max_box_abs_diff"] <= 1e-3 * 64 and parity["max_score_diff"] <= 1e-4
    assert parity["feature_max_diff"] <= 1e-4 and parity["label_agreement"] >= 0.9  # cut swaps count here
    assert record["input"]["shape"] == [1, 3, 64, 64] and record["opset"] == 17
    assert record["exporter"] == "torchscript" and set(record["versions"]) == {"torch", "torchvision", "onnx",
                                                                               "onnxruntime"}
    levels = ["C2", "C3", "C4", "C5"] if name == "faster_rcnn_fpn" else ["C3", "C4", "C5"]
    assert [o["level"] for o in record["backbone_outputs"]] == levels

    # checked here too, not only by the export's own figures: one real image, a wider input (letterboxed)
    model, _ = detector_from_checkpoint(checkpoint, torch.device("cpu"))
    x, scale = letterbox(read_rgb8(sorted(test_images.iterdir())[3]), (64, 64), model.transform.image_mean)
    assert scale == 1.0
    with torch.no_grad():
        boxes, scores, labels = FixedSizeDetector(model)(x)
        features = BackboneFeatures(model)(x)
    o_boxes, o_scores, o_labels = _ort(tmp_path / "onnx" / "detector.onnx", x)
    assert len(scores) == len(o_scores) == 100
    np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-4)
    # each PyTorch detection has its twin in ONNX (same label, box and score within the tolerances),
    # but for a few where candidates score alike at the top-k cut
    twins = [((o_labels == label) & (np.abs(o_boxes - box).max(1) <= 1e-3 * 64) & (np.abs(o_scores - score) <= 1e-4)).any()
             for box, score, label in zip(boxes.numpy(), scores.numpy(), labels.numpy())]
    assert sum(twins) >= 95
    for mine, theirs in zip(features, _ort(tmp_path / "onnx" / "backbone.onnx", x)):
        np.testing.assert_allclose(theirs, mine.numpy(), atol=1e-4)


def test_images_without_detections_run_in_onnx(tmp_path, test_images, capsys):
    from detnas.data.images import read_rgb8

    # a score threshold between the images' best scores: about half of them have no detection
    plain = _save_detector(tmp_path / "plain.pt")
    model, _ = detector_from_checkpoint(plain, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        best = [float(model([read_rgb8(f).float() / 255])[0]["scores"].max()) for f in sorted(test_images.iterdir())[:4]]
    checkpoint = _save_detector(tmp_path / "some.pt", score_threshold=float(np.median(best)))
    record = _export(tmp_path, checkpoint, test_images, capsys, "--max-images", "4")
    counts = [r["onnx_detections"] for r in record["parity"]["per_image"]]
    assert record["parity"]["passed"] and 0 in counts and max(counts) > 0
    assert counts == [r["torch_detections"] for r in record["parity"]["per_image"]]


def test_failed_parity_writes_nothing(tmp_path, detector_file, test_images, monkeypatch):
    import detnas.onnx_export as onnx_export
    from detnas.stages.export import run_export

    monkeypatch.setattr(onnx_export, "FEATURE_TOLERANCE", -1.0)  # no difference is small enough
    out = tmp_path / "onnx"
    with pytest.raises(onnx_export.ParityError, match=r"max feature diff .* nothing written"):
        run_export(checkpoint=detector_file, out=out, images=[test_images], max_images=2)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_export_input_size_and_test_split(tmp_path, detector_file, test_file, capsys):
    # a landscape input: the 64 px test images letterboxed (scale 1, padded right), parity on the test split
    out = tmp_path / "onnx"
    code, err = _cli(["export", "--checkpoint", str(detector_file), "--out", str(out), "--test", str(test_file),
                      "--input-size", "64x96", "--max-images", "3"], capsys)
    assert code == 0, err
    record = json.loads((out / "export.json").read_text())
    assert record["input_size"] == [64, 96] and record["parity"]["images"] == 3 and record["parity"]["passed"]
    assert "of " + str(test_file) in record["parity"]["per_image"][0]["image"]
