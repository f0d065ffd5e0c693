# Supernet pre-training on classification data, one run per `pretrain:` entry of the config,
# shared by every experiment naming it.


def pretrain_settings(name):
    p = pretrain_run(name)
    return {k: v for k, v in p.items() if k != "data"}


rule pretrain_supernet:
    # the supernet chain is the critical path: before the baselines that need no supernet
    priority: 1
    input:
        split=lambda w: f"{cls_dir(pretrain_run(w.pretrain)['data'])}/split.json",
        _gpu=lambda w: gpu_check("pretrain_supernet", w.pretrain, pretrain_settings(w.pretrain)["schedule"]["iterations"],
                                 [n for n, e in config["experiments"].items() if e["pretrain"] == w.pretrain]),
    output:
        weights=f"{R}/pretrain/{{pretrain}}/supernet.pt",
        metrics=f"{R}/pretrain/{{pretrain}}/metrics.json",
        curves=report(f"{R}/pretrain/{{pretrain}}/curves.png", caption="../report/training_curves.rst",
                      category="supernet pre-training", subcategory="training curves",
                      labels={"network": "supernet {pretrain}", "stage": "classification pre-training"}),
    params:
        settings=lambda w: as_json(pretrain_settings(w.pretrain)),
        mlflow=lambda w: mlflow_run(
            f"pretrain-{w.pretrain}", "pretrain_supernet", f"pretrain supernet {w.pretrain}", w,
            method="supernet", dataset=pretrain_run(w.pretrain)["data"], space=pretrain_run(w.pretrain)["space"],
        ),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/pretrain_supernet/{{pretrain}}.log",
    benchmark:
        f"{R}/benchmarks/pretrain_supernet/{{pretrain}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} pretrain --settings {params.settings:q}"
        " --split {input.split} --weights {output.weights} --metrics {output.metrics} --curves {output.curves}"
        " --checkpoint-dir {R}/pretrain/{wildcards.pretrain}/checkpoints --threads {threads}"
        " --mlflow {params.mlflow:q} > {log} 2>&1"
