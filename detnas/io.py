"""Atomic outputs and checkpoints.

Every output is written to a temporary name in its own directory and renamed into place, so a job
killed mid-write leaves either the old file or the new one, never half of one. Checkpoints hold only
tensors and plain Python values, so they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "atomic_path",
    "load_checkpoint",
    "read_json",
    "save_checkpoint",
    "write_json_atomic",
    "write_text_atomic",
]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], *, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; ValueError names the file when it is missing or malformed."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically (tensors and plain Python values only)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; ValueError names the file if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ValueError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
