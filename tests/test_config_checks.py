"""Configuration mistakes stop Snakemake before any job, one line each, starting with the config key path.

Each test runs the real `snakemake` on the micro configuration (tests/data/micro_config.yaml); the
checks run when the Snakefile loads or while the DAG is built, so these take seconds.
"""

import json
import re
import shutil
from pathlib import Path

import yaml
from PIL import Image

from workflow import ROOT, edit_config, make_workdir, planned, snakemake

MICRO = ROOT / "tests" / "data" / "micro_config.yaml"


def stopped(wd: Path, *args: str) -> list[str]:
    """Run snakemake, expect it to fail, and return its output lines; no job may have run."""
    proc = snakemake(wd, *args, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert not (wd / "results").exists() or not any(p.is_file() for p in (wd / "results").rglob("*"))
    return (proc.stderr + proc.stdout).splitlines()


def first_problem(lines: list[str]) -> str:
    """The first line that is not Snakemake's own preamble."""
    return next(line for line in lines if line.strip() and not line.startswith("Using workflow specific profile"))


def workdir_with(tmp_path: Path, **entries: dict) -> Path:
    """The micro configuration with extra top-level entries merged in (e.g. a detection dataset)."""
    config = yaml.safe_load(MICRO.read_text())
    for section, more in entries.items():
        config[section] = {**config[section], **more}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return make_workdir(tmp_path / "wd", path)


def test_impossible_max_mflops_names_the_space_bounds(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "max_mflops: 40", "max_mflops: 1")
    line = first_problem(stopped(wd, "-n"))
    assert line.startswith("experiments.shapes_fpn.search.max_mflops: 1 admits no architecture (space 'tiny': cheapest")
    m = re.search(r"cheapest backbone ([\d.]+) MFLOPs, dearest ([\d.]+)\)$", line)
    assert m and 1 < float(m.group(1)) < 40 < float(m.group(2))


def test_space_bounds_come_from_the_cost_table_and_are_cached(tmp_path, monkeypatch):
    from detnas.flops import cost_table
    from detnas.space import get_space

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # inherited by snakemake
    wd = make_workdir(tmp_path / "wd")
    planned(wd)  # computes the bounds of the micro config's space
    cached = json.loads((tmp_path / "cache/detnas/space_bounds.json").read_text())
    assert list(cached.values()) == [list(cost_table(get_space("tiny")).bounds())]


def test_min_mflops_above_the_dearest_backbone(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "max_mflops: 40", "max_mflops: 2000\n      min_mflops: 1000")
    assert first_problem(stopped(wd, "-n")).startswith("experiments.shapes_fpn.search.min_mflops: 1000 admits no architecture")


def test_more_parents_than_population(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "parents: 2", "parents: 5")
    assert first_problem(stopped(wd, "-n")) == "experiments.shapes_fpn.search.parents: 5 is more than the population (4)"


def test_split_size_that_leaves_a_part_empty(tmp_path):
    wd = make_workdir(tmp_path)  # 16 synthetic training images
    edit_config(wd, "split: {size: 0.25, seed: 0}", "split: {size: 16, seed: 0}")
    assert first_problem(stopped(wd, "-n")).startswith("detection_data.shapes.split.size: 16 takes 16 of the 16 images")


def test_unknown_key_in_a_detection_dataset(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "    split: {size: 0.25, seed: 0}\n", "    split: {size: 0.25, seed: 0}\n    chek_images: false\n")
    assert first_problem(stopped(wd, "-n")) == "detection_data.shapes.chek_images: unknown key (did you mean 'check_images'?)"


def test_key_of_another_dataset_type_is_unknown(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "    split: {size: 0.25, seed: 0}\n", "    split: {size: 0.25, seed: 0}\n    root: /data/VOCdevkit\n")
    assert first_problem(stopped(wd, "-n")).startswith("detection_data.shapes.root: unknown key (known: ")


def test_unknown_key_in_a_classification_dataset(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "    holdout: {size: 0.25, seed: 0}\n", "    holdout: {size: 0.25, seed: 0}\n    val_dir: /x\n")
    assert first_problem(stopped(wd, "-n")).startswith("classification_data.shapes_cls.val_dir: unknown key")


def test_schema_error_gives_the_key_path_on_the_first_line(tmp_path):
    wd = make_workdir(tmp_path)
    edit_config(wd, "population: 4", "population: four")
    assert first_problem(stopped(wd, "-n")) == "experiments.shapes_fpn.search.population: 'four' is not of type 'integer'"
    edit_config(wd, "population: four", "population: 4")
    edit_config(wd, "num_train: 16", "num_train: -1")
    assert first_problem(stopped(wd, "-n")) == "detection_data.shapes.synthetic.num_train: -1 is less than the minimum of 2"


def test_unknown_method_lists_the_methods(tmp_path):
    wd = make_workdir(tmp_path)
    line = first_problem(stopped(wd, "-n", "results/shapes_fpn/foo/final.json"))
    assert line == ("results/shapes_fpn/foo/final.json: unknown method 'foo' "
                    "(methods: detnas, random, clsnas, scratch, shufflenetv2, shufflenetv2_unscaled, flops_max, params_max, synflow, "
                    "naswot, zico, mae_entropy, published_<name> or reference_<name> of a published architecture)")
    line = first_problem(stopped(wd, "-n", "results/nope/foo/final.json"))
    assert line == "results/nope/foo/final.json: unknown experiment 'nope' (experiments: shapes_fpn)"
    # the known methods still plan
    assert planned(wd, "results/shapes_fpn/random/final.json")["evaluate"] == 1


def test_unknown_experiment_lists_the_experiments(tmp_path):
    wd = make_workdir(tmp_path)
    text = "\n".join(stopped(wd, "-n", "results/nope/comparison.csv"))
    assert "experiment 'nope' is not defined under experiments: (known: shapes_fpn)" in text


def test_missing_real_data_warns_on_a_dry_run_and_stops_a_run(tmp_path):
    missing = tmp_path / "missing"
    wd = workdir_with(tmp_path, detection_data={"cocolike": {
        "type": "coco",
        "train": {"annotations": f"{missing}/train.json", "images": [f"{missing}/train"]},
        "test": {"annotations": f"{missing}/test.json", "images": [str(tmp_path)]},
    }})
    target = "results/data/detection/cocolike/search_val.json"
    expected = [f"detection_data.cocolike.train.annotations: {missing}/train.json does not exist",
                f"detection_data.cocolike.train.images[0]: {missing}/train does not exist",
                f"detection_data.cocolike.test.annotations: {missing}/test.json does not exist"]

    dry = snakemake(wd, "-n", target)
    lines = (dry.stdout + dry.stderr).splitlines()
    assert [line for line in lines if line.startswith("detection_data.")] == expected  # each once
    assert planned(wd, target) == {"split_detection": 1}

    lines = stopped(wd, "--cores", "1", target)
    assert [line for line in lines if line.startswith("detection_data.")] == expected


def _tiny_coco(root: Path, part: str, n: int) -> Path:
    """``n`` 32x24 JPEGs under root/part and their COCO JSON (one box each)."""
    (root / part).mkdir(parents=True)
    images, annotations = [], []
    for i in range(1, n + 1):
        name = f"{part}_{i}.jpg"
        Image.new("RGB", (32, 24), (40 * i % 255, 80, 160)).save(root / part / name)
        images.append({"id": i, "file_name": name, "width": 32, "height": 24})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0})
    ann = root / f"{part}.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "thing"}]}))
    return ann


