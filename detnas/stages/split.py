"""The ``split`` stages: validate the data once, and cut the search-validation sets out of it.

Detection: writes ``train.json`` (the whole training set, validated, boxes only), its two parts
``supernet_train.json`` and ``search_val.json``, and ``test.json`` (validated, never split), all in
the internal COCO-style format (see ``detnas.data.coco``). VOC XML is converted here, once.
Classification: writes ``split.json``: the train/val roots, the classes, and the held-out images
(ClsNAS's search validation). JSON only; images are never copied.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..data.classification import scan_image_folder, split_classification
from ..data.coco import DataError, prepare_detection, split_detection, validate_detection
from ..data.voc import voc_to_coco
from ..io import write_json_atomic
from ..tracking import StageRun

__all__ = ["run_split_classification", "run_split_detection"]


def _load_part(sources: dict[str, Any], part: str, check_images: bool, threads: int) -> dict:
    if sources["type"] == "voc":
        root = Path(sources["root"])
        sets = [(str(y), s) for y, s in sources[part]]
        return validate_detection(voc_to_coco(root, sets), source=f"{root} {sets}", check_images=check_images,
                                  threads=threads)
    entry = sources[part]
    ann = Path(entry["annotations"])
    # COCO 2017 train has a couple of zero-height boxes; drop those (with a note) rather than refuse
    return prepare_detection(ann, [Path(p) for p in entry["images"]], check_images=check_images,
                             drop_degenerate=True, threads=threads)


def _count_or_fraction(size: float) -> int | float:
    # the config's number: 5000 (or 5000.0) is a count, 0.25 a fraction
    return int(size) if float(size) >= 1 else float(size)


def _summary(d: dict) -> dict[str, int]:
    per_cat = Counter(a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0))
    return {"images": len(d["images"]), "annotations": len(d["annotations"]), "categories": len(per_cat)}


def run_split_detection(settings: dict[str, Any], *, out_dir: Path, mlflow: dict[str, Any], threads: int = 1) -> None:
    """Validate train/test of a detection dataset and split train; see the module docstring.

    Every image is decoded once, on ``threads`` threads. Nothing is written unless both parts pass.
    """
    sources, split = settings["sources"], settings["split"]
    check = settings.get("check_images", True)
    with StageRun(**mlflow, params=settings) as run:
        train = _load_part(sources, "train", check, threads)
        test = _load_part(sources, "test", check, threads)
        train_ids = {img["file_name"] for img in train["images"]}
        overlap = train_ids & {img["file_name"] for img in test["images"]}
        if overlap:
            raise DataError(f"{len(overlap)} test images are also training images, e.g. {sorted(overlap)[:3]}")
        supernet_train, search_val = split_detection(train, size=_count_or_fraction(split["size"]), seed=split["seed"])
        parts = {"train": train, "supernet_train": supernet_train, "search_val": search_val, "test": test}
        metrics = {name: _summary(d) for name, d in parts.items()}
        for name, d in parts.items():
            write_json_atomic(d, Path(out_dir) / f"{name}.json", indent=None)
        write_json_atomic(metrics, Path(out_dir) / "split_metrics.json")
        for name, m in metrics.items():
            print(f"split: {name}: {m['images']} images, {m['annotations']} annotations", flush=True)
        run.log_metrics({f"{n}_{k}": v for n, m in metrics.items() for k, v in m.items()}, 0)
        run.log_artifacts(Path(out_dir) / "split_metrics.json")


def run_split_classification(settings: dict[str, Any], *, out: Path, mlflow: dict[str, Any]) -> None:
    """Hold a seeded part of the classification training images out (ClsNAS's fitness)."""
    holdout = settings["holdout"]
    with StageRun(**mlflow, params=settings) as run:
        split = split_classification(Path(settings["train"]), holdout=_count_or_fraction(holdout["size"]), seed=holdout["seed"])
        val_classes, val_samples = scan_image_folder(Path(settings["val"]))
        if val_classes != split["classes"]:
            raise DataError(
                f"{settings['val']}: validation classes differ from the training classes in {settings['train']} "
                f"(e.g. {sorted(set(val_classes) ^ set(split['classes']))[:3]})"
            )
        split["val_root"] = str(Path(settings["val"]).absolute())
        split["val_images"] = len(val_samples)
        write_json_atomic(split, out)
        print(f"split: {len(split['classes'])} classes, {len(split['holdout'])} held-out training images, "
              f"{len(val_samples)} validation images", flush=True)
        run.log_metrics({"holdout_images": len(split["holdout"]), "val_images": len(val_samples)}, 0)
