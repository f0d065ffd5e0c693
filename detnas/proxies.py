"""Training-free (zero-cost) scores of an architecture, and the FLOPs / parameter controls.

Every proxy scores a FRESH standalone backbone (``build_network``: the detection backbone of the
architecture, stem + C2..C5, randomly initialized from a seed), never a trained supernet. Higher is
better for every proxy. Each works on its own copy of the network it is given, so no parameter,
buffer or gradient of a model passed in changes; the global RNG state is untouched (the seeded
initialization runs inside ``torch.random.fork_rng``, every other draw comes from a local
``torch.Generator``).

- ``synflow`` (Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow", NeurIPS 2020), data-free. On a copy: every BN layer removed (``nn.Identity``, as
  SamsungLabs' zero-cost-nas ``synflow``, which scores a BN-free copy), every parameter replaced by
  its absolute value, float64 (the paper's and zero-cost-nas' double precision). R = sum of the
  network's output (C5) for an all-ones input (1, 3, S, S); the score is the sum over all
  parameters of ``|theta * dR/dtheta|`` (our backbones have no biases, so these are exactly the conv
  weights zero-cost-nas sums). REPORTED AS ITS NATURAL LOG, ln(sum): the sum itself reaches ~1e55
  in the small space and ~1e129 in large_x1.8 (all-Xception, 224 px), beyond float32; float64
  holds it, and OverflowError is raised if it ever does not.
- ``naswot`` (Mellor et al., "Neural Architecture Search without Training", ICML 2021), needs
  images. The binary code of an image is the sign pattern (x > 0) of every ReLU's output; for the N
  images of the batches (concatenated into one batch: the kernel compares every pair), K[i, j] =
  sum over ReLUs of the units where codes i and j agree (N_A = c c^T + (1 - c)(1 - c)^T). The
  score is ln|det K| (slogdet). BN in training mode (batch statistics), as the authors' code runs
  its networks.
- ``zico`` (Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients",
  ICLR 2023), needs images, at least 2 batches. One backward pass per batch (BN in training mode);
  for every conv / linear weight tensor (a "layer", BN excluded as in the authors' code), per
  element the mean over batches of |grad| and the std (population, ddof 0) over batches of grad;
  score = sum over layers of ln( sum over elements with std > 0 of mean|grad| / std ). The mean of
  the ABSOLUTE gradient is the paper's Eq. and the authors' code (``np.mean(np.abs(g))``), not
  |mean grad|. The backbone has no classifier and no labels: the default loss is a label-free
  stand-in, ``feature_energy``: sum over the stage features C2..C5 of half their mean square; any
  other ``loss_fn(features: list[Tensor]) -> Tensor`` can be passed.
- ``mae_entropy`` (MAE-DET: Sun et al., "MAE-DET: Revisiting Maximum Entropy Principle in Zero-Shot
  NAS for Efficient Object Detection", ICML 2022), data-free. All conv weights re-drawn from N(0, 1),
  BN removed (with BN the variance is renormalized at every layer and nothing is left to compare),
  a Gaussian N(0, 1) input (1, 3, S, S). The entropy of a Gaussian feature map is, up to a
  constant, ln(std); the score is MAE-DET's multi-scale sum ``sum_i alpha_i ln std(F_i)``, with
  MAE-DET's weights (0, 0, 1, 1, 6) over the five downsampling levels C1..C5: our stem is C1, so
  C2..C5 weigh (0, 1, 1, 6) (``MAE_DET_STAGE_WEIGHTS``). MAE-DET's constant ln(channels) term is
  left out: the stage widths are the same for every architecture of a space.
  Adaptation to the ShuffleNetV2 units of this space: MAE-DET's spaces are ResNet-like, with the
  residual branch summed onto an identity. Here a stride-1 unit shuffles its channels, passes half
  of them through untouched and concatenates the other half's branch (in/2 -> out/2); a stride-2
  unit concatenates a projection branch (depthwise + 1x1) and the main branch. The stage features
  F_i are the stage outputs C2..C5 as the FPN reads them (after the last unit's concat), so the
  untouched half is part of them; with N(0, 1) weights a branch multiplies the std by orders of
  magnitude (~sqrt(fan-in) per conv), so the std of a stage output is that of its branch halves
  and the score measures, like MAE-DET's, how the convolutions on the path grow the signal.
  Convolutions without bias, ReLU, shuffle and concat are positively homogeneous: the forward
  divides every unit's output by its std and adds the ln of that factor to a running log-scale,
  which is exact and keeps the signal inside float32: the std of C5 itself reaches ~1e78 in the
  small space (all-Xception, 224 px) and ~1e181 in large_x1.8.

The controls answer "how good is simply the biggest network under the budget": ``control_arch``
returns the feasible architecture (backbone MFLOPs within the bounds, at 224 px as the search's
constraint) with the most backbone MACs (``flops_max``) or parameters (``params_max``), exactly:
both are sums over blocks of the per-(block, choice) table of ``flops.cost_table`` plus the stem's,
so a dynamic programme over the blocks, keeping for every reachable partial MAC sum its best prefix,
finds the optimum without enumerating 4^20 (or 4^40) paths. Ties go to the lowest encoding.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .detectors import backbone_body
from .flops import INPUT_SIZE, cost_table
from .space import Arch, SearchSpace
from .supernet import _Skeleton

__all__ = [
    "CONTROLS",
    "MAE_DET_STAGE_WEIGHTS",
    "PROXIES",
    "Control",
    "LossFn",
    "Proxy",
    "build_network",
    "control_arch",
    "feature_energy",
    "mae_entropy",
    "naswot",
    "score",
    "score_fn",
    "synflow",
    "zico",
]

LossFn = Callable[[list[Tensor]], Tensor]  # stage features [C2, C3, C4, C5] -> scalar loss

MAE_DET_STAGE_WEIGHTS: tuple[float, ...] = (0.0, 1.0, 1.0, 6.0)  # C2..C5 (MAE-DET: C1..C5 0, 0, 1, 1, 6)


class Proxy(NamedTuple):
    needs_data: bool  # True: ``score`` needs ``batches`` of images
    description: str


PROXIES: dict[str, Proxy] = {
    "synflow": Proxy(False, "SynFlow (Tanaka et al. 2020): ln sum |theta * dR/dtheta|, |weights|, no BN, "
                            "all-ones input, float64"),
    "naswot": Proxy(True, "NASWOT (Mellor et al. 2021): ln|det K| of the ReLU-code agreement kernel of a batch"),
    "zico": Proxy(True, "ZiCo (Li et al. 2023): sum over layers of ln sum mean|grad| / std grad over batches"),
    "mae_entropy": Proxy(False, "MAE-DET (Sun et al. 2022): weighted ln std of C2..C5, N(0,1) weights and "
                                "input, no BN"),
}


class Control(NamedTuple):
    description: str


CONTROLS: dict[str, Control] = {
    "flops_max": Control("the feasible architecture with the most backbone MACs (the largest under the budget)"),
    "params_max": Control("the feasible architecture with the most backbone parameters"),
}


# ---------------------------------------------------------------------------------------- helpers


def _without_bn(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` with every BatchNorm layer replaced by ``nn.Identity``."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, _BatchNorm):
                setattr(module, name, nn.Identity())
    return net


def _check_batches(name: str, batches: Sequence[Tensor] | None, minimum: int = 1) -> list[Tensor]:
    if batches is None:
        raise ValueError(f"proxy {name!r} needs data: pass batches (a list of image tensors (B, 3, H, W))")
    batches = list(batches)
    if len(batches) < minimum:
        raise ValueError(f"proxy {name!r} needs at least {minimum} batches, got {len(batches)}")
    for i, b in enumerate(batches):
        if not isinstance(b, Tensor) or b.dim() != 4 or b.shape[1] != 3 or b.shape[0] < 1:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"proxy {name!r}: batch {i} must be an image tensor (B, 3, H, W), got {shape}")
    return batches


def _weights(net: nn.Module) -> list[tuple[str, Tensor]]:
    """The conv and linear weights of ``net`` (the "layers" of ZiCo and NASWOT-style proxies)."""
    return [(n, m.weight) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


# ---------------------------------------------------------------------------------------- proxies


def synflow(net: nn.Module, input_shape: Sequence[int]) -> float:
    """SynFlow of ``net`` for an all-ones input of ``input_shape`` (e.g. (1, 3, S, S)), as ln(sum).

    Computed on a float64, BN-free copy whose parameters are the absolute values of ``net``'s; the
    sum runs over all parameters (see the module docstring). OverflowError if the sum is not finite.
    """
    work = _without_bn(net).double()
    with torch.no_grad():
        for p in work.parameters():
            p.abs_()
            p.requires_grad_(True)
    work.eval()  # no dropout; BN is gone already
    x = torch.ones(tuple(input_shape), dtype=torch.float64, device=_device(work))
    with torch.enable_grad():
        r = work(x).sum()
        params = [p for p in work.parameters()]
        grads = torch.autograd.grad(r, params, allow_unused=True)
    with torch.no_grad():
        total = sum(float((p * g).abs().sum()) for p, g in zip(params, grads) if g is not None)
    if not math.isfinite(total):
        raise OverflowError(f"synflow: the sum overflows float64 (R = {float(r.detach()):.3e})")
    return math.log(total) if total > 0 else float("-inf")


def naswot(net: _Skeleton, batches: Sequence[Tensor]) -> float:
    """NASWOT: ln|det K| of the ReLU-code agreement kernel over the images of ``batches``.

    The batches are concatenated into one batch of N images (one forward, BN in training mode on a
    copy, no gradient); K (N, N) is accumulated in float64 over every ``nn.ReLU`` of the network.
    -inf when K is singular (e.g. two identical images).
    """
    batches = _check_batches("naswot", batches)
    if len({tuple(b.shape[1:]) for b in batches}) > 1:
        raise ValueError(f"proxy 'naswot': the batches must share one image size to be concatenated, got "
                         f"{sorted({tuple(b.shape[1:]) for b in batches})}")
    work = copy.deepcopy(net).train()
    device = _device(work)
    x = torch.cat([b.to(device=device, dtype=torch.float32) for b in batches])  # (N, 3, H, W)
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)

    def count(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal kernel
        codes = out.detach().flatten(1) > 0  # (N, D): which units fire
        d = codes.shape[1]
        # 0/1 products summed in float32 are exact below 2^24 per entry
        c = codes.to(torch.float32 if d < 2**24 else torch.float64)
        agree_on = (c @ c.T).double()  # both fire
        fired = c.sum(1, dtype=torch.float64)
        # both silent: d - fired_i - fired_j + both_fire; agreements = both fire + both silent
        kernel += 2 * agree_on - fired[:, None] - fired[None, :] + d

    handles = [m.register_forward_hook(count) for m in work.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            work(x)
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(kernel.cpu()).logabsdet)


def feature_energy(features: list[Tensor]) -> Tensor:
    """The label-free stand-in loss of ``zico``: sum over the stage features of half their mean square."""
    return sum(0.5 * f.pow(2).mean() for f in features)  # type: ignore[return-value]


def zico(net: _Skeleton, batches: Sequence[Tensor], *, loss_fn: LossFn = feature_energy) -> float:
    """ZiCo over ``batches`` (at least 2): sum over conv/linear weights of ln sum mean|g| / std g.

    One forward and backward of ``loss_fn(net.features(batch))`` per batch on a copy in training
    mode; ``loss_fn`` maps the stage features [C2..C5] to a scalar (default ``feature_energy``).
    """
    batches = _check_batches("zico", batches, minimum=2)
    work = copy.deepcopy(net).train()
    device = _device(work)
    layers = _weights(work)
    grads: list[list[Tensor]] = [[] for _ in layers]  # per layer, one flattened gradient per batch
    for b in batches:
        work.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn(work.features(b.to(device=device, dtype=torch.float32)))
            loss.backward()
        for store, (_, w) in zip(grads, layers):
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            store.append(g.detach().flatten().double())
    total = 0.0
    for store in grads:
        g = torch.stack(store)  # (batches, elements)
        std = g.std(0, correction=0)
        keep = std > 0
        ratio = float((g.abs().mean(0)[keep] / std[keep]).sum())
        if ratio > 0:  # a layer whose gradients never vary adds nothing (the authors' code skips it)
            total += math.log(ratio)
    return total


def mae_entropy(
    net: _Skeleton,
    *,
    input_size: int,
    seed: int,
    stage_weights: Sequence[float] = MAE_DET_STAGE_WEIGHTS,
    batch_size: int = 1,
) -> float:
    """MAE-DET's multi-scale entropy: sum_i stage_weights[i] * ln std(C_{i+2}).

    On a BN-free copy with every conv weight re-drawn from N(0, 1) and a N(0, 1) input
    (batch_size, 3, input_size, input_size), both from a local generator seeded with ``seed``
    (drawn on the CPU, the same numbers on every device). Every unit's output is divided by its std
    and the log-factor carried along (exact: the BN-free network is positively homogeneous).
    """
    stages = net.stage_names
    if len(stage_weights) != len(stages):
        raise ValueError(f"mae_entropy: {len(stages)} stages need {len(stages)} stage_weights, got {list(stage_weights)}")
    work = _without_bn(net).float().eval()
    device = _device(work)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, w in _weights(work):
            w.copy_(torch.randn(w.shape, generator=gen))
        x = torch.randn((batch_size, 3, input_size, input_size), generator=gen).to(device)
        log_scale = 0.0

        def rescale(t: Tensor) -> Tensor:
            nonlocal log_scale
            s = float(t.std())
            if not s > 0 or not math.isfinite(s):
                raise FloatingPointError(f"mae_entropy: a feature map has std {s} (input_size {input_size})")
            log_scale += math.log(s)
            return t / s

        x = rescale(work.stem(x))
        total = 0.0
        for name, weight in zip(stages, stage_weights):
            for unit in getattr(work, name):
                x = rescale(unit(x))
            total += float(weight) * log_scale  # ln std(C_i): x itself has std 1 here
    return total


# ---------------------------------------------------------------------------------------- scoring


def build_network(space: SearchSpace, arch: Arch | str, seed: int) -> _Skeleton:
    """The standalone detection backbone of ``arch`` (stem + C2..C5, ``detectors.backbone_body``),
    initialized by torch's default initializers from ``seed``; the global RNG state is restored."""
    arch = space.parse(arch)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also (lazily) reseed every CUDA device
        torch.default_generator.manual_seed(seed)
        return backbone_body(space, arch)


