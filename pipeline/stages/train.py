"""train: the region-aware student, from the cached shards only (the teacher is never loaded here).

A run is described by a spec (written by the rule as `results/train/<run>/spec.json`): the shard lists of
model_inputs, normalize, crop, reports and embed, the concept file, the teacher weights (to start from when
train.init is teacher) and the run's train section. `python -m pipeline train --spec SPEC` runs it, which is
what torchrun starts in each process when train.nproc_per_node > 1.

Outputs in the run folder: model.pt (loads with open_clip.create_model(train.model, pretrained=...)),
metrics.jsonl (every loss term every step), checkpoints/last.pt, summary.json (data, pairing, time, teacher hash).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from .. import models
from ..data import load_region_data
from ..io import atomic_path, files_sha256
from ..trainer import RegionBatches, fit
from ..versions import STAGE_VERSIONS

log = logging.getLogger("pipeline.train")


def write_spec(path: str | Path, inputs: dict, cfg: dict, teacher: str) -> Path:
    spec = {"inputs": {k: [str(p) for p in v] if isinstance(v, (list, tuple)) else str(v) for k, v in inputs.items()},
            "cfg": cfg, "teacher": str(teacher)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(spec, indent=1, sort_keys=True))
    return path


def resume_key(cfg: dict, files: list) -> dict:
    """The config a checkpoint must have been made under to be resumed: the run's config, its input files' (shards,
    init weights) SHA-256 and train's stage version. A code change that alters what training does (pairing, say)
    bumps the version; without it in the key, a finished run's final checkpoint would be resumed at its last step
    and its old weights written as the new model."""
    return {**cfg, "data_sha256": files_sha256(files), "stage_version": STAGE_VERSIONS["train"]}


def run(spec_path: str | Path, threads: int = 1, stop_after: int | None = None) -> dict:
    spec = json.loads(Path(spec_path).read_text())
    cfg, inputs, out_dir = spec["cfg"], spec["inputs"], Path(spec_path).parent
    data, val = (load_region_data(inputs, {split}, models.input_size(cfg["model"]), cfg["uncertain"], cfg["negatives"],
                                  cfg["max_pairs_per_image"], cfg["clear_pairs"]) for split in ("train", "validate"))
    rules = {r: data.pair_rule.count(r) for r in ("lesion", "zone", "lung", "clear")}
    log.info("%d training images, %d ROI-phrase pairs (%s), %d concept prompts; teacher %s", len(data),
             len(data.pair_text), ", ".join(f"{k} {v}" for k, v in rules.items()), len(data.concepts),
             data.teacher_sha256[:12])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    # train.init: teacher (its weights file), scratch (random), or a weights file for train.model
    init = {"teacher": spec["teacher"], "scratch": None}.get(cfg["init"], cfg["init"])
    stages = ("inputs", "normalized", "crops", "reports", "embed")
    files = [f for k in stages for f in inputs[k]] + [inputs["concepts"]]
    cfg = resume_key(cfg, files + ([init] if init else []))
    val_batches = RegionBatches(val, cfg["model"], {**cfg, "hflip": 0.0})  # early stopping (trainer.fit)
    result = fit(RegionBatches(data, cfg["model"], cfg), cfg, out_dir, threads, init=init, stop_after=stop_after,
                 val_batches=val_batches)
    if "stopped_at" in result or not rank0:
        return result
    summary = {**result, "images": len(data), "validate_images": len(val), "pairs": len(data.pair_text), "pair_rules": rules,
               "concepts": len(data.concepts), "teacher_sha256": data.teacher_sha256, "init": cfg["init"],
               "seed": cfg["seed"]}
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def launch(spec_path: str | Path, nproc: int, threads: int, log_file: str | Path) -> None:
    """Run a spec in this process, or under torchrun with `nproc` processes (DistributedDataParallel)."""
    if nproc == 1:
        run(spec_path, threads)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline", "train", "--spec", str(spec_path), "--threads", str(threads), "--log", str(log_file)]
    log.info("starting %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
