"""The hand-crafted ShuffleNetV2 baselines: scaled to the experiment's FLOPs limit (as in the paper)
and unscaled, from fixed-arch through the retraining stages (which build the arch file's space) to
the workflow's targets."""

import argparse
import json

import pytest
import torch
from conftest import as_json, run_detnas
from workflow import make_workdir, planned, snakemake

from detnas.cli import _arch, main
from detnas.detectors import DetectorSettings, build_detector
from detnas.io import save_checkpoint
from detnas.space import get_space
from detnas.detectors import backbone_body, detector_from_checkpoint
from detnas.stages.finetune import load_classification_weights


def _fixed_arch(tmp_path, *extra):
    out = tmp_path / "arch.json"
    assert main(["fixed-arch", "--space", "tiny", "--uniform", "0", "--method", "shufflenetv2", "--out", str(out),
                 *extra]) == 0
    return out, json.loads(out.read_text())


def test_fixed_arch_scaled_writes_the_factor_and_the_macs(tmp_path):
    _, chosen = _fixed_arch(tmp_path, "--scale-to", "40")
    assert chosen["arch"] == "00000000" and chosen["space"] == "tiny@w1.0937" and chosen["base_space"] == "tiny"
    assert chosen["width_factor"] == 1.0937 and chosen["scaled_to_mflops"] == 40
    assert 40 * 0.98 <= chosen["mflops"] <= 40 and chosen["mflops"] == pytest.approx(39.286828)
    _, plain = _fixed_arch(tmp_path)
    assert plain["space"] == "tiny" and plain["width_factor"] == 1.0 and plain["scaled_to_mflops"] is None
    assert plain["mflops"] == pytest.approx(33.64928)


def test_fixed_arch_out_of_reach_fails_naming_the_closest(tmp_path, capsys):
    assert main(["fixed-arch", "--space", "tiny", "--uniform", "0", "--scale-to", "4", "--method", "x",
                 "--out", str(tmp_path / "a.json")]) == 2
    assert "within 2% of 4.0 M MACs; closest: tiny@w" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_arch_file_space_replaces_the_settings_preset(tmp_path):
    arch_file, _ = _fixed_arch(tmp_path, "--scale-to", "40")
    args = argparse.Namespace(arch=None, arch_file=arch_file, settings={"space": "tiny", "seed": 0})
    assert _arch(args) == ("00000000", {"space": "tiny@w1.0937", "seed": 0})
    assert args.settings == {"space": "tiny", "seed": 0}  # the parsed arguments stay as given
    args.settings = {"space": "small"}
    with pytest.raises(ValueError, match=rf"{arch_file}: the architecture's space 'tiny@w1.0937' is neither the "
                                         r"settings' space 'small'"):
        _arch(args)
    # an arch file without a space (written by hand) keeps the settings' space
    arch_file.write_text(json.dumps({"arch": "00000000"}))
    args.settings = {"space": "tiny"}
    assert _arch(args) == ("00000000", {"space": "tiny"})


def test_retraining_builds_the_scaled_network(cls_split, tmp_path):
    """pretrain --arch-file trains the arch file's (scaled) space; fine-tuning and evaluation rebuild it
    from the checkpoints' space names."""
    arch_file, chosen = _fixed_arch(tmp_path, "--scale-to", "40")
    settings = {"space": "tiny", "image_size": 32, "batch_size": 8, "seed": 0, "checkpoint_every": 10, "log_every": 2,
                "schedule": {"iterations": 2, "lr": 0.05, "policy": "linear", "weight_decay": 4e-5}}
    out = tmp_path / "cls"
    run_detnas("pretrain", "--settings", as_json(settings), "--split", str(cls_split), "--arch-file", str(arch_file),
               "--weights", str(out / "classifier.pt"), "--metrics", str(out / "metrics.json"),
               "--curves", str(out / "curves.png"), "--checkpoint-dir", str(out / "checkpoints"), "--threads", "1")
    ckpt = torch.load(out / "classifier.pt", weights_only=True)
    assert ckpt["space"] == "tiny@w1.0937" and ckpt["arch"] == "00000000"
    assert ckpt["state_dict"]["stem.0.weight"].shape[0] == get_space("tiny@w1.0937").stem_channels == 18
    assert json.loads((out / "metrics.json").read_text())["space"] == "tiny@w1.0937"

    # run_finetune's body for the same settings and arch file, initialised from the classifier
    space = get_space(ckpt["space"])
    body = backbone_body(space, space.parse(chosen["arch"]))
    load_classification_weights(body, out / "classifier.pt")
    detector = {"name": "faster_rcnn_fpn", "min_size": 64, "max_size": 64, "fpn_channels": 16}
    model = build_detector(body, num_classes=3, settings=DetectorSettings.from_dict(detector))
    save_checkpoint({"kind": "detector", "space": space.name, "arch": chosen["arch"], "detector": detector,
                     "num_classes": 3, "state_dict": model.state_dict()}, tmp_path / "detector.pt")
    rebuilt, meta = detector_from_checkpoint(tmp_path / "detector.pt", torch.device("cpu"))
    assert meta["space"] == "tiny@w1.0937"
    assert rebuilt.backbone.body.stem[0].weight.shape[0] == 18
    # a classifier of the unscaled space does not fit the scaled network: named, not silently reshaped
    plain = tmp_path / "plain.pt"
    tiny = get_space("tiny")
    save_checkpoint({"kind": "single_path", "space": "tiny", "arch": "00000000",
                     "state_dict": backbone_body(tiny, tiny.uniform(0)).state_dict()}, plain)
    with pytest.raises(ValueError, match="plain.pt: checkpoint of space 'tiny' .*this backbone is of space 'tiny@w1.0937'"):
        load_classification_weights(backbone_body(space, space.uniform(0)), plain)


def test_workflow_plans_both_handcrafted_baselines(tmp_path):
    wd = make_workdir(tmp_path)
    jobs = planned(wd, "results/shapes_fpn/shufflenetv2_unscaled/final.json")
    assert jobs["handcrafted_arch_unscaled"] == 1 and jobs["evaluate"] == 1 and "handcrafted_arch" not in jobs
    text = snakemake(wd, "-n", "-p", "results/shapes_fpn/shufflenetv2/search/arch.json",
                     "results/shapes_fpn/shufflenetv2_unscaled/search/arch.json").stdout
    commands = {line.split("--method ")[1].split()[0]: line for line in text.splitlines() if "detnas fixed-arch" in line}
    assert set(commands) == {"shufflenetv2", "shufflenetv2_unscaled"}
    assert "--space tiny --uniform 0 --scale-to 40 " in commands["shufflenetv2"]  # the micro config's max_mflops
    assert "--scale-to" not in commands["shufflenetv2_unscaled"]
