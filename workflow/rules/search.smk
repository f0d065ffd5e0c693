# Search: DetNAS (EA on the fine-tuned detection supernet), random search (same fitness and budget),
# ClsNAS (EA on the pre-trained classification supernet, top-1), DetNAS-scratch (EA on the supernet
# fine-tuned from scratch). The hand-crafted ShuffleNetV2 (every block choice 0) is not searched.


def search_input(w):
    e = experiment(w.experiment)
    if w.method == "clsnas":
        return {
            "supernet": f"{pretrain_dir(e['pretrain'])}/supernet.pt",
            "val": f"{cls_dir(pretrain_run(e['pretrain'])['data'])}/split.json",
        }
    init = "scratch" if w.method == "scratch" else "pretrained"
    return {
        "supernet": f"{R}/{w.experiment}/supernet_{init}/supernet.pt",
        "val": f"{det_dir(e['data'])}/search_val.json",
        "recal": f"{det_dir(e['data'])}/supernet_train.json",
    }


def search_settings(name, method):
    return {**experiment(name)["search"], "method": {"scratch": "detnas"}.get(method, method)}


rule search:
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
        mlflow=lambda w: mlflow_run(w.experiment, "search", f"search {w.method}", w,
                                    **experiment_tags(w.experiment, method=w.method)),
    resources:
        gpu=0,
    log:
        f"{R}/logs/search/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/search/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} search --settings {params.settings:q}"
        " --supernet {input.supernet} --val {input.val} {params.recal_arg} --arch-out {output.arch}"
        " --history {output.history} --curve {output.curve}"
        " --checkpoint-dir {R}/{wildcards.experiment}/{wildcards.method}/search/checkpoints"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


rule handcrafted_arch:
    output:
        arch=f"{R}/{{experiment}}/shufflenetv2/search/arch.json",
    params:
        space=lambda w: pretrain_run(experiment(w.experiment)["pretrain"])["space"],
    log:
        f"{R}/logs/handcrafted_arch/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/handcrafted_arch/{{experiment}}.tsv"
    shell:
        "python -m detnas fixed-arch --space {params.space} --uniform 0 --method shufflenetv2"
        " --out {output.arch} > {log} 2>&1"
