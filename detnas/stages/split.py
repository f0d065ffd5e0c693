"""The ``split`` stages: validate the data once, and cut the search-validation sets out of it.

Detection: writes ``train.json`` (the whole training set, validated, boxes only), its two parts
``supernet_train.json`` and ``search_val.json``, and ``test.json`` (validated, never split), all in
the internal COCO-style format (see ``detnas.data.coco``). VOC XML is converted here, once.
Classification: writes ``split.json``: the train/val roots, the classes, and the held-out images
(ClsNAS's search validation). JSON only; images are never copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.classification import scan_image_folder, split_classification
from ..data.coco import DataError, class_key, image_files, prepare_detection, split_detection, validate_detection
from ..data.voc import voc_to_coco
from ..io import portable_path, write_json_atomic
from ..tracking import StageRun

__all__ = ["run_split_classification", "run_split_detection"]


def _load_part(sources: dict[str, Any], part: str, *, classes: list[str] | str | None, check_images: bool,
               bad_boxes: str, threads: int) -> dict:
    """One part (train or test) of a detection dataset, converted (VOC) and validated."""
    if sources["type"] == "voc":
        root = Path(sources["root"])
        sets = [(str(y), s) for y, s in sources[part]]
        return validate_detection(voc_to_coco(root, sets, classes=classes), source=f"{root} {sets}",
                                  check_images=check_images, bad_boxes=bad_boxes, threads=threads)
    entry = sources[part]
    return prepare_detection(Path(entry["annotations"]), [Path(p) for p in entry["images"]],
                             check_images=check_images, bad_boxes=bad_boxes, threads=threads)


def _describe(sources: dict[str, Any], part: str) -> str:
    if sources["type"] == "voc":
        return f"{sources['root']} {sources[part]}"
    return str(sources[part]["annotations"])


def _check_no_leak(train: dict, test: dict, entry: str, sources: dict[str, Any]) -> None:
    """DataError when a test image is a training image: the same file (``file_key``: any spelling of
    its path, a link), not the same name (two exports may both number their files from 0)."""
    train_files = image_files(train["images"], train["detnas"]["image_roots"])
    test_files = image_files(test["images"], test["detnas"]["image_roots"])
    shared = [key for key in test_files if key in train_files]
    if shared:
        shown = "; ".join(f"test {test_files[k][0]['file_name']!r} is train {train_files[k][0]['file_name']!r}"
                          for k in shared[:3])
        raise DataError(
            f"{entry}: {len(shared)} test images are also training images (the same files; train: "
            f"{_describe(sources, 'train')}, test: {_describe(sources, 'test')}), e.g. {shown}; "
            f"to hold a test set out of one annotation file, set {entry}.test to {{holdout: N, seed: S}}"
        )


def _check_categories_match(train: dict, test: dict, entry: str, sources: dict[str, Any]) -> None:
    """DataError when the test file's categories are not the training file's (an id naming another
    class would score a detector's boxes against the wrong class; names compared as ``class_key``)."""
    names = {d: {c["id"]: class_key(c.get("name", str(c["id"]))) for c in part["categories"]}
             for d, part in (("train", train), ("test", test))}
    if names["train"] != names["test"]:
        differ = sorted(set(names["train"].items()) ^ set(names["test"].items()), key=str)[:4]
        raise DataError(f"{entry}: the test file's categories ({_describe(sources, 'test')}) are not the training "
                        f"file's ({_describe(sources, 'train')}): (id, name) differing: {differ}")


def _count_or_fraction(size: float) -> int | float:
    # the config's number: 5000 (or 5000.0) is a count, 0.25 a fraction
    return int(size) if float(size) >= 1 else float(size)


def _summary(d: dict) -> dict[str, int]:
    objects = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
    with_boxes = {a["image_id"] for a in objects}
    return {"images": len(d["images"]), "annotations": len(d["annotations"]),
            "categories": len({a["category_id"] for a in objects}),
            "images_without_boxes": sum(img["id"] not in with_boxes for img in d["images"])}


def _hold_out_test(train: dict, holdout: dict[str, Any]) -> tuple[dict, dict]:
    """(rest, test): a seeded test set drawn from the training annotations, before the search split."""
    rest, test = split_detection(train, size=_count_or_fraction(holdout["holdout"]), seed=holdout["seed"],
                                 names=("train", "test"))
    return rest, test


def run_split_detection(settings: dict[str, Any], *, out_dir: Path, mlflow: dict[str, Any], threads: int = 1) -> None:
    """Validate train/test of a detection dataset and split train; see the module docstring.

    ``settings``: ``entry`` (its config key, for messages), ``sources`` (type, train, test, root;
    ``test`` may be ``{"holdout": N, "seed": S}``: a test set drawn from the training annotations),
    ``split``, ``check_images``, ``bad_boxes`` (drop | error), ``classes`` (VOC: names, or "auto":
    those of the training XMLs, sorted). Every image is decoded once, on ``threads`` threads.
    Nothing is written unless both parts pass.
    """
    sources, split = settings["sources"], settings["split"]
    entry = settings.get("entry", "detection_data")
    opts = {"check_images": settings.get("check_images", True), "bad_boxes": settings.get("bad_boxes", "drop"),
            "threads": threads}
    with StageRun(**mlflow, params=settings) as run:
        train = _load_part(sources, "train", classes=settings.get("classes"), **opts)
        dropped = train["detnas"]["dropped_boxes"]
        if sources["type"] == "voc":
            print(f"split: {len(train['categories'])} classes: {', '.join(c['name'] for c in train['categories'])}",
                  flush=True)
        if "holdout" in sources["test"]:
            train, test = _hold_out_test(train, sources["test"])
        else:
            # the test set is converted with the training classes: a class only the test set has fails
            test = _load_part(sources, "test", classes=[c["name"] for c in train["categories"]], **opts)
            dropped += test["detnas"]["dropped_boxes"]
            _check_categories_match(train, test, entry, sources)
            _check_no_leak(train, test, entry, sources)
        supernet_train, search_val = split_detection(train, size=_count_or_fraction(split["size"]), seed=split["seed"])
        parts = {"train": train, "supernet_train": supernet_train, "search_val": search_val, "test": test}
        metrics = {name: _summary(d) for name, d in parts.items()}
        val = metrics["search_val"]
        if val["images"] == val["images_without_boxes"]:  # the search's fitness would be undefined
            raise DataError(f"{entry}: the search-validation split ({val['images']} images) holds no box to score "
                            f"candidates on; raise {entry}.split.size")
        metrics["classes"] = [c["name"] for c in train["categories"]]
        metrics["dropped_boxes"] = dropped
        for name, d in parts.items():  # image roots under out_dir recorded relative to it (portable_path)
            roots = [portable_path(r, out_dir) for r in d["detnas"]["image_roots"]]
            write_json_atomic({**d, "detnas": {**d["detnas"], "image_roots": roots}}, Path(out_dir) / f"{name}.json",
                              indent=None)
        write_json_atomic(metrics, Path(out_dir) / "split_metrics.json")
        for name in parts:
            m = metrics[name]
            print(f"split: {name}: {m['images']} images ({m['images_without_boxes']} without boxes), "
                  f"{m['annotations']} annotations", flush=True)
        print(f"split: {dropped} bad boxes dropped (bad_boxes: {opts['bad_boxes']})", flush=True)
        run.log_metrics({"dropped_boxes": dropped, **{f"{n}_{k}": v for n in parts for k, v in metrics[n].items()}}, 0)
        run.log_artifacts(Path(out_dir) / "split_metrics.json")


def run_split_classification(settings: dict[str, Any], *, out: Path, mlflow: dict[str, Any]) -> None:
    """Hold a seeded part of the classification training images out (ClsNAS's fitness)."""
    holdout = settings["holdout"]
    with StageRun(**mlflow, params=settings) as run:
        val_classes, val_samples = scan_image_folder(Path(settings["val"]))
        split = split_classification(Path(settings["train"]), holdout=_count_or_fraction(holdout["size"]),
                                     seed=holdout["seed"], val=(Path(settings["val"]), val_samples))
        if val_classes != split["classes"] and [class_key(c) for c in val_classes] == [class_key(c) for c in split["classes"]]:
            raise DataError(f"{settings['val']}: class folder names differ from those in {settings['train']} only in "
                            f"their Unicode form or surrounding spaces; rename them to match")
        if val_classes != split["classes"]:
            raise DataError(
                f"{settings['val']}: validation classes differ from the training classes in {settings['train']} "
                f"(e.g. {sorted(set(val_classes) ^ set(split['classes']))[:3]})"
            )
        split["val_root"] = str(Path(settings["val"]).absolute())
        split.update({k: portable_path(split[k], Path(out).parent) for k in ("root", "val_root")})
        split["val_images"] = len(val_samples)
        write_json_atomic(split, out)
        print(f"split: {len(split['classes'])} classes, {len(split['holdout'])} held-out training images, "
              f"{len(val_samples)} validation images", flush=True)
        run.log_metrics({"holdout_images": len(split["holdout"]), "val_images": len(val_samples)}, 0)
