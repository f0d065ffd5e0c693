"""A self-generated "shapes" dataset that stands in for COCO and ImageNet in the demo and the tests.

Nothing may be downloaded, yet the pipeline has to run end to end and its metrics have to mean
something, so the data is drawn here, deterministically:

* Detection (COCO layout): 1..``max_objects`` vivid shapes of ``DET_CLASSES`` per image. Sizes
  are drawn so that all three COCO scale ranges are populated (area < 32^2 small, 32^2..96^2
  medium, > 96^2 large, in absolute pixels as COCO measures them), so APs / APm / APl are all
  meaningful; at 128 px roughly 40 / 45 / 15 %. At 128 px only circles and squares can exceed
  96^2 pixels (a triangle fills half of its box), so large objects are those two classes.
* Objects overlap: an object is occluded by the ones drawn after it, and is removed from the image
  (not just from the labels) when less than 30 % of its pixels stay visible, so no unlabelled
  fragments remain. ``bbox`` is the full shape's box (the shapes lie inside the image); ``area``
  is the number of visible pixels, like the mask area of a COCO annotation.
* Backgrounds are textured (low-frequency colour noise, faint stripes and lines, per-pixel
  noise) so that "anything non-grey is an object" is not a solution; objects keep a minimum
  colour distance from the background under them and from each other.
* Classification (ImageFolder layout): one shape of ``CLS_CLASSES`` per image on the same
  textures, 40-90 % of the image, rotated and jittered: learnable, but not trivially. Like an
  ImageNet class, each class also has typical colours (a band of hues, overlapping its neighbours'
  bands), a cue a network picks up before shape. With shape as the only cue, a supernet trained one
  random path per step stays near chance for thousands of steps on this data (the four stride-2
  choices each remap every channel, so the classifier sees a different feature basis on every
  path), while one fixed path learns within a few hundred: the demo's pre-training would show
  nothing. Detection images keep uniformly random colours: there, shape is the only cue.

The detection task comes in two difficulties (``difficulty``): ``hard`` (the default, all of the
above) and ``easy``, the demo's: a plain background (one muted colour and mild sensor noise), 1 to
``max_objects`` objects that do not overlap, each 20-45 % of the image side, in its class's hues (as
the classification shapes): a task a tiny detector learns in a few hundred steps on a CPU, so the
demo's networks show what they learned.

Every image has its own generator, ``np.random.default_rng([seed, task, split, ...index])``,
so the bytes of a file depend only on the arguments, never on generation order.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DET_CLASSES", "CLS_CLASSES", "DIFFICULTIES", "synthesize_detection", "synthesize_classification"]

DIFFICULTIES = ("hard", "easy")

DET_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
CLS_CLASSES: tuple[str, ...] = DET_CLASSES + ("star", "hexagon", "diamond")

_MIN_IMAGE_SIZE = 32
_MIN_VISIBLE = 0.3  # an object keeps its label only if this fraction of its pixels is visible
_RING_INNER = 0.5  # inner / outer radius of a ring
_SMALL_MAX, _LARGE_MIN = 32**2, 96**2  # COCO area thresholds, pixels
# Target areas (pixels) of sampled objects; they keep a margin from the COCO thresholds because
# rasterisation and occlusion move the final area a little. Shares give ~40/45/15 % at 128 px.
_SMALL_AREA, _MEDIUM_AREA, _LARGE_AREA = (100.0, 850.0), (1250.0, 7000.0), (10500.0, math.inf)
# Classification colours: class k's shapes take hues around k / 8 with this standard deviation, so
# neighbouring classes overlap and colour alone is not enough (see the module docstring).
_CLS_HUE_SPREAD = 0.06
_MEDIUM_SHARE = 0.58  # of the objects that are not large
_LARGE_IMAGES = 0.4  # share of images with one large object (at most one fits)


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    """Outline of a ``points``-pointed star (outer radius 0.5, inner ``0.5 * inner``), unit box."""
    angles = np.pi * np.arange(2 * points) / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 0.5, 0.5 * inner)
    return list(zip(radii * np.cos(angles), radii * np.sin(angles)))


_A = 1 / 6  # half the arm width of a cross: arms one third of the box wide, a plus sign
# Outlines in a unit box centred on the origin (y down, like image rows).
_POLYGONS: dict[str, np.ndarray] = {
    name: np.asarray(pts, dtype=np.float64)
    for name, pts in {
        "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
        "triangle": [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)],
        "cross": [(-_A, -0.5), (_A, -0.5), (_A, -_A), (0.5, -_A), (0.5, _A), (_A, _A),
                  (_A, 0.5), (-_A, 0.5), (-_A, _A), (-0.5, _A), (-0.5, -_A), (-_A, -_A)],
        "star": _star(5, 0.45),  # fatter than a regular star so its points survive 32 px
        "hexagon": _star(3, 1.0),  # six vertices at radius 0.5
        "diamond": [(0.0, -0.5), (0.3, 0.0), (0.0, 0.5), (-0.3, 0.0)],  # elongated: not a square at 45 deg
    }.items()
}
_ROTATES = {"square", "triangle", "cross", "star", "hexagon", "diamond"}


def _fill(shape: str) -> float:
    """Fraction of its size x size box that a shape covers."""
    if shape == "circle":
        return math.pi / 4
    if shape == "ring":
        return math.pi / 4 * (1 - _RING_INNER**2)
    x, y = _POLYGONS[shape].T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


_FILL = {name: _fill(name) for name in CLS_CLASSES}


class _Shape(NamedTuple):
    """One shape: class name, box side and centre in pixels, rotation in radians."""

    name: str
    size: float
    cx: float
    cy: float
    angle: float


def _outline(name: str, size: float, angle: float) -> np.ndarray:
    """(N, 2) polygon vertices in pixels relative to the centre."""
    c, s = math.cos(angle), math.sin(angle)
    return _POLYGONS[name] @ np.array([[c, s], [-s, c]]) * size


def _half_extent(name: str, size: float, angle: float) -> float:
    """Half the side of the smallest centred square holding the shape, pixels."""
    if name not in _POLYGONS:
        return size / 2
    return float(np.abs(_outline(name, size, angle)).max())


def _place(rng: np.random.Generator, name: str, size: float, image_size: int, max_angle: float) -> _Shape:
    """Rotate (unless the rotated shape would not fit) and position a shape fully inside the image."""
    angle = float(rng.uniform(-max_angle, max_angle)) if name in _ROTATES else 0.0
    if 2 * _half_extent(name, size, angle) > image_size - 2:
        angle = 0.0
    ext = _half_extent(name, size, angle)
    cx, cy = rng.uniform(ext, image_size - 1 - ext, size=2)
    return _Shape(name, size, float(cx), float(cy), angle)


def _mask(shape: _Shape, image_size: int) -> np.ndarray:
    """(H, W) bool: the pixels the shape covers."""
    im = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(im)
    if shape.name in ("circle", "ring"):
        r = shape.size / 2
        draw.ellipse([shape.cx - r, shape.cy - r, shape.cx + r, shape.cy + r], fill=255)
        if shape.name == "ring":
            r *= _RING_INNER
            draw.ellipse([shape.cx - r, shape.cy - r, shape.cx + r, shape.cy + r], fill=0)
    else:
        pts = _outline(shape.name, shape.size, shape.angle) + (shape.cx, shape.cy)
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(im) > 0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 background in 0..255: muted base colour + blobs, stripes, lines."""
    base = 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.3, 0.7)))
    img = np.broadcast_to(base.astype(np.float32), (size, size, 3)).copy()
    # low-frequency colour blobs: a k x k random grid, bilinearly upsampled (A @ grid @ A.T)
    k = int(rng.integers(3, 7))
    t = np.linspace(0, k - 1, size)
    up = np.stack([np.interp(t, np.arange(k), np.eye(k)[j]) for j in range(k)], axis=1)  # (size, k)
    grid = rng.normal(0, rng.uniform(10, 28), size=(k, k, 3))
    img += (up @ grid.transpose(2, 0, 1) @ up.T).transpose(1, 2, 0).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.6:  # faint stripes
        theta, period = rng.uniform(0, np.pi), rng.uniform(max(4.0, size / 16), size / 4)
        phase = 2 * np.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 2 * np.pi)
        img += (rng.uniform(6, 16) * np.sin(phase))[..., None]
    if rng.random() < 0.6:  # a few faint straight lines, like edges in a real scene
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(1, 5))):
            draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))],
                      fill=255, width=int(rng.integers(1, max(2, size // 32) + 1)))
        img += (np.asarray(layer, dtype=np.float32) / 255 * rng.uniform(-30, 30))[..., None]
    return img


def _vivid(rng: np.random.Generator, avoid: list[np.ndarray], hue: float | None = None) -> np.ndarray:
    """(3,) RGB of a saturated colour, the best of a few tries at being far from ``avoid``.

    ``hue`` None: any hue; else hues around ``hue`` (standard deviation ``_CLS_HUE_SPREAD``).
    """
    best, best_dist = np.zeros(3), -1.0
    for _ in range(12):
        h = rng.uniform(0, 1) if hue is None else (hue + rng.normal(0, _CLS_HUE_SPREAD)) % 1.0
        rgb = 255 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.65, 1), rng.uniform(0.75, 1)))
        dist = min((float(np.linalg.norm(rgb - a)) for a in avoid), default=math.inf)
        if dist > best_dist:
            best, best_dist = rgb, dist
        if dist >= 90:  # RGB distance that stays visible through texture and noise
            break
    return best


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, avoid: list[np.ndarray],
           hue: float | None = None) -> np.ndarray:
    """Paint ``mask`` of ``img`` (in place) a vivid colour with a soft linear shading; returns the colour."""
    color = _vivid(rng, avoid + [img[mask].mean(axis=0)], hue)
    size = img.shape[0]
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.nonzero(mask)
    shade = 1 + 0.15 * ((xx * math.cos(theta) + yy * math.sin(theta)) / size - 0.5)  # +-7.5 % gradient
    img[yy, xx] = color * shade[:, None]
    return color


