"""Image files -> what every model of the pipeline is given: uint8 (3, H, W) RGB, one frame, oriented.

One decoder for detection (split check, training, scoring, evaluation) and classification, so that
what the split accepted is exactly what training sees:

- **Orientation**: the EXIF orientation tag is applied (a phone photo stored sideways is turned as
  an image viewer, and so the labelling tool, shows it); the annotated width and height are checked
  against the oriented size.
- **Depth**: a 16-bit PNG (or TIFF) is scaled to 8 bits, ``round(v * 255 / 65535)`` (an 8-bit image
  stored as 16 bits, ``v * 257``, comes back exactly), never passed on as uint16 values up to 65535.
- **Channels**: grayscale, palette, CMYK and alpha images are converted to RGB (alpha dropped).
- **Frames**: an animation (GIF, multi-page TIFF) is refused: which frame the boxes belong to is
  not known.

torchvision decodes JPEG, PNG, WebP and GIF (libjpeg-turbo, libpng, libwebp); what it does not
(BMP, TIFF) goes through PIL with the same rules. A file that does not decode is a ``DataError``
naming it.
"""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

from .errors import DataError

__all__ = ["decode_rgb8", "read_rgb8", "stored_size"]


def _to_uint8(values: Tensor) -> Tensor:
    """16-bit values -> 8-bit, rounded: round(v * 255 / 65535)."""
    return ((values.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)


def _reason(e: RuntimeError) -> str:
    """torchvision's message without its "<function>, <file.cpp>:<line>, " prefix."""
    return re.sub(r"^[^,]*, \S+:\d+, ", "", str(e))


def _pil_rgb8(data: bytes, name: str) -> Tensor:
    """The PIL path (formats torchvision does not decode), under the same rules."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise DataError(f"image {name} has {frames} frames; save the annotated frame as a still image")
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.int64)
                if im.mode == "I" and (arr.min() < 0 or arr.max() > 65535):
                    raise DataError(f"image {name} has 32-bit pixel values; convert it to 8-bit RGB")
                gray = _to_uint8(torch.from_numpy(arr.astype(np.int32)))
                return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
            if im.mode == "F":
                raise DataError(f"image {name} has floating-point pixels; convert it to 8-bit RGB")
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"image {name} is unreadable or corrupt ({e})") from e
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_rgb8(data: Tensor, name: str) -> Tensor:
    """An encoded image's bytes (uint8, 1-D) -> uint8 (3, H, W) RGB under the module's rules;
    ``name`` (the file) is what a ``DataError`` says."""
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as e:
        reason = _reason(e)
        if "Unsupported image file" not in reason:
            if "Animated" in reason:
                raise DataError(f"image {name} is an animation; save the annotated frame as a still image") from e
            raise DataError(f"image {name} is unreadable or corrupt ({reason})") from e
        return _pil_rgb8(data.numpy().tobytes(), name)
    if image.ndim == 4:  # GIF: (frames, 3, H, W)
        if image.shape[0] != 1:
            raise DataError(f"image {name} has {image.shape[0]} frames; save the annotated frame as a still image")
        image = image[0]
    if image.dtype == torch.uint16:
        image = _to_uint8(image)
    elif image.dtype != torch.uint8:
        raise DataError(f"image {name} decodes to {image.dtype} pixels; convert it to 8-bit RGB")
    return image.contiguous()


def read_rgb8(path) -> Tensor:
    """A file as ``decode_rgb8`` gives it."""
    try:
        data = read_file(str(path))
    except RuntimeError as e:
        raise DataError(f"image {path} is unreadable or corrupt ({_reason(e)})") from e
    return decode_rgb8(data, str(path))


def stored_size(path) -> tuple[int, int] | None:
    """(width, height) as stored, before the EXIF orientation (None if PIL cannot tell): what a
    size-mismatch message quotes when the orientation explains it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError):
        return None
