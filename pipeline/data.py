"""Training data from the cached shards: stages are joined by image_id, never by row number.

`load_pairs` (the teacher: images and reports) and `load_region_data` (the student: images, reports, ROI boxes
paired with finding phrases, their hard negatives, the teacher's ROI and concept embeddings) read the shards of the
chosen splits into memory once, images at the model's input size as uint8 (1 byte a pixel: about 3.5 GB for
MIMIC-CXR's 377k images at 96 px, 19 GB at 224 px). The student's images come from the model_inputs shards, already
at its size and uncompressed; its ROI embeddings are pooled from the same forward pass
(models.encode_image_and_rois). Nothing is decoded from PNG and no teacher is run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .shards import Shard, decode
from .stages.normalize import as_uint8


def report_text(findings_impression: str, report: str) -> str:
    """The report side of a pair: findings + impression, else the whole report; "" when there is no text."""
    return findings_impression.strip() or " ".join(report.split())


@dataclass
class ImageReportPairs:
    image_id: list[str]
    images: np.ndarray  # (N, S, S) uint8, normalized radiographs
    reports: list[str]  # findings + impression (the full report when those are empty)


def load_pairs(normalize_shards: list[str | Path], report_shards: list[str | Path], splits: set[str]
               ) -> ImageReportPairs:
    """Image <-> report pairs of `splits`; images without report text are left out."""
    text: dict[str, str] = {}
    for path in report_shards:
        with Shard(path) as r:
            for image_id, fi, report in zip(r.image_ids, decode(r.f["findings_impression"][()]),
                                            decode(r.f["report"][()])):
                text[image_id] = report_text(fi, report)
    ids, images, reports = [], [], []
    for path in normalize_shards:
        with Shard(path) as n:
            keep = [i for i, (image_id, s) in enumerate(zip(n.image_ids, decode(n.f["split"][()])))
                    if s in splits and text.get(image_id)]
            if not keep:
                continue
            block = as_uint8(n.f["image"][keep[0] : keep[-1] + 1][np.array(keep) - keep[0]])
            ids += [n.image_ids[i] for i in keep]
            images.append(block)
            reports += [text[n.image_ids[i]] for i in keep]
    size = images[0].shape[-1] if images else 0
    return ImageReportPairs(ids, np.concatenate(images) if images else np.zeros((0, size, size), np.uint8), reports)


@dataclass
class RegionData:
    """Everything the student's batches are made of. Pairs are (ROI, phrase) links found by `pairing.pair_rois`;
    one ROI may carry several phrases. Texts are kept as strings and tokenized by the trainer."""

    image_id: list[str]
    images: np.ndarray  # (N, s, s) uint8 at the model's input size
    reports: list[str]
    pair_image: np.ndarray  # (M,) index into images
    pair_box: np.ndarray  # (M, 4) float32 ROI boxes in the pixels of `images`
    pair_text: list[str]  # the caption the ROI is pulled towards
    pair_negatives: list[list[str]]  # (M, <= K) hard negative captions
    pair_laterality: list[str]
    pair_rule: list[str]  # lesion | zone | lung
    teacher_roi: np.ndarray  # (M, Dt) float32, the frozen teacher's embedding of each pair's ROI
    concepts: list[str]  # the concept pool T
    concept_swap: np.ndarray  # (T,) left <-> right mirror
    teacher_concepts: np.ndarray  # (T, Dt) float32
    teacher_scale: float
    teacher_sha256: str

    def __len__(self) -> int:
        return len(self.image_id)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, size, size), antialiased (the same resize as models.to_model_input)."""
    import torch
    import torch.nn.functional as F

    if len(images) == 0 or images.shape[-1] == size:
        return images
    x = torch.from_numpy(images).float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


PHRASE_KEYS = ["phrase", "phrase_observation", "phrase_negated", "phrase_uncertain", "phrase_laterality", "phrase_zone"]


