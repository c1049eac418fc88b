from pipeline.io import logged
from pipeline.model_spec import parse_key
from pipeline.stages import model_inputs

with logged(snakemake.log[0]):
    size, interpolation = parse_key(snakemake.wildcards.key)
    model_inputs.run(snakemake.input.normalized, snakemake.output.shard, size, interpolation)
