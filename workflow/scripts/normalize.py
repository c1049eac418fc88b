from pipeline.io import setup_logging
from pipeline.stages import normalize

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
normalize.run(snakemake.input.studies, snakemake.wildcards.shard, snakemake.output.shard,
              snakemake.output.png if cfg["write_png"] else None, cfg)
