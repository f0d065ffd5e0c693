"""Small datasets in the formats users export from labelling tools (helpers for the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(path: Path, w: int, h: int, seed: int, gray: bool = False) -> None:
    """A JPEG with some texture (a flat image compresses to nothing and decodes too easily)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def coco_export(root: Path, n: int = 16) -> Path:
    """One COCO JSON for the whole dataset: category ids with gaps (2, 5, 9), a crowd box, an image
    without boxes, grayscale images, a zero-area box and a box past the border. Returns the JSON."""
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (64, 48) if i % 3 else (48, 64)
        name = f"img_{i:03d}.jpg"
        _photo(root / "images" / name, w, h, seed=i, gray=i % 4 == 1)
        images.append({"id": 100 + 7 * i, "file_name": name, "width": w, "height": h})  # ids with gaps too
        if i == 5:
            continue  # an image without boxes
        for k in range(1 + i % 3):
            x, y = float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2))
            bw, bh = float(rng.integers(6, w // 2)), float(rng.integers(6, h // 2))
            anns.append({"id": len(anns) + 1, "image_id": 100 + 7 * i, "category_id": (2, 5, 9)[(i + k) % 3],
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(i == 3 and k == 0)})
    anns.append({"id": len(anns) + 1, "image_id": 100 + 7 * 2, "category_id": 5, "bbox": [4.0, 4.0, 0.0, 10.0],
                 "area": 0.0, "iscrowd": 0})  # zero width
    anns.append({"id": len(anns) + 1, "image_id": 100 + 7 * 4, "category_id": 9, "bbox": [40.0, 10.0, 50.0, 10.0],
                 "area": 500.0, "iscrowd": 0})  # 26 px past the right border of a 64 px image
    cats = [{"id": 2, "name": "crate"}, {"id": 5, "name": "forklift"}, {"id": 9, "name": "person"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def voc_export(root: Path, n: int = 16) -> Path:
    """A VOC-layout export (VOCdevkit/VOC2007) with its own classes, `difficult` objects, a zero-width
    box and a box past the border; trainval.txt lists every image. Returns the VOCdevkit folder."""
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        w, h = 64, 48
        name = f"frame{i:04d}"
        names.append(name)
        _photo(voc / "JPEGImages" / f"{name}.jpg", w, h, seed=50 + i, gray=i % 5 == 2)
        objs = []
        for k in range(1 + i % 2):
            x0, y0 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
            objs.append((("bin", "cart", "pedestrian")[(i + k) % 3], x0, y0, x1, y1, int(i % 6 == 4)))
        if i == 3:
            objs.append(("cart", 10, 10, 10, 30, 0))  # xmin == xmax
        if i == 7:
            objs.append(("bin", 30, 10, 90, 30, 0))  # past the 64 px border
        xml = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{e}</xmax><ymax>{f}</ymax></bndbox></object>" for c, a, b, e, f, d in objs)
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{xml}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names) + "\n")
    return root / "VOCdevkit"
