import numpy as np
import pytest
import torch
from torch import nn

from detnas.detectors import DetectorSettings, build_detector
from detnas.engine import path_batchnorms, recalibrate_bn
from detnas.space import get_space
from detnas.supernet import SinglePathNet, Supernet, set_path

SMALL = dict(min_size=64, max_size=64, fpn_channels=16, head_conv_channels=16, head_fc_channels=32,
             anchor_sizes=[8, 16, 32, 48, 64], rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
             rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
             rpn_batch_size_per_image=32)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0]]),
                "labels": torch.tensor([1, 3])} for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("name", ["faster_rcnn_fpn", "retinanet"])
def test_forward_backward(name):
    torch.manual_seed(0)
    space = get_space("tiny")
    body = Supernet(space)
    model = build_detector(body, num_classes=3, settings=DetectorSettings.from_dict({"name": name, **SMALL}))
    body.set_arch(space.sample(np.random.default_rng(0)))
    images, targets = _batch()
    losses = model(images, targets)
    sum(losses.values()).backward()
    stem_conv = body.stem[0]
    assert stem_conv.weight.grad is not None  # gradients reach the backbone through torchvision's model
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.weight.requires_grad for m in bns)  # BN trainable, not frozen
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert {"boxes", "labels", "scores"} <= set(out[0])


def test_faster_rcnn_has_4conv1fc_head_and_p6():
    model = build_detector(Supernet(get_space("tiny")), num_classes=3, settings=DetectorSettings.from_dict(SMALL))
    convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs) and len(fcs) == 1
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]  # P2..P6


def test_path_reaches_the_backbone_inside_the_detector():
    torch.manual_seed(0)
    space = get_space("tiny")
    model = build_detector(Supernet(space), num_classes=3, settings=DetectorSettings.from_dict(SMALL)).eval()
    x = torch.rand(1, 3, 64, 64)
    outs = []
    for arch in ("00000000", "33333333"):
        set_path(model, space.parse(arch))  # set on the detector: the supernet is inside torchvision's model
        with torch.no_grad():
            outs.append(model.backbone(x)["0"])
    assert not torch.allclose(outs[0], outs[1])


def test_recalibration_uses_true_batch_average():
    torch.manual_seed(0)
    space = get_space("tiny")
    net = Supernet(space)
    net.set_arch(space.parse("01230123"))
    bns = path_batchnorms(net)
    assert all(m.momentum == 0.1 for m in bns)
    assert len(bns) < sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # off-path BN excluded
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in bns}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen[mod].append(inp[0].detach())) for m in bns]
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, 32, 32, generator=g) * (i + 1) for i in range(3)]  # different stats per batch
    assert recalibrate_bn(net, batches, net) == 3
    for h in hooks:
        h.remove()
    assert not net.training
    for m in bns:
        xs = seen[m]
        assert len(xs) == 3
        means = torch.stack([x.mean((0, 2, 3)) for x in xs])
        variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs])
        torch.testing.assert_close(m.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
        assert m.momentum == 0.1  # restored
    # the first BN sees the stem conv of the raw images: its statistics are those of the data
    stem_out = torch.cat([net.stem[0](b) for b in batches])
    torch.testing.assert_close(net.stem[1].running_mean, stem_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_recalibration_leaves_off_path_bn_alone():
    space = get_space("tiny")
    net = Supernet(space)
    net.set_arch(space.uniform(0))
    off = net.stage1[0].choices[3]
    before = {k: v.clone() for k, v in off.state_dict().items()}
    recalibrate_bn(net, [torch.rand(2, 3, 32, 32)], net)
    assert all(torch.equal(before[k], v) for k, v in off.state_dict().items())


def test_recalibrated_detector_statistics(det_source):
    """Recalibration through a whole detector (train-mode forward with targets, no gradient)."""
    torch.manual_seed(0)
    space = get_space("tiny")
    model = build_detector(SinglePathNet(space, "00000000"), num_classes=5, settings=DetectorSettings.from_dict(SMALL))
    images, targets = _batch(2)
    params = [p.clone() for p in model.parameters()]
    recalibrate_bn(model, [(images, targets)], lambda b: model(*b))
    fpn_bn = [m for m in model.backbone.fpn.modules() if isinstance(m, nn.BatchNorm2d)]
    head_bn = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert fpn_bn and head_bn
    assert all(int(m.num_batches_tracked) == 1 for m in fpn_bn + head_bn)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))  # no training happened
