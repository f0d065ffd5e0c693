"""One image with its detections drawn on it, at the image's own size (PIL, not matplotlib: a
detect run draws every image it was given, thousands of them, in milliseconds each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_path

__all__ = ["annotated_image", "save_jpeg"]

# matplotlib's tab10, so that a class has the colour it has in the evaluation's figures
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def annotated_image(image: np.ndarray, detections: Sequence[dict[str, Any]], class_names: dict[int, str], *,
                    score_threshold: float) -> Image.Image:
    """``image`` ((H, W, 3) uint8 RGB) with the detections scoring at least ``score_threshold``
    drawn on it, highest score on top: the box and "class score" above it (inside the image).

    ``detections``: COCO results (``bbox`` [x, y, w, h] in pixels, ``score``, ``category_id``);
    ``class_names``: category id -> name (an id missing from it is shown as the id)."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    order = sorted(class_names)
    color = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(order)}
    width = max(1, round(max(canvas.size) / 300))  # ~2 px on a 640 px image, 1 px on a thumbnail
    shown = sorted((d for d in detections if d["score"] >= score_threshold), key=lambda d: d["score"])
    for d in shown:  # lowest first: the best box ends on top
        x, y, w, h = d["bbox"]
        c = color.get(d["category_id"], _PALETTE[0])
        draw.rectangle([x, y, x + w, y + h], outline=c, width=width)
        label = f"{class_names.get(d['category_id'], d['category_id'])} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top + 2
        tx = min(max(0.0, x), max(0.0, canvas.width - tw - 2))
        ty = y - th - 1 if y - th - 1 >= 0 else y + 1  # above the box, or just inside it at the top edge
        draw.rectangle([tx, ty, tx + tw + 2, ty + th], fill=c)
        draw.text((tx + 1, ty), label, fill="white", font=font)
    return canvas


def save_jpeg(image: Image.Image, path: str | Path, *, quality: int = 90) -> None:
    """``image`` as a JPEG at ``path``, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality)
