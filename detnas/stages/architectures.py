"""The ``plot-archs`` command: chosen, published or typed-in architectures drawn side by side.

An item is a published name (``detnas.archs.PUBLISHED``, or a FLOPs-matched baseline of
``SCALED_BASELINES``), a ``space:encoding`` string (``small:21202112331300313132``) or an arch.json
file as the search stage writes it (keys ``arch`` and ``space``, e.g. ``"tiny@w1.0937"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..archs import PUBLISHED, SCALED_BASELINES, get_published, scaled_shufflenetv2
from ..io import read_json
from ..plots.archs import plot_architectures
from ..space import Arch, SearchSpace, get_space

__all__ = ["resolve_arch", "run_plot_archs"]

_MAX_LABEL = 20  # characters of a default label: longer encodings keep their first and last 4 digits


def _known() -> str:
    return ", ".join([*PUBLISHED, *SCALED_BASELINES])


def _from_file(path: Path) -> tuple[str, SearchSpace, Arch]:
    data: Any = read_json(path)
    if not isinstance(data, dict) or "arch" not in data or "space" not in data:
        raise ValueError(f"{path}: not an arch.json (needs the keys 'arch' and 'space')")
    try:
        space = get_space(str(data["space"]))
        arch = space.parse(str(data["arch"]))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    # results/<experiment>/<method>/search/arch.json: the folder names the method (scratch's search
    # writes method "detnas", the EA it runs)
    label = path.parent.parent.name if path.parent.name == "search" else str(data.get("method") or path.stem)
    return label, space, arch


def resolve_arch(item: str) -> tuple[str, SearchSpace, Arch]:
    """(default label, space, architecture) of one item; ValueError names the item and, for an
    unknown name, lists the known ones."""
    if item in PUBLISHED:
        return (item, *get_published(item))
    if item in SCALED_BASELINES:
        entry = SCALED_BASELINES[item]
        match = scaled_shufflenetv2(entry.space, entry.mflops)
        return item, match.space, match.arch
    path = Path(item)
    if item.endswith(".json") or path.is_file():
        return _from_file(path)
    if ":" in item:
        space_name, encoding = item.split(":", 1)
        try:
            space = get_space(space_name)
            arch = space.parse(encoding)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        label = item if len(item) <= _MAX_LABEL else f"{space_name}:{encoding[:4]}\u2026{encoding[-4:]}"
        return label, space, arch
    raise ValueError(f"unknown architecture {item!r}: give a published name ({_known()}), "
                     f"a space:encoding (e.g. small:{PUBLISHED['coco_fpn_300m'].encoding}) or an arch.json file")


def run_plot_archs(items: Sequence[str], *, out: Path, title: str, labels: Sequence[str] = (),
                   published: bool = False) -> list[tuple[str, SearchSpace, Arch]]:
    """Draw ``items`` (then every published architecture when ``published``) to ``out``; returns the rows.

    ``labels`` name the first ``len(labels)`` items, in order; the others keep their default label
    (the published name, the method folder or ``method`` of an arch.json, the space:encoding).
    """
    if len(labels) > len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} architectures: give at most one --label per item")
    rows = [resolve_arch(item) for item in items]
    rows = [(label, space, arch) for label, (_, space, arch) in zip(labels, rows)] + rows[len(labels):]
    if published:
        rows += [resolve_arch(name) for name in PUBLISHED]
    if not rows:
        raise ValueError("nothing to draw: give architectures (published names, space:encoding, arch.json files) "
                         "or --published")
    plot_architectures(rows, out, title=title)
    print(f"{out}: {len(rows)} architectures")
    return rows
