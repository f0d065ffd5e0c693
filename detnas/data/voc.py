"""Pascal VOC XML -> the pipeline's COCO-style internal format (see ``detnas.data.coco``).

The XML is found and parsed by torchvision's ``VOCDetection``; this module only maps its dicts to
COCO fields. ``difficult`` objects become ``iscrowd: 1`` so that COCOeval ignores detections
matched to them, as the VOC protocol does. The classes are the 20 Pascal ones unless given: a
dataset exported from a labelling tool in VOC layout names its own (or ``"auto"``: the names its
XML files use, sorted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import parse as parse_xml

from torchvision.datasets import VOCDetection

from .coco import DataError, class_key

__all__ = ["VOC_CLASSES", "voc_to_coco"]

# The standard (alphabetical) VOC order; category id = position + 1.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def _open_set(root: Path, year: str, image_set: str) -> VOCDetection:
    """torchvision's VOC index for one (year, image_set); DataError naming the missing path."""
    if root.name != "VOCdevkit":
        # VOCDetection hard-codes "<its root>/VOCdevkit/VOC<year>", so ours must be that directory.
        raise DataError(f"Pascal VOC: the root must be the 'VOCdevkit' directory, got {root}")
    voc_dir = root / f"VOC{year}"
    split_file = voc_dir / "ImageSets" / "Main" / f"{image_set}.txt"
    for p in (voc_dir, split_file):
        if not p.exists():
            raise DataError(f"Pascal VOC: {p} not found (VOCdevkit root {root}, set {year}/{image_set})")
    try:
        return VOCDetection(root=root.parent, year=year, image_set=image_set, download=False)
    except ValueError as e:  # torchvision's check of year / image_set
        raise ValueError(f"Pascal VOC set {year}/{image_set}: {e}") from e


def _box(obj: dict, xml: str) -> list[float]:
    """VOC 1-based inclusive corners -> COCO [x, y, w, h] in 0-based continuous pixels.

    A box whose max corner is not past its min corner (xmax <= xmin or ymax <= ymin) has no area to
    learn from: it gets a width or height <= 0, so the split's ``bad_boxes`` policy sees it."""
    try:
        b = obj["bndbox"]
        xmin, ymin, xmax, ymax = (float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{xml}: object '{obj.get('name')}' has no valid bndbox ({e!r})") from e
    w = xmax - xmin + 1 if xmax > xmin else xmax - xmin
    h = ymax - ymin + 1 if ymax > ymin else ymax - ymin
    return [xmin - 1, ymin - 1, w, h]


def voc_to_coco(root: Path, sets: list[tuple[str, str]], *, classes: Sequence[str] | str | None = None) -> dict:
    """Merge VOC sets, e.g. ``[("2007", "trainval"), ("2012", "trainval")]``, into one COCO dict.

    ``root`` is the ``VOCdevkit`` directory. ``classes``: the class names, category id = position
    + 1 (None: the 20 Pascal classes; "auto": every name the XML files use, sorted); an object of
    another class is a DataError naming its XML file. Image ids are 1..N in listing order (unique
    across the merged sets); ``file_name`` is relative to ``root`` (e.g.
    ``VOC2007/JPEGImages/000005.jpg``), ``annotation_file`` its XML, and ``detnas.image_roots`` is
    ``[root]``. An image listed twice across ``sets`` is a DataError. The result is not yet
    validated: pass it through ``coco.validate_detection``.
    """
    root = Path(root).absolute()
    if not sets:
        raise ValueError("voc_to_coco: no (year, image_set) pairs given")
    auto = classes == "auto"
    if not auto and classes is not None and (isinstance(classes, str) or not all(isinstance(n, str) for n in classes)):
        raise ValueError(f"VOC classes must be a list of names or 'auto', got {classes!r}")
    # names compared as class_key gives them: one label typed on two systems can differ in its bytes
    names = [class_key(n) for n in (VOC_CLASSES if classes is None else [] if auto else classes)]
    if not auto and (not names or len(set(names)) != len(names)):
        raise ValueError(f"VOC classes must be a non-empty list of distinct names or 'auto', got {classes!r}")
    images: list[dict] = []
    annotations: list[dict] = []
    seen: dict[str, str] = {}
    for year, image_set in sets:
        voc = _open_set(root, str(year), image_set)
        for image_path, xml in zip(voc.images, voc.annotations):
            file_name = Path(image_path).relative_to(root).as_posix()
            if file_name in seen:
                raise DataError(f"Pascal VOC: {file_name} is listed in both {seen[file_name]} and {year}/{image_set}")
            seen[file_name] = f"{year}/{image_set}"
            try:
                ann = VOCDetection.parse_voc_xml(parse_xml(xml).getroot())["annotation"]
            except FileNotFoundError as e:
                raise DataError(f"Pascal VOC: annotation {xml} not found") from e
            except (ParseError, KeyError) as e:
                raise DataError(f"{xml}: not a VOC annotation ({e})") from e
            try:
                width, height = int(ann["size"]["width"]), int(ann["size"]["height"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{xml}: no valid <size> ({e!r})") from e
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                           "annotation_file": Path(xml).relative_to(root).as_posix()})
            objects = ann.get("object", [])
            for obj in objects if isinstance(objects, list) else [objects]:
                name = obj.get("name")
                if not isinstance(name, str) or not name.strip():
                    raise DataError(f"{xml}: an object has no class <name> (got {name!r})")
                name = class_key(name)
                if name not in names:
                    if not auto:
                        raise DataError(f"{xml}: unknown class {name!r} (the dataset's classes: {names}; "
                                        f"set 'classes' on its detection_data entry, or 'classes: auto')")
                    names.append(name)
                x, y, w, h = _box(obj, xml)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": name,  # replaced by the id below, once the class list is complete
                        "bbox": [x, y, w, h],
                        "area": max(w, 0) * max(h, 0),
                        "iscrowd": int(str(obj.get("difficult", "0")).strip() == "1"),
                    }
                )
    if auto:
        names = sorted(names)
        if not names:
            raise DataError(f"Pascal VOC {root} {sets}: 'classes: auto' found no objects to take class names from")
    label = {name: i + 1 for i, name in enumerate(names)}
    for a in annotations:
        a["category_id"] = label[a["category_id"]]
    sources = ", ".join(f"VOC{y}/{s}" for y, s in sets)
    return {
        "info": {"description": f"Pascal VOC {sources}, converted by detnas"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(names)],
        "detnas": {"image_roots": [str(root)], "source": f"{root}: {sources}"},
    }
