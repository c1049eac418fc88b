from pipeline.io import logged
from pipeline.stages import ingest

with logged(snakemake.log[0]):
    ingest.run(snakemake.params.cfg, snakemake.output.studies, snakemake.output.plan, snakemake.output.rejected)