def _finish(rng: np.random.Generator, img: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Per-pixel sensor noise (standard deviation ``sigma``; None: drawn in 3..9), then (H, W, 3) uint8."""
    img = img + rng.normal(0, rng.uniform(3, 9) if sigma is None else sigma, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels ``mask`` covers, x1 and y1 exclusive."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _sample_shape(rng: np.random.Generator, area: tuple[float, float], image_size: int) -> _Shape | None:
    """A random class that can reach ``area`` (pixels) in this image, its area log-uniform in the range.

    None when no class fits (a medium object in a 32 px image).
    """
    lo, hi = area
    options = [(name, min(hi, _FILL[name] * (image_size - 4) ** 2)) for name in DET_CLASSES]
    options = [(name, top) for name, top in options if top >= 1.1 * lo]
    if not options:
        return None
    name, top = options[int(rng.integers(len(options)))]
    size = min(math.sqrt(math.exp(rng.uniform(math.log(lo), math.log(top))) / _FILL[name]), image_size - 4.0)
    return _place(rng, name, size, image_size, max_angle=np.pi)


def _detection_image(rng: np.random.Generator, image_size: int, max_objects: int) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its objects as dicts with category_id, bbox, area (unnumbered)."""
    count = int(rng.integers(1, max_objects + 1))
    large = _sample_shape(rng, _LARGE_AREA, image_size) if rng.random() < _LARGE_IMAGES else None
    shapes = [large] if large is not None else []  # drawn first, so it never hides the rest
    masks = [_mask(s, image_size) for s in shapes]
    # pixels of the large object that the others may cover and still leave it large
    budget = float(masks[0].sum()) - 1.02 * _LARGE_MIN if shapes else math.inf
    for _ in range(count - len(shapes)):
        area = _MEDIUM_AREA if rng.random() < _MEDIUM_SHARE else _SMALL_AREA
        for _attempt in range(4):
            shape = _sample_shape(rng, area, image_size) or _sample_shape(rng, _SMALL_AREA, image_size)
            mask = _mask(shape, image_size)
            cover = float((mask & masks[0]).sum()) if large is not None else 0.0
            if cover <= budget:
                budget -= cover
                shapes.append(shape)
                masks.append(mask)
                break
    keep = list(range(len(shapes)))
    # drop the mostly hidden; the second pass recounts the rest (removing an occluder only
    # uncovers others, so nobody drops in it)
    for _ in range(2):
        owner = np.full((image_size, image_size), -1)
        for i in keep:
            owner[masks[i]] = i
        visible = {i: int((owner == i).sum()) for i in keep}
        keep = [i for i in keep if visible[i] >= _MIN_VISIBLE * masks[i].sum()]
    img = _texture(rng, image_size)
    colors: list[np.ndarray] = []
    objects = []
    for i in keep:  # the last one drawn is fully visible, so every image keeps an object
        colors.append(_paint(rng, img, masks[i], colors))
        x0, y0, x1, y1 = _mask_box(masks[i])
        objects.append({
            "category_id": DET_CLASSES.index(shapes[i].name) + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float(visible[i]),
        })
    return _finish(rng, img), objects


_EASY_SIZE = (0.2, 0.45)  # object box side, as a share of the image side


def _easy_detection_image(rng: np.random.Generator, image_size: int, max_objects: int) -> tuple[np.ndarray, list[dict]]:
    """The ``easy`` task: 1..``max_objects`` non-overlapping shapes in their class's hues on a plain
    background; same return values as ``_detection_image``."""
    count = int(rng.integers(1, max_objects + 1))
    base = 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.25), rng.uniform(0.35, 0.6)))
    img = np.broadcast_to(base.astype(np.float32), (image_size, image_size, 3)).copy()
    taken = np.zeros((image_size, image_size), dtype=bool)  # boxes so far, 2 px apart
    colors: list[np.ndarray] = []
    objects = []
    for _ in range(count):
        for _attempt in range(20):
            name = DET_CLASSES[int(rng.integers(len(DET_CLASSES)))]
            shape = _place(rng, name, rng.uniform(*_EASY_SIZE) * image_size, image_size, max_angle=np.pi / 8)
            mask = _mask(shape, image_size)
            x0, y0, x1, y1 = _mask_box(mask)
            if not taken[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2].any():
                break
        else:
            continue  # no room left for another object
        taken[y0:y1, x0:x1] = True
        colors.append(_paint(rng, img, mask, colors, hue=DET_CLASSES.index(name) / len(DET_CLASSES)))
        objects.append({"category_id": DET_CLASSES.index(name) + 1,
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(mask.sum())})
    return _finish(rng, img, sigma=3), objects


