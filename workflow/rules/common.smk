# Helpers shared by the rules: config lookups with clear errors, target paths, stage settings.
import json

R = "results"
SEARCH_METHODS = ["detnas", "random", "clsnas", "scratch"]
METHODS = SEARCH_METHODS + ["shufflenetv2"]


def _entry(section, name, what):
    try:
        return config[section][name]
    except KeyError:
        known = ", ".join(config.get(section, {})) or "(none)"
        raise ValueError(f"config/config.yaml: {what} {name!r} is not defined under {section}: (known: {known})") from None


def experiment(name):
    return _entry("experiments", name, "experiment")


def detection_data(name):
    return _entry("detection_data", name, "detection dataset")


def classification_data(name):
    return _entry("classification_data", name, "classification dataset")


def pretrain_run(name):
    return _entry("pretrain", name, "pretrain run")


def check_references():
    """Every name an entry refers to exists; say which entry and key when one does not."""
    for name, p in config["pretrain"].items():
        if p["data"] not in config["classification_data"]:
            raise ValueError(f"config/config.yaml: pretrain.{name}.data = {p['data']!r} is not a classification_data entry")
    for name, e in config["experiments"].items():
        if e["data"] not in config["detection_data"]:
            raise ValueError(f"config/config.yaml: experiments.{name}.data = {e['data']!r} is not a detection_data entry")
        if e["pretrain"] not in config["pretrain"]:
            raise ValueError(f"config/config.yaml: experiments.{name}.pretrain = {e['pretrain']!r} is not a pretrain entry")
    if config["demo_experiment"] not in config["experiments"]:
        raise ValueError(f"config/config.yaml: demo_experiment = {config['demo_experiment']!r} is not an experiment")


check_references()


def as_json(obj):
    """Settings as one JSON argument (sorted keys: the same settings give the same params)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def mlflow_run(mlflow_experiment, stage, run_name, wildcards, **tags):
    """The MLflow run of a job: its experiment, name and tags (PIPELINE.md's tag set)."""
    tags = {"stage": stage, "wildcards": as_json(dict(wildcards.items())), **tags}
    return as_json({"experiment": mlflow_experiment, "run_name": run_name, "tags": tags})


# -- paths -----------------------------------------------------------------------------------------

def det_dir(dataset):
    return f"{R}/data/detection/{dataset}"


def cls_dir(dataset):
    return f"{R}/data/classification/{dataset}"


def pretrain_dir(name):
    return f"{R}/pretrain/{name}"


def demo_targets():
    return [f"{R}/{config['demo_experiment']}/comparison.csv"]
