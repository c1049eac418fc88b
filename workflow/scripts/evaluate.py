from pathlib import Path

from pipeline.io import logged
from pipeline.stages import evaluate

with logged(snakemake.log[0]):
    inputs = {k: snakemake.input[k] for k in ("normalized", "crops", "reports")}
    evaluate.run(inputs, snakemake.params.models, snakemake.params.architectures,
                 Path(snakemake.output.metrics).parent, snakemake.params.cfg,
                 snakemake.params.truth or None, threads=snakemake.threads, prepare_cfg=getattr(snakemake.params, "prepare", None))
