from pipeline.io import logged
from pipeline.stages import parse_reports

with logged(snakemake.log[0]):
    parse_reports.run(snakemake.input.studies, snakemake.wildcards.shard, snakemake.output.shard, snakemake.params.cfg)
