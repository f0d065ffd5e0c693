"""Zero-cost proxies and the FLOPs / parameter controls (detnas.proxies), on the tiny space, in seconds."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detnas.flops import cost_table, count_macs, count_params, path_macs
from detnas.proxies import (
    CONTROLS,
    MAE_DET_STAGE_WEIGHTS,
    PROXIES,
    build_network,
    control_arch,
    mae_entropy,
    naswot,
    score,
    score_fn,
    synflow,
    zico,
)
from detnas.space import Arch, get_space
from detnas.supernet import SinglePathNet

TINY = get_space("tiny")
SIZE = 48
A = TINY.parse("32211000")
B = TINY.parse("03232232")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny networks: a second intra-op thread only spins against the other test worker (seconds -> tens)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 3, SIZE, SIZE, generator=g) for _ in range(2)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_synflow_equals_the_closed_form():
    """f(x) = W2 relu(BN(W1 x + b1)) + b2, all-ones x: with |.| on every parameter and BN removed every
    activation is positive, R = s . u + sum|b2| with u = |W1| 1 + |b1| (hidden), s = 1^T |W2|; the
    terms of W1, b1, W2, b2 are s.(|W1| 1), s.|b1|, s.u, sum|b2|: synflow = ln(2 s.u + sum|b2|)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # BN far from identity: the score must not see it
        net[1].weight.uniform_(-3, 3)
        net[1].bias.uniform_(-3, 3)
        net[1].running_mean.uniform_(-3, 3)
        net[1].running_var.uniform_(0.1, 3)
    before = _state(net)
    a1, b1 = net[0].weight.detach().double().abs(), net[0].bias.detach().double().abs()
    a2, b2 = net[3].weight.detach().double().abs(), net[3].bias.detach().double().abs()
    u = a1 @ torch.ones(3, dtype=torch.float64) + b1
    s = a2.sum(0)
    expected = 2 * float(s @ u) + float(b2.sum())
    assert synflow(net, (1, 3)) == pytest.approx(math.log(expected), rel=1e-12)
    assert _same_state(before, _state(net)) and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", list(PROXIES))
def test_deterministic_for_a_seed_and_rng_untouched(name, batches):
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    kw = dict(input_size=SIZE, batches=batches)
    first = score(name, TINY, A, seed=0, **kw)
    assert isinstance(first, float) and math.isfinite(first)
    assert score(name, TINY, A, seed=0, **kw) == first
    assert torch.equal(torch.get_rng_state(), rng)
    assert score(name, TINY, A, seed=1, **kw) != first  # another initialization
    assert score(name, TINY, B, seed=0, **kw) != first  # another architecture
    assert torch.equal(torch.get_rng_state(), rng)
    assert score_fn(name, TINY, seed=0, **kw)(A) == first


def test_build_network_is_seeded_and_leaves_the_rng():
    rng = torch.get_rng_state()
    n1, n2, n3 = build_network(TINY, A, 5), build_network(TINY, A, 5), build_network(TINY, A, 6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(n1, SinglePathNet) and n1.num_classes is None  # the detection backbone
    assert _same_state(_state(n1), _state(n2)) and not _same_state(_state(n1), _state(n3))


def test_proxies_change_no_parameter_of_a_model_passed(batches):
    net = build_network(TINY, B, 0)
    before = _state(net)
    rng = torch.get_rng_state()
    synflow(net, (1, 3, SIZE, SIZE))
    naswot(net, batches)
    zico(net, batches)
    mae_entropy(net, input_size=SIZE, seed=0)
    assert _same_state(before, _state(net))  # parameters and BN buffers
    assert all(p.grad is None for p in net.parameters()) and net.training
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("name", [n for n, p in PROXIES.items() if p.needs_data])
def test_data_proxies_need_batches(name, batches):
    with pytest.raises(ValueError, match=name):
        score(name, TINY, A, input_size=SIZE, seed=0)
    with pytest.raises(ValueError, match=name):
        score_fn(name, TINY, input_size=SIZE, seed=0)
    with pytest.raises(ValueError, match=name):
        score(name, TINY, A, input_size=SIZE, seed=0, batches=[torch.zeros(2, 1, SIZE, SIZE)] * 2)


def test_unknown_proxy_and_zico_needs_two_batches(batches):
    with pytest.raises(ValueError, match="'grasp'.*synflow"):
        score("grasp", TINY, A, input_size=SIZE, seed=0)
    with pytest.raises(ValueError, match="zico.*2 batches"):
        score("zico", TINY, A, input_size=SIZE, seed=0, batches=batches[:1])


def test_naswot_and_zico_invariants(batches):
    net = build_network(TINY, A, 0)
    # two identical images have identical codes: K has two equal rows, det K = 0
    twin = torch.cat([batches[0][:1], batches[0][:1]])
    assert naswot(net, [twin]) == float("-inf")
    # the same batch twice: every gradient is the same twice (std 0), every layer is skipped
    assert zico(net, [batches[0], batches[0]]) == 0.0
    # the loss hook is used
    c5_only = zico(net, batches, loss_fn=lambda feats: feats[-1].pow(2).mean())
    assert c5_only != zico(net, batches)
    assert score("zico", TINY, A, input_size=SIZE, seed=0, batches=batches,
                 loss_fn=lambda feats: feats[-1].pow(2).mean()) == c5_only


def test_mae_entropy_equals_a_direct_float64_forward():
    """The per-unit rescaling is exact: the BN-free network, N(0, 1) weights (drawn in module order,
    then the input) and the stage outputs' ln std computed plainly in float64 give the same score."""
    net = build_network(TINY, B, 0)
    seed = 4
    got = mae_entropy(net, input_size=SIZE, seed=seed)
    plain = SinglePathNet(TINY, B)
    for parent in list(plain.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        x = torch.randn((1, 3, SIZE, SIZE), generator=gen)
        feats = plain.double().features(x.double())  # no overflow in 8 blocks of float64
    expected = sum(w * math.log(float(f.std())) for w, f in zip(MAE_DET_STAGE_WEIGHTS, feats))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)


# ---------------------------------------------------------------------------------------- controls


@pytest.fixture(scope="module")
def tiny_costs():
    """(stem MACs, stem params, macs[k, c], params[k, c]) measured on built tiny networks: FlopCounterMode's
    per-module counts and count_params of each block of the all-c network (on the meta device);
    additivity checked below on real networks."""
    macs = np.zeros((TINY.num_blocks, 4), dtype=np.int64)
    params = np.zeros_like(macs)
    for c in range(4):
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            net = SinglePathNet(TINY, TINY.uniform(c))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, 224, 224, device="meta"))
        counts = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
        blocks = [(f"stage{s.stage}.{s.index}", getattr(net, f"stage{s.stage}")[s.index]) for s in TINY.blocks()]
        for k, (name, block) in enumerate(blocks):
            macs[k, c] = counts[f"SinglePathNet.{name}"]
            params[k, c] = count_params(block)
        stem = (counts["SinglePathNet.stem"], count_params(net.stem))
    return stem[0], stem[1], macs, params


