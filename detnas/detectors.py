"""Detectors around our backbones, built from torchvision's own classes (never forked).

- Faster R-CNN with an FPN over C2..C5 (P6 by max-pool), one anchor size per level, and the paper's
  "4conv1fc" box head (torchvision's ``FastRCNNConvFCHead``: four 3x3 conv + BN + ReLU, one FC).
- RetinaNet with an FPN over C3..C5 plus P6/P7 computed from P5.

The backbone is a ``Supernet`` or a ``SinglePathNet`` without classification head; its stages are
picked by torchvision's ``BackboneWithFPN``, which holds the very same modules, so
``set_path(detector, arch)`` reaches the supernet inside. BN layers stay trainable: torchvision
freezes BN only when it loads its own pretrained weights, which never happens here.

Under mixed precision the backbone's feature maps and the heads' scores and box regressions are cast
back to float32 (``precision.float32_outputs``): anchors, RoIAlign, box decoding and the losses run
in float32 while the convolutions run in bf16/fp16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .io import load_checkpoint
from .precision import float32_outputs
from .settings import known_keys
from .space import Arch, SearchSpace, get_space
from .supernet import SinglePathNet, Supernet, _Skeleton

__all__ = ["DETECTORS", "DetectorSettings", "backbone_body", "build_detector", "detector_from_checkpoint"]


@dataclass(frozen=True)
class DetectorSettings:
    """The detector part of an experiment (see the config schema for each key's meaning)."""

    name: str = "faster_rcnn_fpn"
    min_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    head_conv_channels: int = 256
    head_fc_channels: int = 1024
    anchor_sizes: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch_size_per_image: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    detections_per_image: int = 100
    score_threshold: float = 0.05

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorSettings":
        d = known_keys(cls, d, "detector")
        for k in ("anchor_sizes", "aspect_ratios"):
            if d.get(k) is not None:
                d[k] = tuple(float(x) for x in d[k])
        if d.get("name", "faster_rcnn_fpn") not in DETECTORS:
            raise ValueError(f"unknown detector {d['name']!r}; known: {', '.join(DETECTORS)}")
        return cls(**d)


def _anchor_sizes(s: DetectorSettings, default: tuple[float, ...]) -> tuple[float, ...]:
    sizes = s.anchor_sizes or default
    if len(sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per pyramid level (5), got {list(sizes)}")
    return sizes


def _faster_rcnn_fpn(body: _Skeleton, num_classes: int, s: DetectorSettings) -> FasterRCNN:
    names = body.stage_names  # C2..C5
    backbone = BackboneWithFPN(
        body,
        return_layers={n: str(i) for i, n in enumerate(names)},
        in_channels_list=list(body.space.stage_channels),
        out_channels=s.fpn_channels,
        extra_blocks=LastLevelMaxPool(),  # P6 by max-pool, for the RPN only
        norm_layer=nn.BatchNorm2d,
    )
    sizes = _anchor_sizes(s, (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(tuple((a,) for a in sizes), (s.aspect_ratios,) * len(sizes))
    box_head = FastRCNNConvFCHead(
        (s.fpn_channels, 7, 7), [s.head_conv_channels] * 4, [s.head_fc_channels], norm_layer=nn.BatchNorm2d
    )
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=s.min_size,
        max_size=s.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(s.fpn_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=s.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=s.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=s.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=s.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=s.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(s.head_fc_channels, num_classes + 1),  # + background
        box_batch_size_per_image=s.box_batch_size_per_image,
        box_detections_per_img=s.detections_per_image,
        box_score_thresh=s.score_threshold,
    )


class _RetinaNet(RetinaNet):
    """torchvision's RetinaNet that never reports label 0.

    Our labels are 1..K, so the head has K + 1 sigmoid logits and logit 0 is only ever trained as a
    negative. Unlike Faster R-CNN's softmax (whose background column torchvision drops), RetinaNet's
    post-processing reports every logit above ``score_thresh``: a class-0 score there would be a
    "background" detection, taking one of the top-k and ``detections_per_img`` places. Its logit is
    masked before the selection instead, so the other classes keep every place.
    """

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        masked = []
        for logits in head_outputs["cls_logits"]:  # per level: (N, H*W*A, K + 1)
            logits = logits.clone()
            logits[..., 0] = float("-inf")  # sigmoid(-inf) = 0, never above score_thresh
            masked.append(logits)
        return super().postprocess_detections({**head_outputs, "cls_logits": masked}, anchors, image_shapes)


def _retinanet(body: _Skeleton, num_classes: int, s: DetectorSettings) -> RetinaNet:
    names = body.stage_names[1:]  # C3..C5
    backbone = BackboneWithFPN(
        body,
        return_layers={n: str(i) for i, n in enumerate(names)},
        in_channels_list=list(body.space.stage_channels[1:]),
        out_channels=s.fpn_channels,
        extra_blocks=LastLevelP6P7(s.fpn_channels, s.fpn_channels),  # in == out: P6 from P5
        norm_layer=nn.BatchNorm2d,
    )
    sizes = _anchor_sizes(s, (32, 64, 128, 256, 512))
    # three scales per octave, as in the RetinaNet paper and torchvision
    anchors = AnchorGenerator(
        tuple((a, a * 2 ** (1 / 3), a * 2 ** (2 / 3)) for a in sizes), (s.aspect_ratios,) * len(sizes)
    )
    head = RetinaNetHead(s.fpn_channels, anchors.num_anchors_per_location()[0], num_classes + 1)
    return _RetinaNet(
        backbone,
        num_classes=num_classes + 1,  # labels are 1..K; 0 is never a foreground class (nor reported)
        min_size=s.min_size,
        max_size=s.max_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=s.score_threshold,
        detections_per_img=s.detections_per_image,
    )


DETECTORS: dict[str, Callable[[_Skeleton, int, DetectorSettings], nn.Module]] = {
    "faster_rcnn_fpn": _faster_rcnn_fpn,
    "retinanet": _retinanet,
}


def build_detector(body: _Skeleton, *, num_classes: int, settings: DetectorSettings) -> nn.Module:
    """A torchvision detector for ``num_classes`` foreground classes (labels 1..K) around ``body``."""
    if body.num_classes is not None:
        raise ValueError("the detection backbone must have no classification head (num_classes=None)")
    model = DETECTORS[settings.name](body, num_classes, settings)
    # what anchors and boxes are computed from stays float32 under autocast (a no-op without it)
    heads = [model.rpn.head, model.roi_heads.box_predictor] if isinstance(model, FasterRCNN) else [model.head]
    for module in (model.backbone, *heads):
        module.register_forward_hook(float32_outputs)
    return model


def backbone_body(space: SearchSpace, arch: Arch | None) -> _Skeleton:
    """The detection backbone: the supernet of ``space`` (``arch`` None) or that architecture alone."""
    return Supernet(space) if arch is None else SinglePathNet(space, arch)


def detector_from_checkpoint(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A detector saved by ``run_finetune`` (supernet or standalone), on ``device``, and its metadata."""
    ckpt = load_checkpoint(path, map_location=device)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "detector":
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a detector checkpoint (kind {kind!r})")
    missing = [k for k in ("space", "arch", "detector", "num_classes", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: detector checkpoint lacks {', '.join(missing)}")
    space = get_space(ckpt["space"])
    arch = space.parse(ckpt["arch"]) if ckpt["arch"] else None
    model = build_detector(backbone_body(space, arch), num_classes=ckpt["num_classes"],
                           settings=DetectorSettings.from_dict(ckpt["detector"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # weights of another network: name the file, on one line
        raise ValueError(f"{path}: its weights do not fit the detector it describes "
                         f"({' '.join(str(exc).split())[:300]})") from exc
    return model.to(device), ckpt
