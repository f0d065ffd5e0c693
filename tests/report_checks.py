"""The HTML report (`snakemake --report`) of a workdir where the workflow has run: every figure and
table is in it, embedded, under its experiment and kind, with a caption that rendered.

Snakemake 9 writes the results into the page as JavaScript data, read back here:
``var results = {path: {name, caption (HTML), labels, mime_type, data_uri, ...}}``,
``var categories = {category: {subcategory: [path, ...]}}`` and ``var workflow_desc = "<html>"``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path
from typing import Any

import yaml

from workflow import snakemake

__all__ = ["assert_report", "expected_results", "read_report"]

METHODS = ["detnas", "random", "clsnas", "scratch", "shufflenetv2"]  # each retrained: two training curves
PRETRAIN_CATEGORY = "supernet pre-training"
MIME = {".png": "image/png", ".csv": "text/csv"}


def expected_results(config: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """path -> (category, subcategory) of every result the report of the default target (the demo
    experiment's results and what they need) must hold; ``config`` as written (the micro config sets
    ``random_archs.count``)."""
    name = config["demo_experiment"]
    e = config["experiments"][name]
    randoms = [f"random_arch_{i}" for i in range(1, e["random_archs"]["count"] + 1)]
    d = f"results/{name}"
    expected = {
        f"{d}/comparison.csv": (name, "comparison"),
        f"{d}/comparison.png": (name, "comparison"),
        f"{d}/comparison_summary.csv": (name, "comparison"),
        f"{d}/ledger.csv": (name, "cost"),
        f"{d}/search_curves.png": (name, "search curves"),
        f"{d}/ranking.png": (name, "ranking quality"),
        f"{d}/architectures.png": (name, "architectures"),
        f"results/pretrain/{e['pretrain']}/curves.png": (PRETRAIN_CATEGORY, "training curves"),
    }
    for init in ("pretrained", "scratch"):
        expected[f"{d}/supernet_{init}/curves.png"] = (name, "training curves")
    if e.get("latency") is not None or (e.get("search") or {}).get("max_latency_ms") is not None:
        expected[f"{d}/latency/validation.png"] = (name, "latency")  # the latency table against whole backbones
    for method in METHODS + randoms:
        for half in ("classifier", "detector"):
            expected[f"{d}/{method}/retrain/{half}_curves.png"] = (name, "training curves")
        expected[f"{d}/{method}/retrain/detections.png"] = (name, "detections")  # ground truth and predictions
    return expected


def _script_value(html: str, script_id: str, name: str) -> Any:
    m = re.search(rf'<script id="{script_id}">\s*var {name} = (.*?);\s*</script>', html, flags=re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def read_report(html: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[str]]], str]:
    """(results, categories, front page HTML) as embedded in a Snakemake 9 report."""
    return (_script_value(html, "results", "results"), _script_value(html, "categories", "categories"),
            _script_value(html, "workflow-desc", "workflow_desc"))


def _assert_rendered(what: str, html: str) -> None:
    """Text that docutils and Jinja rendered cleanly: something to read, no template syntax left,
    no docutils error (an unknown reference, a bad directive becomes a "system-message" block)."""
    text = re.sub(r"<[^>]+>", " ", html)
    assert len(text.split()) >= 20, f"{what}: caption missing or too short: {html!r}"
    assert "system-message" not in html, f"{what}: the caption did not render cleanly:\n{html}"
    assert "{{" not in text and "{%" not in text, f"{what}: Jinja left in the caption:\n{html}"


def assert_report(wd: Path) -> None:
    """Build results/report.html in ``wd`` (the workflow has run there) and check what it embeds."""
    snakemake(wd, "--report", "results/report.html")
    html = (wd / "results" / "report.html").read_text()
    results, categories, front = read_report(html)
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    expected = expected_results(config)

    placed = {path: (cat, sub) for cat, subs in categories.items() for sub, paths in subs.items() for path in paths}
    missing = sorted(set(expected) - set(results))
    assert not missing, f"not in the report: {missing}\nin it: {sorted(results)}"
    assert "Other" not in categories, f"results without a category: {categories['Other']}"
    for path, where in expected.items():
        assert placed.get(path) == where, f"{path}: under {placed.get(path)}, expected {where}"

    for path, res in results.items():
        file = wd / path
        assert res["mime_type"] == MIME.get(file.suffix, res["mime_type"]), (path, res["mime_type"])
        # embedded, not linked: the page alone shows the result
        assert base64.b64decode(res["data_uri"].split("base64,", 1)[1]) == file.read_bytes(), path
        _assert_rendered(path, res["caption"])

    # the comparison table is in its caption, one row per row of comparison.csv
    name = config["demo_experiment"]
    table = results[f"results/{name}/comparison.csv"]["caption"]
    rows = (wd / f"results/{name}/comparison.csv").read_text().splitlines()[1:]
    assert "<table" in table and all(f"<td>{row.split(',')[0]}</td>" in table for row in rows), table
    assert "learning rate" in results[f"results/{name}/detnas/retrain/detector_curves.png"]["caption"]

    # where every result in a kind is labelled, the report lists it by its labels: they must tell the
    # results apart (two with the same labels show as one)
    for cat, subs in categories.items():
        for sub, paths in subs.items():
            labels = [results[p]["labels"] for p in paths]
            if all(labels):
                keys = [tuple(sorted(lab.items())) for lab in labels]
                dupes = {k for k in keys if keys.count(k) > 1}
                assert not dupes, f"{cat} / {sub}: results with the same labels {dupes}"

    _assert_rendered("front page", front)
    assert f"showCategory('{name}')" in front, "the front page names (and links) the experiment"
    _assert_front_page_answers(wd, front, name)


def _assert_front_page_answers(wd: Path, front: str, name: str) -> None:
    """The front page opens on the answer: a title naming the project and the experiment, then the
    experiment's section with its comparison table (every row of comparison_summary.csv, best first)
    and the comparison figure embedded, before anything else."""
    title = re.search(r"<h1[^>]*>(.*?)</h1>", front, flags=re.S)
    assert title and "detnas" in title.group(1) and name in title.group(1), front[:500]
    sections = re.findall(r'<div class="section" id="([^"]+)">', front)
    assert sections and sections[0] == name.replace("_", "-"), sections  # docutils ids: "shapes_fpn" -> "shapes-fpn"
    first = front.split(f'<div class="section" id="{sections[0]}">', 1)[1].split('<div class="section"', 1)[0]
    assert "<table" in first and "<img" in first, first[:2000]
    assert first.index("<table") < first.index("<img")
    with open(wd / f"results/{name}/comparison_summary.csv", newline="") as f:
        rows = [row[0] for row in list(csv.reader(f))[1:]]
    table = first[first.index("<table"):first.index("</table>")]
    cells = [html.unescape(c) for c in re.findall(r"<tr><td>([^<]*)</td>", table)]
    assert cells == rows and len(rows) >= 6, (cells, rows)
    src = re.search(r'<img[^>]*src="data:image/png;[^"]*base64,([^"]+)"', first)
    assert src and base64.b64decode(src.group(1)) == (wd / f"results/{name}/comparison.png").read_bytes()
    assert "spent" in first[first.index("<img"):] and first.count("<table") == 2  # then the ledger's table
