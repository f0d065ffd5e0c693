"""COCO-style detection data: validation, the search split, and a torch Dataset over it.

Every detection annotation file the pipeline uses is a COCO-style JSON dict with boxes only (no
``segmentation``) plus one extra top-level key::

    "detnas": {"image_roots": ["/abs/dir", ...], "source": "<original file or description>"}

An image's ``file_name`` is resolved against the image roots in order; the first root where the file
exists wins (COCO 2014's trainval35k spans ``train2014/`` and ``val2014/``). Category ids stay as in
the source (COCO: 1..90 with gaps); models see contiguous labels 1..K, the position of the category id
in the sorted id list plus one (0 is background).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import sys
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import read_file
from torchvision.transforms import v2

from ..io import recorded_path
from .errors import DataError
from .images import read_rgb8, stored_size
from ..io import write_json_atomic  # re-exported: callers write prepared/split files with it

__all__ = [
    "DataError",
    "DetectionDataset",
    "collate_detection",
    "decode_rgb",
    "file_key",
    "image_files",
    "class_key",
    "load_coco_json",
    "part_count",
    "prepare_detection",
    "resolve_image",
    "split_detection",
    "validate_detection",
    "write_json_atomic",
]

# Annotation tools round box corners to the pixel grid; COCO has boxes that end a fraction of a pixel
# past the border. Anything further out is a real annotation error.
BOX_TOLERANCE_PX = 1.0
PROGRESS_EVERY = 10_000
MAX_LISTED = 20  # bad images named in a split error; the rest are counted




def load_coco_json(path: Path) -> dict:
    """Read a COCO-style JSON file; DataError when missing, not JSON, or lacking the three lists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing list '{key}' (keys present: {sorted(data)})")
    return data


def resolve_image(file_name: str, roots: Sequence[Path | str]) -> Path | None:
    """The first ``root / file_name`` that exists, or None."""
    for root in roots:
        p = Path(root) / file_name
        if p.is_file():
            return p
    return None


def decode_rgb(path: Path, width: int, height: int) -> torch.Tensor:
    """Decode an image fully, as training does: uint8 (3, H, W) RGB, EXIF-oriented, 8-bit
    (``detnas.data.images``).

    DataError naming ``path`` when it does not decode (zero bytes, truncated, not an image, an
    animation) or its oriented size differs from the JSON's ``width`` x ``height``.
    """
    image = read_rgb8(path)
    h, w = image.shape[-2:]
    if (w, h) != (width, height):
        stored = stored_size(path)
        turned = f" as its EXIF orientation turns it (stored {stored[0]}x{stored[1]})" if stored and stored != (w, h) else ""
        raise DataError(f"image {path} is {w}x{h} (WxH){turned} but the JSON says {width}x{height}")
    return image


def _image_problem(img: dict, roots: Sequence[Path]) -> str | None:
    """Why image entry ``img`` cannot be trained on, or None when it decodes at the JSON's size."""
    path = resolve_image(img["file_name"], roots)
    if path is None:
        return (f"image '{img['file_name']}' (id {img['id']}) not found under any root "
                f"(tried {[str(r) for r in roots]})")
    try:
        decode_rgb(path, img["width"], img["height"])
    except DataError as e:
        return str(e)
    return None


