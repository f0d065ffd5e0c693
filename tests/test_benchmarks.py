"""The GPU throughput benchmark's measurements run (on CPU here, one short step each), so the script
a user runs on a GPU node does not fail there first."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_throughput  # noqa: E402
from input_pipeline import _write_images  # noqa: E402

CPU = torch.device("cpu")


def test_training_rates_in_each_precision_and_memory_format():
    # bf16 is emulated on this CPU (slow): one small step of it, the 800 px detector in float32
    for precision, fmt in (("fp32", "contiguous"), ("bf16", "channels_last")):
        assert gpu_throughput.pretrain_rate(CPU, precision, fmt, batch=1, steps=1, warmup=0) > 0
    assert gpu_throughput.finetune_rate(CPU, "fp32", "channels_last", batch=1, steps=1, warmup=0) > 0


def test_loader_rate(tmp_path):
    (tmp_path / "a").mkdir()
    for path in _write_images(tmp_path, 8):
        path.rename(tmp_path / "a" / path.name)
    assert gpu_throughput.loader_rate(tmp_path, workers=1, batch=4, batches=1, device=CPU) > 0
