from pipeline.io import logged
from pipeline.stages.pretraining import run

with logged(snakemake.log[0]):
    run(snakemake.params.cfg, int(snakemake.wildcards.shard), snakemake.output[0], snakemake.params.size)
