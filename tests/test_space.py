import re

import numpy as np
import pytest

from detnas.archs import PUBLISHED, get_published
from detnas.space import SPACES, Arch, get_space, scale_space, space_of_arch, split_space_name


@pytest.mark.parametrize("name", list(SPACES))
def test_space_geometry(name):
    space = get_space(name)
    blocks = space.blocks()
    assert len(blocks) == space.num_blocks
    # the first block of every stage has stride 2, the others stride 1 and keep their width
    for b in blocks:
        assert b.stride == (2 if b.index == 0 else 1)
        if b.stride == 1:
            assert b.in_channels == b.out_channels
    assert blocks[0].in_channels == space.stem_channels


def test_presets_match_the_paper():
    small, large, wide = get_space("small"), get_space("large"), get_space("large_x1.8")
    assert (small.stem_channels, small.stage_channels, small.stage_blocks) == (16, (64, 160, 320, 640), (4, 4, 8, 4))
    assert (large.stem_channels, large.stage_channels, large.stage_blocks) == (48, (96, 240, 480, 960), (8, 8, 16, 8))
    assert wide.stage_blocks == large.stage_blocks and wide.stem_channels == 72
    assert get_space("tiny").num_blocks >= 6


def test_encoding_round_trip():
    space = get_space("small")
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.parse(str(arch)) == arch
    assert str(space.parse("2120 2112 33130031 3132")) == "21202112331300313132"


@pytest.mark.parametrize(
    "encoding, message",
    [
        ("2120211233130031313", "has 19 digits"),
        ("212021123313003131320", "has 21 digits"),
        ("21202112331300313134", "21202112331300313134"),
        ("2120x112331300313132", "bad characters: x"),
        ("", "(empty)"),
    ],
)
def test_parse_rejects_bad_encodings(encoding, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        get_space("small").parse(encoding)
    assert repr(encoding) in str(info.value)


def test_arch_rejects_bad_genes():
    with pytest.raises(ValueError, match="gene 1"):
        Arch((0, 4, 1))


def test_unknown_space_lists_known():
    with pytest.raises(ValueError, match="unknown search space 'huge'.*tiny, small"):
        get_space("huge")


@pytest.mark.parametrize("name", ["tiny", "small", "large"])
def test_operators_are_reproducible_and_valid(name):
    space = get_space(name)

    def run(seed):
        rng = np.random.default_rng(seed)
        out = []
        a, b = space.sample(rng), space.sample(rng)
        for _ in range(100):
            m = space.mutate(a, rng, 0.1)
            c = space.crossover(a, b, rng)
            out += [m, c]
            a, b = c, m
        return out

    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert first != other
    for arch in first:
        assert len(arch) == space.num_blocks and all(0 <= g < 4 for g in arch)
        assert space.parse(str(arch)) == arch


def test_mutation_rate_and_crossover_genes():
    space = get_space("large")
    rng = np.random.default_rng(0)
    parent = space.uniform(0)
    changed = np.mean([g != 0 for _ in range(500) for g in space.mutate(parent, rng, 0.1)])
    assert 0.06 < changed < 0.09  # prob 0.1 of a redraw, 3/4 of redraws change the gene
    a, b = space.uniform(1), space.uniform(2)
    child = space.crossover(a, b, rng)
    assert set(child.genes) <= {1, 2}
    assert space.mutate(parent, rng, 0.0) == parent


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_architectures_parse(name):
    space, arch = get_published(name)
    assert len(arch) == space.num_blocks


def test_scaled_space_multiplies_every_channel_count_and_rounds_to_even():
    scaled = scale_space(get_space("small"), 1.0703)
    assert scaled.name == "small@w1.0703"
    # 16, 64, 160, 320, 640 times 1.0703 = 17.1, 68.5, 171.2, 342.5, 685.0 -> nearest even
    assert (scaled.stem_channels, scaled.stage_channels) == (18, (68, 172, 342, 684))
    assert scaled.stage_blocks == get_space("small").stage_blocks
    assert scale_space(get_space("tiny"), 1.0).stage_channels == get_space("tiny").stage_channels
    with pytest.raises(ValueError, match="only a preset space can be width-scaled.*'small@w1.0703'"):
        scale_space(scaled, 1.1)


@pytest.mark.parametrize("name", ["tiny@w1.0937", "small@w1.0703", "large@w1.1208", "large_x1.8@w0.5000", "tiny@w0.3000"])
def test_scaled_space_names_round_trip(name):
    space = get_space(name)
    assert space.name == name and get_space(space.name) == space
    base, factor = split_space_name(name)
    assert scale_space(get_space(base), factor) == space
    assert space.stem_channels % 2 == 0 and all(c % 2 == 0 for c in space.stage_channels)
    assert list(space.stage_channels) == sorted(set(space.stage_channels)) and space.stem_channels < space.stage_channels[0]


def test_split_space_name_of_a_preset_is_factor_one():
    assert split_space_name("large_x1.8") == ("large_x1.8", 1.0)
    assert split_space_name("small@w1.0703") == ("small", 1.0703)


@pytest.mark.parametrize(
    "name, message",
    [
        ("small@w1.07", "write it <preset>@w<factor> with 4 decimals"),
        ("small@w01.0703", "write it 'small@w1.0703'"),
        ("huge@w1.0000", "'huge@w1.0000': unknown preset 'huge'"),
        ("small@w0.0000", "width factor must be at least"),
        ("small@w1.0703@w1.0000", "unknown preset 'small@w1.0703'"),  # scaled once, from a preset
        ("tiny@w0.0100", "tiny@w0.0100"),  # every channel count rounds to 0 or 2: not increasing
    ],
)
def test_bad_scaled_space_names_are_named(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_space(name)


def test_space_of_arch_takes_the_scaled_space_of_the_settings_preset():
    assert space_of_arch("small@w1.0703", "small").name == "small@w1.0703"
    assert space_of_arch("small", "small").name == "small"
    assert space_of_arch("small@w1.0703", None).name == "small@w1.0703"
    with pytest.raises(ValueError, match=r"'large@w1.1208' is neither the settings' space 'small'.*space 'large'"):
        space_of_arch("large@w1.1208", "small")
