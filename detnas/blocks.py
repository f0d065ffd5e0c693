"""The four block choices of the DetNAS search space, with the authors' ShuffleNetV2 wiring.

stride 1 (in == out): shuffle the input, split it into halves ``x_proj, x``; the output is
``cat(x_proj, branch(x))``, the branch mapping in/2 -> out/2 with mid = out/2.

stride 2 (first block of a stage): the main branch takes all ``in`` channels and outputs
``out - in``; a projection branch (depthwise kxk stride 2, BN, 1x1 in->in, BN, ReLU) keeps ``in``
channels; the output is ``cat(proj(x), branch(x))``.

``channel_shuffle`` is the only shuffle definition in the project (mixing two definitions between
stages is how the reference code ended up scoring AP ~ 0 for every searched model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CHOICES", "ShuffleUnit", "channel_shuffle", "make_block"]

# Encoding digit -> choice name.
CHOICES: tuple[str, ...] = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")


def channel_shuffle(x: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle the channels of ``x`` (B, C, H, W) with 2 groups and return the two halves.

    view (B, 2, C/2, H, W) -> transpose to (B, C/2, 2, H, W) -> flatten, so output channel 2i is
    input channel i and 2i+1 is input channel C/2 + i; each half mixes both input halves.

    The result keeps the memory format of ``x``: a ``channels_last`` input (NHWC storage) is
    shuffled along its last storage axis, so the blocks after it need no layout conversion.
    """
    b, c, h, w = x.shape
    if c % 2:
        raise ValueError(f"channel_shuffle needs an even number of channels, got {c}")
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, 2, c // 2).transpose(3, 4).reshape(b, h, w, c)
        x = nhwc.permute(0, 3, 1, 2)
    else:
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
    return x[:, : c // 2], x[:, c // 2 :]


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, depthwise: bool = False, relu: bool
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride,
            kernel // 2,
            groups=in_ch if depthwise else 1,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _shufflenet_branch(in_ch: int, mid: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    # 1x1 (in->mid) BN ReLU; depthwise kxk (stride) BN; 1x1 (mid->out) BN ReLU
    return nn.Sequential(
        *_conv_bn(in_ch, mid, 1, relu=True),
        *_conv_bn(mid, mid, kernel, stride, depthwise=True, relu=False),
        *_conv_bn(mid, out_ch, 1, relu=True),
    )


def _xception_branch(in_ch: int, mid: int, out_ch: int, stride: int) -> nn.Sequential:
    # three times [depthwise 3x3 BN, 1x1 BN], ReLU after each 1x1; the first depthwise has the stride
    return nn.Sequential(
        *_conv_bn(in_ch, in_ch, 3, stride, depthwise=True, relu=False),
        *_conv_bn(in_ch, mid, 1, relu=True),
        *_conv_bn(mid, mid, 3, depthwise=True, relu=False),
        *_conv_bn(mid, mid, 1, relu=True),
        *_conv_bn(mid, mid, 3, depthwise=True, relu=False),
        *_conv_bn(mid, out_ch, 1, relu=True),
    )


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2-style unit around a main branch; see the module docstring for the wiring."""

    def __init__(self, branch_main: nn.Module, branch_proj: nn.Module | None, stride: int) -> None:
        super().__init__()
        if (stride == 2) != (branch_proj is not None):
            raise ValueError(f"a projection branch goes with stride 2 only, got stride {stride}")
        self.stride = stride
        self.branch_main = branch_main
        self.branch_proj = branch_proj

    def forward(self, x: Tensor) -> Tensor:
        if self.branch_proj is None:
            x_proj, x = channel_shuffle(x)  # (B, C/2, H, W) each
            return torch.cat((x_proj, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


def make_block(choice: int, in_channels: int, out_channels: int, stride: int) -> ShuffleUnit:
    """Block ``choice`` (0: 3x3, 1: 5x5, 2: 7x7 ShuffleNetV2, 3: Xception) with its own weights."""
    if choice not in range(len(CHOICES)):
        raise ValueError(f"block choice must be in 0..{len(CHOICES) - 1}, got {choice!r}")
    if stride not in (1, 2):
        raise ValueError(f"block stride must be 1 or 2, got {stride}")
    if stride == 1 and in_channels != out_channels:
        raise ValueError(f"a stride-1 block keeps its width, got {in_channels} -> {out_channels}")
    kernel = (3, 5, 7, 3)[choice]
    mid = out_channels // 2
    if stride == 1:
        branch_in, branch_out = in_channels // 2, out_channels // 2
    else:
        branch_in, branch_out = in_channels, out_channels - in_channels
    if choice == 3:
        main = _xception_branch(branch_in, mid, branch_out, stride)
    else:
        main = _shufflenet_branch(branch_in, mid, branch_out, kernel, stride)
    proj = None
    if stride == 2:
        proj = nn.Sequential(
            *_conv_bn(in_channels, in_channels, kernel, 2, depthwise=True, relu=False),
            *_conv_bn(in_channels, in_channels, 1, relu=True),
        )
    return ShuffleUnit(main, proj, stride)
