"""Architectures that were not searched for, and what they cost.

- ``run_fixed_arch`` (the ``fixed-arch`` command): an arch.json, as a search writes it, for an
  architecture you choose, e.g. the hand-crafted ShuffleNetV2, optionally width-scaled to a budget.
- ``run_control_arch`` (``fixed-arch --control``): the training-free controls, the feasible
  architecture with the most backbone MACs or parameters.
- ``run_published_arch`` (``fixed-arch --published``): an architecture the authors published.
- ``run_random_arch`` (``random-arch``): the i-th of N architectures drawn under the FLOPs bounds
  (the paper's Table 5 baseline).
- ``flops_table`` (``flops``): backbone MACs and params of given, published or scaled architectures.
- ``arch_and_settings``: the architecture a training stage is given (``--arch`` / ``--arch-file``)
  and its settings for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..archs import PUBLISHED, SCALED_BASELINES, get_published, scaled_shufflenetv2
from ..flops import CostTable, cost_table, match_width
from ..io import read_json, write_json_atomic
from ..search import random_architectures
from ..space import Arch, SearchSpace, get_space, space_of_arch, split_space_name

__all__ = ["arch_and_settings", "flops_table", "run_control_arch", "run_fixed_arch", "run_published_arch",
           "run_random_arch", "unsearched_arch"]


def unsearched_arch(table: CostTable, space: SearchSpace, arch: Arch, method: str, **extra: Any) -> dict[str, Any]:
    """An arch.json record, as a search writes it, for an architecture that was not searched for."""
    return {"method": method, "arch": str(arch), "space": space.name, **extra, "fitness": None,
            "mflops": table.backbone_macs(arch) / 1e6, "backbone_params_m": table.backbone_params(arch) / 1e6,
            "evaluations": 0}


def run_fixed_arch(*, space: str, arch: str | None, uniform: int | None, scale_to: float | None, method: str,
                   out: Path) -> dict[str, Any]:
    """Write ``out``: ``arch`` (or every block choice ``uniform``) of ``space``; with ``scale_to``
    (MFLOPs), every channel count times the one factor that reaches that budget within 2%."""
    base_space = get_space(space)
    chosen = base_space.uniform(uniform) if arch is None else base_space.parse(arch)
    scaled = base_space
    if scale_to is not None:
        match = match_width(base_space, chosen, scale_to * 1e6)  # within 2% of the budget, or ValueError
        scaled, chosen = match.space, match.arch
    table = cost_table(scaled)
    base, factor = split_space_name(scaled.name)
    result = unsearched_arch(table, scaled, chosen, method, base_space=base, width_factor=factor,
                             scaled_to_mflops=scale_to)
    write_json_atomic(result, out)
    width = f", every channel of {base!r} x{factor:.4f}" if factor != 1.0 else ""
    print(f"{method}: {chosen} of space {scaled.name} ({result['mflops']:.1f} MFLOPs{width}), no search")
    if scale_to is not None:
        print(f"scaled to {scale_to:g} MFLOPs: {result['mflops'] / scale_to - 1:+.2%}")
    return result


def run_control_arch(*, space: str, control: str, min_mflops: float | None, max_mflops: float | None,
                     out: Path, latency_table: Path | None = None, max_latency_ms: float | None = None,
                     search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out``: the training-free control ``control`` (``flops_max``: the feasible architecture
    with the most backbone MACs; ``params_max``: the most backbone parameters) under the FLOPs bounds.

    Exact under the FLOPs bounds alone (``detnas.proxies.control_arch``). With a latency bound
    (``max_latency_ms`` over ``latency_table``) the feasible set is no longer a MACs interval, so the
    control runs the search's EA (``search``: its population, generations, seed) with its count as the
    fitness, like the proxies: the best feasible architecture that budget finds."""
    from ..proxies import control_arch

    search_space = get_space(space)
    table = cost_table(search_space)
    latency = _latency(latency_table, max_latency_ms, search_space)
    how = "the feasible maximum"
    if latency is None:
        arch = control_arch(control, search_space, min_mflops=min_mflops, max_mflops=max_mflops)
        evaluations = None
    else:
        import numpy as np

        from ..latency import both
        from ..search import best, run_search
        from .search import StageSearchSettings

        s = StageSearchSettings.from_dict({**(search or {}), "method": "detnas"})
        count = table.backbone_macs if control == "flops_max" else table.backbone_params
        history = run_search(search_space, lambda archs: [float(count(a)) for a in archs],
                             both(table.within(min_mflops, max_mflops), latency.admits), s.algorithm(),
                             np.random.default_rng(s.seed))
        if not history:
            raise ValueError(f"no architecture of space {space} satisfies the FLOPs bounds [{min_mflops}, "
                             f"{max_mflops}] M and search.max_latency_ms {max_latency_ms}")
        arch, evaluations = search_space.parse(best(history).arch), len(history)
        how = f"the best of {evaluations} EA candidates (a latency bound: no exact enumeration)"
    result = unsearched_arch(table, search_space, arch, control,
                             control={"name": control, "min_mflops": min_mflops, "max_mflops": max_mflops,
                                      "max_latency_ms": max_latency_ms, "evaluations": evaluations})
    if latency is not None:
        result["predicted_latency_ms"] = latency.table.backbone_ms(arch)
    write_json_atomic(result, out)
    bound = "" if latency is None else f" and {max_latency_ms} ms"
    print(f"{control}: {arch} of space {space} ({result['mflops']:.1f} MFLOPs, {result['backbone_params_m']:.3f} M "
          f"params), {how} under [{min_mflops or 0}, {max_mflops or 'inf'}] MFLOPs{bound}, no training")
    return result