def load_region_data(shards: dict, splits: set[str], size: int, uncertain: str = "own", negatives: int = 4,
                     max_pairs_per_image: int = 4, clear_pairs: int = 0) -> RegionData:
    """The student's training data, joined by image_id from one shard id each of: `inputs` (model_inputs, the
    images at `size`), `normalized` (the split), `crops`, `reports` and `embed`; plus the `concepts` file.
    clear_pairs: up to this many lung ROIs per image where the report states nothing, each paired with one finding
    the report negates (pairing.clear_captions; rule "clear")."""
    from .pairing import clear_captions, clear_regions, negative_captions, pair_caption, pair_rois, stated_findings

    with Shard(shards["concepts"]) as c:
        table, attrs = c.table("concepts"), c.attrs
    out: dict[str, list] = {k: [] for k in ("image_id", "images", "reports", "pair_image", "pair_box", "pair_text",
                                            "pair_negatives", "pair_laterality", "pair_rule", "teacher_roi")}
    keys = ("inputs", "normalized", "crops", "reports", "embed")
    for paths in zip(*(shards[k] for k in keys)):
        with Shard(paths[0]) as m, Shard(paths[1]) as n, Shard(paths[2]) as c, Shard(paths[3]) as r, \
                Shard(paths[4]) as e:
            if e.attrs["teacher_sha256"] != attrs["teacher_sha256"]:
                raise ValueError(f"{paths[4]} was embedded by another teacher than {shards['concepts']}")
            ids = n.image_ids
            if not (ids == m.image_ids == c.image_ids == e.image_ids):
                raise ValueError(f"shards {', '.join(map(str, paths))} hold different images")
            m_attrs = m.attrs
            if int(m_attrs["size"]) != size:
                raise ValueError(f"{paths[0]} holds {m_attrs['size']} px images, the model takes {size} px")
            scale = float(m_attrs["scale"])
            row = {image_id: i for i, image_id in enumerate(r.image_ids)}
            split = decode(n.f["split"][()])
            keep = [i for i, image_id in enumerate(ids) if split[i] in splits and image_id in row]
            if not keep:
                continue
            images = m.f["image"][()]
            fi, full = decode(r.f["findings_impression"][()]), decode(r.f["report"][()])
            roi_boxes, roi_emb = c.f["rois/roi_box"][()], e.f["rois/roi_embedding"][()]
            roi_offsets = c.f["rois/offsets"][()]
            all_rois = c.ragged_rows("rois", ["roi_kind", "roi_laterality", "roi_zone", "roi_area"])
            all_phrases = r.ragged_rows("phrases", PHRASE_KEYS)
            shard_rois = []  # flat ROI indices of this shard's pairs
            for i in keep:
                j = row[ids[i]]
                text = report_text(fi[j], full[j])
                if not text:
                    continue
                index = len(out["image_id"])
                out["image_id"].append(ids[i])
                out["images"].append(images[i])
                out["reports"].append(text)
                rois, ph = all_rois[i], all_phrases[j]
                stated, first_roi = stated_findings(ph), int(roi_offsets[i])
                for pair in pair_rois(rois, ph, uncertain=uncertain)[:max_pairs_per_image]:
                    p = pair.phrase
                    unc = bool(ph["phrase_uncertain"][p])
                    obs, side, zone = ph["phrase_observation"][p], ph["phrase_laterality"][p], ph["phrase_zone"][p]
                    shard_rois.append(first_roi + pair.roi)
                    out["pair_image"].append(index)
                    out["pair_text"].append(pair_caption(ph["phrase"][p], side, unc, uncertain))
                    out["pair_negatives"].append(negative_captions(ph["phrase"][p], obs, side, zone, unc, uncertain,
                                                                   negatives, stated))
                    out["pair_laterality"].append(rois["roi_laterality"][pair.roi])
                    out["pair_rule"].append(pair.rule)
                by_lung: dict[int, list] = {}
                for c in clear_regions(rois, ph):
                    if rois["roi_kind"][c[0]] == "lung":
                        by_lung.setdefault(c[0], []).append(c)
                # one negated finding per clear lung, taken in turn across images for variety
                for roi, obs, side, zone in [cs[index % len(cs)] for cs in by_lung.values()][:clear_pairs]:
                    text, negs = clear_captions(obs, side, zone)
                    shard_rois.append(first_roi + roi)
                    out["pair_image"].append(index)
                    out["pair_text"].append(text)
                    out["pair_negatives"].append(negs)
                    out["pair_laterality"].append(side)
                    out["pair_rule"].append("clear")
            if shard_rois:
                out["pair_box"] += list(roi_boxes[shard_rois] * scale)
                out["teacher_roi"] += list(roi_emb[shard_rois].astype(np.float32))
    s = size
    return RegionData(
        out["image_id"], np.stack(out["images"]) if out["images"] else np.zeros((0, s, s), np.uint8), out["reports"],
        np.array(out["pair_image"], dtype=np.int64), np.array(out["pair_box"], np.float32).reshape(-1, 4),
        out["pair_text"], out["pair_negatives"], out["pair_laterality"], out["pair_rule"],
        np.stack(out["teacher_roi"]) if out["teacher_roi"] else np.zeros((0, table["embedding"].shape[1]), np.float32),
        table["prompt"], np.asarray(table["swap"], dtype=np.int64), table["embedding"].astype(np.float32),
        float(attrs["logit_scale"]), attrs["teacher_sha256"])
