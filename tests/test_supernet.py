import numpy as np
import pytest
import torch

from detnas.blocks import CHOICES, channel_shuffle, make_block
from detnas.space import get_space
from detnas.supernet import SinglePathNet, Supernet, set_path


def test_channel_shuffle_mixes_both_halves():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    a, b = channel_shuffle(x)
    assert a.flatten().tolist() == [0, 4, 1, 5]
    assert b.flatten().tolist() == [2, 6, 3, 7]


@pytest.mark.parametrize("choice", range(len(CHOICES)))
@pytest.mark.parametrize("stride, cin, cout", [(1, 32, 32), (2, 16, 48)])
def test_block_shapes(choice, stride, cin, cout):
    block = make_block(choice, cin, cout, stride)
    y = block(torch.randn(2, cin, 16, 16))
    assert y.shape == (2, cout, 16 // stride, 16 // stride)


@pytest.mark.parametrize("choice", range(len(CHOICES)))
@pytest.mark.parametrize("stride, cin, cout", [(1, 32, 32), (2, 16, 48)])
def test_block_keeps_channels_last(choice, stride, cin, cout):
    """NHWC in, NHWC out (the shuffle and the concatenation keep the layout), with the same values
    and gradients as NCHW: no layout conversion between two blocks on a GPU's tensor cores."""
    torch.manual_seed(0)
    block = make_block(choice, cin, cout, stride)
    x = torch.randn(2, cin, 16, 16)
    y = block(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    block.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = block(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    torch.testing.assert_close(y_cl, y)
    y_cl.square().sum().backward()
    assert x_cl.grad.is_contiguous(memory_format=torch.channels_last)
    for g, p in zip(grads, block.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-3)  # float32 sums over ~10^4 terms, in NHWC order
    halves = channel_shuffle(x.contiguous(memory_format=torch.channels_last))
    for got, want in zip(halves, channel_shuffle(x)):
        assert torch.equal(got, want)


def test_stride2_block_projects_all_inputs():
    # the main branch takes all `in` channels and outputs out - in; the projection keeps `in`
    block = make_block(0, 16, 48, 2)
    assert block.branch_main[0].in_channels == 16 and block.branch_main[-3].out_channels == 32
    assert block.branch_proj[0].groups == 16 and block.branch_proj[0].stride == (2, 2)
    xblock = make_block(3, 32, 32, 1)
    assert xblock.branch_main[0].in_channels == 16 and xblock.branch_main[0].groups == 16


def test_feature_strides_and_channels():
    space = get_space("tiny")
    net = Supernet(space)
    feats = net.features(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(space.stage_channels)
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in feats] == [(4, 4), (8, 8), (16, 16), (32, 32)]


@pytest.mark.parametrize("space_name", ["tiny", "small"])
def test_extract_matches_supernet_path(space_name):
    torch.manual_seed(0)
    space = get_space(space_name)
    net = Supernet(space, num_classes=10)
    # give BN layers non-trivial statistics so a wrong copy would show
    net.train()
    rng = np.random.default_rng(0)
    for _ in range(3):
        net.set_arch(space.sample(rng))
        with torch.no_grad():
            net(torch.randn(4, 3, 64, 64))
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    for _ in range(3):
        arch = space.sample(rng)
        net.set_arch(arch)
        child = net.extract(arch)
        assert isinstance(child, SinglePathNet) and child.arch == arch
        child.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), child(x), rtol=0, atol=0)
        # in NHWC too: every block's output stays channels_last, and the two still agree
        for m in (net, child):
            m.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            feats = child.features(x_cl)
            assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)
            torch.testing.assert_close(net(x_cl), child(x_cl), rtol=0, atol=0)
            torch.testing.assert_close(net(x_cl), net(x), rtol=1e-4, atol=1e-5)
        for m in (net, child):
            m.to(memory_format=torch.contiguous_format)
        assert sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in net.parameters())


def test_forward_is_deterministic_and_path_matters():
    torch.manual_seed(0)
    space = get_space("tiny")
    net = Supernet(space, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    net.set_arch(space.uniform(0))
    a1, a2 = net(x), net(x)
    net.set_arch(space.uniform(3))
    b = net(x)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.allclose(a1, b)


def test_unused_choices_get_no_gradient():
    torch.manual_seed(0)
    space = get_space("tiny")
    net = Supernet(space, num_classes=5)
    arch = space.parse("01230123")
    net.set_arch(arch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = net(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    for stage in net.stage_names:
        for pos, block in enumerate(getattr(net, stage)):
            for c, choice in enumerate(block.choices):
                on_path = c == block.active
                for name, p in choice.named_parameters():
                    assert (p.grad is not None) == on_path, f"{stage}.{pos}.choices.{c}.{name}"
                    if not on_path:
                        assert p not in opt.state or not opt.state[p], "momentum touched an unused choice"
    after = net.state_dict()
    for key, value in before.items():
        if ".choices." in key and "running" not in key and "num_batches" not in key:
            choice = int(key.split(".choices.")[1].split(".")[0])
            stage, pos = key.split(".")[:2]
            active = getattr(net, stage)[int(pos)].active
            if choice != active:
                assert torch.equal(value, after[key]), f"weight decay touched {key}"


def test_set_path_validates_length():
    net = Supernet(get_space("tiny"))
    with pytest.raises(ValueError, match="8 choice blocks"):
        set_path(net, get_space("small").uniform(0))
    with pytest.raises(ValueError, match="has 3 digits"):
        net.set_arch("012")