def _check_name(name: str) -> Proxy:
    try:
        return PROXIES[name]
    except KeyError:
        raise ValueError(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}") from None


def score(
    name: str,
    space: SearchSpace,
    arch: Arch | str,
    *,
    input_size: int,
    seed: int,
    batches: list[Tensor] | None = None,
    device: torch.device | str = "cpu",
    loss_fn: LossFn | None = None,
) -> float:
    """Proxy ``name`` of ``arch``, on ``build_network(space, arch, seed)`` moved to ``device``.

    ``input_size``: the side of the synthetic square input of the data-free proxies (synflow,
    mae_entropy); the data proxies (naswot, zico) read ``batches`` (images (B, 3, H, W), at their
    own size) and raise ValueError naming the proxy when it is None. ``loss_fn`` is zico's (default
    ``feature_energy``). A proxy ignores what it does not use. The same arguments give the same
    float (on one device and thread count).
    """
    proxy = _check_name(name)
    if not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if proxy.needs_data:
        _check_batches(name, batches, minimum=2 if name == "zico" else 1)
    with torch.random.fork_rng(devices=[]):
        net = build_network(space, arch, seed).to(device)
        if name == "synflow":
            return synflow(net, (1, 3, input_size, input_size))
        if name == "naswot":
            return naswot(net, batches)  # type: ignore[arg-type]
        if name == "zico":
            return zico(net, batches, loss_fn=loss_fn or feature_energy)  # type: ignore[arg-type]
        return mae_entropy(net, input_size=input_size, seed=seed)


