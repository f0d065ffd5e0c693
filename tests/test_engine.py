import numpy as np
import pytest
import torch

from detnas.engine import InfiniteSampler, Schedule, make_sgd, uniform_path
from detnas.space import get_space
from detnas.supernet import Supernet


def test_linear_schedule_with_warmup():
    s = Schedule(iterations=100, lr=0.5, policy="linear", warmup_iterations=10, warmup_factor=0.1)
    assert s.lr_at(0) == pytest.approx(0.5 * 0.1)
    assert s.lr_at(10) == pytest.approx(0.5 * 0.9)
    assert s.lr_at(50) == pytest.approx(0.25)
    assert s.lr_at(100) == 0.0


def test_step_schedule_and_scaling():
    s = Schedule(iterations=90, lr=0.02, policy="step", milestones=(60, 80), warmup_iterations=5)
    assert s.lr_at(59) == pytest.approx(0.02)
    assert s.lr_at(60) == pytest.approx(0.002)
    assert s.lr_at(85) == pytest.approx(0.0002)
    s2 = s.scaled(2)
    assert s2.iterations == 180 and s2.milestones == (120, 160)


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="policy"):
        Schedule(iterations=1, lr=0.1, policy="cosine")
    with pytest.raises(ValueError, match=r"unknown schedule settings \[.lr_decay.\]"):
        Schedule.from_dict({"iterations": 1, "lr": 0.1, "lr_decay": 3})


def test_no_weight_decay_on_bn_and_bias():
    net = Supernet(get_space("tiny"), num_classes=3)
    opt = make_sgd(net, Schedule(iterations=1, lr=0.1, weight_decay=1e-4))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    bn = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bn <= {id(p) for p in no_decay["params"]}


def test_infinite_sampler_ranks_and_resume():
    a = InfiniteSampler(10, seed=3, rank=0, world_size=2)
    b = InfiniteSampler(10, seed=3, rank=1, world_size=2)
    ia, ib = iter(a), iter(b)
    first_a = [next(ia) for _ in range(5)]
    first_b = [next(ib) for _ in range(5)]
    assert sorted(first_a + first_b) == list(range(10))  # one epoch split between the ranks
    more_a = [next(ia) for _ in range(7)]
    resumed = iter(InfiniteSampler(10, seed=3, rank=0, world_size=2, start=5))
    assert [next(resumed) for _ in range(7)] == more_a


def test_uniform_path_is_a_function_of_seed_and_step():
    space = get_space("small")
    assert uniform_path(space, 0, 5) == uniform_path(space, 0, 5)
    paths = {str(uniform_path(space, 0, s)) for s in range(50)}
    assert len(paths) == 50
    counts = np.bincount([g for s in range(400) for g in uniform_path(space, 1, s)], minlength=4)
    assert counts.min() > 0.2 * counts.sum()  # roughly uniform over the 4 choices
