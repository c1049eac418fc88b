from pipeline.io import setup_logging
from pipeline.stages import embed_teacher

setup_logging(snakemake.log[0])
embed_teacher.run(snakemake.input.normalized, snakemake.input.crops, snakemake.input.reports,
                  snakemake.input.teacher, snakemake.output.shard, snakemake.params.cfg, threads=snakemake.threads)
