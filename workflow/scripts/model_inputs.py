from pipeline.io import setup_logging
from pipeline.model_spec import parse_key
from pipeline.stages import model_inputs

setup_logging(snakemake.log[0])
size, interpolation = parse_key(snakemake.wildcards.key)
model_inputs.run(snakemake.input.normalized, snakemake.output.shard, size, interpolation)
