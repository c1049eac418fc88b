"""pretraining: the synthetic pretraining cohort that the default base model (the teacher) is fitted on.

Real users start from a pretrained CLIP (BiomedCLIP, OpenAI CLIP: `teacher.model: local-dir:...`). The default
has no such weights to ship, so it pretrains its own base on a cohort of its own: films drawn by the same
generator as the synthetic source (`pipeline.synthetic`), from another seed, so no patient (anatomy, finding
draw or id) is shared with the target cohort that the students train and are tested on. One film per patient.

The films are rendered small and stored at the teacher's input size, which keeps thousands of them cheap: there
is no DICOM round trip, segmentation or cropping, only what the teacher reads. The display range is the
clinical window the synthetic DICOMs carry (`synthesize.clinical_window`) and the resize is normalize's
letterbox, so a pretraining film looks like a normalized target film at that size.

Output `results/pretraining/shard-XXXXX.h5` (row i of shard k is film k * shard_size + i):
    image_id, patient_id, split (train | validate: every tenth film validates the teacher's selection)
    image                (N, size, size) uint8, the teacher's input size
    report, findings_impression (N,) text, as ingest and parse_reports write them for a target study
    labels               (N, 14) float32 CheXpert labels (1, 0, -1, NaN) from the generator's phrases
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..data import report_text
from ..labels import OBSERVATIONS
from ..shards import ShardWriter
from ..synthetic.anatomy import Thorax, expose, render_frontal
from ..synthetic.reports import derive_labels, write_report
from ..versions import STAGE_VERSIONS
from .normalize import letterbox
from .parse_reports import split_sections
from .synthesize import clinical_window, draw_findings

log = logging.getLogger("pipeline.pretraining")
STAGE = "pretraining"
VALIDATE_EVERY = 10  # film i validates when i % 10 == 9


def film(cfg: dict, index: int, size: int) -> dict:
    """Film `index` of the cohort: pixels at `size`, its report and labels; a pure function of (seed, index)."""
    rng = np.random.default_rng([cfg["seed"], index])
    thorax, sex = Thorax(rng), str(rng.choice(["F", "M"]))
    kinds = draw_findings(rng, cfg)
    view = "PA" if rng.random() < 0.7 else "AP"
    rad = render_frontal(thorax, rng, cfg["image_size"], kinds, inspiration=rng.uniform(0.92, 1.04), view=view)
    report, phrases = write_report(rad.findings, rng, sex, view, "full")
    stored = expose(rad.density, rng, 12, "MONOCHROME2", rad.noise).astype(np.float32)
    lo, hi = clinical_window(stored)
    image, _ = letterbox(np.clip((stored - lo) / (hi - lo), 0, 1), size)
    sections = split_sections(report)
    fi = " ".join(sections.get(s, "") for s in ("findings", "impression"))
    labels = derive_labels(phrases)
    return {"image": image, "report": report, "findings_impression": " ".join(fi.split()),
            "labels": [labels.get(o, np.nan) for o in OBSERVATIONS]}


def film_id(index: int) -> str:
    # a namespace of its own: target ids (MIMIC-CXR's and the synthetic source's) are all digits
    return f"pretrain-{index:07d}"


def run(cfg: dict, shard: int, out: str | Path, size: int) -> dict:
    first = shard * cfg["shard_size"]
    index = list(range(first, min(first + cfg["shard_size"], cfg["films"])))
    if not index:
        raise ValueError(f"shard {shard} is past the cohort's {cfg['films']} films")
    films = [film(cfg, i, size) for i in index]
    ids = [film_id(i) for i in index]
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config={**cfg, "size": size},
                     image_id=ids, attrs={"size": size}) as w:
        w.rows("patient_id", ids)
        w.rows("split", ["validate" if i % VALIDATE_EVERY == VALIDATE_EVERY - 1 else "train" for i in index])
        w.rows("image", np.stack([f["image"] for f in films]), compress=False)
        w.rows("report", [f["report"] for f in films])
        w.rows("findings_impression", [f["findings_impression"] for f in films])
        w.rows("labels", np.array([f["labels"] for f in films], np.float32))
    empty = sum(not report_text(f["findings_impression"], f["report"]) for f in films)
    log.info("pretraining shard %d: %d films at %d px (%d without report text)", shard, len(ids), size, empty)
    return {"films": len(ids), "size": size}
