"""embed_teacher: the frozen teacher's embeddings, computed once so the teacher never sits beside the student.

Per shard (rows follow the normalize / crop shard, reports joined by image_id):
    image_embedding (N, D), report_embedding (N, D)         float16, L2-normalised
    rois/roi_embedding (R, D)                               the crop shard's ROIs (pooled, same offsets)
    phrases/phrase_embedding (P, D)                         each image's parsed phrases, in the report shard's order
`results/embed/concepts.h5` holds the concept pool (pipeline.concepts) and its embeddings. Every file carries the
teacher weights' SHA-256, model name and logit scale, so a student trained on it can say which teacher it learnt from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..concepts import concept_pool
from ..data import ShardRows, report_text
from ..io import sha256_file, usable_threads
from ..shards import Shard, ShardWriter, csr_offsets, decode
from ..versions import STAGE_VERSIONS
from .normalize import as_uint8

STAGE = "embed_teacher"
log = logging.getLogger("pipeline.embed_teacher")


def load_teacher(weights: str | Path, name: str, threads: int = 1) -> tuple[torch.nn.Module, dict]:
    """The teacher in eval mode, and the attributes that identify it in every file made from it."""
    torch.set_num_threads(usable_threads(threads))
    model = models.create(name, pretrained=str(weights)).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    attrs = {"teacher_model": name, "teacher_sha256": sha256_file(weights),
             "logit_scale": float(model.logit_scale.detach().exp().clamp(max=100))}
    return model, attrs


def embed_concepts(weights: str | Path, out: str | Path, cfg: dict, threads: int = 1) -> int:
    model, attrs = load_teacher(weights, cfg["model"], threads)
    pool = concept_pool()
    emb = models.embed_texts(model, cfg["model"], pool.prompt).astype(np.float16)
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg, image_id=[],
                     upstream={"teacher": attrs["teacher_sha256"]}, attrs=attrs) as w:
        w.table("concepts", prompt=pool.prompt, observation=pool.observation, laterality=pool.laterality,
                zone=pool.zone, negated=pool.negated, swap=pool.swap, embedding=emb)
    log.info("%d concept prompts embedded by %s", len(pool), cfg["model"])
    return len(pool)


def run(normalized: str | Path, cropped: str | Path, reports: str | Path, weights: str | Path, out: str | Path,
        cfg: dict, threads: int = 1) -> dict:
    model, attrs = load_teacher(weights, cfg["model"], threads)
    with Shard(normalized) as n, Shard(cropped) as c, Shard(reports) as r:
        ids = n.image_ids
        if c.image_ids != ids:
            raise ValueError(f"{normalized} and {cropped} hold different images")
        roi_boxes, roi_offsets = c.f["rois/roi_box"][()], c.f["rois/offsets"][()]
        row = {image_id: i for i, image_id in enumerate(r.image_ids)}
        missing = [i for i in ids if i not in row]
        if missing:
            raise ValueError(f"{reports} has no row for {len(missing)} image(s) of {normalized}, e.g. {missing[0]}")
        fi, full = decode(r.f["findings_impression"][()]), decode(r.f["report"][()])
        texts = [report_text(fi[row[i]], full[row[i]]) for i in ids]
        p_off, p_text = r.f["phrases/offsets"][()], decode(r.f["phrases/phrase"][()])
        per_image = [p_text[p_off[row[i]] : p_off[row[i] + 1]] for i in ids]
    phrases = [p for ps in per_image for p in ps]
    roi_image = np.repeat(np.arange(len(ids)), np.diff(roi_offsets))
    # read in the embedder's batches, not the whole shard at once
    images = ShardRows([normalized], "image", np.zeros(len(ids)), np.arange(len(ids)), convert=as_uint8)
    image_emb, roi_emb = models.embed_images_and_rois(model, images, roi_image, roi_boxes)
    emb = {"image": image_emb, "report": models.embed_texts(model, cfg["model"], texts), "roi": roi_emb,
           "phrase": models.embed_texts(model, cfg["model"], phrases)}
    emb = {k: v.astype(np.float16) for k, v in emb.items()}
    upstream = {"crop": sha256_file(cropped), "reports": sha256_file(reports), "teacher": attrs["teacher_sha256"]}
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg, image_id=ids,
                     upstream=upstream, attrs=attrs) as w:
        w.rows("image_embedding", emb["image"])
        w.rows("report_embedding", emb["report"])
        w.rows("has_report", np.array([bool(t) for t in texts]))
        w.ragged("rois", roi_offsets, roi_embedding=emb["roi"])
        w.ragged("phrases", csr_offsets(len(p) for p in per_image), phrase_embedding=emb["phrase"])
    counts = {"images": len(ids), "rois": len(roi_image), "phrases": len(phrases)}
    log.info("%d images, %d ROIs, %d phrases embedded by the teacher (%s)", *counts.values(), cfg["model"])
    return counts
