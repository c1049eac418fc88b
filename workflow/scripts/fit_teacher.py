import logging
from pathlib import Path

from pipeline import models
from pipeline.data import load_pairs, load_pretraining_pairs
from pipeline.io import files_sha256, logged
from pipeline.trainer import fit_global
from pipeline.versions import STAGE_VERSIONS

with logged(snakemake.log[0]):
    log = logging.getLogger("pipeline.fit_teacher")
    cfg = snakemake.params.cfg
    size = models.input_size(cfg["model"])
    if cfg["fit_on"] == "pretraining":
        files = list(snakemake.input.pretraining)
        pairs, val = (load_pretraining_pairs(files, {split}, size) for split in ("train", "validate"))
    else:
        files = [*snakemake.input.inputs, *snakemake.input.normalized, *snakemake.input.reports]
        pairs, val = (load_pairs(snakemake.input.inputs, snakemake.input.normalized, snakemake.input.reports, {split},
                                 size) for split in ("train", "validate"))
    log.info("fitting the teacher on the %s cohort: %d training and %d validate pairs", cfg["fit_on"],
             len(pairs.image_id), len(val.image_id))
    # a checkpoint resumes only under the same config, input shards and stage version
    cfg = {**cfg, "data_sha256": files_sha256(files), "stage_version": STAGE_VERSIONS["fit_teacher"]}
    fit_global(pairs, cfg, Path(snakemake.output.model).parent, threads=snakemake.threads, val_pairs=val)
