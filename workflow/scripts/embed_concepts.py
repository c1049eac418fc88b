from pipeline.io import logged
from pipeline.stages import embed_teacher

with logged(snakemake.log[0]):
    embed_teacher.embed_concepts(snakemake.input.teacher, snakemake.output.concepts, snakemake.params.cfg,
                                 threads=snakemake.threads)
