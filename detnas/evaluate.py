"""Evaluation: COCO box metrics through pycocotools, and classification top-1."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["top1_accuracy"]


@torch.no_grad()
def top1_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Fraction of images whose arg-max logit is the label (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("top-1 accuracy of an empty set of images")
    return correct / total
