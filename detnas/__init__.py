"""detnas: DetNAS (one-shot supernet backbone search for object detection) as a Snakemake pipeline."""

__version__ = "0.1.0"