def _classification_image(rng: np.random.Generator, name: str, image_size: int) -> np.ndarray:
    """(H, W, 3) uint8: one ``name`` shape, 40-90 % of the image, on a texture, in its class's hues."""
    size = rng.uniform(0.4, 0.9) * image_size
    shape = _place(rng, name, size, image_size, max_angle=np.pi)
    img = _texture(rng, image_size)
    _paint(rng, img, _mask(shape, image_size), [], hue=CLS_CLASSES.index(name) / len(CLS_CLASSES))
    return _finish(rng, img)


def _check(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _atomic_dir(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then swap it in for ``out_dir``.

    A killed run leaves at most a ``*.tmp-<pid>`` sibling, never a half-written ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out_dir.exists():  # a directory cannot be renamed onto a non-empty one: move it aside
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def synthesize_detection(out_dir: Path, *, num_train: int, num_test: int, image_size: int = 128,
                         seed: int = 0, max_objects: int = 6, difficulty: str = "hard") -> None:
    """Write a COCO-style shapes detection dataset to ``out_dir`` (replacing it, atomically).
    ``difficulty``: ``hard`` (textured backgrounds, occlusion, all COCO sizes) or ``easy`` (see the
    module docstring).

    Layout: ``images/{train,test}/NNNNNN.png`` (RGB, ``image_size`` px square) and
    ``instances_{train,test}.json``, whose ``file_name`` is relative to ``out_dir/images``.
    Category ids are 1..5 in ``DET_CLASSES`` order; bbox is [x, y, w, h] in pixels.
    """
    for arg, value, minimum in (("num_train", num_train, 1), ("num_test", num_test, 1),
                                ("image_size", image_size, _MIN_IMAGE_SIZE), ("seed", seed, 0),
                                ("max_objects", max_objects, 1)):
        _check(arg, value, minimum)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    draw = _easy_detection_image if difficulty == "easy" else _detection_image

    def write(root: Path) -> None:
        for split_id, (split, count) in enumerate((("train", num_train), ("test", num_test))):
            (root / "images" / split).mkdir(parents=True)
            images, annotations = [], []
            for index in range(count):
                rng = np.random.default_rng([seed, 0, split_id, index])  # 0: the detection task
                pixels, objects = draw(rng, image_size, max_objects)
                file_name = f"{split}/{index:06d}.png"
                Image.fromarray(pixels).save(root / "images" / file_name, format="PNG")
                images.append({"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size})
                for obj in objects:
                    annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **obj, "iscrowd": 0})
            dataset = {
                "info": {"description": f"detnas synthetic shapes ({difficulty}), seed {seed}", "version": "1"},
                "images": images,
                "annotations": annotations,
                "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(DET_CLASSES)],
            }
            (root / f"instances_{split}.json").write_text(json.dumps(dataset))
            areas = np.array([a["area"] for a in annotations])
            small, large = int((areas < _SMALL_MAX).sum()), int((areas > _LARGE_MIN).sum())
            print(f"synthesize: {split} {count} images, {len(areas)} objects "
                  f"(small {small} / medium {len(areas) - small - large} / large {large})", flush=True)

    _atomic_dir(Path(out_dir), write)


def synthesize_classification(out_dir: Path, *, train_per_class: int, val_per_class: int,
                              image_size: int = 32, seed: int = 0) -> None:
    """Write an ImageFolder shapes classification dataset to ``out_dir`` (replacing it, atomically).

    Layout: ``{train,val}/<class>/NNNNN.png``, one folder per ``CLS_CLASSES`` entry, RGB,
    ``image_size`` px square.
    """
    for arg, value, minimum in (("train_per_class", train_per_class, 1), ("val_per_class", val_per_class, 1),
                                ("image_size", image_size, _MIN_IMAGE_SIZE), ("seed", seed, 0)):
        _check(arg, value, minimum)

    def write(root: Path) -> None:
        for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for class_id, name in enumerate(CLS_CLASSES):
                (root / split / name).mkdir(parents=True)
                for index in range(count):
                    rng = np.random.default_rng([seed, 1, split_id, class_id, index])  # 1: classification
                    Image.fromarray(_classification_image(rng, name, image_size)).save(
                        root / split / name / f"{index:05d}.png", format="PNG")
            print(f"synthesize: {split} {len(CLS_CLASSES)} classes x {count} = "
                  f"{len(CLS_CLASSES) * count} images", flush=True)

    _atomic_dir(Path(out_dir), write)
