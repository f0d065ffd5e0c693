# Measured latency on the deployment device (detnas/latency.py), for an experiment with a latency
# section or a search.max_latency_ms bound:
#
# - latency_table: every (block position, choice) of the space timed at the detection input size on
#   the device the job runs on, calibrated on random whole backbones and validated on others
#   (results/{experiment}/latency/table.json, validation.json, validation.png). On a cluster the
#   profile's set-resources of latency_table put it on the deployment node's kind: the table is the
#   user's device's. The search's max_latency_ms reads this table (search, proxy_search,
#   control_arch, random_arch take it as input).
# - arch_latency: each network's predicted (the table's sum) and measured (end to end, on the same
#   node kind: a table of another device is refused) backbone latency,
#   results/{experiment}/{method}/latency.json, which the evaluation copies into final.json.


def latency_table_file(name):
    return f"{R}/{name}/latency/table.json"


def latency_input(name):
    """The latency table a search of the experiment reads (its max_latency_ms bound), if any."""
    return {"latency": latency_table_file(name)} if experiment(name)["search"]["max_latency_ms"] is not None else {}


def latency_args(name):
    """The bound's arguments of random-arch and fixed-arch --control ('' without a bound)."""
    bound = experiment(name)["search"]["max_latency_ms"]
    return "" if bound is None else f"--latency-table {latency_table_file(name)} --max-latency-ms {bound}"


rule latency_table:
    input:
        # the detector's classes (its head is timed with the fixed parts)
        test=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/test.json",
    output:
        table=f"{R}/{{experiment}}/latency/table.json",
        validation=f"{R}/{{experiment}}/latency/validation.json",
        png=report(f"{R}/{{experiment}}/latency/validation.png", caption="../report/latency.rst",
                   category="{experiment}", subcategory="latency"),
    params:
        space=lambda w: pretrain_run(experiment(w.experiment)["pretrain"])["space"],
        settings=lambda w: as_json(latency_settings(w.experiment)),
        detector=lambda w: as_json(experiment(w.experiment)["detector"]),
    threads: lambda w: latency_settings(w.experiment)["threads"]
    resources:
        gpu=lambda w: 1 if latency_settings(w.experiment)["device"] == "cuda" else 0,
    log:
        f"{R}/logs/latency_table/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/latency_table/{{experiment}}.tsv"
    shell:
        "python -m detnas latency-table --space {params.space} --settings {params.settings:q}"
        " --detector {params.detector:q} --classes-from {input.test} --out {output.table}"
        " --validation {output.validation} --png {output.png} > {log} 2>&1"


rule arch_latency:
    input:
        arch=f"{R}/{{experiment}}/{{method}}/search/arch.json",
        table=f"{R}/{{experiment}}/latency/table.json",
    output:
        latency=f"{R}/{{experiment}}/{{method}}/latency.json",
    threads: lambda w: latency_settings(w.experiment)["threads"]
    resources:
        gpu=lambda w: 1 if latency_settings(w.experiment)["device"] == "cuda" else 0,
    log:
        f"{R}/logs/arch_latency/{{experiment}}_{{method}}.log",
    benchmark:
        f"{R}/benchmarks/arch_latency/{{experiment}}_{{method}}.tsv"
    shell:
        "python -m detnas latency --arch-file {input.arch} --table {input.table} --out {output.latency} > {log} 2>&1"
