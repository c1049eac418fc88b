from pipeline.io import logged
from pipeline.stages import embed_teacher

with logged(snakemake.log[0]):
    embed_teacher.run(snakemake.input.normalized, snakemake.input.crops, snakemake.input.reports,
                      snakemake.input.teacher, snakemake.output.shard, snakemake.params.cfg, threads=snakemake.threads)
