# Ranking quality: does the supernet rank architectures as standalone training does? (rule ranking)
# Every retrained architecture that is a path of the supernet (the searched ones, the random
# architectures, the unscaled ShuffleNetV2; the width-scaled one is not, and the stage leaves it out
# by its space) against its supernet fitness: the detection supernet fine-tuned from the pre-trained
# one (DetNAS's fitness) and the pre-trained classification supernet (ClsNAS's). Fitness the searches
# already computed comes from their history.csv; the scratch search scored another supernet.
from types import SimpleNamespace


def ranking_finals(name):
    methods = METHODS + EXTRA_METHODS + extra_methods(name)
    return [final_json(name, m) for m in methods] + random_arch_finals(name)


def ranking_training_free(name, data):
    """The ranking's training-free scores: the proxies the experiment runs, as its proxy searches
    compute them (training_free.smk's proxy_settings), on the supernet's training images."""
    settings = proxy_settings(name, "synflow")
    proxies = [m for m in experiment(name)["training_free"]["methods"] if m in PROXY_METHODS]
    return {"proxies": proxies, "input_size": settings["proxy_input_size"], "batches": settings["proxy_batches"],
            "batch_size": settings["proxy_batch_size"], "seed": settings["proxy_seed"], "data": data}


def ranking_input(w):
    detection = search_input(SimpleNamespace(experiment=w.experiment, method="detnas"))
    classification = search_input(SimpleNamespace(experiment=w.experiment, method="clsnas"))
    return {
        "finals": ranking_finals(w.experiment),
        "detection_histories": [f"{R}/{w.experiment}/{m}/search/history.csv" for m in ("detnas", "random")],
        "classification_histories": [f"{R}/{w.experiment}/clsnas/search/history.csv"],
        "detection_supernet": detection["supernet"],
        "detection_val": detection["val"],
        "detection_recal": detection["recal"],
        "classification_supernet": classification["supernet"],
        "classification_split": classification["val"],
    }


rule ranking:
    input:
        unpack(ranking_input),
    output:
        json=f"{R}/{{experiment}}/ranking.json",
        png=report(f"{R}/{{experiment}}/ranking.png", caption="../report/ranking.rst", category="{experiment}",
                   subcategory="ranking quality"),
    params:
        settings=lambda w: as_json(experiment(w.experiment)["search"]),
        training_free=lambda w, input: as_json(ranking_training_free(w.experiment, input.detection_recal)),
        mlflow=lambda w: mlflow_run(w.experiment, "ranking", "ranking quality", w, **experiment_tags(w.experiment)),
    threads: JOB_THREADS
    resources:
        gpu=0,
    log:
        f"{R}/logs/ranking/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/ranking/{{experiment}}.tsv"
    shell:
        "python -m detnas ranking --experiment {wildcards.experiment} --settings {params.settings:q}"
        " --final {input.finals}"
        " --detection-supernet {input.detection_supernet} --detection-val {input.detection_val}"
        " --detection-recal {input.detection_recal} --detection-history {input.detection_histories}"
        " --classification-supernet {input.classification_supernet} --classification-split {input.classification_split}"
        " --classification-history {input.classification_histories}"
        " --training-free {params.training_free:q}"
        " --json {output.json} --png {output.png} --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"
