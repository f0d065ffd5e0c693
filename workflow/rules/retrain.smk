# Final retraining of a chosen architecture as a standalone network: classification pre-training
# from scratch, detection fine-tuning on the whole training set, evaluation on the test split.
# The schedules are the supernet stages' unless the experiment's `retrain:` overrides them.



def reference_space(method):
    """A reference_<name>'s own space (it may be another than the experiment's), else None."""
    if method is None or not method.startswith("reference_"):
        return None
    import detnas.archs

    entry = detnas.archs.PUBLISHED.get(method.removeprefix("reference_"))
    return None if entry is None else entry.space


def retrain_pretrain_settings(name, method=None):
    e = experiment(name)
    over = e["retrain"]["pretrain"]
    unknown = set(over) - set(pretrain_settings(e["pretrain"]))
    if unknown:
        raise ValueError(f"config/config.yaml: experiments.{name}.retrain.pretrain has unknown keys {sorted(unknown)}")
    own = reference_space(method)
    return {**pretrain_settings(e["pretrain"]), **over, **({"space": own} if own else {})}


def retrain_finetune_settings(name, method=None):
    e = experiment(name)
    base = finetune_settings(name, scratch=False)
    over = e["retrain"]["finetune"]
    unknown = set(over) - set(base)
    if unknown:
        raise ValueError(f"config/config.yaml: experiments.{name}.retrain.finetune has unknown keys {sorted(unknown)}")
    own = reference_space(method)
    return {**base, **over, **({"space": own} if own else {})}


rule retrain_pretrain:
    input:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
        split=lambda w: f"{cls_dir(pretrain_run(experiment(w.experiment)['pretrain'])['data'])}/split.json",
        _gpu=lambda w: gpu_check("retrain_pretrain", f"{w.experiment} {w.method}",
                                 retrain_pretrain_settings(w.experiment)["schedule"]["iterations"], [w.experiment]),
    output:
        weights=f"{R}/{{experiment}}/{{method}}/retrain/classifier.pt",
        metrics=f"{R}/{{experiment}}/{{method}}/retrain/classifier_metrics.json",
        curves=report(f"{R}/{{experiment}}/{{method}}/retrain/classifier_curves.png",
                      caption="../report/training_curves.rst", category="{experiment}",
                      subcategory="training curves", labels={"network": "{method}", "stage": "retraining: classification"}),
    params:
        settings=lambda w: as_json(retrain_pretrain_settings(w.experiment, w.method)),
        mlflow=lambda w: mlflow_run(w.experiment, "retrain_pretrain", f"retrain {w.method}: classification", w,
                                    **experiment_tags(w.experiment, method=w.method)),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/retrain_pretrain/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/retrain_pretrain/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} pretrain --settings {params.settings:q}"
        " --split {input.split} --arch-file {input.arch} --weights {output.weights} --metrics {output.metrics}"
        " --curves {output.curves} --checkpoint-dir {R}/{wildcards.experiment}/{wildcards.method}/retrain/checkpoints_cls"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


rule retrain_finetune:
    input:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
        init=f"{R}/{{experiment}}/{{method}}/retrain/classifier.pt",
        train=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/train.json",
        _gpu=lambda w: gpu_check("retrain_finetune", f"{w.experiment} {w.method}",
                                 retrain_finetune_settings(w.experiment)["schedule"]["iterations"], [w.experiment]),
    output:
        weights=f"{R}/{{experiment}}/{{method}}/retrain/detector.pt",
        metrics=f"{R}/{{experiment}}/{{method}}/retrain/detector_metrics.json",
        curves=report(f"{R}/{{experiment}}/{{method}}/retrain/detector_curves.png",
                      caption="../report/training_curves.rst", category="{experiment}",
                      subcategory="training curves", labels={"network": "{method}", "stage": "retraining: detection"}),
    params:
        settings=lambda w: as_json(retrain_finetune_settings(w.experiment, w.method)),
        mlflow=lambda w: mlflow_run(w.experiment, "retrain_finetune", f"retrain {w.method}: detection", w,
                                    **experiment_tags(w.experiment, method=w.method)),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/retrain_finetune/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/retrain_finetune/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} finetune --settings {params.settings:q}"
        " --train {input.train} --init {input.init} --arch-file {input.arch} --weights {output.weights}"
        " --metrics {output.metrics} --curves {output.curves}"
        " --checkpoint-dir {R}/{wildcards.experiment}/{wildcards.method}/retrain/checkpoints_det"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


