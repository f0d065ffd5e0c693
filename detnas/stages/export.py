"""The ``export`` command: a retrained detector as ONNX (``detnas.onnx_export``) -> ``detector.onnx``,
``backbone.onnx`` and ``export.json``, written only once ONNX Runtime has been shown to compute what
PyTorch does on real images."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.image_files import ImageFiles, list_image_files
from ..detectors import DetectorSettings, detector_from_checkpoint
from ..distributed import set_threads
from ..evaluate import DetectionImages, ImageSource
from ..io import write_json_atomic
from ..onnx_export import (BackboneFeatures, FixedSizeDetector, ParityError, export_onnx, letterbox, parity)

__all__ = ["DEFAULT_OPSET", "OUTPUTS", "run_export"]

DEFAULT_OPSET = 17
OUTPUTS = ("detector.onnx", "backbone.onnx", "export.json")  # export.json last: it says the set is whole


def _require_onnx() -> tuple[str, str]:
    """The onnx and onnxruntime versions; ValueError saying how to install them when missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ValueError(f"export needs onnx and onnxruntime ({exc}): pip install 'detnas[export]'") from None
    return onnx.__version__, onnxruntime.__version__


def _parity_source(images: Sequence[Path], test_file: Path | None, max_images: int) -> tuple[ImageSource, list[str]]:
    """The images parity runs on (the first ``max_images``) and their names: files and folders,
    else the images of an annotation file (e.g. the test split)."""
    if images:
        files = list_image_files(images)[:max_images]
        return ImageFiles(files, list(range(1, len(files) + 1)), []), [str(f) for f in files]
    assert test_file is not None
    data = DetectionImages.load(test_file, limit=max_images)  # that many drawn with seed 0, by id
    return data, [f"{data.coco.imgs[i]['file_name']} (id {i}) of {test_file}" for i in data.image_ids]


def _figures(p: dict[str, Any]) -> str:
    return (f"max box diff {p['max_box_abs_diff']:.3g} px (tolerance {p['box_tolerance_px']:.3g}), max score diff "
            f"{p['max_score_diff']:.3g} (tolerance {p['score_tolerance']:g}), label agreement "
            f"{p['label_agreement']:.3f}, equal counts {p['counts_equal']}, max feature diff "
            f"{p['feature_max_diff']:.3g} (tolerance {p['feature_tolerance']:g}), {p['detections_compared']} "
            f"detections matched on {p['images']} images, {p['cut_swaps']} swapped at a cut, "
            f"{p['mismatches']} disagreeing")


def run_export(
    *,
    checkpoint: Path,
    out: Path,
    input_size: tuple[int, int] | None = None,
    images: Sequence[Path] = (),
    test_file: Path | None = None,
    max_images: int = 8,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    threads: int = 0,
) -> dict[str, Any]:
    """Export the detector of ``checkpoint`` (a retrained one: one architecture) to ``out``:
    ``detector.onnx`` and ``backbone.onnx`` at input (1, 3, H, W), ``input_size`` = (H, W) (default:
    the detector's (min_size, max_size), see ``detnas.onnx_export``), and ``export.json``: the input
    and outputs, opset, exporter, versions and the parity figures.

    Parity runs on the first ``max_images`` of ``images`` (files and folders) or, without them, of
    ``test_file``'s images, each letterboxed to the input size. Everything is made in a temporary
    folder beside ``out`` and moved in only when parity passes; a ``ParityError`` (a ValueError)
    gives the figures and leaves ``out`` as it was. Returns export.json's content.
    """
    onnx_version, ort_version = _require_onnx()
    if not images and test_file is None:
        raise ValueError("parity needs real images: give --images (files or folders) or --test (an annotation file)")
    if max_images < 1:
        raise ValueError(f"max images must be >= 1, got {max_images}")
    set_threads(threads, 1)
    model, meta = detector_from_checkpoint(checkpoint, torch.device("cpu"))
    if not meta["arch"]:
        raise ValueError(f"{checkpoint}: a supernet checkpoint; export takes a retrained detector (one architecture)")
    settings = DetectorSettings.from_dict(meta["detector"])
    size = tuple(input_size) if input_size is not None else (settings.min_size, settings.max_size)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"input size must be (height, width), each >= 32 px, got {list(size)}")
    height, width = int(size[0]), int(size[1])
    source, names = _parity_source(images, test_file, max_images)
    mean = model.transform.image_mean
    inputs = []
    for i, name in enumerate(names):
        x, _ = letterbox(source.decoded(i, i + 1)[0], (height, width), mean)
        inputs.append((name, x))
    detector, backbone = FixedSizeDetector(model), BackboneFeatures(model)
    with torch.no_grad():
        shapes = [list(f.shape) for f in backbone(inputs[0][1])]

    t = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        export_onnx(detector, inputs[0][1], work / "detector.onnx", output_names=["boxes", "scores", "labels"],
                    opset=opset, exporter=exporter)
        export_onnx(backbone, inputs[0][1], work / "backbone.onnx", output_names=backbone.names, opset=opset,
                    exporter=exporter)
        export_seconds = time.perf_counter() - t
        figures = parity(detector, backbone, work / "detector.onnx", work / "backbone.onnx", inputs, threads=threads)
        if not figures["passed"]:
            bad = [r["image"] for r in figures["per_image"] if not r["passed"]]
            raise ParityError(f"{checkpoint}: ONNX Runtime differs from PyTorch on {len(bad)} of {len(inputs)} images "
                              f"(first: {bad[0]}): {_figures(figures)}; nothing written to {out}")
        record = {
            "checkpoint": str(checkpoint),
            "arch": meta["arch"],
            "space": meta["space"],
            "detector": settings.name,
            "input": {"name": "images", "shape": [1, 3, height, width], "dtype": "float32",
                      "layout": "RGB in [0, 1], letterboxed: resized by min(H/h, W/w) (bilinear), placed top-left, "
                                "padded with image_mean",
                      "image_mean": list(mean), "image_std": list(model.transform.image_std)},
            "input_size": [height, width],
            "detector_outputs": {
                "boxes": "float32 (N, 4) x1, y1, x2, y2 in input pixels (divide by the letterbox scale for the image's)",
                "scores": "float32 (N,)", "labels": "int64 (N,) 1..K: category_ids[label - 1]",
            },
            "detections_per_image": settings.detections_per_image,
            "score_threshold": settings.score_threshold,
            "category_ids": list(meta["category_ids"]),
            "category_names": list(meta.get("category_names") or []),
            "backbone_outputs": [{"name": n, "level": lv, "shape": s}
                                 for n, lv, s in zip(backbone.names, backbone.levels, shapes)],
            "precision": "float32 on the CPU (an amp setting of the fine-tuning is not applied: the graph is float32)",
            "opset": opset,
            "exporter": exporter,
            "exporter_call": f"torch.onnx.export(..., dynamo={exporter == 'dynamo'})",
            "versions": {"torch": torch.__version__, "torchvision": _torchvision_version(), "onnx": onnx_version,
                         "onnxruntime": ort_version},
            "onnxruntime_provider": "CPUExecutionProvider",
            "export_seconds": export_seconds,
            "parity": figures,
        }
        write_json_atomic(record, work / "export.json")
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"exported {checkpoint} ({settings.name}, {meta['arch']}) at {height}x{width} to {out}/ "
          f"(opset {opset}, {exporter} exporter): parity on {len(inputs)} images: {_figures(figures)}", flush=True)
    return record


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__
