"""What a detector finds: a few test images with the ground truth and the predictions side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.patches import Rectangle

from .style import plt, save

__all__ = ["plot_detections"]


def _boxes(ax: Any, boxes: Sequence[Sequence[float]], names: Sequence[str], colors: Sequence[str]) -> None:
    """Draw COCO ``[x, y, w, h]`` boxes with a label each on ``ax``."""
    for (x, y, w, h), name, color in zip(boxes, names, colors):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.6))
        ax.text(x + 1, y + 1, name, color="white", fontsize=7, va="top",  # inside the box: no clash with the title
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.85})


def plot_detections(images: Sequence[np.ndarray], truth: Sequence[list[dict[str, Any]]],
                    found: Sequence[list[dict[str, Any]]], class_names: dict[int, str], path: str | Path, *,
                    title: str, score_threshold: float = 0.5) -> None:
    """One column per image: the ground truth above, the detections scoring at least
    ``score_threshold`` below (class and score on each box).

    ``images``: (H, W, 3) uint8 arrays; ``truth``, ``found``: per image, COCO annotations (``bbox``,
    ``category_id``) and COCO results (plus ``score``); ``class_names``: category id -> name.
    """
    ids = sorted(class_names)
    palette = {c: f"C{i % 10}" for i, c in enumerate(ids)}
    n = max(1, len(images))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    for col, (image, gt, dt) in enumerate(zip(images, truth, found)):
        shown = sorted((d for d in dt if d["score"] >= score_threshold), key=lambda d: -d["score"])
        for row, (items, labels) in enumerate((
                (gt, [class_names[a["category_id"]] for a in gt]),
                (shown, [f"{class_names[d['category_id']]} {d['score']:.2f}" for d in shown]))):
            ax = axes[row][col]
            ax.imshow(image)
            _boxes(ax, [a["bbox"] for a in items], labels, [palette[a["category_id"]] for a in items])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(f"{len(gt)} object(s)", fontsize=8)
        axes[1][col].set_title(f"{len(shown)} found (score >= {score_threshold:g})", fontsize=8)
    axes[0][0].set_ylabel("ground truth", fontsize=9)
    axes[1][0].set_ylabel("detections", fontsize=9)
    for col in range(len(images), n):  # no image at all: an empty panel says so
        for row in range(2):
            axes[row][col].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
