"""The ``search-curves`` stage: an experiment's searches side by side against the generation (the
paper's Fig. 2, EA against random search on the same supernet), each as the mean over its repeats
with a min-max band, from the searches' history.csv files."""

from __future__ import annotations

import csv
from pathlib import Path

from ..io import write_json_atomic
from ..plots import plot_search_curves
from ..search import Candidate

__all__ = ["read_history", "run_search_curves"]


def read_history(path: Path) -> list[list[Candidate]]:
    """A search's history.csv as one list of candidates per repeat (a file without a ``repeat``
    column is one repeat), in the order they were scored."""
    repeats: dict[int, list[Candidate]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"generation", "arch", "fitness"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a search history (no column {', '.join(sorted(missing))})")
        for row in reader:
            cand = Candidate(row["arch"], int(row["generation"]), float(row["fitness"]), row.get("origin") or "random")
            repeats.setdefault(int(row.get("repeat") or 0), []).append(cand)
    if not repeats:
        raise ValueError(f"{path}: the search history is empty")
    return [repeats[r] for r in sorted(repeats)]


def run_search_curves(histories: dict[str, Path], *, population: int, png_out: Path, json_out: Path,
                      title: str, ylabel: str = "mmAP (search split, 0-1)") -> None:
    """``histories``: method -> history.csv. Writes the plot and the curves' data (per method and
    generation: mean, min and max over the repeats of the best and the top-``population`` mean)."""
    runs = {method: read_history(path) for method, path in histories.items()}
    drawn = plot_search_curves(runs, png_out, population=population, ylabel=ylabel, title=title)
    write_json_atomic({"title": title, "population": population, "fitness": ylabel, "methods": drawn}, json_out)
    for method, data in drawn.items():
        print(f"{method}: {data['repeats']} repeat(s), best after generation {data['generations'][-1]}: "
              f"mean {data['best']['mean'][-1]:.4g} (min {data['best']['min'][-1]:.4g}, max {data['best']['max'][-1]:.4g})")
