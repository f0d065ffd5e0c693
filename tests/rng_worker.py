"""Run by tests under ``torchrun --nproc_per_node=2``: the random numbers of two ranks.

Not collected by pytest (no test_ prefix); prints "OK rank <r>" when every check holds:
- the ranks draw different augmentation (random-resized crop, flip, colour jitter factors) for their
  first batches, with a loader worker per rank;
- a stream resumed at step k draws, per rank, what the uninterrupted stream drew at step k;
- each rank's own generator (dropout, proposal sampling) differs from the other's, and after a
  checkpoint and resume continues as it would have;
- the supernet path of every step is the same on both ranks.
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detnas.checkpoint import Checkpointer
from detnas.data.classification import train_augmentation
from detnas.distributed import init_distributed, process_seed
from detnas.engine import training_batches, uniform_path
from detnas.space import get_space


class Images(Dataset):
    """Fixed uint8 images, augmented as in pre-training: (crop, jitter params), label."""

    def __init__(self, n: int = 40, size: int = 80) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.augment = train_augmentation(64)  # from 64 px: the ImageNet recipe, colour jitter included

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.augment.sample(self.images[i]), i


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    ((ca, pa), ia), ((cb, pb), ib) = a, b
    return torch.equal(ca, cb) and torch.equal(pa, pb) and torch.equal(ia, ib)


def main(out_dir: str) -> None:
    d = init_distributed("cpu")
    assert d.world_size == 2, d
    data = Images()
    stream = take(training_batches(data, batch_size=8, seed=3, start_step=0, dist=d, threads=4), 6)  # 1 worker each
    (_, params), _ = stream[0]
    other = d.all_gather_object(params)[1 - d.rank]
    assert not torch.equal(params, other), "both ranks drew the same augmentation"
    resumed = take(training_batches(data, batch_size=8, seed=3, start_step=4, dist=d, threads=4), 2)
    assert same(resumed[0], stream[4]) and same(resumed[1], stream[5]), "a resumed stream drew other augmentation"
    # without workers the draws are the same: they depend on the image's visit only
    inline = take(training_batches(data, batch_size=8, seed=3, start_step=0, dist=d, threads=0), 2)
    assert same(inline[0], stream[0]) and same(inline[1], stream[1]), "loader workers changed the draws"

    torch.manual_seed(process_seed(3, d.rank))
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = Checkpointer(Path(out_dir), settings={"x": 1}, inputs={}, every=1, dist=d)
    torch.rand(5)
    ck.save(7, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "history": []})
    expected = torch.rand(5)  # what an uninterrupted run draws next
    assert not torch.equal(expected, d.all_gather_object(expected)[1 - d.rank]), "both ranks share a generator"
    torch.manual_seed(12345)  # a new process
    again = Checkpointer(Path(out_dir), settings={"x": 1}, inputs={}, every=1, dist=d)
    assert again.resume(model, opt)[0] == 7
    again.restore_rng()
    assert torch.equal(torch.rand(5), expected), "a resumed rank's generator did not continue its own stream"
    # a damaged checkpoint: every rank reads it and finds it unreadable, then rank 0 moves it aside
    d.barrier()
    if d.is_main:
        data = again.path.read_bytes()
        again.path.write_bytes(data[: len(data) // 2])
    d.barrier()
    assert again.load() is None, "a truncated checkpoint was resumed"
    d.barrier()
    assert not again.path.exists() and len(list(Path(out_dir).glob("last.pt.corrupt-*"))) == 1, "not moved aside"

    space = get_space("tiny")
    paths = [str(uniform_path(space, 3, step)) for step in range(50)]
    assert d.all_gather_object(paths)[1 - d.rank] == paths
    d.barrier()
    print(f"OK rank {d.rank}", file=sys.stderr, flush=True)  # stdout of rank 1 is not shown
    d.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
