"""The one check every stage's settings pass before they become typed arguments."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["known_keys"]


def known_keys(cls: type, d: dict[str, Any], what: str) -> dict[str, Any]:
    """A copy of ``d``; ValueError naming the unknown keys (and the known ones) if ``d`` has keys
    that are not fields of the dataclass ``cls`` (a typo in the config stops the job at once)."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} settings must be a mapping, got {d!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}")
    return dict(d)
