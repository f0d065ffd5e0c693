# The rehearsal and the plan: `snakemake results/{experiment}/plan.json` runs every stage the
# experiment's comparison needs for a few steps, at the experiment's real settings (image sizes,
# batch sizes, detector, space, precision, loader workers) and with the real rules' resources (GPUs,
# threads), on the real data, then predicts what the whole comparison costs (detnas/stages/plan.py).
#
# Everything a rehearsal writes is under results/{experiment}/rehearsal/: its own weights, metrics and
# checkpoints, its own MLflow experiment (rehearsal-{experiment}), so no real job ever resumes from or
# reads a rehearsal's output. The splits are the real ones (cheap, and every later stage needs them).
# A rehearsal that fails is recorded (detnas rehearse exits 0 with the error in its JSON) and the plan
# reports it: the plan target completes so a person sees every stage's status at once.

REHEARSAL_STEPS = 40  # training steps of a rehearsal; the first REHEARSAL_WARMUP are not timed
REHEARSAL_WARMUP = 10
REHEARSAL_LOG_EVERY = 5
REHEARSAL_CANDIDATES = 3  # search: one generation of this many candidates
REHEARSAL_LOADER_BATCHES = 10  # after training: batches of the loader alone (can it feed the model?)
REHEARSAL_TEST_IMAGES = 300  # evaluation: this many test images (the plan scales to the whole split)


def rehearsal_dir(name):
    return f"{R}/{name}/rehearsal"


def rehearsal_training(settings):
    """A training stage's settings as rehearsed: REHEARSAL_STEPS steps, logged every
    REHEARSAL_LOG_EVERY, the learning-rate schedule's shape kept (warm-up and milestones shrunk)."""
    schedule = dict(settings["schedule"])
    steps = REHEARSAL_STEPS
    schedule["iterations"] = steps
    schedule["warmup_iterations"] = min(int(schedule.get("warmup_iterations") or 0), REHEARSAL_WARMUP)
    if schedule.get("milestones"):
        schedule["milestones"] = [int(steps * 0.8)]
    out = {**settings, "schedule": schedule, "log_every": REHEARSAL_LOG_EVERY, "checkpoint_every": steps,
           "loader_probe": REHEARSAL_LOADER_BATCHES}
    if "schedule_factor" in out:
        out["schedule_factor"] = 1
    return out


def rehearsal_mlflow(w, stage):
    return mlflow_run(f"rehearsal-{w.experiment}", f"rehearse_{stage}", f"rehearse {stage}", w,
                      **experiment_tags(w.experiment, method="rehearsal"))


def _rehearse(stage, out, log, extra=""):
    """The wrapper's part of a rehearsal rule's command (the real stage command follows `--`)."""
    return f"python -m detnas rehearse --stage {stage} --out {out} --log {log} {extra} --"


rule rehearse_pretrain_supernet:
    input:
        split=lambda w: f"{cls_dir(pretrain_run(experiment(w.experiment)['pretrain'])['data'])}/split.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/pretrain_supernet.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/pretrain_supernet",
        settings=lambda w: as_json(rehearsal_training(pretrain_settings(experiment(w.experiment)["pretrain"]))),
        batch=lambda w: pretrain_settings(experiment(w.experiment)["pretrain"])["batch_size"],
        mlflow=lambda w: rehearsal_mlflow(w, "pretrain_supernet"),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_pretrain_supernet.log",
    shell:
        _rehearse("pretrain_supernet", "{output.out}", "{log}",
                  "--metrics {params.d}/metrics.json --batch-size {params.batch} --warmup-steps " + str(REHEARSAL_WARMUP))
        + " python -m detnas.launch --nproc {resources.gpu} pretrain --settings {params.settings:q}"
        " --split {input.split} --weights {params.d}/supernet.pt --metrics {params.d}/metrics.json"
        " --curves {params.d}/curves.png --checkpoint-dir {params.d}/checkpoints --threads {threads}"
        " --mlflow {params.mlflow:q}"


rule rehearse_finetune_supernet:
    input:
        train=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/supernet_train.json",
        pretrained=f"{R}/{{experiment}}/rehearsal/pretrain_supernet.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/finetune_supernet.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/finetune_supernet",
        init=lambda w: f"{rehearsal_dir(w.experiment)}/pretrain_supernet/supernet.pt",
        settings=lambda w: as_json(rehearsal_training(finetune_settings(w.experiment, scratch=False))),
        batch=lambda w: finetune_settings(w.experiment, scratch=False)["batch_size"],
        mlflow=lambda w: rehearsal_mlflow(w, "finetune_supernet"),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_finetune_supernet.log",
    shell:
        _rehearse("finetune_supernet", "{output.out}", "{log}",
                  "--metrics {params.d}/metrics.json --batch-size {params.batch} --warmup-steps " + str(REHEARSAL_WARMUP))
        + " python -m detnas.launch --nproc {resources.gpu} finetune --settings {params.settings:q}"
        " --train {input.train} --init {params.init} --weights {params.d}/supernet.pt --metrics {params.d}/metrics.json"
        " --curves {params.d}/curves.png --checkpoint-dir {params.d}/checkpoints --threads {threads}"
        " --mlflow {params.mlflow:q}"


