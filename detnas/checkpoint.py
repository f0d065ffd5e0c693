"""Resumable training state, valid only for the exact inputs that made it.

A checkpoint is resumed only when its *resume key* equals the running job's: a hash of the stage's
settings plus a content digest of every input file (initial weights, annotation files, split files).
Paths are not enough: a rerun after an upstream change writes a new supernet at the same path, and
resuming the old state would silently reuse numbers computed from the old one. A checkpoint of other
inputs is discarded, and the log says which input differs.

A checkpoint that cannot be read (empty, truncated, its digest not matching: ``io.load_checkpoint``)
is moved aside to ``last.pt.corrupt-<UTC time>`` with one log line, and the stage starts from step 0:
a requeued job does not fail on the same file again and again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .distributed import Dist
from .io import load_checkpoint, move_aside, save_checkpoint

__all__ = ["Checkpointer", "file_digest", "fingerprint", "resume_key", "stale_reason"]

_CHUNK = 1 << 22  # 4 MiB reads: sha256 runs at ~1.4 GB/s on one core here, a 1 GB supernet in < 1 s


def fingerprint(settings: Any) -> str:
    """A short hash of a stage's settings (JSON, sorted keys)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (hex, 16 characters). Every byte is read: an input replaced at the
    same path with the same size and time stamp is still told apart, at ~1 s per GB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]


def resume_key(settings: Any, inputs: Mapping[str, str | os.PathLike[str] | None]) -> dict[str, Any]:
    """What a resumable state is valid for: the settings' hash and each input file's digest
    (``None`` for an absent optional input, e.g. no initial weights)."""
    return {
        "settings": fingerprint(settings),
        "inputs": {name: None if p is None else file_digest(p) for name, p in sorted(inputs.items())},
    }


def stale_reason(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
    """Why state saved under key ``saved`` is not valid for ``current`` (None: it is valid)."""
    if not saved:
        return "it carries no resume key (written by an older version)"
    if saved.get("settings") != current["settings"]:
        return "the stage's settings differ"
    old, new = saved.get("inputs", {}), current["inputs"]
    changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
    if changed:
        return f"input content differs: {', '.join(changed)}"
    return None


class Checkpointer:
    """``last.pt`` in ``directory``, written atomically by rank 0 every ``every`` steps.

    ``settings`` and ``inputs`` (name -> file) form the resume key (``resume_key``); a checkpoint of
    another key is deleted on ``load``. ``mlflow_run_id`` travels with the checkpoint, so a resumed
    job continues its MLflow run instead of opening a second one.
    """

    def __init__(self, directory: str | Path, *, settings: Any, inputs: Mapping[str, str | os.PathLike[str] | None],
                 every: int, dist: Dist) -> None:
        self.path = Path(directory) / "last.pt"
        # rank 0 reads the inputs once; every rank gets the same key
        self.key = dist.broadcast_object(resume_key(settings, inputs) if dist.is_main else None)
        self.every = max(1, every)
        self.dist = dist
        self.mlflow_run_id: str | None = None
        self._rng: list[dict[str, Any]] | dict[str, Any] | None = None
        self.resumed_progress: dict[str, Any] | None = None  # the resumed run's losses since its last row

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint if it was made from the same settings and inputs, else None (a stale
        one is deleted, an unreadable one moved aside, and the log says why). Every rank calls it."""
        if not self.path.is_file():
            return None
        try:
            state, error = load_checkpoint(self.path), None
        except ValueError as exc:
            state, error = None, str(exc)
        # every rank has read it (and they agree on what they found) before rank 0 moves it
        errors = [e for e in self.dist.all_gather_object(error) if e is not None]
        if errors:
            if self.dist.is_main:
                move_aside(self.path, errors[0].removeprefix(f"{self.path}: "), then="starting from step 0")
            return None
        assert state is not None
        reason = stale_reason(state.get("resume_key"), self.key)
        if reason is not None:
            print(f"checkpoint {self.path} (step {state.get('step')}) is stale: {reason}; deleted it, "
                  f"starting from step 0", flush=True)
            self.dist.barrier()  # every rank has read it before rank 0 deletes it
            self.remove()
            return None
        print(f"resuming from {self.path} at step {state['step']}", flush=True)
        self.mlflow_run_id = state.get("mlflow_run_id")
        return state

    def resume(self, model: nn.Module, optimizer: Any,
               scaler: torch.amp.GradScaler | None = None) -> tuple[int, list[dict[str, float]]]:
        """Load the last valid checkpoint (if any) into ``model``, ``optimizer`` and ``scaler``
        (fp16's gradient scaler); return the steps done and the progress history so far ((0, []) for
        a fresh start). The random number generators' state is kept for ``restore_rng``."""
        state = self.load()
        if state is None:
            return 0, []
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        self._rng = state.get("rng")
        self.resumed_progress = state.get("progress")
        return state["step"], state["history"]

    def restore_rng(self) -> None:
        """Put this rank's torch generators (CPU, and this process's CUDA device) where the resumed
        checkpoint saved them, so its dropout and a detector's proposal sampling continue as in an
        uninterrupted run. Called once the data loader has drawn its workers' seed; a no-op after a
        fresh start. Every rank has its own generators (``distributed.process_seed``) and the
        checkpoint holds each rank's; the augmentation of an image is seeded by the image's visit
        (``engine.SeededDraws``), in the loader workers or not, so it needs no saved state."""
        if self._rng is None:
            return
        saved = self._rng
        # one state per rank (a checkpoint of this world size: the world size is in the resume key);
        # an older checkpoint holds rank 0's only, which every rank then takes
        mine = saved[self.dist.rank] if isinstance(saved, list) else saved
        torch.set_rng_state(mine["cpu"])
        if self.dist.device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.dist.device)
        self._rng = None

    def rng_state(self) -> dict[str, torch.Tensor | None]:
        """This process's torch generators now, as ``restore_rng`` takes them back."""
        cuda = torch.cuda.get_rng_state(self.dist.device) if self.dist.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def due(self, step: int, total: int) -> bool:
        """Whether a checkpoint is saved after completing ``step`` steps: every ``every`` steps, not
        at the very end."""
        return step % self.every == 0 and step < total

    def maybe_save(self, step: int, total: int, state_fn: Callable[[], dict[str, Any]]) -> None:
        """After completing ``step`` steps: save if ``due``."""
        if self.due(step, total):
            self.save(step, state_fn)

    def save(self, step: int, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Save now: ``step`` steps are complete (every rank calls it). Rank 0 writes ``state_fn()``,
        the resume key, the MLflow run and every rank's generator state (gathered here)."""
        rng = self.dist.all_gather_object(self.rng_state())
        if self.dist.is_main:
            state = state_fn()
            state.update(step=step, resume_key=self.key, mlflow_run_id=self.mlflow_run_id, rng=rng)
            save_checkpoint(state, self.path)
        self.dist.barrier()

    def remove(self) -> None:
        if self.dist.is_main:
            self.path.unlink(missing_ok=True)
