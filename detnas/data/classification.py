"""ImageFolder-layout classification data (ImageNet or a stand-in) for supernet pre-training.

``<root>/<class name>/<image>``, scanned with torchvision's ImageFolder machinery. A seeded
held-out subset of the TRAIN folder is ClsNAS's search validation (SPOS: 50,000 ImageNet images);
samples are named by their path relative to the root, so a split is a plain JSON list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset
from torchvision.transforms import v2

from .coco import DataError, part_count

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationDataset",
    "classification_transforms",
    "normalize_images",
    "scan_image_folder",
    "split_classification",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    rel = [(Path(os.path.relpath(path, root)).as_posix(), idx) for path, idx in samples]
    return classes, rel


def split_classification(root: Path, *, holdout: int | float, seed: int) -> dict:
    """A seeded held-out subset of the train folder ``root``, as a JSON-able dict.

    ``holdout``: an int is a number of images (SPOS/ClsNAS: 50,000), a float in (0, 1) a fraction.
    Returns ``{"root": absolute root, "classes": [...], "holdout": [sorted relative paths]}``;
    train on the rest with ``ClassificationDataset(root, exclude=set(holdout))``. A holdout that
    takes every training image of a class is a DataError naming the classes: the classifier could
    not learn them, so the draw is refused rather than trained on.
    """
    root = Path(root).absolute()
    classes, samples = scan_image_folder(root)
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


class ClassificationDataset(Dataset):
    """``(transform(PIL image), class index)`` over an ImageFolder-layout root (train or val).

    ``include``: only these relative paths; ``exclude``: all but these (at most one of the two).
    Every listed path must be a sample of ``root``, so a split cannot silently miss its folder.
    """

    def __init__(
        self,
        root: Path,
        *,
        transform: Callable[[Any], Any] | None,
        include: set[str] | None = None,
        exclude: set[str] | None = None,
    ) -> None:
        if include is not None and exclude is not None:
            raise ValueError("ClassificationDataset: give include or exclude, not both")
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
        try:
            image = default_loader(str(path))  # PIL RGB
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: unreadable image ({e})") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def classification_transforms(*, train: bool, image_size: int, normalize: bool = True) -> v2.Compose:
    """ImageNet-style augmentation; output float32 (3, image_size, image_size), normalized.

    Below 64 px (the demo's synthetic stand-in) the random crop keeps at least half of the image and
    colours are not jittered: the default 8% crop would leave a handful of pixels, and jitter would
    blur the synthetic classes' hue bands; short demo schedules learn far less with both.

    ``normalize`` False (evaluation only): uint8 (3, image_size, image_size), a quarter of the memory
    of float32 for images kept in memory; ``normalize_images`` finishes them batch by batch.
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


def normalize_images(x: Tensor) -> Tensor:
    """uint8 images (B, 3, H, W) -> float32, normalized as ``classification_transforms`` does."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std
