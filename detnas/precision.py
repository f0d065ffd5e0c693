"""Mixed precision and memory format of a stage's forward passes: the ``amp`` and ``channels_last``
settings of the training and scoring stages, resolved for the device a process computes on.

- ``amp``: "bf16" or "fp16" runs the forward passes (and the losses) under ``torch.autocast`` in that
  dtype: convolutions and matrix products in 16 bits, while weights, gradients, optimizer state and
  BN statistics stay float32. "off": float32 throughout. "auto": bf16 on a CUDA device with native
  bf16 (compute capability 8.0 or newer, e.g. A100, H100), else off, so float32 on a CPU. fp16 has a
  narrow range: its gradients are scaled by a ``GradScaler``, whose state is part of the training
  checkpoint; bf16 has float32's range and needs none. YAML reads an unquoted ``off`` as ``false``:
  both mean off.
- ``channels_last``: convolutions on NHWC tensors (``torch.channels_last``), the layout tensor cores
  compute in. True, false, or "auto": true on CUDA, false on a CPU. Convolution weights are converted
  once and a convolution's output follows its weight's layout, so a detector's batched images (which
  torchvision's transform builds) need no conversion; a classifier's batch is converted by
  ``Precision.images`` (one copy instead of one inside the first convolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AMP_MODES", "Precision", "float32_outputs", "resolve_amp", "resolve_channels_last"]

AMP_MODES = ("auto", "bf16", "fp16", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}


def _amp_mode(amp: str | bool) -> str:
    if amp is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    if not isinstance(amp, str) or amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return amp


def _native_bf16(device: torch.device) -> bool:
    # without emulation: an older GPU (e.g. V100) "supports" bf16 tensors but computes them slowly
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_amp(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of setting ``amp`` on ``device`` (None: float32, no autocast).

    ValueError for an unknown setting, or bf16 asked for on a CUDA device that cannot hold it."""
    mode = _amp_mode(amp)
    if mode == "auto":
        return torch.bfloat16 if _native_bf16(device) else None
    if mode == "off":
        return None
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or off")
    return _DTYPES[mode]


def resolve_channels_last(channels_last: bool | str, device: torch.device) -> bool:
    """Whether setting ``channels_last`` (true, false or "auto") means NHWC on ``device``."""
    if channels_last == "auto":
        return device.type == "cuda"
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be true, false or auto, got {channels_last!r}")
    return channels_last


@dataclass(frozen=True)
class Precision:
    """How one process computes its forward passes: the autocast dtype (None: float32) and whether
    convolutions run in NHWC. The default is float32 on contiguous tensors, on any device."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def resolve(cls, amp: str | bool, channels_last: bool | str, device: torch.device) -> "Precision":
        """The settings ``amp`` and ``channels_last`` on ``device`` (see the module docstring)."""
        return cls(device.type, resolve_amp(amp, device), resolve_channels_last(channels_last, device))

    @property
    def amp(self) -> str:
        """"bf16", "fp16" or "off" (float32)."""
        return _NAMES[self.dtype]

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def describe(self) -> dict[str, str]:
        """What a log, a selfcheck or a resume key says: {"amp": "bf16", "memory_format": "channels_last"}."""
        return {"amp": self.amp, "memory_format": self.memory_format}

    def autocast(self) -> torch.autocast:
        """The context the forward passes run in (a disabled one for float32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler (small float16 gradients would flush to zero without it); None
        for bf16 and float32."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` with its convolution weights in this memory format (in place: the parameters
        stay the same objects, so an optimizer made before or after sees them)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def images(self, x: Tensor) -> Tensor:
        """A batch of images (B, C, H, W) in this memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def float32_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    """A forward hook: the module's floating-point outputs (tensors, or tuples, lists and dicts of
    them) cast to float32. Under autocast, torchvision derives anchors from the dtype of the feature
    maps and decodes boxes in the dtype of the regression; in bf16 (8-bit mantissa) the coordinates of
    an 800 px image would fall on a 4 px grid (8 px above 1024). Without autocast the outputs are
    float32 already and pass through untouched."""
    return _to_float32(output)
