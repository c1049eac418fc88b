from pipeline.io import logged
from pipeline.stages import crop

with logged(snakemake.log[0]):
    crop.run(snakemake.input.normalized, snakemake.input.segmented, snakemake.output.shard, snakemake.params.cfg)
