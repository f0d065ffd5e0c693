"""A user's own image files, as ``detect`` and ``export`` take them: listed from files and folders,
given image ids (those of an annotation file where a file is one of its images), and decoded by the
pipeline's one decoder (``detnas.data.images``: EXIF-oriented 8-bit RGB, grayscale and palette
images converted), so a file is seen exactly as training and evaluation see it.

``ImageFiles`` is an ``ImageSource`` of ``detnas.evaluate``: the same batching and forward as the
evaluate stage run on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from .coco import file_key, load_coco_json, resolve_image
from .errors import DataError
from .images import read_rgb8

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "annotation_ids", "list_image_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_image_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files among ``paths``, in the order given; a folder stands for its own image files
    (``IMAGE_SUFFIXES``, any case; not its subfolders), sorted by name. A file named twice (or through
    a link) is listed once.

    DataError naming the path: it does not exist, a file given by name is not one of those formats,
    or nothing is left to list."""
    if not paths:
        raise DataError("no images given")
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted((p for p in given.iterdir() if p.is_file() and _is_image(p)), key=lambda p: p.name)
            if not found:
                raise DataError(f"{given}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
        elif given.is_file():
            if not _is_image(given):
                raise DataError(f"{given}: not an image file by its name ({', '.join(IMAGE_SUFFIXES)})")
            found = [given]
        else:
            raise DataError(f"{given}: no such file or folder")
        for p in found:
            key = file_key(p)
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files


def annotation_ids(files: Sequence[Path], ann_file: Path) -> tuple[list[int], list[dict[str, Any] | None]]:
    """The image id of each file and the image entry of ``ann_file`` it is (None where it is none).

    A file is an image of the annotation file when it is the very file an entry names, resolved
    against the file's image roots (``detnas.image_roots``, the pipeline's internal format), or,
    failing that (a plain COCO file names no folder), when its name is the base name of exactly one
    entry's ``file_name``. The others get new ids above the file's largest, in order, so that
    ``detections.json`` never claims an image of the annotation file it is not."""
    data = load_coco_json(ann_file)
    images = [im for im in data["images"] if isinstance(im, dict) and "id" in im and "file_name" in im]
    roots = [Path(r) for r in (data.get("detnas") or {}).get("image_roots", [])]
    by_file: dict[tuple[int, int], dict[str, Any]] = {}
    if roots:
        for im in images:
            path = resolve_image(im["file_name"], roots)
            if path is not None:
                by_file.setdefault(file_key(path), im)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for im in images:
        by_name.setdefault(Path(str(im["file_name"])).name, []).append(im)
    next_id = max((int(im["id"]) for im in images), default=0) + 1
    ids: list[int] = []
    entries: list[dict[str, Any] | None] = []
    for f in files:
        entry = by_file.get(file_key(f))
        if entry is None and len(by_name.get(f.name, [])) == 1:
            entry = by_name[f.name][0]
        if entry is None:
            ids.append(next_id)
            next_id += 1
        else:
            ids.append(int(entry["id"]))
        entries.append(entry)
    taken: dict[int, Path] = {}
    for f, i in zip(files, ids):
        if i in taken:
            raise DataError(f"{f} and {taken[i]} are both image {i} of {ann_file}; give each image once")
        taken[i] = f
    return ids, entries


@dataclass
class ImageFiles:
    """Image files to run a detector on (an ``ImageSource``): ``image_ids[i]`` is ``paths[i]``'s id.

    ``sizes`` holds each image's (width, height) once it has been decoded (oriented as the decoder
    turns it); where ``expected`` gives an annotation's entry, the decoded size must be its
    width x height (boxes annotated on another size would be evaluated against the wrong pixels)."""

    paths: list[Path]
    image_ids: list[int]
    category_ids: list[int]
    expected: list[dict[str, Any] | None] | None = None
    decode_threads: int = 2
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.image_ids):
            raise ValueError(f"{len(self.paths)} files but {len(self.image_ids)} image ids")

    def __len__(self) -> int:
        return len(self.paths)

    def decoded(self, lo: int, hi: int) -> list[Tensor]:
        """Images ``lo:hi`` as uint8 (3, H, W) RGB; a DataError names a file that does not decode."""
        out = []
        for i in range(lo, min(hi, len(self.paths))):
            image = read_rgb8(self.paths[i])
            h, w = image.shape[-2:]
            entry = self.expected[i] if self.expected is not None else None
            if entry is not None and (entry.get("width"), entry.get("height")) != (w, h):
                raise DataError(f"image {self.paths[i]} is {w}x{h} (WxH) but its annotation entry "
                                f"{entry['file_name']!r} (id {entry['id']}) says {entry.get('width')}x{entry.get('height')}")
            self.sizes[i] = (int(w), int(h))
            out.append(image)
        return out
