"""What the figures share: one colour per method, taken from ``style.METHOD_COLORS`` by every figure;
AP and top-1 axes labelled as fractions and never magnifying a fourth-decimal gap; the search
curves' band explained in the legend, where no note can hide behind it."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgba

import detnas.plots.archs as archs_plot
import detnas.plots.comparison as comparison_plot
import detnas.plots.ranking as ranking_plot
import detnas.plots.search as search_plot
from detnas.plots import style
from detnas.search import Candidate
from detnas.space import get_space

# colours no figure would pick by itself: a figure that draws them took them from the mapping
ODD = {"detnas": "#010203", "random": "#0a0b0c", "clsnas": "#111213", "scratch": "#1a1b1c",
       "shufflenetv2": "#212223", "shufflenetv2_unscaled": "#2a2b2c", "random_archs": "#313233"}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot modules draw, kept open instead of saved, with ``ODD`` as the mapping."""
    drawn = []
    for module in (archs_plot, comparison_plot, ranking_plot, search_plot):
        monkeypatch.setattr(module, "save", lambda fig, path: drawn.append(fig))
    for method, color in ODD.items():
        monkeypatch.setitem(style.METHOD_COLORS, method, color)
    return drawn


def _history(offset: float, repeats: int = 1) -> list[list[Candidate]]:
    return [[Candidate(f"0000000{g}", g, 0.3 + offset + 1e-4 * (g + r), "random") for g in range(3)]
            for r in range(repeats)]


def test_one_colour_per_method_in_every_figure(figures):
    assert style.method_color("random_arch_7") == style.method_color("random archs (n=20)") == ODD["random_archs"]
    assert style.method_color("detnas+scratch") == ODD["detnas"] and style.method_color("coco_fpn_300m") == "0.2"

    # comparison: bars, the random architectures' point, the search curves
    table = pd.DataFrame({"method": ["detnas", "random", "shufflenetv2_unscaled", "random archs (n=2)"],
                          "AP": [0.3, 0.29, 0.2, 0.25], "AP_std": [None, None, None, 0.01], "mflops": [36.0] * 4,
                          "top1": [0.5] * 4})
    curves = {m: pd.DataFrame({"generation": [0, 1], "fitness": [0.2, 0.3]}) for m in ("detnas", "random")}
    comparison_plot.plot_comparison(table, curves, "unused.png", title="t")
    ap, *_, search = figures[-1].axes[:4]
    assert [to_hex(b.get_facecolor()) for b in ap.patches[:4]][:3] == [ODD["detnas"], ODD["random"],
                                                                      ODD["shufflenetv2_unscaled"]]
    assert to_hex(ap.lines[-1].get_color()) == ODD["random_archs"]  # the mean's marker
    assert [to_hex(line.get_color()) for line in search.lines] == [ODD["detnas"], ODD["random"]]

    # search curves: both lines of a method in its colour
    search_plot.plot_search_curves({"random": _history(0.0), "detnas": _history(0.01)}, "unused.png", population=2,
                                   ylabel="mmAP (0-1)")
    assert [to_hex(line.get_color()) for line in figures[-1].axes[0].lines] == [ODD["random"]] * 2 + [ODD["detnas"]] * 2

    # ranking: every point in its (first) method's colour, the random architectures in theirs
    points = [{"label": label, "methods": label.split("+"), "test_value": 0.1 * i, "top1": 0.5,
               "fitness": {"detection": {"value": 0.2 + 0.1 * i}}} for i, label in
              enumerate(("detnas+scratch", "clsnas", "shufflenetv2_unscaled", "random_arch_1"), start=1)]
    ranking_plot.plot_ranking({"metric": "AP", "points": points, "sides": {"detection": {
        "n": 4, "kendall_tau": 1.0, "spearman_rho": 1.0, "fitness_metric": "AP"}}}, "unused.png", title="t")
    ax = figures[-1].axes[0]
    assert [to_hex(c.get_facecolor()[0]) for c in ax.collections] == [
        ODD["detnas"], ODD["clsnas"], ODD["shufflenetv2_unscaled"], ODD["random_archs"]]
    assert ax.get_xlabel() == "supernet fitness (AP, 0-1)" and ax.get_ylabel() == "retrained: test AP (0-1)"

    # architectures: a method's row label in its colour, any other label black
    tiny = get_space("tiny")
    rows = [(name, tiny, tiny.parse("01233210")) for name in ("random", "random_arch_1", "my encoding")]
    archs_plot.plot_architectures(rows, "unused.png", title="t")
    labels = figures[-1].axes[0].get_yticklabels()
    assert [to_rgba(t.get_color()) for t in labels] == [to_rgba(ODD["random"]), to_rgba(ODD["random_archs"]),
                                                        to_rgba("black")]


def test_search_band_is_a_legend_entry_and_tiny_gaps_look_tiny(figures):
    search_plot.plot_search_curves({"detnas": _history(0.0003, repeats=3), "random": _history(0.0, repeats=3)},
                                   "unused.png", population=2, ylabel="mmAP (search split, 0-1)")
    ax = figures[-1].axes[0]
    assert not ax.texts  # no note in a corner, where the legend may lie over it
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert entries[-1] == "band: min to max over the runs" and len(entries) == 5
    lo, hi = ax.get_ylim()
    assert hi - lo >= style.METRIC_SPAN and lo >= 0

    search_plot.plot_search_curves({"detnas": _history(0.0)}, "unused.png", population=2, ylabel="mmAP")
    assert "band: min to max over the runs" not in [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]


def test_min_span_keeps_a_fraction_within_zero_and_one():
    fig, ax = style.plt.subplots()
    for (lo, hi), want in (((0.3001, 0.3004), (0.27525, 0.32525)), ((0.0, 0.001), (0.0, 0.05)),
                           ((0.99, 0.999), (0.95, 1.0)), ((0.1, 0.6), (0.1, 0.6))):
        ax.set_ylim(lo, hi)
        style.min_span(ax)
        assert ax.get_ylim() == pytest.approx(want)
    style.plt.close(fig)
