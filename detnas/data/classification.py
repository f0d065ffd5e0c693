"""ImageFolder-layout classification data (ImageNet or a stand-in) for supernet pre-training.

``<root>/<class name>/<image>``, scanned with torchvision's ImageFolder machinery. A seeded
held-out subset of the TRAIN folder is ClsNAS's search validation (SPOS: 50,000 ImageNet images);
samples are named by their path relative to the root, so a split is a plain JSON list.

Training augmentation runs in two halves (``TrainAugmentation``): per image in the loader workers,
on uint8 tensors (decode, random-resized crop, flip; the colour jitter is only drawn), and per batch
on the training device (colour jitter, scaling, normalization in float). It draws the same random
numbers as torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip`` and ``ColorJitter`` on a
PIL image (``pil_classification_transforms``, the reference it is tested and benchmarked against)
and computes the same pixels, but for the uint8 resampling: torch's bilinear rounds a few per cent
of values one level away from PIL's (a few levels after the jitter's gains; unbiased).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..io import read_json, recorded_path
from .coco import DataError, class_key, file_key, part_count
from .images import read_rgb8

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationDataset",
    "TrainAugmentation",
    "classification_transforms",
    "read_split",
    "normalize_images",
    "pil_classification_transforms",
    "read_pil",
    "files_by_key",
    "read_rgb",
    "scan_image_folder",
    "split_classification",
    "train_augmentation",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DECODERS = ("pil", "tensor")
_CPU_CHUNK = 4  # images per chunk of the per-batch half on a CPU: 2.4 MB of float32 at 224 px


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and samples ``(path relative to root, class index)``.

    DataError naming ``root`` when it is missing, has no class folders, or a class has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    try:
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # torchvision: no class folders, or a class without images
        raise DataError(f"{root}: not a usable ImageFolder layout ({e})") from e
    keys: dict[str, str] = {}
    for c in classes:  # two folders with one name in two Unicode forms would be two classes
        k = class_key(c)
        if k in keys:
            raise DataError(f"{root}: class folders {keys[k]!r} and {c!r} are one name in two Unicode forms "
                            f"(or with surrounding spaces); merge them")
        keys[k] = c
    rel = [(Path(os.path.relpath(path, root)).as_posix(), idx) for path, idx in samples]
    return classes, rel


def files_by_key(root: Path, samples: list[tuple[str, int]]) -> dict[tuple[int, int], list[str]]:
    """Sample paths (relative to ``root``) grouped by the file each is (``file_key``: links and hard
    links included); one ``stat`` per sample."""
    groups: dict[tuple[int, int], list[str]] = {}
    for rel, _ in samples:
        groups.setdefault(file_key(Path(root) / rel), []).append(rel)
    return groups


def split_classification(root: Path, *, holdout: int | float, seed: int,
                         val: tuple[Path, list[tuple[str, int]]] | None = None) -> dict:
    """A seeded held-out subset of the train folder ``root``, as a JSON-able dict.

    ``holdout``: an int is a number of images (SPOS/ClsNAS: 50,000), a float in (0, 1) a fraction.
    Returns ``{"root": absolute root, "classes": [...], "holdout": [sorted relative paths]}``;
    train on the rest with ``ClassificationDataset(root, exclude=set(holdout))``. A holdout that
    takes every training image of a class is a DataError naming the classes: the classifier could
    not learn them, so the draw is refused rather than trained on. One file under two paths (links)
    is a DataError, and so is, with ``val`` (the validation folder and its ``scan_image_folder``
    samples), a validation image that is a training file.
    """
    root = Path(root).absolute()
    classes, samples = scan_image_folder(root)
    files = files_by_key(root, samples)
    repeated = [tuple(group[:2]) for group in files.values() if len(group) > 1]
    if repeated:  # one file under two names could be held out and trained on at once
        raise DataError(f"{root}: {len(repeated)} images are one file under two paths (links), e.g. "
                        f"{repeated[:3]}; keep one path per file")
    if val is not None:
        val_root, val_samples = val
        shared = [f"val {rel} is train {files[k][0]}" for rel, _ in val_samples
                  if (k := file_key(Path(val_root) / rel)) in files]
        if shared:
            raise DataError(f"{val_root}: {len(shared)} validation images are training images of {root} "
                            f"(the same files, links included), e.g. {shared[:3]}")
    n = len(samples)
    k = part_count(holdout, n, f"holdout of {root}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=k, replace=False)  # samples are sorted, so this depends on seed + files only
    total = np.bincount([c for _, c in samples], minlength=len(classes))
    held = np.bincount([samples[i][1] for i in picked], minlength=len(classes))
    emptied = [f"{classes[c]} ({total[c]} images)" for c in np.flatnonzero(held == total)]
    if emptied:
        raise DataError(
            f"{root}: the holdout of {k} images (size {holdout!r}, seed {seed}) takes every training image of "
            f"{len(emptied)} classes: {', '.join(emptied[:10])}{' ...' if len(emptied) > 10 else ''}; "
            f"lower classification_data.<name>.holdout.size or add images to these classes"
        )
    return {"root": str(root), "classes": classes, "holdout": sorted(samples[i][0] for i in picked)}


def read_rgb(path: Path) -> Tensor:
    """An image file as uint8 (3, H, W) RGB, decoded by torchvision (libjpeg-turbo, libpng, libwebp)
    under the rules of ``detnas.data.images`` (EXIF orientation applied, 16-bit scaled to 8, one
    frame; BMP and TIFF through PIL).

    The pixels equal PIL's ``convert("RGB")`` bit for bit on 8-bit files without an orientation tag
    (same libjpeg-turbo, default IDCT and chroma upsampling; grayscale, CMYK, palette and RGBA
    converted alike) at ~20 % less time per JPEG.
    """
    return read_rgb8(path)


def read_pil(path: Path) -> Image.Image:
    """``read_rgb``'s pixels as a PIL RGB image (what the PIL transforms take)."""
    return Image.fromarray(read_rgb8(path).permute(1, 2, 0).numpy())