def test_costs_are_additive_per_block(tiny_costs):
    stem_macs, stem_params, macs, params = tiny_costs
    rows = np.arange(TINY.num_blocks)
    rng = np.random.default_rng(0)
    for arch in [TINY.sample(rng) for _ in range(3)]:
        net = SinglePathNet(TINY, arch)
        assert count_params(net) == stem_params + params[rows, arch.genes].sum()
        assert count_macs(net, 224) == stem_macs + macs[rows, arch.genes].sum() == path_macs(TINY, arch)


def _brute_force(tiny_costs, objective: str, lo: float | None, hi: float | None) -> Arch:
    stem_macs, stem_params, macs, params = tiny_costs
    genes = np.array(list(itertools.product(range(4), repeat=TINY.num_blocks)))  # lowest encoding first
    rows = np.arange(TINY.num_blocks)
    total_macs = stem_macs + macs[rows, genes].sum(1)
    value = total_macs if objective == "flops_max" else stem_params + params[rows, genes].sum(1)
    mflops = total_macs / 1e6
    ok = (mflops >= (-np.inf if lo is None else lo)) & (mflops <= (np.inf if hi is None else hi))
    idx = np.flatnonzero(ok)
    return Arch(tuple(genes[idx[np.argmax(value[idx])]]))  # argmax: the first (lowest) of ties


@pytest.mark.parametrize("objective", list(CONTROLS))
def test_controls_are_the_feasible_maximum(objective, tiny_costs):
    stem_macs, stem_params, macs, params = tiny_costs
    free = _brute_force(tiny_costs, objective, None, None)
    assert control_arch(objective, TINY) == free
    low, high = cost_table(TINY).bounds()
    for lo, hi in [(None, (low + high) / 2e6), (low / 1e6 + 3, low / 1e6 + 6), (36.0, 36.5)]:
        want = _brute_force(tiny_costs, objective, lo, hi)
        got = control_arch(objective, TINY, min_mflops=lo, max_mflops=hi)
        assert got == want and got != free
        mflops = path_macs(TINY, got) / 1e6
        assert (lo is None or lo <= mflops) and mflops <= hi
    # params_max under a budget is not simply the biggest-MACs network
    assert control_arch("params_max", TINY, max_mflops=37) != control_arch("flops_max", TINY, max_mflops=37)


def test_controls_in_the_small_space_beat_every_single_gene_change():
    space = get_space("small")
    table = cost_table(space)
    feasible = table.within(280, 300)
    for objective, value in (("flops_max", table.backbone_macs), ("params_max", table.backbone_params)):
        best = control_arch(objective, space, min_mflops=280, max_mflops=300)
        assert feasible(best)
        for k, c in itertools.product(range(space.num_blocks), range(4)):
            other = Arch(best.genes[:k] + (c,) + best.genes[k + 1:])
            if feasible(other):
                assert (value(other), str(best)) <= (value(best), str(other))


def test_infeasible_bounds_raise():
    with pytest.raises(ValueError, match=r"\[1000, 2000\]"):
        control_arch("flops_max", TINY, min_mflops=1000, max_mflops=2000)
    low = cost_table(TINY).bounds()[0] / 1e6
    with pytest.raises(ValueError, match="params_max|MFLOPs"):
        control_arch("params_max", TINY, max_mflops=low - 1)
    with pytest.raises(ValueError, match="above"):
        control_arch("flops_max", TINY, min_mflops=40, max_mflops=30)
    with pytest.raises(ValueError, match="'zen'"):
        control_arch("zen", TINY)
