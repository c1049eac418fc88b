from pipeline.io import setup_logging
from pipeline.stages import segment

setup_logging(snakemake.log[0])
segment.run(snakemake.input.shard, snakemake.input.weights, snakemake.output.shard, snakemake.params.cfg,
            threads=snakemake.threads)