def rehearsal_search_settings(name, method="detnas"):
    """A search's settings as rehearsed: one generation of REHEARSAL_CANDIDATES candidates, with the
    real recalibration and evaluation sizes."""
    return {**search_settings(name, method), "population": REHEARSAL_CANDIDATES, "parents": 1, "generations": 1,
            "repeats": 1}


rule rehearse_search:
    input:
        unpack(lambda w: latency_input(w.experiment)),  # a max_latency_ms bound reads the real table
        val=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/search_val.json",
        recal=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/supernet_train.json",
        finetuned=f"{R}/{{experiment}}/rehearsal/finetune_supernet.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/search.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/search",
        supernet=lambda w: f"{rehearsal_dir(w.experiment)}/finetune_supernet/supernet.pt",
        settings=lambda w: as_json(rehearsal_search_settings(w.experiment)),
        mlflow=lambda w: rehearsal_mlflow(w, "search"),
        latency_arg=lambda w, input: f"--latency-table {input.latency}" if "latency" in input.keys() else "",
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_search.log",
    shell:
        _rehearse("search", "{output.out}", "{log}", "--arch-file {params.d}/arch.json")
        + " python -m detnas.launch --nproc {resources.gpu} search --settings {params.settings:q}"
        " --supernet {params.supernet} --val {input.val} --recal {input.recal} --arch-out {params.d}/arch.json"
        " --history {params.d}/history.csv --curve {params.d}/curve.png --checkpoint-dir {params.d}/checkpoints"
        " --threads {threads} {params.latency_arg} --mlflow {params.mlflow:q}"


rule rehearse_search_clsnas:
    # ClsNAS scores paths of the pre-trained supernet by top-1 on the held-out classification images
    input:
        unpack(lambda w: latency_input(w.experiment)),  # a max_latency_ms bound reads the real table
        split=lambda w: f"{cls_dir(pretrain_run(experiment(w.experiment)['pretrain'])['data'])}/split.json",
        pretrained=f"{R}/{{experiment}}/rehearsal/pretrain_supernet.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/search_clsnas.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/search_clsnas",
        supernet=lambda w: f"{rehearsal_dir(w.experiment)}/pretrain_supernet/supernet.pt",
        settings=lambda w: as_json(rehearsal_search_settings(w.experiment, "clsnas")),
        mlflow=lambda w: rehearsal_mlflow(w, "search_clsnas"),
        latency_arg=lambda w, input: f"--latency-table {input.latency}" if "latency" in input.keys() else "",
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_search_clsnas.log",
    shell:
        _rehearse("search_clsnas", "{output.out}", "{log}", "--arch-file {params.d}/arch.json")
        + " python -m detnas.launch --nproc {resources.gpu} search --settings {params.settings:q}"
        " --supernet {params.supernet} --val {input.split} --arch-out {params.d}/arch.json"
        " --history {params.d}/history.csv --curve {params.d}/curve.png --checkpoint-dir {params.d}/checkpoints"
        " --threads {threads} {params.latency_arg} --mlflow {params.mlflow:q}"


rule rehearse_search_proxy:
    # a proxy search (training_free.smk) scores each candidate's own fresh network: its own cost
    input:
        unpack(lambda w: latency_input(w.experiment)),  # a max_latency_ms bound reads the real table
        train=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/supernet_train.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/search_{{proxy}}.json",
    wildcard_constraints:
        proxy="|".join(PROXY_METHODS),
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/search_{w.proxy}",
        settings=lambda w: as_json({**proxy_settings(w.experiment, w.proxy), "population": REHEARSAL_CANDIDATES,
                                    "parents": 1, "generations": 1, "repeats": 1}),
        mlflow=lambda w: rehearsal_mlflow(w, f"search_{w.proxy}"),
        latency_arg=lambda w, input: f"--latency-table {input.latency}" if "latency" in input.keys() else "",
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_search_{{proxy}}.log",
    shell:
        _rehearse("search_{wildcards.proxy}", "{output.out}", "{log}", "--arch-file {params.d}/arch.json")
        + " python -m detnas search --settings {params.settings:q} --val {input.train} --arch-out {params.d}/arch.json"
        " --history {params.d}/history.csv --curve {params.d}/curve.png --checkpoint-dir {params.d}/checkpoints"
        " --threads {threads} {params.latency_arg} --mlflow {params.mlflow:q}"


