from pipeline.io import setup_logging
from pipeline.stages import parse_reports

setup_logging(snakemake.log[0])
parse_reports.run(snakemake.input.studies, snakemake.wildcards.shard, snakemake.output.shard, snakemake.params.cfg)
