# All methods of an experiment side by side, with the EA-vs-random search curves.


def final_json(name, method):
    return f"{R}/{name}/final.json" if method == "detnas" else f"{R}/{name}/{method}/final.json"


rule compare:
    input:
        finals=lambda w: [final_json(w.experiment, m) for m in METHODS],
        histories=lambda w: [f"{R}/{w.experiment}/{m}/search/history.csv" for m in ("detnas", "random")],
    output:
        csv=f"{R}/{{experiment}}/comparison.csv",
        png=f"{R}/{{experiment}}/comparison.png",
    params:
        histories=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(("detnas", "random"), input.histories)),
        mlflow=lambda w: mlflow_run(w.experiment, "compare", "compare methods", w, **experiment_tags(w.experiment)),
    log:
        f"{R}/logs/compare/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/compare/{{experiment}}.tsv"
    shell:
        "python -m detnas compare --experiment {wildcards.experiment} --final {input.finals}"
        " --history {params.histories} --csv {output.csv} --png {output.png} --mlflow {params.mlflow:q} > {log} 2>&1"
