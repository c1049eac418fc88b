from pipeline.io import setup_logging
from pipeline.stages import train_segmenter

setup_logging(snakemake.log[0])
p = snakemake.params
train_segmenter.run(list(snakemake.input.shards), p.masks_dir, snakemake.output.model, snakemake.output.metrics,
                    p.cfg, p.norm_cfg, threads=snakemake.threads, studies=snakemake.input.studies,
                    fractions=p.split)
