"""Pascal VOC XML -> the pipeline's COCO-style internal format (see ``detnas.data.coco``).

The XML is found and parsed by torchvision's ``VOCDetection``; this module only maps its dicts to
COCO fields. ``difficult`` objects become ``iscrowd: 1`` so that COCOeval ignores detections
matched to them, as the VOC protocol does.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import parse as parse_xml

from torchvision.datasets import VOCDetection

from .coco import DataError

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
    """VOC 1-based inclusive corners -> COCO [x, y, w, h] in 0-based continuous pixels."""
    try:
        b = obj["bndbox"]
        xmin, ymin, xmax, ymax = (float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{xml}: object '{obj.get('name')}' has no valid bndbox ({e!r})") from e
    return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]


def voc_to_coco(root: Path, sets: list[tuple[str, str]]) -> dict:
    """Merge VOC sets, e.g. ``[("2007", "trainval"), ("2012", "trainval")]``, into one COCO dict.

    ``root`` is the ``VOCdevkit`` directory. Image ids are 1..N in listing order (unique across the
    merged sets); ``file_name`` is relative to ``root`` (e.g. ``VOC2007/JPEGImages/000005.jpg``) and
    ``detnas.image_roots`` is ``[root]``. An image listed twice across ``sets`` is a DataError.
    The result is not yet validated: pass it through ``coco.validate_detection``.
    """
    root = Path(root).absolute()
    if not sets:
        raise ValueError("voc_to_coco: no (year, image_set) pairs given")
    label = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
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
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for obj in ann.get("object", []):
                name = obj.get("name")
                if name not in label:
                    raise DataError(f"{xml}: unknown VOC class {name!r} (expected one of {VOC_CLASSES})")
                x, y, w, h = _box(obj, xml)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label[name],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": int(str(obj.get("difficult", "0")).strip() == "1"),
                    }
                )
    sources = ", ".join(f"VOC{y}/{s}" for y, s in sets)
    return {
        "info": {"description": f"Pascal VOC {sources}, converted by detnas"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(VOC_CLASSES)],
        "detnas": {"image_roots": [str(root)], "source": f"{root}: {sources}"},
    }
