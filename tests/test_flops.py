import subprocess
import sys

import numpy as np
import pytest
import torch

from detnas.archs import SCALED_BASELINES, get_published, scaled_shufflenetv2
from detnas.flops import cost_table, count_macs, count_params, match_width, path_macs
from detnas.space import SPACES, get_space, scale_space, split_space_name
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


def test_x18_classifier_has_the_authors_last_conv():
    """DetNASNet 3.8's classification model ends in a 1x1 conv to 1728 channels, not 1024."""
    space = get_space("large_x1.8")
    arch = space.uniform(0)
    with torch.device("meta"):
        net = SinglePathNet(space, arch, num_classes=1000)
    assert net.conv_last[0].out_channels == 1728 and net.classifier.in_features == 1728
    assert cost_table(space).classifier_params(arch, 1000) == sum(p.numel() for p in net.parameters())
    assert get_space("large").last_channels == get_space("small").last_channels == 1024


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


# The hand-crafted baselines of the paper ("ShuffleNetV2-20, scaled to 300M FLOPs"), and the demo's
# (max_mflops 40 in config/config.yaml): every channel count of the all-3x3 path times one factor.
SCALED = [("small", 300, "small@w1.0703"), ("large", 1300, "large@w1.1208"), ("tiny", 40, "tiny@w1.0937")]


@pytest.mark.parametrize("base, mflops, name", SCALED)
def test_scaled_shufflenetv2_is_within_2_percent_of_the_limit(base, mflops, name):
    match = scaled_shufflenetv2(base, mflops)
    assert match.space.name == name and match.factor == split_space_name(name)[1]
    assert str(match.arch) == "0" * match.space.num_blocks
    assert abs(match.macs / (mflops * 1e6) - 1) <= 0.02
    assert match.macs <= mflops * 1e6  # the rounding allows one under the limit in all three: it is taken
    # channels even and increasing from the stem: every stride-2 block has new channels to add
    space = match.space
    widths = [space.stem_channels, *space.stage_channels]
    assert all(c % 2 == 0 for c in widths) and all(a < b for a, b in zip(widths, widths[1:]))
    # the scaled space is a value its name rebuilds: what checkpoints and arch.json store
    assert get_space(space.name) == space
    assert cost_table(space).backbone_macs(match.arch) == match.macs == path_macs(space, match.arch)


def test_scaled_macs_equal_a_direct_count_of_the_built_network():
    match = scaled_shufflenetv2("small", 300)
    net = SinglePathNet(get_space(match.space.name), match.arch)  # built from the name, as the stages do
    assert count_macs(net, 224) == match.macs
    assert cost_table(match.space).backbone_params(match.arch) == count_params(net)


def test_match_width_takes_the_widest_network_under_the_target():
    space = get_space("small")
    arch = space.uniform(0)
    match = match_width(space, arch, 300e6)
    units = round(match.factor * 10_000)
    # the next wider channel configuration (a few 1e-4 steps of the factor up) is over the budget
    wider = (scale_space(space, u / 10_000) for u in range(units + 1, units + 200))
    bigger = next(s for s in wider if (s.stem_channels, s.stage_channels) != (match.space.stem_channels,
                                                                               match.space.stage_channels))
    assert path_macs(bigger, arch) > 300e6 >= match.macs


def test_match_width_fails_loudly_when_2_percent_is_out_of_reach():
    # tiny at 4M: one channel step of the narrow stem moves the MACs by more than 2%
    space = get_space("tiny")
    with pytest.raises(ValueError, match=r"no width factor puts 00000000 within 2% of 4.0 M MACs; closest: tiny@w"):
        match_width(space, space.uniform(0), 4e6)
    with pytest.raises(ValueError, match="only a preset space"):
        match_width(get_space("tiny@w1.0937"), space.uniform(0), 40e6)


def test_flops_cli_prints_the_scaled_baselines(capsys):
    from detnas.cli import main  # in-process: the command's logic, without a second torch import

    assert main(["flops", *[a for n in SCALED_BASELINES for a in ("--name", n)]]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["shufflenetv2_20_300m"][1:3] == ["small@w1.0703", "1.0703"]
    assert rows["shufflenetv2_40_1300m"][1:3] == ["large@w1.1208", "1.1208"]
    assert 294 <= float(rows["shufflenetv2_20_300m"][4]) <= 300 and 1274 <= float(rows["shufflenetv2_40_1300m"][4]) <= 1300
    assert main(["flops", "--space", "tiny", "--scale-to", "40"]) == 0
    out = capsys.readouterr().out
    assert "shufflenetv2 @40M" in out and "tiny@w1.0937" in out and "33.6" in out and "39.3" in out


def test_within_is_the_search_constraint_with_inclusive_bounds():
    space = get_space("tiny")
    table = cost_table(space)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(40)]
    mflops = sorted(table.backbone_macs(a) / 1e6 for a in archs)
    lo, hi = mflops[10], mflops[30]
    inside = table.within(lo, hi)
    assert [inside(a) for a in archs] == [lo <= table.backbone_macs(a) / 1e6 <= hi for a in archs]
    assert 20 <= sum(map(inside, archs)) < 40  # both bounds bite, and each is inclusive
    assert all(map(table.within(), archs)) and all(map(table.within(None, hi), [a for a in archs if inside(a)]))
    cheapest, dearest = table.bounds()
    assert not any(map(table.within(max_mflops=cheapest / 1e6 - 1e-3), archs))
    assert not any(map(table.within(min_mflops=dearest / 1e6 + 1e-3), archs))
