# Search: DetNAS (EA on the fine-tuned detection supernet), random search (same fitness and budget),
# ClsNAS (EA on the pre-trained classification supernet, top-1), DetNAS-scratch (EA on the supernet
# fine-tuned from scratch). The hand-crafted ShuffleNetV2 (every block choice 0) is not searched.


def search_input(w):
    e = experiment(w.experiment)
    if w.method == "clsnas":
        return {
            "supernet": f"{pretrain_dir(e['pretrain'])}/supernet.pt",
            "val": f"{cls_dir(pretrain_run(e['pretrain'])['data'])}/split.json",
            **latency_input(w.experiment),
        }
    init = "scratch" if w.method == "scratch" else "pretrained"
    return {
        "supernet": f"{R}/{w.experiment}/supernet_{init}/supernet.pt",
        "val": f"{det_dir(e['data'])}/search_val.json",
        "recal": f"{det_dir(e['data'])}/supernet_train.json",
        **latency_input(w.experiment),
    }


def search_settings(name, method):
    return {**experiment(name)["search"], "method": {"scratch": "detnas"}.get(method, method)}


rule search:
    # the supernet chain is the critical path: before the baselines that need no supernet
    priority: 1
    input:
        unpack(search_input),
    output:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
        history=f"{R}/{{experiment}}/{{method}}/search/history.csv",
        curve=f"{R}/{{experiment}}/{{method}}/search/curve.png",
    wildcard_constraints:
        method="detnas|random|clsnas|scratch",
    params:
        settings=lambda w: as_json(search_settings(w.experiment, w.method)),
        recal_arg=lambda w, input: f"--recal {input.recal}" if "recal" in input.keys() else "",
        latency_arg=lambda w, input: f"--latency-table {input.latency}" if "latency" in input.keys() else "",
        mlflow=lambda w: mlflow_run(w.experiment, "search", f"search {w.method}", w,
                                    **experiment_tags(w.experiment, method=w.method)),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/search/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/search/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} search --settings {params.settings:q}"
        " --supernet {input.supernet} --val {input.val} {params.recal_arg} {params.latency_arg} --arch-out {output.arch}"
        " --history {output.history} --curve {output.curve}"
        " --checkpoint-dir {R}/{wildcards.experiment}/{wildcards.method}/search/checkpoints"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


# The hand-crafted ShuffleNetV2 as in the paper ("scaled to 300M FLOPs"): the all-3x3 path of the
# experiment's space with every channel count times the one factor that brings its backbone within 2%
# of the experiment's FLOPs limit (at or under it where the channel rounding allows). Its arch.json names
# the scaled space (e.g. small@w1.0703), which the retraining builds. Without a limit (max_mflops: null)
# there is nothing to match: the unscaled path, as shufflenetv2_unscaled.
def handcrafted_scale_arg(w):
    limit = experiment(w.experiment)["search"]["max_mflops"]
    return "" if limit is None else f"--scale-to {limit}"


rule handcrafted_arch:
    output:
        arch=f"{R}/{{experiment}}/shufflenetv2/search/arch.json",
    params:
        space=lambda w: pretrain_run(experiment(w.experiment)["pretrain"])["space"],
        scale_arg=handcrafted_scale_arg,
        method="shufflenetv2",
    log:
        f"{R}/logs/handcrafted_arch/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/handcrafted_arch/{{experiment}}.tsv"
    shell:
        "python -m detnas fixed-arch --space {params.space} --uniform 0 {params.scale_arg} --method {params.method}"
        " --out {output.arch} > {log} 2>&1"


# The all-3x3 path of the space as it is (262.7M in small, 1036.7M in large): the handicapped baseline
# this project used before the paper's scaling, kept to show what the width is worth.
use rule handcrafted_arch as handcrafted_arch_unscaled with:
    output:
        arch=f"{R}/{{experiment}}/shufflenetv2_unscaled/search/arch.json",
    params:
        space=lambda w: pretrain_run(experiment(w.experiment)["pretrain"])["space"],
        scale_arg="",
        method="shufflenetv2_unscaled",
    log:
        f"{R}/logs/handcrafted_arch_unscaled/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/handcrafted_arch_unscaled/{{experiment}}.tsv"


# The paper's Fig. 2: DetNAS's EA against random search on the same supernet, each as the mean over
# its `search.repeats` runs with a min-max band.
rule search_curves:
    input:
        detnas=f"{R}/{{experiment}}/detnas/search/history.csv",
        random=f"{R}/{{experiment}}/random/search/history.csv",
    output:
        png=report(f"{R}/{{experiment}}/search_curves.png", caption="../report/search_curves.rst",
                   category="{experiment}", subcategory="search curves"),
        json=f"{R}/{{experiment}}/search_curves.json",
    params:
        population=lambda w: experiment(w.experiment)["search"]["population"],
        title=lambda w: (f"{w.experiment}: EA (detnas) vs random search, {experiment(w.experiment)['search']['repeats']} "
                         "run(s) each\non the detection supernet fine-tuned from the pre-trained supernet"),
    log:
        f"{R}/logs/search_curves/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/search_curves/{{experiment}}.tsv"
    shell:
        "python -m detnas search-curves --history detnas={input.detnas} random={input.random}"
        " --population {params.population} --title {params.title:q} --png {output.png} --json {output.json} > {log} 2>&1"
