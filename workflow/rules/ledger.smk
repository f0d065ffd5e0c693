# What an experiment's run spent (the paper's Table 4 for this run): every job the comparison needed,
# from its Snakemake benchmark file and the GPUs it held (its `gpu` resource, after the profile's
# set-resources). detnas/stages/ledger.py adds them up per stage and per method.


def _rule_gpus(name):
    """The GPUs a job of rule `name` holds: the profile's or command line's set-resources, else the
    rule's own (a resource given as a function is resolved per job: counted as 0 here)."""
    overwrite = (workflow.resource_settings.overwrite_resources or {}).get(name, {})
    if "gpu" in overwrite:
        value = overwrite["gpu"]
    else:
        resources = workflow.get_rule(name).resources
        value = resources.get("gpu") if "gpu" in resources.keys() else 0
    try:
        value = getattr(value, "value", value)  # a Resource("gpu", N) as Snakemake holds it
        return int(value)
    except (TypeError, ValueError):
        return 0


def ledger_jobs(name):
    """One entry per job of experiment `name`'s comparison: stage, job name, the comparison rows it
    served, its GPUs and its benchmark file."""
    e = experiment(name)
    b = f"{R}/benchmarks"
    supernet_methods = ["detnas", "random", "clsnas"]  # the methods that search the pre-trained supernet
    rows = compared_methods(name) + (["random archs"] if e["random_archs"]["count"] else [])
    jobs = []

    def job(stage, rule, label, methods, wildcards, gpus=None):
        jobs.append({"stage": stage, "name": label, "methods": methods,
                     "gpus": _rule_gpus(rule) if gpus is None else gpus, "benchmark": f"{b}/{rule}/{wildcards}.tsv"})

    latency = latency_settings(name)
    latency_gpus = None if latency is None or "gpu" in (workflow.resource_settings.overwrite_resources or {}).get(
        "latency_table", {}) else int(latency["device"] == "cuda")

    det, cls = e["data"], pretrain_run(e["pretrain"])["data"]
    if detection_data(det)["type"] == "synthetic":
        job("data", "synthesize_detection", f"synthesize {det}", rows, det)
    job("data", "split_detection", f"split {det}", rows, det)
    if classification_data(cls)["type"] == "synthetic":
        job("data", "synthesize_classification", f"synthesize {cls}", rows, cls)
    job("data", "split_classification", f"split {cls}", rows, cls)
    if latency_settings(name) is not None:  # measured for real by the rehearsal, as the split
        job("data", "latency_table", "latency table", rows, name, gpus=latency_gpus)
    job("pretrain_supernet", "pretrain_supernet", f"pretrain supernet {e['pretrain']}", supernet_methods, e["pretrain"])
    job("finetune_supernet", "finetune_supernet", "finetune supernet (pretrained)", ["detnas", "random"], f"{name}_pretrained")
    job("finetune_supernet", "finetune_supernet", "finetune supernet (scratch)", ["scratch"], f"{name}_scratch")
    for m in SEARCH_METHODS:
        job("search", "search", f"search {m}", [m], f"{name}_{m}")
    job("search", "handcrafted_arch", "shufflenetv2 architecture", ["shufflenetv2"], name)
    if "shufflenetv2_unscaled" in COMPARED_METHODS:
        job("search", "handcrafted_arch_unscaled", "shufflenetv2_unscaled architecture", ["shufflenetv2_unscaled"], name)
    for m in extra_methods(name):
        if m in PROXY_METHODS:
            job("search", "proxy_search", f"search {m}", [m], f"{name}_{m}")
        else:
            maker = "control_arch" if m in CONTROL_METHODS else "published_arch"
            job("search", maker, f"{m} architecture", [m], f"{name}_{m}")
    randoms = [f"random_arch_{i}" for i in range(1, e["random_archs"]["count"] + 1)]
    for r in randoms:
        job("search", "random_arch", f"{r} architecture", ["random archs"], f"{name}_{r.removeprefix('random_arch_')}")
    for m in compared_methods(name) + randoms:
        row = ["random archs"] if m.startswith("random_arch_") else [m]
        job("retrain_pretrain", "retrain_pretrain", f"retrain {m} (classifier)", row, f"{name}_{m}")
        job("retrain_finetune", "retrain_finetune", f"retrain {m} (detector)", row, f"{name}_{m}")
        if latency_settings(name) is not None:
            job("latency", "arch_latency", f"latency {m}", row, f"{name}_{m}", gpus=latency_gpus)
        job("evaluate", "evaluate", f"evaluate {m}", row, f"{name}_{m}")
    return jobs


rule ledger:
    input:
        lambda w: [j["benchmark"] for j in ledger_jobs(w.experiment)],
    output:
        json=f"{R}/{{experiment}}/ledger.json",
        csv=report(f"{R}/{{experiment}}/ledger.csv", caption="../report/ledger.rst", category="{experiment}",
                   subcategory="cost"),
    params:
        jobs=lambda w: as_json(ledger_jobs(w.experiment)),
        mlflow=lambda w: mlflow_run(w.experiment, "ledger", "ledger", w, **experiment_tags(w.experiment)),
        # the rehearsal's prediction beside what was spent, where the experiment was rehearsed (read,
        # not an input: a ledger never makes the rehearsal run)
        plan=lambda w: f"--plan {R}/{w.experiment}/plan.json" if os.path.exists(f"{R}/{w.experiment}/plan.json") else "",
    log:
        f"{R}/logs/ledger/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/ledger/{{experiment}}.tsv"
    shell:
        "python -m detnas ledger --experiment {wildcards.experiment} --jobs {params.jobs:q} --json {output.json}"
        " --csv {output.csv} {params.plan} --mlflow {params.mlflow:q} > {log} 2>&1"