def test_real_annotation_files_are_inputs_of_the_split(tmp_path):
    data = tmp_path / "tinycoco"
    train, test = _tiny_coco(data, "train", 6), _tiny_coco(data, "test", 3)
    wd = workdir_with(tmp_path, detection_data={"tinycoco": {
        "type": "coco",
        "train": {"annotations": str(train), "images": [str(data / "train")]},
        "test": {"annotations": str(test), "images": [str(data / "test")]},
        "split": {"size": 0.5, "seed": 0},
    }})
    target = "results/data/detection/tinycoco/search_val.json"
    assert planned(wd, target) == {"split_detection": 1}
    snakemake(wd, "--cores", "1", target)
    assert planned(wd, target) == {}

    # a replaced annotation file reruns the split (a file only touched does not, when Snakemake can
    # compare its checksum: small files)
    shutil.rmtree(data / "test")
    _tiny_coco(data, "test", 4)
    assert planned(wd, target) == {"split_detection": 1}


def test_paper_schedule_by_detector_and_dataset(tmp_path):
    """An experiment without `finetune.schedule` gets the paper's for its detector and dataset."""
    wd = make_workdir(tmp_path, ROOT / "config" / "config.yaml")
    out = snakemake(wd, "-n", "-p", *[f"results/{e}/supernet_pretrained/supernet.pt"
                                      for e in ("coco_fpn", "coco_retinanet", "voc_fpn", "voc_retinanet", "shapes_fpn")])
    schedules = {}
    for m in re.finditer(r"finetune --settings '(\{.*?\})' .*?--curves results/(\w+)/supernet_pretrained", out.stdout):
        schedules[m.group(2)] = json.loads(m.group(1))["schedule"]
    paper = {"policy": "step", "warmup_iterations": 500, "warmup_factor": 0.001, "weight_decay": 1.0e-4}
    assert schedules["coco_fpn"] == {**paper, "iterations": 90000, "lr": 0.02, "milestones": [60000, 80000]}
    assert schedules["coco_retinanet"] == {**paper, "iterations": 90000, "lr": 0.01, "milestones": [60000, 80000]}
    assert schedules["voc_fpn"] == {**paper, "iterations": 22500, "lr": 0.02, "milestones": [15000, 20000]}
    assert schedules["voc_retinanet"] == {**paper, "iterations": 22500, "lr": 0.01, "milestones": [15000, 20000]}
    own = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["experiments"]["shapes_fpn"]["finetune"]["schedule"]
    assert schedules["shapes_fpn"]["iterations"] == own["iterations"]  # an experiment's own schedule stays


def test_names_that_are_not_folder_names_are_refused_at_config_load(tmp_path):
    # each name becomes a folder under results/: '/' nests it, '..' leaves results/
    config = yaml.safe_load(MICRO.read_text())
    config["experiments"]["../outside"] = config["experiments"]["shapes_fpn"]
    config["detection_data"]["a/b"] = config["detection_data"]["shapes"]
    config["pretrain"][".."] = config["pretrain"]["micro"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    lines = stopped(make_workdir(tmp_path / "wd", path), "-n")
    problems = [line for line in lines if "cannot be a folder name" in line]
    assert [p.split(":")[0] for p in problems] == ["experiments.../outside", "detection_data.a/b", "pretrain..."]
    assert first_problem(lines) == problems[0]
    assert not (tmp_path / "outside").exists() and not (tmp_path / "wd" / "results").exists()
