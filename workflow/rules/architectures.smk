# Architecture patterns: each method's chosen backbone as a row of blocks (rule architectures), with
# the random architectures below them: the paper's Fig. 4 for an experiment.


def architecture_files(name):
    """The arch.json of every method, then of every random architecture (1..random_archs.count)."""
    n = experiment(name)["random_archs"]["count"]
    return ([f"{R}/{name}/{m}/search/arch.json" for m in METHODS]
            + [f"{R}/{name}/random_arch_{i}/search/arch.json" for i in range(1, n + 1)])


def architectures_title(w):
    """The figure's title, naming the classification data the supernet was pre-trained on (the
    config's pretrain.<name>.data: ImageNet for the paper's runs, a synthetic stand-in for the demo)."""
    data = pretrain_run(experiment(w.experiment)["pretrain"])["data"]
    kind = " (synthetic)" if classification_data(data)["type"] == "synthetic" else ""
    return f"{w.experiment}: chosen backbones (supernet pre-trained on {data}{kind}; scratch: from scratch)"


rule architectures:
    input:
        archs=lambda w: architecture_files(w.experiment),
    output:
        png=report(f"{R}/{{experiment}}/architectures.png", caption="../report/architectures.rst",
                   category="{experiment}", subcategory="architectures"),
    params:
        title=architectures_title,
    log:
        f"{R}/logs/architectures/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/architectures/{{experiment}}.tsv"
    shell:
        "python -m detnas plot-archs {input.archs} --title {params.title:q} --out {output.png} > {log} 2>&1"
