"""The methods of an experiment side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .style import integer_axis, plt, save, zero_floor

__all__ = ["plot_comparison"]


def plot_comparison(table: Any, curves: dict[str, Any], path: str | Path, *, title: str) -> None:
    """Methods side by side (test mmAP, backbone MFLOPs, top-1) and the search curves.

    ``table``: a pandas DataFrame with method, AP, mflops, top1 (and ``<col>_std`` for a row that is
    a mean, drawn as a point with an error bar); ``curves``: method -> history DataFrame
    (generation, fitness) of a search.
    """
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    methods = list(table["method"])
    colors = [f"C{i}" for i in range(len(methods))]
    # a row with a spread (``<col>_std``: the random architectures) is a point with an error bar
    spread = table["AP_std"].notna() if "AP_std" in table else [False] * len(methods)
    # the experiment's headline figure by its name: COCO mmAP (AP), VOC 2007 mAP@0.5 (mAP50_voc07)
    primary = "primary_value" if "primary_value" in table else "AP"
    named = table["primary_metric"].dropna() if "primary_metric" in table else []
    primary_label = f"test {named.iloc[0]}" if len(named) else "test mmAP"
    for ax, col, label in zip(axes[:3], (primary, "mflops", "top1"),
                              (primary_label, "backbone MFLOPs (224x224)", "top-1 (classification val)")):
        values = [float(v) if v == v and v is not None else 0.0 for v in table[col]]
        errors = table[f"{col}_std"] if f"{col}_std" in table else [float("nan")] * len(methods)
        bars = ax.bar(methods, [0.0 if s else v for v, s in zip(values, spread)], color=colors)
        ax.bar_label(bars, labels=["" if s else (f"{v:.3f}" if col != "mflops" else f"{v:.1f}")
                                   for v, s in zip(values, spread)], fontsize=7)
        for x, (v, e, s) in enumerate(zip(values, errors, spread)):
            if s:
                ax.errorbar(x, v, yerr=0.0 if e != e else float(e), fmt="o", color=colors[x], capsize=4)
                ax.annotate(f"{v:.3f}" if col != "mflops" else f"{v:.1f}", (x, v), xytext=(6, 0),
                            textcoords="offset points", fontsize=7, va="center")
                if col == primary and e == e:  # the noise yardstick: the random architectures' mean +- std
                    ax.axhspan(v - float(e), v + float(e), color=colors[x], alpha=0.15, zorder=0,
                               label="random archs: mean +- std (noise)")
                    ax.legend(fontsize=7, loc="lower right")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(bottom=0)  # AP, MFLOPs and top-1 are never negative: no axis below zero
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[3]
    for i, (method, hist) in enumerate(curves.items()):
        # best so far per generation, the mean over the search's repeats (one repeat without the column)
        repeats = [g for _, g in hist.groupby("repeat")] if "repeat" in hist else [hist]
        gens = sorted(hist["generation"].unique())
        best = [sum(r[r["generation"] <= g]["fitness"].max() for r in repeats) / len(repeats) for g in gens]
        label = method if len(repeats) == 1 else f"{method} (mean of {len(repeats)})"
        ax.plot(gens, best, "-o", ms=3, color=f"C{methods.index(method) if method in methods else i}", label=label)
    ax.set_title("search: best mmAP so far (search split)", fontsize=10)
    ax.set_xlabel("generation")
    integer_axis(ax.xaxis)
    zero_floor(ax)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