rule rehearse_retrain_pretrain:
    input:
        arch=f"{R}/{{experiment}}/shufflenetv2/search/arch.json",  # a fixed architecture of the space, made in seconds
        split=lambda w: f"{cls_dir(pretrain_run(experiment(w.experiment)['pretrain'])['data'])}/split.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/retrain_pretrain.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/retrain_pretrain",
        settings=lambda w: as_json(rehearsal_training(retrain_pretrain_settings(w.experiment))),
        batch=lambda w: retrain_pretrain_settings(w.experiment)["batch_size"],
        mlflow=lambda w: rehearsal_mlflow(w, "retrain_pretrain"),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_retrain_pretrain.log",
    shell:
        _rehearse("retrain_pretrain", "{output.out}", "{log}",
                  "--metrics {params.d}/metrics.json --batch-size {params.batch} --warmup-steps " + str(REHEARSAL_WARMUP))
        + " python -m detnas.launch --nproc {resources.gpu} pretrain --settings {params.settings:q}"
        " --split {input.split} --arch-file {input.arch} --weights {params.d}/classifier.pt --metrics {params.d}/metrics.json"
        " --curves {params.d}/curves.png --checkpoint-dir {params.d}/checkpoints --threads {threads}"
        " --mlflow {params.mlflow:q}"


rule rehearse_retrain_finetune:
    input:
        arch=f"{R}/{{experiment}}/shufflenetv2/search/arch.json",
        train=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/train.json",
        classifier=f"{R}/{{experiment}}/rehearsal/retrain_pretrain.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/retrain_finetune.json",
    params:
        d=lambda w: f"{rehearsal_dir(w.experiment)}/retrain_finetune",
        init=lambda w: f"{rehearsal_dir(w.experiment)}/retrain_pretrain/classifier.pt",
        settings=lambda w: as_json(rehearsal_training(retrain_finetune_settings(w.experiment))),
        batch=lambda w: retrain_finetune_settings(w.experiment)["batch_size"],
        mlflow=lambda w: rehearsal_mlflow(w, "retrain_finetune"),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/rehearse/{{experiment}}_retrain_finetune.log",
    shell:
        _rehearse("retrain_finetune", "{output.out}", "{log}",
                  "--metrics {params.d}/metrics.json --batch-size {params.batch} --warmup-steps " + str(REHEARSAL_WARMUP))
        + " python -m detnas.launch --nproc {resources.gpu} finetune --settings {params.settings:q}"
        " --train {input.train} --init {params.init} --arch-file {input.arch} --weights {params.d}/detector.pt"
        " --metrics {params.d}/metrics.json --curves {params.d}/curves.png --checkpoint-dir {params.d}/checkpoints"
        " --threads {threads} --mlflow {params.mlflow:q}"


rule rehearse_evaluate:
    input:
        arch=f"{R}/{{experiment}}/shufflenetv2/search/arch.json",
        test=lambda w: f"{det_dir(experiment(w.experiment)['data'])}/test.json",
        detector=f"{R}/{{experiment}}/rehearsal/retrain_finetune.json",
    output:
        out=f"{R}/{{experiment}}/rehearsal/evaluate.json",
    params:
        d=lambda w: rehearsal_dir(w.experiment),
        primary=primary_metric,
        batch_size=lambda w: experiment(w.experiment)["finetune"]["eval_batch_size"],
        mlflow=lambda w: rehearsal_mlflow(w, "evaluate"),
    threads: JOB_THREADS
    log:
        f"{R}/logs/rehearse/{{experiment}}_evaluate.log",
    shell:
        _rehearse("evaluate", "{output.out}", "{log}", "--final {params.d}/evaluate/final.json")
        + " python -m detnas evaluate --detector {params.d}/retrain_finetune/detector.pt --test {input.test}"
        " --arch-file {input.arch} --classifier-metrics {params.d}/retrain_pretrain/metrics.json"
        " --detector-metrics {params.d}/retrain_finetune/metrics.json --out {params.d}/evaluate/final.json"
        " --primary {params.primary} --batch-size {params.batch_size} --max-images " + str(REHEARSAL_TEST_IMAGES)
        + " --threads {threads} --mlflow {params.mlflow:q}"


REHEARSED = ["pretrain_supernet", "finetune_supernet", "search", "search_clsnas", "retrain_pretrain", "retrain_finetune",
             "evaluate"]


def rehearsed(name):
    """The rehearsals experiment `name`'s plan reads: every stage's, and each proxy search's it runs."""
    proxies = [m for m in experiment(name)["training_free"]["methods"] if m in PROXY_METHODS]
    return REHEARSED + [f"search_{m}" for m in proxies]


