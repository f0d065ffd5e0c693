"""What each network of an experiment's comparison is, in a few plain words.

comparison.csv and comparison.png name the rows by method (``detnas``, ``shufflenetv2_unscaled``,
...): a reader who has not read the paper needs the row's ``network`` too, the one line that says
how the network was found or built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTIONS", "OUTSIDE_BUDGET", "network_description", "random_archs_description"]

# the searched networks: which supernet they were searched on, and for what
DESCRIPTIONS: dict[str, str] = {
    "detnas": "DetNAS: EA on the detection supernet fine-tuned from the pre-trained supernet",
    "random": "random search on the same supernet",
    "clsnas": "ClsNAS: EA for classification top-1 on the pre-trained supernet",
    "scratch": "DetNAS-scratch: EA on a detection supernet trained from scratch",
}
# training-free: no supernet, no training before the retraining
DESCRIPTIONS |= {
    "flops_max": "control: the feasible architecture with the most backbone FLOPs (no search, no training)",
    "params_max": "control: the feasible architecture with the most backbone parameters (no search, no training)",
    "synflow": "training-free: EA with SynFlow of a randomly initialized network as fitness (data-free)",
    "naswot": "training-free: EA with NASWOT (ReLU-code kernel) of a randomly initialized network as fitness",
    "zico": "training-free: EA with ZiCo (gradient mean/std) of a randomly initialized network as fitness",
    "mae_entropy": "training-free: EA with MAE-DET's multi-scale entropy of a random network as fitness (data-free)",
}
OUTSIDE_BUDGET = "outside the budget"
_OWN_WIDTHS = "ShuffleNetV2 at the space's own widths"


def _width_factor(final: dict[str, Any]) -> float:
    """The ShuffleNetV2's width factor: final.json's ``width_factor``, else the ``@w<factor>`` of its
    space name (``small@w1.0703``), else 1 (the space as it is)."""
    if isinstance(final.get("width_factor"), (int, float)):
        return float(final["width_factor"])
    space = str(final.get("space") or "")
    try:
        return float(space.split("@w", 1)[1]) if "@w" in space else 1.0
    except ValueError:
        return 1.0


def network_description(final: dict[str, Any], *, max_mflops: float | None) -> str:
    """The row's ``network`` of one final.json (its ``method`` decides), under the experiment's
    FLOPs limit ``max_mflops`` (None: no limit).

    Without a limit there is nothing to scale the hand-crafted ShuffleNetV2 to: the workflow's
    ``shufflenetv2`` is then the all-3x3 path at the space's own widths, the very network
    ``shufflenetv2_unscaled`` is, and both rows say so."""
    method = str(final.get("method") or "")
    if method in DESCRIPTIONS:
        return DESCRIPTIONS[method]
    if method == "shufflenetv2":
        if max_mflops is None:
            return f"{_OWN_WIDTHS} (no FLOPs limit to scale to: the same network as shufflenetv2_unscaled)"
        return f"ShuffleNetV2 scaled to the FLOPs limit (width x{_width_factor(final):.2f})"
    if method == "shufflenetv2_unscaled":
        if max_mflops is None:
            return f"{_OWN_WIDTHS} (no FLOPs limit: the same network as shufflenetv2)"
        return _OWN_WIDTHS
    if method.startswith(("published_", "reference_")):
        what = final.get("description") or method.split("_", 1)[1]
        if method.startswith("reference_"):
            return f"published: {what}, as a reference ({OUTSIDE_BUDGET})"
        return f"published: {what}, retrained as published (no search)"
    if method.startswith("random_arch_"):
        return f"random architecture {method.removeprefix('random_arch_')} {_under(max_mflops)}"
    return method


def random_archs_description(n: int, *, max_mflops: float | None) -> str:
    """The ``network`` of the random architectures' summary row: "mean of N random architectures
    under the FLOPs limit"."""
    return f"mean of {n} random architectures {_under(max_mflops)}"


def _under(max_mflops: float | None) -> str:
    return "drawn from the whole space (no FLOPs limit)" if max_mflops is None else "under the FLOPs limit"
