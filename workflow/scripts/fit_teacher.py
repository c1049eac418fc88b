from pathlib import Path

from pipeline import models
from pipeline.data import load_pairs
from pipeline.io import files_sha256, logged
from pipeline.trainer import fit_global

with logged(snakemake.log[0]):
    cfg = snakemake.params.cfg
    pairs, val = (load_pairs(snakemake.input.inputs, snakemake.input.normalized, snakemake.input.reports, {split},
                              models.input_size(cfg["model"])) for split in ("train", "validate"))
    # a checkpoint resumes only under the same config and the same input shards
    files = [*snakemake.input.inputs, *snakemake.input.normalized, *snakemake.input.reports]
    cfg = {**cfg, "data_sha256": files_sha256(files)}
    fit_global(pairs, cfg, Path(snakemake.output.model).parent, threads=snakemake.threads, val_pairs=val)