def run_published_arch(*, name: str, method: str, reference: bool, out: Path) -> dict[str, Any]:
    """Write ``out``: the architecture the DetNAS authors published as ``name`` (``detnas.archs``),
    as method ``method``; ``reference``: retrained as a reference outside the experiment's budget."""
    space, arch = get_published(name)
    result = unsearched_arch(cost_table(space), space, arch, method, published=name,
                             description=PUBLISHED[name].description, reference=reference)
    write_json_atomic(result, out)
    print(f"{method}: {PUBLISHED[name].description}, {arch} of space {space.name} ({result['mflops']:.1f} MFLOPs)"
          f"{' as a reference outside the budget' if reference else ''}, no search")
    return result


def _latency(latency_table: Path | None, max_latency_ms: float | None, space: SearchSpace):
    """The latency bound of ``--max-latency-ms`` over ``--latency-table`` (None without a bound)."""
    if max_latency_ms is None:
        return None
    if latency_table is None:
        raise ValueError("--max-latency-ms needs the experiment's latency table (--latency-table)")
    from ..latency import latency_bound

    return latency_bound(latency_table, space, max_latency_ms, "search.max_latency_ms")


def run_random_arch(*, space: str, index: int, count: int, seed: int, min_mflops: float | None,
                    max_mflops: float | None, out: Path, latency_table: Path | None = None,
                    max_latency_ms: float | None = None) -> dict[str, Any]:
    """Write ``out``: the ``index``-th (1-based) of ``count`` distinct architectures drawn uniformly
    (seeded) under the FLOPs bounds (and the latency bound by ``latency_table``, where given); the
    same seed draws the same ``count``."""
    search_space = get_space(space)
    table = cost_table(search_space)
    if not 1 <= index <= count:
        raise ValueError(f"--index must be in 1..{count}, got {index}")
    feasible = table.within(min_mflops, max_mflops)
    latency = _latency(latency_table, max_latency_ms, search_space)
    if latency is not None:
        from ..latency import both

        feasible = both(feasible, latency.admits)
    arch = random_architectures(search_space, count, feasible, seed)[index - 1]
    result = unsearched_arch(table, search_space, arch, f"random_arch_{index}",
                             random_archs={"index": index, "count": count, "seed": seed})
    if latency is not None:
        result["predicted_latency_ms"] = latency.table.backbone_ms(arch)
    write_json_atomic(result, out)
    print(f"random architecture {index} of {count} (seed {seed}): {arch} ({result['mflops']:.1f} MFLOPs)")
    return result


