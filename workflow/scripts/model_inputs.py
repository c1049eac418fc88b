from pipeline.io import setup_logging
from pipeline.stages import model_inputs

setup_logging(snakemake.log[0])
model_inputs.run(snakemake.input.normalized, snakemake.output.shard, int(snakemake.wildcards.size))