class ClassificationDataset(Dataset):
    """``(transform(image), class index)`` over an ImageFolder-layout root (train or val).

    ``include``: only these relative paths; ``exclude``: all but these (at most one of the two).
    Every listed path must be a sample of ``root``, so a split cannot silently miss its folder.
    ``decode`` "pil": the transform gets a PIL RGB image; "tensor": a uint8 (3, H, W) tensor from
    ``read_rgb`` (the same pixels, decoded faster, and what ``TrainAugmentation`` works on).
    """

    def __init__(
        self,
        root: Path,
        *,
        transform: Callable[[Any], Any] | None,
        include: set[str] | None = None,
        exclude: set[str] | None = None,
        decode: str = "pil",
    ) -> None:
        if include is not None and exclude is not None:
            raise ValueError("ClassificationDataset: give include or exclude, not both")
        if decode not in _DECODERS:
            raise ValueError(f"ClassificationDataset: decode must be one of {_DECODERS}, got {decode!r}")
        self.decode = decode
        self.root = Path(root)
        self.transform = transform
        self.classes, samples = scan_image_folder(self.root)
        listed = include if include is not None else exclude
        if listed is not None:
            unknown = set(listed) - {p for p, _ in samples}
            if unknown:
                raise DataError(
                    f"{self.root}: {len(unknown)} listed paths are not images here, e.g. {sorted(unknown)[:3]}"
                )
            keep = include is not None
            samples = [s for s in samples if (s[0] in listed) == keep]
        if not samples:
            raise DataError(
                f"{self.root}: no images selected (include={include is not None}, exclude={exclude is not None})"
            )
        self.samples: list[tuple[str, int]] = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        rel, target = self.samples[index]
        path = self.root / rel
        image = read_rgb(path) if self.decode == "tensor" else read_pil(path)  # (3, H, W) / PIL RGB; DataError names it
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def pil_classification_transforms(*, train: bool, image_size: int, normalize: bool = True) -> v2.Compose:
    """The torchvision pipeline as written for PIL images (it takes uint8 tensors too). Evaluation
    still uses it; for training it is the pipeline ``TrainAugmentation`` replaced, kept as the
    reference that the tests and ``benchmarks/input_pipeline.py`` compare the fast path with.

    Below 64 px (the demo's synthetic stand-in) the random crop keeps at least half of the image and
    colours are not jittered: the default 8% crop would leave a handful of pixels, and jitter would
    blur the synthetic classes' hue bands; short demo schedules learn far less with both.
    """
    if train and not normalize:
        raise ValueError("training transforms always normalize")
    center = [v2.Resize(int(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    if not normalize:
        return v2.Compose([*center, v2.ToImage()])
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        if image_size < 64:
            augment = [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        else:
            augment = [
                v2.RandomResizedCrop(image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(0.4, 0.4, 0.4),
            ]
        return v2.Compose([*augment, *to_tensor])
    return v2.Compose([*center, *to_tensor])


class TrainAugmentation:
    """ImageNet training augmentation (SPOS/DetNAS: random-resized crop, horizontal flip, colour
    jitter 0.4), split into a per-image half for the loader workers and a per-batch half for the
    training device.

    ``sample(image)``: uint8 (3, H, W) (or PIL) -> ``(crop, params)``: crop uint8 (3, S, S), cropped
    first so only the crop is resized, then flipped; params float32 (7,): the jitter's brightness,
    contrast and saturation factors, then ColorJitter's order of its four functions (3, hue, is off).
    ``finish(crops, params)``: (B, 3, S, S) uint8 and (B, 7) -> float32 (B, 3, S, S), jittered and
    normalized. ``__call__(image)``: both halves for one image, float32 (3, S, S).

    The random numbers are drawn by torchvision's own ``RandomResizedCrop``, ``RandomHorizontalFlip``
    and ``ColorJitter`` objects from torch's global generator, in the order the PIL pipeline draws
    them, so a seed gives the same crop, flip and factors. The jitter reproduces PIL's
    ``ImageEnhance`` (what ``ColorJitter`` runs on PIL images) exactly, in float on integer values.
    No reduced-size (DCT-scaled, PIL ``draft``) JPEG decoding: a scaled IDCT is not a full decode
    followed by the antialiased resize, so it would change pixels; and it only pays where a crop
    shrinks 2x or more in both directions, which an ImageNet-sized image (~400x350) never does at 224.
    """

    def __init__(self, image_size: int, *, scale: tuple[float, float] = (0.08, 1.0), jitter: float | None = 0.4) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.crop = v2.RandomResizedCrop(image_size, scale=scale, antialias=True)
        self.flip = v2.RandomHorizontalFlip()
        self.jitter = None if jitter is None else v2.ColorJitter(jitter, jitter, jitter)

    def sample(self, image: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(image, Tensor):
            image = F.pil_to_tensor(image)
        image = self.flip(self.crop(image))  # (3, S, S) uint8
        if self.jitter is None:
            return image, torch.tensor([1.0, 1.0, 1.0, 0, 1, 2, 3])
        p = self.jitter.make_params([image])  # ColorJitter's draws: order first, then the three factors
        factors = [p["brightness_factor"], p["contrast_factor"], p["saturation_factor"]]
        return image, torch.tensor(factors + p["fn_idx"].tolist(), dtype=torch.float32)

    def finish(self, crops: Tensor, params: Tensor) -> Tensor:
        params = params.to(crops.device)

        def jitter_and_normalize(x: Tensor, rows: slice) -> None:
            if self.jitter is not None:
                _jitter_like_pil(x, params[rows])
            _scale_and_normalize(x)

        return _as_float(crops, jitter_and_normalize)

    def __call__(self, image: Any) -> Tensor:
        crop, params = self.sample(image)
        return self.finish(crop[None], params[None])[0]


def _pil_gray(x: Tensor) -> Tensor:
    """PIL's ``convert("L")`` of integer-valued RGB (B, 3, H, W) -> (B, 1, H, W): (r*19595 + g*38470
    + b*7471 + 32768) >> 16. Every partial sum stays below 2^24, so float32 holds it exactly."""
    gray = x[:, 0:1] * 19595.0
    return gray.add_(x[:, 1:2], alpha=38470.0).add_(x[:, 2:3], alpha=7471.0).add_(32768.0).mul_(1 / 65536).floor_()


def _jitter_like_pil(x: Tensor, params: Tensor) -> Tensor:
    """ColorJitter as PIL applies it, on a batch: x float32 (B, 3, H, W) of integers 0..255 (it is
    overwritten), params (B, 7) from ``TrainAugmentation.sample``; returns the jittered batch.

    PIL's ``Image.blend(degenerate, image, a)`` computes ``d + a * (x - d)`` in float32 and truncates
    to 0..255; brightness blends with 0, contrast with the rounded mean of the grey image, saturation
    with the grey image. Each image takes its three operations in its own drawn order: step k applies
    every image's k-th operation, choosing its degenerate image and factor by row.
    """
    b = x.shape[0]
    factors, order = params[:, :3], params[:, 3:].long()  # (B, 3), (B, 4)
    # each row's order without hue (3), stable so the other three keep their drawn order: (B, 3)
    ops = order.gather(1, (order == 3).to(torch.uint8).argsort(dim=1, stable=True)[:, :3])
    pixels = x.shape[-1] * x.shape[-2]
    # the sum of a grey image is exact in float32 while it stays below 2^24 (up to 256x256 pixels)
    sum_dtype = torch.float32 if pixels * 255 < 2**24 else torch.float64
    for k in range(3):
        alpha = factors.gather(1, ops[:, k:k + 1]).view(b, 1, 1, 1)
        contrast = (ops[:, k] == 1).float().view(b, 1, 1, 1)
        saturation = (ops[:, k] == 2).float().view(b, 1, 1, 1)
        gray = _pil_gray(x)  # (B, 1, H, W)
        # ImageStat's mean in float64, then int(mean + 0.5)
        mean = (gray.sum((1, 2, 3), dtype=sum_dtype).double() / pixels + 0.5).floor_().float().view(b, 1, 1, 1)
        # 0 (brightness), the mean (contrast) or the grey image (saturation); exact: 0/1 masks, integers
        degenerate = gray.mul_(saturation).add_(mean * contrast)
        # separate multiply and add (a fused multiply-add would round once, PIL rounds twice)
        x = x.sub_(degenerate).mul_(alpha).add_(degenerate).clamp_(0, 255).floor_()
    return x


def _as_float(images: Tensor, finish: Callable[[Tensor, slice], None]) -> Tensor:
    """uint8 images (B, 3, H, W) -> float32, each chunk of rows finished in place by
    ``finish(chunk, rows)``. On a CPU a few images at a time, so that their ~25 elementwise passes
    run in cache instead of streaming a whole batch through memory each time (measured: ~1.8x faster
    than one chunk of 64 at 224 px); on a GPU the whole batch at once."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    step = _CPU_CHUNK if images.device.type == "cpu" else max(1, len(images))
    for i in range(0, len(images), step):
        rows = slice(i, i + step)
        finish(out[rows].copy_(images[rows]), rows)
    return out


def _scale_and_normalize(x: Tensor) -> Tensor:
    """Integer-valued float32 images (B, 3, H, W), overwritten -> normalized, with the floating-point
    operations of ``v2.ToDtype(float32, scale=True)`` then ``v2.Normalize``, so the same values."""
    return F.normalize(x.mul_(1.0 / 255), list(IMAGENET_MEAN), list(IMAGENET_STD), inplace=True)


def train_augmentation(image_size: int) -> TrainAugmentation:
    """The training augmentation of ``image_size``; below 64 px (the demo's synthetic stand-in) the
    random crop keeps at least half of the image and colours are not jittered (see
    ``pil_classification_transforms``)."""
    if image_size < 64:
        return TrainAugmentation(image_size, scale=(0.5, 1.0), jitter=None)
    return TrainAugmentation(image_size)


def classification_transforms(*, train: bool, image_size: int, normalize: bool = True) -> Callable[[Any], Tensor]:
    """ImageNet-style augmentation; output float32 (3, image_size, image_size), normalized. Takes a
    PIL image or a uint8 (3, H, W) tensor (``ClassificationDataset(decode="tensor")``, faster).

    Training: ``train_augmentation`` for one image; a loader that feeds a device should run its
    ``sample`` in the workers and ``finish`` per batch instead. Evaluation: resize the short side to
    image_size / 0.875, centre crop. ``normalize`` False (evaluation only): uint8 (3, image_size,
    image_size), a quarter of the memory of float32 for images kept in memory; ``normalize_images``
    finishes them batch by batch.
    """
    if train and not normalize:
        raise ValueError("training transforms always normalize")
    if train:
        return train_augmentation(image_size)
    return pil_classification_transforms(train=False, image_size=image_size, normalize=normalize)


def normalize_images(x: Tensor) -> Tensor:
    """uint8 images (B, 3, H, W) -> float32, normalized exactly as ``classification_transforms`` does."""
    return _as_float(x, lambda chunk, rows: _scale_and_normalize(chunk))


def read_split(path: Path) -> dict:
    """A classification split.json with its ``root`` and ``val_root`` as absolute paths (the split
    stage records folders under the split's own folder relative to it: ``portable_path``)."""
    split = read_json(path)
    for key in ("root", "val_root"):
        if split.get(key):
            split[key] = str(recorded_path(split[key], Path(path).parent))
    return split
