# Ranking quality: does the supernet rank architectures as standalone training does? (rule ranking)
# Every retrained architecture that is a path of the supernet (the searched ones, the random
# architectures, the unscaled ShuffleNetV2; the width-scaled one is not, and the stage leaves it out
# by its space) against its supernet fitness: the detection supernet fine-tuned from the pre-trained
# one (DetNAS's fitness) and the pre-trained classification supernet (ClsNAS's). Fitness the searches
# already computed comes from their history.csv; the scratch search scored another supernet.
from types import SimpleNamespace


def ranking_finals(name):
    methods = METHODS + EXTRA_METHODS
    return [final_json(name, m) for m in methods] + random_arch_finals(name)


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
        " --json {output.json} --png {output.png} --threads {threads} --mlflow {params.mlflow:q} > {log} 2>&1"
