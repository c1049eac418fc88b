from pipeline.io import logged
from pipeline.stages import synthesize

with logged(snakemake.log[0]):
    synthesize.run(snakemake.params.cfg, snakemake.output[0], workers=snakemake.threads)
