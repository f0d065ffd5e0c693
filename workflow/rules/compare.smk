# Every retrained network of an experiment side by side: the methods, the unscaled ShuffleNetV2
# (retrained for the ranking, shown here too: nothing retrained is left out) and the random
# architectures as one row (mean +- std), with the EA-vs-random search curves.


def final_json(name, method):
    return f"{R}/{name}/final.json" if method == "detnas" else f"{R}/{name}/{method}/final.json"


def random_archs_summary(name):
    """The random architectures' summary.json, when the experiment has any (random_archs.count > 0)."""
    return [f"{R}/{name}/random_archs/summary.json"] if experiment(name)["random_archs"]["count"] else []


def max_mflops_arg(w):
    """The FLOPs limit the rows' descriptions name (none: the ShuffleNetV2 rows are one network)."""
    limit = experiment(w.experiment)["search"]["max_mflops"]
    return "" if limit is None else f"--max-mflops {limit}"


rule compare:
    input:
        finals=lambda w: [final_json(w.experiment, m) for m in compared_methods(w.experiment)],
        histories=lambda w: [f"{R}/{w.experiment}/{m}/search/history.csv" for m in ("detnas", "random")],
        random_archs=lambda w: random_archs_summary(w.experiment),
        ledger=f"{R}/{{experiment}}/ledger.json",
    output:
        csv=report(f"{R}/{{experiment}}/comparison.csv", caption="../report/comparison_table.rst",
                   category="{experiment}", subcategory="comparison"),
        png=report(f"{R}/{{experiment}}/comparison.png", caption="../report/comparison.rst",
                   category="{experiment}", subcategory="comparison"),
        # the report's front page table (workflow/report/workflow.rst): every network, best first
        summary=report(f"{R}/{{experiment}}/comparison_summary.csv", caption="../report/comparison_summary.rst",
                       category="{experiment}", subcategory="comparison"),
    params:
        histories=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(("detnas", "random"), input.histories)),
        random_archs=lambda w, input: f"--random-archs {input.random_archs}" if input.random_archs else "",
        max_mflops=max_mflops_arg,
        mlflow=lambda w: mlflow_run(w.experiment, "compare", "compare methods", w, **experiment_tags(w.experiment)),
    log:
        f"{R}/logs/compare/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/compare/{{experiment}}.tsv"
    shell:
        "python -m detnas compare --experiment {wildcards.experiment} --final {input.finals}"
        " --history {params.histories} {params.random_archs} {params.max_mflops} --ledger {input.ledger} --csv {output.csv}"
        " --summary {output.summary} --png {output.png} --mlflow {params.mlflow:q} > {log} 2>&1"
