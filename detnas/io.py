"""Atomic outputs and checkpoints.

Every output is written to a temporary name in its own directory and renamed into place, so a job
killed mid-write leaves either the old file or the new one, never half of one. Checkpoints hold only
tensors and plain Python values, so they load with ``torch.load(..., weights_only=True)``.

A checkpoint carries a digest of its content (``_digest``: sha256 over every tensor's dtype, shape
and bytes and the other values' repr, ~1 s per GB), checked on load: a file damaged after it was
written (a flipped bit on disk, a bad copy) is a ValueError naming it, not weights that load and
silently compute something else. Checkpoints written before digests load as before.

A full disk (or quota: ENOSPC, EDQUOT) during a write is a ``DiskFullError`` whose message is one
line: the file, the bytes it needs (at least) and the space left on its filesystem; the temporary
file is removed and the target is left as it was. The command line prints it without a traceback.

``move_aside`` renames a stage's own resumable state that cannot be read (a truncated checkpoint, a
corrupt state file) to ``<name>.corrupt-<UTC time>`` in the same folder, so that a retried job
starts that state afresh instead of failing on the same file again (inputs of a stage are never
moved: an unreadable input stays a ValueError naming it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "DiskFullError",
    "atomic_path",
    "checkpoint_digest",
    "load_checkpoint",
    "move_aside",
    "portable_path",
    "read_json",
    "recorded_path",
    "save_checkpoint",
    "write_json_atomic",
    "write_text_atomic",
]

DIGEST_KEY = "_digest"  # reserved checkpoint key: the digest of the rest (checkpoint_digest)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed for lack of space (ENOSPC) or quota (EDQUOT); the message says how much."""


def _size(n: float) -> str:
    """Bytes for a person: 512 B, 3.4 MiB, 1.2 GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            break
    else:
        n /= 1024
        unit = "TiB"
    return f"{n:.1f} {unit}"


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    ``needed``: the bytes the file will take, if known, for the message of a full disk (otherwise
    the bytes written before it filled up, a lower bound)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _FULL or isinstance(exc, DiskFullError):
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            written = os.path.getsize(tmp)
        except OSError:
            written = 0
        Path(tmp).unlink(missing_ok=True)
        try:
            free = _size(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        want = max(needed or 0, written)
        err = DiskFullError(f"{path}: {'quota exceeded' if exc.errno == errno.EDQUOT else 'disk full'} writing it "
                            f"({os.strerror(exc.errno)}): needs at least {_size(want)}, {free} free on its "
                            f"filesystem; the file is unchanged")
        err.errno = exc.errno
        raise err from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    with atomic_path(path, needed=len(text.encode())) as tmp:
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def portable_path(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``path`` as a file in ``base`` records it: relative to ``base`` where it lies inside (the demo's
    images under results/), so a copied or moved results folder still finds it; else absolute (a
    dataset the config names elsewhere). ``recorded_path`` reads it back."""
    p, b = (Path(os.path.normpath(Path(x).absolute())) for x in (path, base))  # "..", not links, resolved
    try:
        return p.relative_to(b).as_posix() or "."
    except ValueError:
        return str(p)


def recorded_path(text: str, base: str | os.PathLike[str]) -> Path:
    """A path a file in ``base`` recorded (``portable_path``): a relative one is under ``base``."""
    p = Path(text)
    return p if p.is_absolute() else Path(base).absolute() / p


def move_aside(path: str | os.PathLike[str], why: str | None, then: str | None = None) -> Path:
    """Rename the unreadable state file ``path`` to ``<name>.corrupt-<UTC time>`` (same folder) and
    say so in the log (one line, ending with ``then``: what the stage does instead; nothing printed
    when ``why`` is None, for a caller that names it in its own line); returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    os.replace(path, dest)
    if why is not None:
        print(f"{path} cannot be read ({why}); moved it aside to {dest.name}" + (f"; {then}" if then else ""), flush=True)
    return dest


def _walk(obj: Any, h: Any) -> None:
    """Feed ``obj`` into the hash ``h``: nested dicts (keys in sorted order), lists and tuples, tensors
    (dtype, shape, bytes) and any other value's repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k, v in sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            h.update(repr(k).encode() + b":")
            _walk(v, h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj) if isinstance(obj, list) else b"(%d" % len(obj))
        for v in obj:
            _walk(v, h)
        h.update(b"]")
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def checkpoint_digest(obj: dict[str, Any]) -> str:
    """sha256 (hex) of a checkpoint's content, the reserved ``_digest`` key left out."""
    h = hashlib.sha256()
    _walk({k: v for k, v in obj.items() if k != DIGEST_KEY}, h)
    return h.hexdigest()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically (tensors and plain Python values only), with the content's digest
    under ``_digest`` (a ``_digest`` already in ``obj`` is replaced). Written through a Python file,
    so that a full disk is an OSError (ENOSPC) and not the zip writer's RuntimeError."""
    body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    body[DIGEST_KEY] = checkpoint_digest(body)
    with atomic_path(path, needed=_tensor_bytes(body)) as tmp:
        with open(tmp, "wb") as f:
            torch.save(body, f)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its digest (if it has one: older
    checkpoints have none); ValueError names the file if it is unreadable or damaged. The returned
    dict has no ``_digest`` key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        reason = " ".join(str(exc).split())  # one line: torch's unpickling messages span several
        raise ValueError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {reason})") from exc
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        saved = obj.pop(DIGEST_KEY)
        if saved != checkpoint_digest(obj):
            raise ValueError(f"{path}: checkpoint damaged: digest mismatch (its content is not what was saved)")
    return obj