def file_key(path: Path | str) -> tuple[int, int]:
    """A file's identity: (device, inode) of what ``path`` leads to (symbolic links followed), so two
    spellings of a path, a link and a hard link are one file and two folders' ``img_000.jpg`` two."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def image_files(images: Sequence[dict], roots: Sequence[Path | str]) -> dict[tuple[int, int], list[dict]]:
    """The image entries by the file each resolves to (``file_key``); entries without a file are left out."""
    by_file: dict[tuple[int, int], list[dict]] = {}
    for img in images:
        path = resolve_image(img["file_name"], roots)
        if path is not None:
            by_file.setdefault(file_key(path), []).append(img)
    return by_file


def _outside(file_name: str) -> bool:
    """Whether a file name leads out of the folder it is joined to (absolute, or up through '..')."""
    norm = os.path.normpath(file_name)
    return os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep)


def _check_files(images: Sequence[dict], roots: Sequence[Path], *, source: str) -> None:
    """One file, one image entry: DataError naming the entries that are one file under two ids
    (such an image could be drawn into two splits). A file name leading outside the image roots is
    used but named in a note."""
    repeated = [group for group in image_files(images, roots).values() if len(group) > 1]
    if repeated:
        shown = "; ".join(" and ".join(f"id {g['id']} ({g['file_name']!r})" for g in group) + " are "
                          + os.path.realpath(resolve_image(group[0]["file_name"], roots))
                          for group in repeated[:3])
        raise DataError(f"{source}: {len(repeated)} image files are listed under more than one image id: {shown}; "
                        f"list each file once (its boxes under one id)")
    outside = [img["file_name"] for img in images if _outside(img["file_name"])]
    if outside:
        print(f"{source}: note: {len(outside)} image file names lead outside the image roots "
              f"{[str(r) for r in roots]}, e.g. {outside[:3]}; they are used as given", file=sys.stderr)


def _check_images(images: Sequence[dict], roots: Sequence[Path], *, source: str, threads: int) -> None:
    """Decode every image once on ``threads`` threads; one DataError listing every bad file.

    Threads suffice: torchvision's file read and decode run without the GIL.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    problems: list[str] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for n, problem in enumerate(pool.map(lambda img: _image_problem(img, roots), images), start=1):
            if problem is not None:
                problems.append(problem)
            if n % PROGRESS_EVERY == 0:
                rate = n / (time.perf_counter() - start)
                print(f"{source}: decoded {n}/{len(images)} images ({rate:.0f} images/s, {len(problems)} bad)",
                      file=sys.stderr, flush=True)
    if len(problems) == 1:
        raise DataError(f"{source}: {problems[0]}")
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(
            f"{source}: {len(problems)} of {len(images)} images cannot be used:\n  "
            + "\n  ".join(problems[:MAX_LISTED]) + more
        )


