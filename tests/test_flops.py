import subprocess
import sys

import numpy as np
import pytest

from detnas.archs import get_published
from detnas.flops import cost_table, count_macs, count_params
from detnas.space import SPACES, get_space
from detnas.supernet import SinglePathNet


@pytest.mark.parametrize("name", list(SPACES))
def test_table_equals_direct_count(name):
    space = get_space(name)
    table = cost_table(space)
    rng = np.random.default_rng(0)
    for _ in range(2 if name.startswith("large") else 3):
        arch = space.sample(rng)
        net = SinglePathNet(space, arch)  # backbone only: stem + searchable blocks
        assert table.backbone_macs(arch) == count_macs(net, 224)
        assert table.backbone_params(arch) == count_params(net)


def test_classifier_params_and_macs():
    space = get_space("tiny")
    table = cost_table(space)
    arch = space.parse("32103210")
    net = SinglePathNet(space, arch, num_classes=7)
    assert table.classifier_params(arch, 7) == count_params(net)
    # the classification head adds its 1x1 conv and linear MACs on top of the backbone
    assert count_macs(net) == table.backbone_macs(arch) + table.last_conv_macs + 1024 * 7


def test_published_macs_agree_with_paper():
    space, arch = get_published("coco_fpn_300m")
    macs = cost_table(space).backbone_macs(arch) / 1e6
    assert 280 < macs < 300  # "just under 300M"
    space, arch = get_published("detnasnet")
    assert 1200 < cost_table(space).backbone_macs(arch) / 1e6 < 1400
    space, arch = get_published("detnasnet_3.8")
    assert 3800 < cost_table(space).backbone_macs(arch) / 1e6 < 4000


def test_small_space_range():
    space = get_space("small")
    table = cost_table(space)
    rng = np.random.default_rng(0)
    macs = np.array([table.backbone_macs(space.sample(rng)) for _ in range(2000)]) / 1e6
    assert 255 < np.percentile(macs, 1) and np.percentile(macs, 99) < 335


def test_flops_cli():
    out = subprocess.run(
        [sys.executable, "-m", "detnas", "flops", "--space", "small", "--arch", "21202112331300313132"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "288.1" in out
    bad = subprocess.run(
        [sys.executable, "-m", "detnas", "flops", "--space", "small", "--arch", "2120"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "'2120' has 4 digits" in bad.stderr
