# detnas: DetNAS as a Snakemake workflow. The rules live in workflow/rules/, one file per stage.
import os
import sys

from snakemake.utils import validate

# Jobs run `python -m detnas ...` with the interpreter that runs Snakemake (the project's venv),
# also when the venv is not activated; SLURM jobs inherit this PATH.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


configfile: "config/config.yaml"
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# A configuration mistake stops here, before any job (also on `snakemake -n`): one line per problem,
# starting with its key path, e.g. "experiments.coco_fpn.search.max_mflops: 1 admits no architecture ...".
stop(schema_problems(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")))
apply_paper_defaults(config)  # the fine-tuning schedule by detector and dataset, where none is set
validate(config, "workflow/schemas/config.schema.yaml", set_default=True)  # fills in the other defaults
stop(config_problems())


wildcard_constraints:
    experiment=r"[A-Za-z0-9_.-]+",
    method=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_.-]+",
    pretrain=r"[A-Za-z0-9_.-]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/random_archs.smk"
include: "workflow/rules/training_free.smk"
include: "workflow/rules/latency.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/ledger.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/ranking.smk"
include: "workflow/rules/architectures.smk"
include: "workflow/rules/selfcheck.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        demo_targets(),


# A final.json of a method that does not exist stops with the methods that do (instead of Snakemake's
# "No rule to produce"); the methods with a rule of their own never match here.
rule unknown_method:
    input:
        unknown_method_input,
    output:
        f"{R}/{{experiment}}/{{method}}/final.json",
    wildcard_constraints:
        method=rf"(?!(?:{RETRAINED_RE})/)[A-Za-z0-9_.]+",
