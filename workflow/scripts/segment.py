from pipeline.io import logged
from pipeline.stages import segment

with logged(snakemake.log[0]):
    segment.run(snakemake.input.shard, snakemake.input.weights, snakemake.output.shard, snakemake.params.cfg,
                threads=snakemake.threads)