def score_fn(
    name: str,
    space: SearchSpace,
    *,
    input_size: int,
    seed: int,
    batches: list[Tensor] | None = None,
    device: torch.device | str = "cpu",
    loss_fn: LossFn | None = None,
) -> Callable[[Arch], float]:
    """``arch -> score(name, space, arch, ...)``, with the arguments checked now (fail early)."""
    proxy = _check_name(name)
    if proxy.needs_data:
        _check_batches(name, batches, minimum=2 if name == "zico" else 1)

    def fn(arch: Arch) -> float:
        return score(name, space, arch, input_size=input_size, seed=seed, batches=batches, device=device,
                     loss_fn=loss_fn)

    return fn


# ---------------------------------------------------------------------------------------- controls


def _argmax_path(value: np.ndarray, cost: np.ndarray, base_cost: int, lo: float, hi: float,
                 feasible: Callable[[np.ndarray], np.ndarray]) -> tuple[int, ...] | None:
    """The genes maximizing sum value[k, g_k] with ``feasible(base_cost + sum cost[k, g_k])``, or None.

    Exact dynamic programme over the blocks: a state is a distinct partial cost sum, holding the best
    prefix reaching it (highest value, then the lowest encoding: prefixes reaching one sum take the
    same completions, so that one is never worse). ``lo`` / ``hi`` bound the final cost (inclusive,
    possibly a little loose); prefixes that cannot end inside them are dropped. ``rank`` orders the
    prefixes of a step lexicographically, so a new prefix's place is (its parent's rank, its choice).
    """
    n, k = cost.shape
    rest_min = np.concatenate([np.cumsum(cost.min(1)[::-1])[::-1], [0]])  # cheapest completion from block i
    rest_max = np.concatenate([np.cumsum(cost.max(1)[::-1])[::-1], [0]])
    sums = np.array([base_cost], dtype=np.int64)
    vals = np.zeros(1, dtype=np.int64)
    rank = np.zeros(1, dtype=np.int64)
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # per block: (parent state, choice) of each state
    for i in range(n):
        c_sums = (sums[:, None] + cost[i][None, :]).ravel()
        c_vals = (vals[:, None] + value[i][None, :]).ravel()
        c_parent = np.repeat(np.arange(len(sums)), k)
        c_choice = np.tile(np.arange(k), len(sums))
        ok = (c_sums + rest_min[i + 1] <= hi) & (c_sums + rest_max[i + 1] >= lo)
        if not ok.any():
            return None
        c_sums, c_vals, c_parent, c_choice = c_sums[ok], c_vals[ok], c_parent[ok], c_choice[ok]
        c_rank = rank[c_parent]
        # per distinct sum: the highest value, then the lowest prefix
        order = np.lexsort((c_choice, c_rank, -c_vals, c_sums))
        first = np.ones(len(order), dtype=bool)
        first[1:] = c_sums[order][1:] != c_sums[order][:-1]
        pick = order[first]
        sums, vals, parent, choice = c_sums[pick], c_vals[pick], c_parent[pick], c_choice[pick]
        new_order = np.lexsort((choice, rank[parent]))
        rank = np.empty(len(pick), dtype=np.int64)
        rank[new_order] = np.arange(len(pick))
        steps.append((parent, choice))
    ok = feasible(sums)
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    best = idx[np.lexsort((rank[idx], -vals[idx]))[0]]
    genes = []
    for parent, choice in reversed(steps):
        genes.append(int(choice[best]))
        best = parent[best]
    return tuple(reversed(genes))