def evaluate_input(w):
    method = w.get("method", "detnas")
    d = f"{R}/{w.experiment}/{method}"
    return {
        "detector": f"{d}/retrain/detector.pt",
        "arch": f"{d}/search/arch.json",
        "classifier": f"{d}/retrain/classifier_metrics.json",
        "detector_metrics": f"{d}/retrain/detector_metrics.json",
        "test": f"{det_dir(experiment(w.experiment)['data'])}/test.json",
        # an experiment with a latency table: the network's predicted and measured latency
        **({"latency": f"{d}/latency.json"} if latency_settings(w.experiment) is not None else {}),
    }


def evaluate_info(w):
    e = experiment(w.experiment)
    return as_json({"experiment": w.experiment, "method": w.get("method", "detnas"), "dataset": e["data"],
                    "detector": e["detector"]["name"]})


def primary_metric(w):
    # VOC: the PASCAL VOC 2007 11-point AP at IoU 0.5, difficult objects ignored (the paper's VOC
    # figure; `evaluate` then adds the area variant and per-class APs). COCO: COCOeval's mmAP.
    return "mAP50_voc07" if detection_data(experiment(w.experiment)["data"])["type"] == "voc" else "AP"


rule evaluate:
    input:
        unpack(evaluate_input),
    output:
        final=f"{R}/{{experiment}}/{{method}}/final.json",
        pictures=report(f"{R}/{{experiment}}/{{method}}/retrain/detections.png", caption="../report/detections.rst",
                        category="{experiment}", subcategory="detections", labels={"network": "{method}"}),
    wildcard_constraints:
        method=RETRAINED_RE,
    params:
        info=evaluate_info,
        primary=primary_metric,
        batch_size=lambda w: experiment(w.experiment)["finetune"]["eval_batch_size"],
        latency_arg=lambda w, input: f"--latency {input.latency}" if "latency" in input.keys() else "",
        mlflow=lambda w: mlflow_run(w.experiment, "evaluate", f"final {w.get('method', 'detnas')}", w,
                                    **experiment_tags(w.experiment, method=w.get("method", "detnas"))),
    threads: JOB_THREADS
    log:
        f"{R}/logs/evaluate/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas evaluate --detector {input.detector} --test {input.test} --arch-file {input.arch}"
        " --classifier-metrics {input.classifier} --detector-metrics {input.detector_metrics}"
        " --out {output.final} --pictures {output.pictures} --info {params.info:q}"
        " --primary {params.primary} --batch-size {params.batch_size} --threads {threads} {params.latency_arg}"
        " --mlflow {params.mlflow:q} > {log} 2>&1"


# DetNAS itself: its final.json sits at the experiment's root (results/{experiment}/final.json)
use rule evaluate as evaluate_detnas with:
    output:
        final=f"{R}/{{experiment}}/final.json",
        pictures=report(f"{R}/{{experiment}}/detnas/retrain/detections.png", caption="../report/detections.rst",
                        category="{experiment}", subcategory="detections", labels={"network": "detnas"}),
    log:
        f"{R}/logs/evaluate/{{experiment}}_detnas.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{experiment}}_detnas.tsv"


# The retrained detector as ONNX (python -m detnas export): the whole detector at the experiment's
# fixed input size and the backbone alone with its weights, checked against PyTorch with ONNX Runtime
# on the experiment's test images (export.json: the figures). Needs the `export` extra (onnx,
# onnxruntime). Not part of `all`: ask for results/{experiment}/{method}/export/detector.onnx.
rule export:
    input:
        detector=f"{R}/{{experiment}}/{{method}}/retrain/detector.pt",
        test=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/test.json",
    output:
        detector=f"{R}/{{experiment}}/{{method}}/export/detector.onnx",
        backbone=f"{R}/{{experiment}}/{{method}}/export/backbone.onnx",
        record=f"{R}/{{experiment}}/{{method}}/export/export.json",
    wildcard_constraints:
        method=f"detnas|{RETRAINED_RE}",
    threads: JOB_THREADS
    log:
        f"{R}/logs/export/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/export/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas export --checkpoint {input.detector} --test {input.test}"
        " --out {R}/{wildcards.experiment}/{wildcards.method}/export --threads {threads} > {log} 2>&1"
