from pipeline.io import logged
from pipeline.stages import train_segmenter

with logged(snakemake.log[0]):
    p = snakemake.params
    train_segmenter.run(list(snakemake.input.shards), p.masks_dir, snakemake.output.model, snakemake.output.metrics,
                        p.cfg, p.norm_cfg, threads=snakemake.threads, studies=snakemake.input.studies,
                        fractions=p.split)
