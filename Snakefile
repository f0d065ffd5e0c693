# detnas: DetNAS as a Snakemake workflow. The rules live in workflow/rules/, one file per stage.
import os
import sys

from snakemake.utils import validate

# Jobs run `python -m detnas ...` with the interpreter that runs Snakemake (the project's venv),
# also when the venv is not activated; SLURM jobs inherit this PATH.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


wildcard_constraints:
    experiment=r"[A-Za-z0-9_.-]+",
    method=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_.-]+",
    pretrain=r"[A-Za-z0-9_.-]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/retrain.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/selfcheck.smk"


rule all:
    default_target: True
    input:
        demo_targets(),
