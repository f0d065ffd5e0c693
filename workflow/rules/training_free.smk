# Training-free baselines and the published architectures: methods whose arch.json needs no supernet,
# each retrained and evaluated by the same rules as the searched ones (retrain.smk) and a row of the
# comparison. An experiment lists them under training_free.methods, published and references.
#
# - flops_max, params_max (rule control_arch): the feasible architecture with the most backbone MACs /
#   parameters under the search's FLOPs bounds, the control every proxy must beat;
# - synflow, naswot, zico, mae_entropy (rule proxy_search): the search's EA with the same budget and
#   bounds, the proxy of each candidate's own randomly initialized standalone backbone as fitness
#   (detnas/proxies.py), at the detector's input size; naswot and zico see a few training batches;
# - published_<name>, reference_<name> (rule published_arch): an architecture of detnas.archs.PUBLISHED;
#   published_ must be of the experiment's space and within its FLOPs bounds (else the DAG stops with
#   the figures), reference_ may be anything and its comparison row says it is outside the budget.


def proxy_settings(name, method):
    """A proxy search's settings: the experiment's search (population, generations, bounds, repeats)
    with the proxy as method, the space, and the proxies' input size, batches and seed."""
    e = experiment(name)
    tf = e["training_free"]
    return {**e["search"], "method": method, "space": pretrain_run(e["pretrain"])["space"],
            "proxy_input_size": tf["input_size"] or e["detector"]["min_size"], "proxy_batches": tf["batches"],
            "proxy_batch_size": tf["batch_size"], "proxy_seed": tf["seed"]}


rule proxy_search:
    input:
        # the data-dependent proxies' batches (naswot, zico): the supernet's training annotations;
        # the latency table of a max_latency_ms bound
        unpack(lambda w: {"train": f"{det_dir(experiment(w.experiment)['data'])}/supernet_train.json",
                          **latency_input(w.experiment)}),
    output:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
        history=f"{R}/{{experiment}}/{{method}}/search/history.csv",
        curve=f"{R}/{{experiment}}/{{method}}/search/curve.png",
    wildcard_constraints:
        method="|".join(PROXY_METHODS),
    params:
        settings=lambda w: as_json(proxy_settings(w.experiment, w.method)),
        latency_arg=lambda w, input: f"--latency-table {input.latency}" if "latency" in input.keys() else "",
        mlflow=lambda w: mlflow_run(w.experiment, "search", f"search {w.method}", w,
                                    **experiment_tags(w.experiment, method=w.method)),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/proxy_search/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/proxy_search/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas search --settings {params.settings:q} --val {input.train} {params.latency_arg}"
        " --arch-out {output.arch}"
        " --history {output.history} --curve {output.curve}"
        " --checkpoint-dir {R}/{wildcards.experiment}/{wildcards.method}/search/checkpoints"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"


def control_args(w):
    e = experiment(w.experiment)
    s = e["search"]
    bounds = {"--min-mflops": s["min_mflops"], "--max-mflops": s["max_mflops"]}
    # under a latency bound the control is the best its EA finds with the search's budget and seed
    search = f"--search-settings {shlex.quote(as_json(s))}" if s["max_latency_ms"] is not None else ""
    return " ".join([f"--space {pretrain_run(e['pretrain'])['space']}"]
                    + [f"{k} {v}" for k, v in bounds.items() if v is not None]
                    + [latency_args(w.experiment), search])


rule control_arch:
    input:
        unpack(lambda w: latency_input(w.experiment)),
    output:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
    wildcard_constraints:
        method="|".join(CONTROL_METHODS),
    params:
        args=control_args,
    log:
        f"{R}/logs/control_arch/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/control_arch/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas fixed-arch --control {wildcards.method} {params.args} --method {wildcards.method}"
        " --out {output.arch} > {log} 2>&1"


def published_arch_args(w):
    """fixed-arch's arguments for published_<name> / reference_<name>; a published_ architecture of
    another space or outside the FLOPs bounds stops the DAG with its figures."""
    import detnas.archs

    kind, name = w.method.split("_", 1)
    target = f"{R}/{w.experiment}/{w.method}"
    if name not in detnas.archs.PUBLISHED:
        stop([f"{target}: unknown published architecture {name!r} (known: {', '.join(detnas.archs.PUBLISHED)})"])
    if kind == "published":
        problem = published_problem(target, w.experiment, name)
        if problem:
            stop([problem])
    return f"--published {name} --method {w.method}" + (" --reference" if kind == "reference" else "")


rule published_arch:
    output:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
    wildcard_constraints:
        method=PUBLISHED_RE,
    params:
        args=published_arch_args,
    log:
        f"{R}/logs/published_arch/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/published_arch/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas fixed-arch {params.args} --out {output.arch} > {log} 2>&1"