def plan_jobs(name):
    """The comparison's jobs (ledger_jobs: the same DAG) with each one's size at the real settings:
    training steps, search candidates, test images (None: the rehearsal's)."""
    e = experiment(name)
    s = e["search"]
    candidates = s["population"] * s["generations"] * s.get("repeats", 1)
    steps = {
        "pretrain_supernet": pretrain_settings(e["pretrain"])["schedule"]["iterations"],
        "retrain_pretrain": retrain_pretrain_settings(name)["schedule"]["iterations"],
        "retrain_finetune": retrain_finetune_settings(name)["schedule"]["iterations"],
    }
    out = []
    for job in ledger_jobs(name):
        size = {}
        if job["stage"] == "finetune_supernet":
            size["steps"] = finetune_steps(name, scratch="scratch" in job["name"])
        elif job["stage"] in steps:
            size["steps"] = steps[job["stage"]]
        elif job["stage"] == "search":
            size["candidates"] = candidates if job["name"].startswith("search ") else 0
            method = job["name"].removeprefix("search ")
            if method == "clsnas" or method in PROXY_METHODS:
                size["rehearsal"] = f"search_{method}"
        elif job["stage"] == "evaluate":
            size["images"] = None
        elif job["stage"] == "latency":
            size["validation"] = f"{R}/{name}/latency/validation.json"
            size["table_benchmark"] = f"{R}/benchmarks/latency_table/{name}.tsv"
        out.append({**job, **size})
    return out


def plan_profile():
    """What the plan needs of the profile: jobs at once, the per-job time limit, CPUs per GPU."""
    rs = workflow.resource_settings
    defaults = rs.default_resources
    runtime = defaults.get("runtime") if defaults is not None and "runtime" in defaults.keys() else None
    runtime = getattr(runtime, "value", runtime)  # a Resource("runtime", 60) as Snakemake holds it
    return {"parallel_jobs": rs.nodes or rs.cores or 1,
            "runtime_min": runtime if isinstance(runtime, (int, float)) else None, "cpus_per_gpu": None}


rule plan:
    input:
        rehearsals=lambda w: [f"{R}/{w.experiment}/rehearsal/{s}.json" for s in rehearsed(w.experiment)],
        # the latency table, measured for real (minutes at most; a latency bound's searches need it)
        latency=lambda w: [latency_table_file(w.experiment)] if latency_settings(w.experiment) is not None else [],
    output:
        json=f"{R}/{{experiment}}/plan.json",
        md=report(f"{R}/{{experiment}}/plan.md", caption="../report/plan.rst", category="{experiment}",
                  subcategory="cost"),
    params:
        jobs=lambda w: as_json(plan_jobs(w.experiment)),
        rehearsals=lambda w, input: " ".join(f"{s}={p}" for s, p in zip(rehearsed(w.experiment), input.rehearsals)),
        profile=lambda w: as_json(plan_profile()),
    log:
        f"{R}/logs/plan/{{experiment}}.log",
    shell:
        "python -m detnas plan --experiment {wildcards.experiment} --jobs {params.jobs:q} --rehearsal {params.rehearsals}"
        " --profile {params.profile:q} --json {output.json} --md {output.md} > {log} 2>&1"


# Before GPU-days go to CPUs: a training job of the DAG at the paper's scale that would get no GPU
# (the `gpu` resource is 0 in both shipped profiles until a user sets it) is named at DAG build, also
# by `snakemake -n`, with the profile key to set and the rehearsal to run first, unless the
# experiment has been rehearsed (its plan.json exists). The training rules call this from an input
# function, so only jobs the requested targets need are checked.
PAPER_SCALE_STEPS = 10000
_WARNED = set()


def gpu_check(rule, name, steps, experiments):
    """[] (no input): warn, once per rule, when `rule`'s job `name` trains `steps` steps on CPU."""
    if steps < PAPER_SCALE_STEPS or _rule_gpus(rule) > 0 or rule in _WARNED:
        return []
    if any(os.path.exists(f"{R}/{x}/plan.json") for x in experiments):
        return []
    _WARNED.add(rule)  # once per rule: its other jobs are alike
    plans = " ".join(f"{R}/{x}/plan.json" for x in experiments)
    print(f"WARNING: {rule} ({name}, and the rule's other jobs): {steps} training steps each on CPU (its `gpu` "
          f"resource is 0). Set the GPUs in "
          f"your profile (profiles/slurm/config.yaml, set-resources: `gpu: &gpus N`) and rehearse first: "
          f"snakemake --profile <profile> {plans}", file=sys.stderr)
    return []
