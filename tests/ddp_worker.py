"""Run by tests under ``torchrun --nproc_per_node=2``: DDP invariants of supernet training on CPU.

Not collected by pytest (no test_ prefix); prints "OK rank <r>" when every check holds.
"""

import sys

import numpy as np
import torch
import torch.distributed as dist

from detnas.distributed import init_distributed
from detnas.engine import Schedule, make_sgd
from detnas.space import get_space
from detnas.supernet import Supernet, set_path


def main() -> None:
    d = init_distributed("cpu")
    assert d.world_size == 2, d
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    space = get_space("tiny")
    net = Supernet(space, num_classes=4)
    model = d.wrap(net, find_unused_parameters=True)
    opt = make_sgd(net, Schedule(iterations=10, lr=0.1, weight_decay=1e-4))
    arch = space.sample(np.random.default_rng(7))
    set_path(model, arch)
    assert not d.agree(zlib_token(arch), False)
    # ranks see different data
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(100 + d.rank))
    loss = model(x).logsumexp(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for stage in net.stage_names:
        for block in getattr(net, stage):
            for c, choice in enumerate(block.choices):
                for p in choice.parameters():
                    assert (p.grad is not None) == (c == block.active), "unused choice got a gradient under DDP"
    # gradients are averaged: identical on both ranks
    flat = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    torch.testing.assert_close(gathered[0], gathered[1])
    opt.step()
    for stage in net.stage_names:
        for block in getattr(net, stage):
            for c, choice in enumerate(block.choices):
                if c != block.active:
                    for p in choice.parameters():
                        assert p not in opt.state or not opt.state[p], "momentum state on an unused choice"
    # ranks on different paths are caught
    try:
        d.agree(d.rank + 1, False)
    except RuntimeError as exc:
        assert "disagree" in str(exc)
    else:
        raise AssertionError("different paths on two ranks were not detected")
    # a stop request on one rank reaches all
    assert d.agree(5, stop=d.rank == 1)
    print(f"OK rank {d.rank}", flush=True)
    d.close()


def zlib_token(arch) -> int:
    import zlib

    return zlib.crc32(str(arch).encode())


if __name__ == "__main__":
    main()
    sys.exit(0)
