# An allocation check: run it with the resources of a training rule, e.g.
#   snakemake --profile profiles/slurm --set-resources selfcheck:gpu=2 results/selfcheck/gpu2.json
# and read the log: one torchrun, N processes, N visible GPUs, one SLURM task.


rule selfcheck:
    output:
        f"{R}/selfcheck/{{name}}.json",
    resources:
        gpu=0,
    log:
        f"{R}/logs/selfcheck/{{name}}.log",
    benchmark:
        f"{R}/benchmarks/selfcheck/{{name}}.tsv"
    shell:
        "python -m detnas.launch --nproc {resources.gpu} selfcheck --expect-processes {resources.gpu}"
        " --out {output} > {log} 2>&1"
