"""The methods of an experiment side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.patches import Patch

from .style import METRIC_SPAN, integer_axis, method_color, min_span, plt, save, zero_floor

__all__ = ["plot_comparison"]


def _value_label(col: str, v: float) -> str:
    return f"{v:.1f}" if col == "mflops" else f"{v:.3f}"


def plot_comparison(table: Any, curves: dict[str, Any], path: str | Path, *, title: str) -> None:
    """Methods side by side (test metric, backbone MFLOPs, top-1) and the search curves, with a key
    below the panels that says what each row is (the table's ``network`` column).

    ``table``: a pandas DataFrame with method, AP, mflops, top1 (and ``<col>_std`` for a row that is
    a mean, drawn as a point with an error bar and, in the first panel, a band of mean +- std;
    ``network``, the row's description, where present);
    ``curves``: method -> history DataFrame (generation, fitness) of a search. Every method has its
    colour from ``style.METHOD_COLORS``. The metric panels (fractions in [0, 1], COCOeval's unit)
    start at 0 and span at least ``style.METRIC_SPAN``, so that differences in the third or fourth
    decimal look as small as they are.
    """
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    band: Patch | None = None
    methods = list(table["method"])
    colors = [method_color(m) for m in methods]
    # a row with a spread (``<col>_std``: the random architectures) is a point with an error bar
    spread = table["AP_std"].notna() if "AP_std" in table else [False] * len(methods)
    # the experiment's headline figure by its name: COCO mmAP (AP), VOC 2007 mAP@0.5 (mAP50_voc07)
    primary = "primary_value" if "primary_value" in table else "AP"
    named = table["primary_metric"].dropna() if "primary_metric" in table else []
    primary_label = f"test {named.iloc[0]} (0-1)" if len(named) else "test mmAP (0-1)"
    for ax, col, label in zip(axes[:3], (primary, "mflops", "top1"),
                              (primary_label, "backbone MFLOPs (224x224)", "top-1 (classification val, 0-1)")):
        values = [float(v) if v == v and v is not None else 0.0 for v in table[col]]
        errors = table[f"{col}_std"] if f"{col}_std" in table else [float("nan")] * len(methods)
        bars = ax.bar(methods, [0.0 if s else v for v, s in zip(values, spread)], color=colors)
        ax.bar_label(bars, labels=["" if s else _value_label(col, v) for v, s in zip(values, spread)], fontsize=7)
        for x, (v, e, s) in enumerate(zip(values, errors, spread)):
            if s:
                ax.errorbar(x, v, yerr=0.0 if e != e else float(e), fmt="o", color=colors[x], capsize=4)
                ax.annotate(_value_label(col, v), (x, v), xytext=(6, 0), textcoords="offset points", fontsize=7,
                            va="center")
                if col == primary and e == e:  # the noise yardstick: the random architectures' mean +- std
                    ax.axhspan(v - float(e), v + float(e), color=colors[x], alpha=0.15, zorder=0)
                    # explained in the key below the panels: a legend in the panel would cover bars
                    band = Patch(facecolor=colors[x], alpha=0.15, label=f"band in the first panel: {methods[x]}, "
                                 "mean +- std (the noise yardstick)")
        ax.set_title(label, fontsize=10)
        # AP, MFLOPs and top-1 are never negative: no axis below zero; a fraction's axis is at least
        # METRIC_SPAN tall (bars of 0.0012 and 0.0015 are not drawn as one twice the other's size)
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top if col == "mflops" else max(top, METRIC_SPAN))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[3]
    for method, hist in curves.items():
        # best so far per generation, the mean over the search's repeats (one repeat without the column)
        repeats = [g for _, g in hist.groupby("repeat")] if "repeat" in hist else [hist]
        gens = sorted(hist["generation"].unique())
        best = [sum(r[r["generation"] <= g]["fitness"].max() for r in repeats) / len(repeats) for g in gens]
        label = method if len(repeats) == 1 else f"{method} (mean of {len(repeats)})"
        ax.plot(gens, best, "-o", ms=3, color=method_color(method), label=label)
    ax.set_title("search: best mmAP so far (search split, 0-1)", fontsize=10)
    ax.set_xlabel("generation")
    integer_axis(ax.xaxis)
    zero_floor(ax)
    min_span(ax)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    # what each row is, in its colour, and the noise band, below the panels
    networks = table["network"] if "network" in table else [None] * len(methods)
    handles = [Patch(facecolor=c, label=f"{m}: {n}") for m, n, c in zip(methods, networks, colors)
               if isinstance(n, str) and n] + ([band] if band is not None else [])
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