def validate_detection(
    dataset: dict, *, source: str, check_images: bool = True, bad_boxes: str = "error", threads: int = 1
) -> dict:
    """Validate an internal-format dict and return it (a new dict; the input is not modified).

    Checks, each failing with a DataError that starts with ``source``: non-empty images and
    annotations; unique image ids; every annotation's image_id is an image and its category_id is
    declared; every box has positive width and height and lies inside its image (±1 px), else
    ``bad_boxes`` decides: "error" fails naming the image file and the box, "drop" drops it with one
    note per image file on stderr (the count is ``detnas.dropped_boxes`` of the result); with
    ``check_images``, every image exists under some root, decodes fully with the decoder training
    uses (``decode_rgb``, on ``threads`` threads) and its size matches width/height; every bad image
    is listed in one error. (COCO train2017 has two boxes of height 0: annotation ids 918, 2206849.)
    """
    if bad_boxes not in ("drop", "error"):
        raise ValueError(f"bad_boxes must be 'drop' or 'error', got {bad_boxes!r}")
    roots = [Path(r) for r in dataset.get("detnas", {}).get("image_roots", [])]
    if not roots:
        raise DataError(f"{source}: no image roots given ('detnas.image_roots' is empty)")
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{source}: image root {root} is not a directory")
    images, anns = dataset["images"], dataset["annotations"]
    if not images:
        raise DataError(f"{source}: empty dataset (no images)")
    if not anns:
        raise DataError(f"{source}: empty dataset (no annotations)")

    sizes: dict[int, tuple[float, float]] = {}
    for img in images:
        if not isinstance(img, dict):
            raise DataError(f"{source}: an image entry is {type(img).__name__} {img!r:.100}, not an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise DataError(f"{source}: image entry {img!r:.200} lacks '{key}'")
        where = f"{source}: image entry {img['file_name']!r:.200} (id {img['id']!r:.40})"
        _need_int(img["id"], f"{where}: 'id'")
        if not isinstance(img["file_name"], str) or not img["file_name"].strip():
            raise DataError(f"{where}: 'file_name' must be a non-empty string, got {_shown(img['file_name'])}")
        for key in ("width", "height"):
            _need_int(img[key], f"{where}: '{key}'", positive=True)
        if img["id"] in sizes:
            raise DataError(f"{source}: duplicate image id {img['id']}")
        sizes[img["id"]] = (img["width"], img["height"])
    cat_ids = _check_categories(dataset["categories"], source)

    files = {img["id"]: _describe_image(img) for img in images}
    kept: list[dict] = []
    dropped: dict[int, list[str]] = {}  # image id -> "box: reason" of each dropped box
    for ann in anns:
        if not isinstance(ann, dict):
            raise DataError(f"{source}: an annotation is {type(ann).__name__} {ann!r:.100}, not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise DataError(f"{source}: annotation {ann.get('id', '?')} lacks '{key}'")
        aid, iid = ann["id"], ann["image_id"]
        _need_int(aid, f"{source}: annotation {aid!r:.40}: 'id'")
        _need_int(iid, f"{source}: annotation {aid}: 'image_id'")
        if iid not in sizes:
            raise DataError(f"{source}: annotation {aid} refers to image_id {iid}, which is not an image")
        where = f"{source}: {files[iid]} (id {iid}): annotation {aid}"
        _need_int(ann["category_id"], f"{where}: 'category_id'")
        if ann["category_id"] not in cat_ids:
            raise DataError(
                f"{source}: annotation {aid} has category_id {ann['category_id']}, not declared in "
                f"'categories' (declared: {sorted(cat_ids)})"
            )
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r:.100}")
        for i, v in enumerate(bbox):
            _need_number(v, f"{where}: bbox[{i}] ({'xywh'[i]})")
        if "area" in ann:
            _need_number(ann["area"], f"{where}: 'area'")
        crowd = ann.get("iscrowd", 0)
        if not isinstance(crowd, (bool, int, float)) or crowd not in (0, 1):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {_shown(crowd)}")
        reason = _box_problem(bbox, *sizes[iid])
        if reason is None:
            kept.append(ann)
        elif bad_boxes == "drop":
            dropped.setdefault(iid, []).append(f"{bbox} {reason}")
        else:
            raise DataError(f"{source}: {files[iid]}: annotation {aid} box {bbox} (xywh) {reason} "
                            f"(bad_boxes: drop would drop it with a note)")
    for iid, notes in dropped.items():  # one note per file
        print(f"{source}: {files[iid]}: dropped {len(notes)} bad box(es): {'; '.join(notes)}", file=sys.stderr)
    n_dropped = sum(len(v) for v in dropped.values())
    if n_dropped:
        print(f"{source}: dropped {n_dropped} bad boxes in {len(dropped)} images (bad_boxes: drop)", file=sys.stderr)
    if not kept:
        raise DataError(f"{source}: empty dataset (no annotations left)")

    _check_files(images, roots, source=source)
    if check_images:
        _check_images(images, roots, source=source, threads=threads)
    return {**dataset, "annotations": kept, "detnas": {**dataset["detnas"], "dropped_boxes": n_dropped}}


def _shown(value: Any) -> str:
    """A value as a message quotes it: its repr (cut) and JSON type."""
    kind = {str: "a string", bool: "a boolean", type(None): "null", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)
    return f"{value!r:.60} ({kind})"


def _need_number(value: Any, what: str) -> None:
    """DataError unless ``value`` is a finite JSON number (not a string, a boolean, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{what} must be a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise DataError(f"{what} is {value!r}, not a finite number")


def _need_int(value: Any, what: str, *, positive: bool = False) -> None:
    """DataError unless ``value`` is an integer (an integral float such as 640.0 passes), > 0 if
    ``positive``."""
    _need_number(value, what)
    if value != int(value):
        raise DataError(f"{what} must be a whole number, got {value!r}")
    if positive and value <= 0:
        raise DataError(f"{what} must be positive, got {value!r}")


def _check_categories(categories: Any, source: str) -> set[int]:
    """The declared category ids; DataError for a malformed entry, a repeated id or a repeated name
    (names compared after Unicode NFC normalisation and stripping, as class names are matched)."""
    if not isinstance(categories, list):
        raise DataError(f"{source}: 'categories' must be a list, got {_shown(categories)}")
    ids: set[int] = set()
    names: dict[str, Any] = {}
    for c in categories:
        if not isinstance(c, dict) or "id" not in c:
            raise DataError(f"{source}: category entry {c!r:.100} lacks 'id'")
        _need_int(c["id"], f"{source}: category {c.get('name', '?')!r:.60}: 'id'")
        if c["id"] in ids:
            raise DataError(f"{source}: duplicate category id {c['id']}")
        ids.add(c["id"])
        if "name" in c:
            if not isinstance(c["name"], str):
                raise DataError(f"{source}: category {c['id']}: 'name' must be a string, got {_shown(c['name'])}")
            key = class_key(c["name"])
            if key in names:
                raise DataError(f"{source}: categories {names[key]} and {c['id']} have the same name {c['name']!r} "
                                f"(compared after Unicode normalisation)")
            names[key] = c["id"]
    return ids


def class_key(name: str) -> str:
    """A class name as names are compared: Unicode NFC, surrounding white space stripped (one label
    typed on two systems can differ in its bytes: composed and decomposed accents)."""
    return unicodedata.normalize("NFC", name).strip()


def _describe_image(img: dict) -> str:
    """An image by its file (and its VOC XML, when it came from one)."""
    xml = img.get("annotation_file")
    return f"image {img['file_name']}" + (f" ({xml})" if xml else "")


def _box_problem(bbox: list[float], width: float, height: float) -> str | None:
    """Why a box [x, y, w, h] cannot be trained on in a ``width`` x ``height`` image, or None."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "has zero or negative size"
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"lies outside the {width}x{height} image (by more than {tol:g} px)"
    return None


def prepare_detection(
    ann_file: Path,
    image_roots: list[Path],
    *,
    check_images: bool = True,
    bad_boxes: str = "error",
    threads: int = 1,
) -> dict:
    """Load a COCO-style file and return it validated, in the internal format.

    Segmentations are dropped, the ``detnas`` key is added (roots made absolute). The input file is
    only read. See ``validate_detection`` for the checks, ``bad_boxes`` and ``threads``.
    """
    ann_file = Path(ann_file)
    data = load_coco_json(ann_file)
    anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
    detnas = {"image_roots": [str(Path(r).absolute()) for r in image_roots], "source": str(ann_file.absolute())}
    out = {**data, "annotations": anns, "detnas": detnas}
    return validate_detection(
        out, source=str(ann_file), check_images=check_images, bad_boxes=bad_boxes, threads=threads
    )


def part_count(size: int | float, n: int, what: str) -> int:
    """How many of ``n`` items a split takes: an int is a count, a float in (0, 1) a fraction.

    ValueError naming ``what`` unless both parts are non-empty.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"{what} fraction must be in (0, 1), got {size}")
        k = int(round(size * n))
    else:
        k = size
    if not 0 < k < n:
        raise ValueError(f"{what} must leave both parts non-empty: got {size!r} -> {k} of {n} images")
    return k


def split_detection(dataset: dict, *, size: int | float, seed: int,
                    names: tuple[str, str] = ("supernet_train", "search_val")) -> tuple[dict, dict]:
    """Cut a seeded random search-validation subset of images out of ``dataset``.

    ``size``: an int is a number of images (the paper: 5000); a float in (0, 1) a fraction.
    Returns ``(supernet_train, search_val)``, disjoint, together all images; annotations follow
    their images, categories and other top-level keys are carried along. ``names`` label the two
    parts in ``detnas.split`` (a test set held out of the training file: ``("train", "test")``).
    """
    images = dataset["images"]
    n = len(images)
    k = part_count(size, n, "split size")

    # Sort ids first so the split depends on the seed and the image set, not on file order.
    ids = np.array(sorted(img["id"] for img in images))
    rng = np.random.default_rng(seed)
    val_ids = set(ids[rng.choice(n, size=k, replace=False)].tolist())

    def part(name: str, keep: bool) -> dict:
        imgs = [img for img in images if (img["id"] in val_ids) == keep]
        img_ids = {img["id"] for img in imgs}
        anns = [a for a in dataset["annotations"] if a["image_id"] in img_ids]
        detnas = {**copy.deepcopy(dataset.get("detnas", {})), "split": {"part": name, "size": size, "seed": seed}}
        return {**dataset, "images": imgs, "annotations": anns, "detnas": detnas}

    return part(names[0], False), part(names[1], True)


def _quiet_coco(dataset: dict) -> COCO:
    """A pycocotools COCO index over an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class DetectionDataset(Dataset):
    """Images and box targets from an internal-format annotation file.

    ``__getitem__`` returns ``(image, target)``: image float32 (3, H, W) in [0, 1] (uint8 in 0..255 with
    ``uint8=True``); target
    ``boxes`` float32 (N, 4) XYXY in pixels, ``labels`` int64 (N,) in 1..K, ``image_id`` int.
    Crowd annotations are left out of targets (they stay in ``coco`` for evaluation).
    ``train=True`` adds a random horizontal flip (torch's global RNG) and, unless ``skip_empty``
    says otherwise, skips images without non-crowd boxes. ``image_ids`` restricts to those images.
    """

    def __init__(
        self,
        ann_file: Path,
        *,
        train: bool = False,
        image_ids: Sequence[int] | None = None,
        skip_empty: bool | None = None,
        uint8: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.uint8 = uint8
        data = load_coco_json(self.ann_file)
        roots = data.get("detnas", {}).get("image_roots")
        if not roots:
            raise DataError(f"{self.ann_file}: no 'detnas.image_roots'; prepare it with prepare_detection first")
        self.image_roots = [recorded_path(r, self.ann_file.parent) for r in roots]  # relative: to the file
        self.train = train
        self.coco = _quiet_coco(data)
        self.category_ids: list[int] = sorted(self.coco.cats)
        self.num_classes = len(self.category_ids)
        self._label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        ids = [img["id"] for img in data["images"]] if image_ids is None else list(image_ids)
        unknown = [i for i in ids if i not in self.coco.imgs]
        if unknown:
            raise DataError(f"{self.ann_file}: requested image ids not in the file: {unknown[:10]}")
        skip = train if skip_empty is None else skip_empty
        if skip:
            ids = [i for i in ids if self._objects(i)]
        if not ids:
            raise DataError(f"{self.ann_file}: no images left to load (train={train}, skip_empty={skip_empty})")
        self.image_ids: list[int] = ids
        self._flip = v2.RandomHorizontalFlip(p=0.5)

    def _objects(self, image_id: int) -> list[dict]:
        return [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _path(self, image_id: int) -> Path:
        info = self.coco.imgs[image_id]
        path = resolve_image(info["file_name"], self.image_roots)
        if path is None:
            raise DataError(
                f"{self.ann_file}: image '{info['file_name']}' not found under {[str(r) for r in self.image_roots]}"
            )
        return path

    def target(self, index: int) -> dict[str, Any]:
        """The boxes (XYXY, float32 (N, 4), pixels), labels (int64 (N,), 1..K) and image id of image
        ``index``, without its pixels (no flip)."""
        image_id = self.image_ids[index]
        objs = self._objects(image_id)
        boxes = torch.tensor([a["bbox"] for a in objs], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        labels = torch.tensor([self._label[a["category_id"]] for a in objs], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "image_id": image_id}

    def encoded(self, index: int) -> torch.Tensor:
        """Image ``index``'s file bytes as they are on disk (uint8, 1-D): a fraction of the decoded size."""
        return read_file(str(self._path(self.image_ids[index])))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self._path(image_id)
        try:
            image = decode_rgb(path, info["width"], info["height"])  # uint8 (3, H, W)
        except DataError as e:
            raise DataError(f"{self.ann_file}: {e}") from e
        h, w = image.shape[-2:]
        target = self.target(index)
        boxes = target["boxes"]
        if self.uint8:  # caches keep 1 byte per value; the model's transform converts per batch
            image = image.contiguous()
        else:
            image = image.float().div_(255.0)
        if self.train:
            img_tv = tv_tensors.Image(image)
            boxes_tv = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
            img_tv, boxes_tv = self._flip(img_tv, boxes_tv)
            image, boxes = img_tv.as_subclass(torch.Tensor), boxes_tv.as_subclass(torch.Tensor)
        return image, {**target, "boxes": boxes}


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images differ in size, so a batch is two lists (what torchvision detectors take)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
