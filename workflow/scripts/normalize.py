from pipeline.io import logged
from pipeline.stages import normalize

with logged(snakemake.log[0]):
    cfg = snakemake.params.cfg
    normalize.run(snakemake.input.studies, snakemake.wildcards.shard, snakemake.output.shard,
                  snakemake.output.png if cfg["write_png"] else None, cfg)