def _rows(space: str, arch: str | None, scale_to: float | None,
          names: Sequence[str] | None) -> list[tuple[str, SearchSpace, Arch]]:
    if arch is not None or scale_to is not None:
        base = get_space(space)
        given = base.parse(arch) if arch is not None else base.uniform(0)
        label = "(given)" if arch is not None else "shufflenetv2"
        rows = [(label, base, given)]
        if scale_to is not None:
            match = match_width(base, given, scale_to * 1e6)
            rows.append((f"{label} @{scale_to:g}M", match.space, match.arch))
        return rows
    rows = []
    for name in names or [*PUBLISHED, *SCALED_BASELINES]:
        if name in SCALED_BASELINES:
            entry = SCALED_BASELINES[name]
            match = scaled_shufflenetv2(entry.space, entry.mflops)
            rows.append((name, match.space, match.arch))
        elif name in PUBLISHED:
            rows.append((name, *get_published(name)))
        else:
            raise ValueError(f"unknown architecture name {name!r}; known: {', '.join([*PUBLISHED, *SCALED_BASELINES])}")
    return rows


def _space_extremes(input_size: int) -> list[str]:
    """The scaled baselines' factors and each preset's MACs range, exact and over uniform samples."""
    import numpy as np

    lines = [""]
    for name, entry in SCALED_BASELINES.items():
        lines.append(f"{name}: {entry.description}: every channel count of space {entry.space!r} times "
                     f"{scaled_shufflenetv2(entry.space, entry.mflops).factor:.4f}")
    rng = np.random.default_rng(0)
    for space_name in ("small", "large", "large_x1.8"):
        space = get_space(space_name)
        table = cost_table(space, input_size)
        lo, hi = table.bounds()
        macs = [table.backbone_macs(space.sample(rng)) / 1e6 for _ in range(10_000)]
        p1, p99 = np.percentile(macs, [1, 99])
        lines.append(f"space {space_name}: extremes {lo / 1e6:.1f}-{hi / 1e6:.1f} M MACs; "
                     f"98% of uniformly sampled architectures in {p1:.1f}-{p99:.1f} M")
    return lines


def flops_table(*, space: str = "small", arch: str | None = None, scale_to: float | None = None,
                names: Sequence[str] | None = None, input_size: int = 224) -> list[str]:
    """The lines of the ``flops`` command: backbone MACs (M, at ``input_size``), backbone and
    classifier params of ``arch`` of ``space`` (and its width-scaled version with ``scale_to``), or of
    the named published architectures; with none of these, every published one and the spaces' ranges."""
    lines = [f"{'name':<22} {'space':<18} {'width':>6} {'architecture':<41} {'MACs (M)':>9} "
             f"{'backbone params (M)':>20} {'cls params (M)':>15}"]
    for name, row_space, row_arch in _rows(space, arch, scale_to, names):
        table = cost_table(row_space, input_size)
        lines.append(
            f"{name:<22} {row_space.name:<18} {split_space_name(row_space.name)[1]:6.4f} {str(row_arch):<41} "
            f"{table.backbone_macs(row_arch) / 1e6:9.1f} {table.backbone_params(row_arch) / 1e6:20.2f} "
            f"{table.classifier_params(row_arch) / 1e6:15.2f}"
        )
    if arch is None and scale_to is None and not names:
        lines += _space_extremes(input_size)
    return lines


def arch_and_settings(arch: str | None, arch_file: Path | None, settings: Any) -> tuple[str | None, Any]:
    """The architecture of ``--arch`` / ``--arch-file``, and the stage's settings for it. An arch
    file's ``space`` (e.g. the width-scaled "small@w1.0703" of a FLOPs-matched baseline) replaces the
    settings' space, which must be it or its preset: the file is what was chosen, the config only
    names the preset."""
    if arch_file is None:
        return arch, settings
    data = read_json(arch_file)
    if "arch" not in data:
        raise ValueError(f"{arch_file}: no 'arch' key")
    if "space" in data and isinstance(settings, dict):
        try:
            space = space_of_arch(str(data["space"]), settings.get("space"))
        except ValueError as exc:
            raise ValueError(f"{arch_file}: {exc}") from None
        settings = {**settings, "space": space.name}
    return str(data["arch"]), settings
