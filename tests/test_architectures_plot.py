"""The architecture-pattern figure (the paper's Fig. 4) draws each block's choice where its stage puts
it, and ``plot-archs`` takes published names, space:encoding strings and arch.json files."""

import json

import numpy as np
from matplotlib.colors import to_rgba

from detnas.archs import PUBLISHED
from detnas.cli import main
from detnas.flops import cost_table
from detnas.plots.archs import CHOICE_COLORS, STAGE_GAP, draw_architectures, fmt_macs, plot_architectures
from detnas.plots.style import plt
from detnas.space import get_space
from workflow import make_workdir, planned

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows():
    tiny, small = get_space("tiny"), get_space("small")
    return [("tiny one", tiny, tiny.parse("01233210")),
            ("small one", small, small.parse(PUBLISHED["coco_fpn_300m"].encoding))]


def test_blocks_show_the_choices_in_their_stages():
    rows = _rows()
    fig, ax = plt.subplots()
    layouts = draw_architectures(ax, rows)
    blocks = [p for p in ax.patches if p.get_gid() == "block"]
    assert len(blocks) == 8 + 20
    genes = [g for _, _, arch in rows for g in arch.genes]
    assert [p.get_facecolor() for p in blocks] == [to_rgba(CHOICE_COLORS[g]) for g in genes]
    xs = [p.get_x() for p in blocks]
    offset = 0
    for (label, space, arch), layout in zip(rows, layouts):
        assert layout.choices == arch.genes and layout.space == space.name
        assert layout.stage_starts == tuple(np.cumsum((0, *space.stage_blocks[:-1])))
        steps = np.diff(layout.x)
        # one block width within a stage, one more gap where a stage starts
        assert np.allclose(steps, [1.0 + STAGE_GAP if k in layout.stage_starts else 1.0 for k in range(1, len(arch))])
        assert np.allclose(np.diff(xs[offset:offset + len(arch)]), steps)
        offset += len(arch)
        macs = cost_table(space).backbone_macs(arch)
        assert layout.macs == macs and layout.label == f"{label}  {fmt_macs(macs)}"
    assert [t.get_text() for t in ax.get_yticklabels()] == [layout.label for layout in layouts]
    plt.close(fig)


def test_figure_is_written_and_grows_with_the_rows(tmp_path):
    from PIL import Image

    rows = _rows()
    plot_architectures(rows[:1], tmp_path / "one.png", title="one")
    plot_architectures(rows * 3, tmp_path / "six.png", title="six")
    (w1, h1), (w6, h6) = (Image.open(tmp_path / f).size for f in ("one.png", "six.png"))
    assert h6 > h1 + 100 and w6 <= 1000
    assert fmt_macs(299_612_345) == "299.6M" and fmt_macs(1_268_000_000) == "1.27G"


def test_cli_draws_published_typed_and_searched_architectures(tmp_path, capsys):
    arch_file = tmp_path / "exp" / "scratch" / "search" / "arch.json"
    arch_file.parent.mkdir(parents=True)
    # what a search of the supernet fine-tuned from scratch writes: method "detnas", the EA it ran
    arch_file.write_text(json.dumps({"method": "detnas", "arch": "00000000", "space": "tiny@w1.0937"}))
    out = tmp_path / "archs.png"
    assert main(["plot-archs", "coco_fpn_300m", "tiny:01233210", str(arch_file), "--label", "paper's",
                 "--title", "mixed", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"{out}: 3 architectures" in capsys.readouterr().out

    from detnas.stages.architectures import run_plot_archs

    rows = run_plot_archs(["tiny:01233210", str(arch_file)], out=out, title="x", published=True)
    assert [label for label, _, _ in rows] == ["tiny:01233210", "scratch", *PUBLISHED]
    assert rows[1][1].name == "tiny@w1.0937" and str(rows[1][2]) == "00000000"


def test_unknown_name_lists_the_known_ones(tmp_path, capsys):
    out = tmp_path / "archs.png"
    assert main(["plot-archs", "coco_fpn_301m", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'coco_fpn_301m'" in err and all(name in err for name in PUBLISHED)
    assert main(["plot-archs", "small:0123", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'small:0123'" in err and "20 blocks" in err
    assert main(["plot-archs", "--out", str(out)]) == 2
    assert "--published" in capsys.readouterr().err
    assert not out.exists()


def test_workflow_plans_the_figure(tmp_path):
    """One figure per experiment from the arch.json of every method and random architecture."""
    wd = make_workdir(tmp_path)
    jobs = planned(wd, "results/shapes_fpn/architectures.png")
    assert jobs["architectures"] == 1
    # the searches, the hand-crafted baseline and the three random architectures of the micro config
    assert jobs["search"] == 4 and jobs["handcrafted_arch"] == 1 and jobs["random_arch"] == 3
    assert "retrain_finetune" not in jobs  # the chosen architectures, not their training


def test_title_and_caption_name_the_pretraining_data_of_the_config(tmp_path):
    """The demo's supernet is pre-trained on a synthetic stand-in, not on ImageNet: the figure's
    title and its report caption name the data of the config's pretrain entry."""
    from types import SimpleNamespace

    import jinja2
    import yaml

    from workflow import ROOT, snakemake

    wd = make_workdir(tmp_path)
    shell = snakemake(wd, "-n", "-p", "results/shapes_fpn/architectures.png").stdout
    command = next(line for line in shell.splitlines() if "detnas plot-archs" in line)
    assert "supernet pre-trained on shapes_cls (synthetic)" in command and "ImageNet" not in command

    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())  # as Snakemake's report renders it
    caption = jinja2.Template((ROOT / "workflow" / "report" / "architectures.rst").read_text()).render(
        snakemake=SimpleNamespace(config=config, wildcards=SimpleNamespace(experiment="shapes_fpn")))
    assert "pre-trained on\n``shapes_cls`` (pre-training ``micro``, synthetic images standing in for ImageNet)" in caption
    assert "pre-trained on ImageNet" not in caption
