# The paper's Table 5 / Fig. 3 "Random" baseline: N architectures drawn at random under the
# experiment's FLOPs bounds, each retrained and evaluated exactly like a searched one
# (results/{experiment}/random_arch_{i}/final.json, i = 1..N), summarized as mean +- std.
# Not the `random` method, which is the best of a random search on the supernet (Fig. 2).


def random_arch_finals(name):
    n = experiment(name)["random_archs"]["count"]
    return [f"{R}/{name}/random_arch_{i}/final.json" for i in range(1, n + 1)]


def random_arch_args(w):
    e = experiment(w.experiment)
    n, i = e["random_archs"]["count"], int(w.i)
    if not 1 <= i <= n:
        stop([f"{R}/{w.experiment}/random_arch_{w.i}: experiments.{w.experiment}.random_archs.count is {n}: "
              f"random architectures are numbered 1..{n}"])
    s = e["search"]
    bounds = {"--max-mflops": s["max_mflops"], "--min-mflops": s["min_mflops"]}
    # drawn as the i-th of i: the first i of N are the same for any N >= i, so raising the count adds
    # networks without retraining the ones already there
    return " ".join([f"--space {pretrain_run(e['pretrain'])['space']} --index {i} --count {i}",
                     f"--seed {e['random_archs']['seed']}"] + [f"{k} {v}" for k, v in bounds.items() if v is not None]
                    + [latency_args(w.experiment)])


rule random_arch:
    input:
        unpack(lambda w: latency_input(w.experiment)),
    output:
        arch=f"{R}/{{experiment}}/random_arch_{{i}}/search/arch.json",
    wildcard_constraints:
        i=r"[0-9]+",
    params:
        args=random_arch_args,
    log:
        f"{R}/logs/random_arch/{{experiment}}_{{i}}.log",
    benchmark:
        f"{R}/benchmarks/random_arch/{{experiment}}_{{i}}.tsv"
    shell:
        "python -m detnas random-arch {params.args} --out {output.arch} > {log} 2>&1"


rule random_archs_summary:
    input:
        finals=lambda w: random_arch_finals(w.experiment),
    output:
        summary=f"{R}/{{experiment}}/random_archs/summary.json",
    params:
        mlflow=lambda w: mlflow_run(w.experiment, "random_archs_summary", "random archs summary", w,
                                    **experiment_tags(w.experiment, method="random_archs")),
    log:
        f"{R}/logs/random_archs_summary/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/random_archs_summary/{{experiment}}.tsv"
    shell:
        "python -m detnas random-archs-summary --experiment {wildcards.experiment} --final {input.finals}"
        " --out {output.summary} --mlflow {params.mlflow:q} > {log} 2>&1"
