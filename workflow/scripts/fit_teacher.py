from pathlib import Path

from pipeline.data import load_pairs
from pipeline.io import setup_logging
from pipeline.trainer import fit_global

setup_logging(snakemake.log[0])
pairs = load_pairs(snakemake.input.normalized, snakemake.input.reports, {"train"})
fit_global(pairs, snakemake.params.cfg, Path(snakemake.output.model).parent, threads=snakemake.threads)
