# Detection fine-tuning of the supernet, path-wise: from the pre-trained supernet, or from scratch
# with `scratch_factor` times the iterations (DetNAS-scratch).


def finetune_settings(name, *, scratch):
    e = experiment(name)
    ft = {k: v for k, v in e["finetune"].items() if k != "scratch_factor"}
    return {
        **ft,
        "space": pretrain_run(e["pretrain"])["space"],
        "detector": e["detector"],
        "schedule_factor": e["finetune"]["scratch_factor"] if scratch else 1,
    }


def finetune_steps(name, *, scratch):
    """The steps a supernet fine-tuning trains: its schedule stretched by `schedule_factor` (DetNAS-
    scratch's scratch_factor), rounded as the stage rounds it (engine.Schedule.scaled)."""
    s = finetune_settings(name, scratch=scratch)
    return round(s["schedule"]["iterations"] * s["schedule_factor"])


def finetune_supernet_input(w):
    inputs = {"train": f"{det_dir(experiment(w.experiment)['data'])}/supernet_train.json"}
    if w.init == "pretrained":
        inputs["init"] = f"{pretrain_dir(experiment(w.experiment)['pretrain'])}/supernet.pt"
    return inputs


def experiment_tags(name, **more):
    e = experiment(name)
    return dict(experiment=name, detector=e["detector"]["name"], dataset=e["data"],
                space=pretrain_run(e["pretrain"])["space"], **more)


rule finetune_supernet:
    # the supernet chain is the critical path: before the baselines that need no supernet
    priority: 1
    input:
        unpack(finetune_supernet_input),
        _gpu=lambda w: gpu_check("finetune_supernet", f"{w.experiment} ({w.init})",
                                 finetune_steps(w.experiment, scratch=w.init == "scratch"), [w.experiment]),
    output:
        weights=f"{R}/{{experiment}}/supernet_{{init}}/supernet.pt",
        metrics=f"{R}/{{experiment}}/supernet_{{init}}/metrics.json",
        curves=report(f"{R}/{{experiment}}/supernet_{{init}}/curves.png", caption="../report/training_curves.rst",
                      category="{experiment}", subcategory="training curves",
                      labels={"network": "supernet ({init})", "stage": "detection fine-tuning"}),
    wildcard_constraints:
        init="pretrained|scratch",
    params:
        settings=lambda w: as_json(finetune_settings(w.experiment, scratch=w.init == "scratch")),
        init_arg=lambda w, input: f"--init {input.init}" if w.init == "pretrained" else "",
        mlflow=lambda w: mlflow_run(
            w.experiment, "finetune_supernet", f"finetune supernet ({w.init})", w,
            **experiment_tags(w.experiment, method="scratch" if w.init == "scratch" else "detnas"),
        ),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/finetune_supernet/{{experiment}}_{{init}}.log",
    benchmark:
        f"{R}/benchmarks/finetune_supernet/{{experiment}}_{{init}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} finetune --settings {params.settings:q}"
        " --train {input.train} {params.init_arg} --weights {output.weights} --metrics {output.metrics}"
        " --curves {output.curves} --checkpoint-dir {R}/{wildcards.experiment}/supernet_{wildcards.init}/checkpoints"
        " --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"
