# Data: the embedded synthetic datasets, validation, and the search-validation splits.


rule synthesize_detection:
    output:
        train=f"{R}/data/detection/{{dataset}}/source/instances_train.json",
        test=f"{R}/data/detection/{{dataset}}/source/instances_test.json",
    params:
        settings=lambda w: as_json(detection_data(w.dataset)["synthetic"]),
    log:
        f"{R}/logs/synthesize_detection/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/synthesize_detection/{{dataset}}.tsv"
    shell:
        "python -m detnas synthesize --kind detection --settings {params.settings:q}"
        " --out {R}/data/detection/{wildcards.dataset}/source > {log} 2>&1"


rule synthesize_classification:
    output:
        directory(f"{R}/data/classification/{{dataset}}/source"),
    params:
        settings=lambda w: as_json(classification_data(w.dataset)["synthetic"]),
    log:
        f"{R}/logs/synthesize_classification/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/synthesize_classification/{{dataset}}.tsv"
    shell:
        "python -m detnas synthesize --kind classification --settings {params.settings:q}"
        " --out {output} > {log} 2>&1"


def detection_sources(dataset):
    """Where a detection dataset's annotations and images are (synthetic: made by the workflow)."""
    d = detection_data(dataset)
    if d["type"] == "synthetic":
        src = f"{det_dir(dataset)}/source"
        return {
            "type": "coco",
            "train": {"annotations": f"{src}/instances_train.json", "images": [f"{src}/images"]},
            "test": {"annotations": f"{src}/instances_test.json", "images": [f"{src}/images"]},
        }
    if d["type"] == "coco":
        return {"type": "coco", "train": d["train"], "test": d["test"]}

    def sets(part):  # a test set held out of train ({holdout, seed}) passes as it is
        return d[part] if held_out(d, part) else [[str(y), s] for y, s in d[part]]

    return {"type": "voc", "root": d["root"], "train": sets("train"), "test": sets("test")}


def held_out(d, part):
    """Whether ``part`` of detection dataset entry ``d`` is drawn from its training annotations."""
    return isinstance(d[part], dict) and "holdout" in d[part]


def detection_data_paths(dataset):
    """A real detection dataset's paths as (config key path, path, annotation file?)."""
    d = detection_data(dataset)
    where = f"detection_data.{dataset}"
    if d["type"] == "coco":
        paths = []
        for part in ("train", "test")[:1 if held_out(d, "test") else 2]:
            paths.append((f"{where}.{part}.annotations", d[part]["annotations"], True))
            paths += [(f"{where}.{part}.images[{i}]", p, False) for i, p in enumerate(d[part]["images"])]
        return paths
    # VOC: an image set is the list ImageSets/Main/<set>.txt of its year
    return [(f"{where}.root", d["root"], False)] + [
        (f"{where}.{part}[{i}]", f"{d['root']}/VOC{year}/ImageSets/Main/{image_set}.txt", True)
        for part in ("train", "test")[:1 if held_out(d, "test") else 2]
        for i, (year, image_set) in enumerate(d[part])]


def split_detection_input(w):
    """The synthesized sources, or a real dataset's annotation files: replacing one reruns the split
    and what depends on it. A missing path stops a run here, before any job; a dry run warns and
    plans on (the stock config's /path/to/... placeholders)."""
    if detection_data(w.dataset)["type"] == "synthetic":
        return rules.synthesize_detection.output
    paths = detection_data_paths(w.dataset)
    require_data([(key, p) for key, p, _ in paths])
    return [p for _, p, annotations in paths if annotations and os.path.isfile(p)]


rule split_detection:
    input:
        split_detection_input,
    output:
        train=f"{R}/data/detection/{{dataset}}/train.json",
        supernet_train=f"{R}/data/detection/{{dataset}}/supernet_train.json",
        search_val=f"{R}/data/detection/{{dataset}}/search_val.json",
        test=f"{R}/data/detection/{{dataset}}/test.json",
        metrics=f"{R}/data/detection/{{dataset}}/split_metrics.json",
    params:
        settings=lambda w: as_json({
            "entry": f"detection_data.{w.dataset}",
            "sources": detection_sources(w.dataset),
            **{k: detection_data(w.dataset)[k] for k in ("split", "check_images", "bad_boxes")},
            "classes": detection_data(w.dataset).get("classes"),
        }),
        mlflow=lambda w: mlflow_run("data", "split", f"split {w.dataset}", w, dataset=w.dataset),
    threads: JOB_THREADS
    log:
        f"{R}/logs/split_detection/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/split_detection/{{dataset}}.tsv"
    shell:
        "python -m detnas split-detection --settings {params.settings:q} --out-dir {R}/data/detection/{wildcards.dataset}"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


def classification_sources(dataset):
    d = classification_data(dataset)
    if d["type"] == "synthetic":
        return {"train": f"{cls_dir(dataset)}/source/train", "val": f"{cls_dir(dataset)}/source/val"}
    return {"train": d["train"], "val": d["val"]}


def split_classification_input(w):
    """The synthesized images; a real dataset's folders are not inputs (a folder's time stamp says
    little about its images), but a missing one stops a run here (see split_detection_input)."""
    d = classification_data(w.dataset)
    if d["type"] == "synthetic":
        return rules.synthesize_classification.output
    require_data([(f"classification_data.{w.dataset}.{part}", d[part]) for part in ("train", "val")])
    return []


rule split_classification:
    input:
        split_classification_input,
    output:
        f"{R}/data/classification/{{dataset}}/split.json",
    params:
        settings=lambda w: as_json({**classification_sources(w.dataset), "holdout": classification_data(w.dataset)["holdout"]}),
        mlflow=lambda w: mlflow_run("data", "split", f"split {w.dataset}", w, dataset=w.dataset),
    threads: JOB_THREADS
    log:
        f"{R}/logs/split_classification/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/split_classification/{{dataset}}.tsv"
    shell:
        "python -m detnas split-classification --settings {params.settings:q} --out {output}"
        " --mlflow {params.mlflow:q} > {log} 2>&1"
