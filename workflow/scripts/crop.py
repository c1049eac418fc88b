from pipeline.io import setup_logging
from pipeline.stages import crop

setup_logging(snakemake.log[0])
crop.run(snakemake.input.normalized, snakemake.input.segmented, snakemake.output.shard, snakemake.params.cfg)
