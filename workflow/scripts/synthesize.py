from pipeline.io import setup_logging
from pipeline.stages import synthesize

setup_logging(snakemake.log[0])
synthesize.run(snakemake.params.cfg, snakemake.output[0], workers=snakemake.threads)