def control_arch(
    name: str,
    space: SearchSpace,
    *,
    min_mflops: float | None = None,
    max_mflops: float | None = None,
    input_size: int = INPUT_SIZE,
) -> Arch:
    """The architecture of ``space`` with backbone MFLOPs (MACs / 1e6 at ``input_size``, the
    search's constraint, ``CostTable.within``) in [min_mflops, max_mflops] (None: unbounded) that
    has the most backbone MACs (``flops_max``) or parameters (``params_max``); ties to the lowest
    encoding. Exact (see ``_argmax_path``). ValueError names the bounds when none is feasible."""
    if name not in CONTROLS:
        raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")
    if min_mflops is not None and max_mflops is not None and min_mflops > max_mflops:
        raise ValueError(f"min_mflops {min_mflops} is above max_mflops {max_mflops}")
    table = cost_table(space, input_size)
    big = int(table.bounds()[1]) + 1
    # integer MAC bounds a little loose for pruning; the exact test is CostTable.within's float one
    lo = -1 if min_mflops is None else math.floor(min_mflops * 1e6) - 1
    hi = big if max_mflops is None else math.ceil(max_mflops * 1e6) + 1
    lo_f = -np.inf if min_mflops is None else min_mflops
    hi_f = np.inf if max_mflops is None else max_mflops
    value = table.macs if name == "flops_max" else table.params
    genes = _argmax_path(value, table.macs, int(table.stem_macs), lo, hi,
                         lambda macs: (lo_f <= macs / 1e6) & (macs / 1e6 <= hi_f))
    if genes is None:
        low, high = table.bounds()
        raise ValueError(
            f"no architecture of space {space.name!r} has backbone MFLOPs in [{min_mflops}, {max_mflops}] at "
            f"{input_size} px; the space spans [{low / 1e6:.2f}, {high / 1e6:.2f}] MFLOPs"
        )
    arch = Arch(genes)
    assert table.within(min_mflops, max_mflops)(arch)
    return arch
