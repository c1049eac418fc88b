from pipeline.io import setup_logging
from pipeline.stages import embed_teacher

setup_logging(snakemake.log[0])
embed_teacher.embed_concepts(snakemake.input.teacher, snakemake.output.concepts, snakemake.params.cfg,
                             threads=snakemake.threads)
