from pathlib import Path

from pipeline.data import load_pairs
from pipeline.io import files_sha256, setup_logging
from pipeline.trainer import fit_global

setup_logging(snakemake.log[0])
pairs = load_pairs(snakemake.input.normalized, snakemake.input.reports, {"train"})
# a checkpoint resumes only under the same config and the same input shards
cfg = {**snakemake.params.cfg, "data_sha256": files_sha256([*snakemake.input.normalized, *snakemake.input.reports])}
fit_global(pairs, cfg, Path(snakemake.output.model).parent, threads=snakemake.threads)
