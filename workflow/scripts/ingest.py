from pipeline.io import setup_logging
from pipeline.stages import ingest

setup_logging(snakemake.log[0])
ingest.run(snakemake.params.cfg, snakemake.output.studies, snakemake.output.plan)
