"""Training data from the cached shards: stages are joined by image_id, never by row number.

`load_pairs` (the teacher: images and reports) and `load_region_data` (the student: images, reports, ROI boxes
paired with finding phrases, their hard negatives, the teacher's ROI and concept embeddings) make the one join of
the shards. What is small stays in memory (ids, report text, ROI boxes, captions); what grows with the data is read
on demand: images from the model_inputs shards (already at the model's size, uncompressed) and the teacher's ROI
embeddings from the embed shards, as `ShardRows` that open their files lazily in each process, so DataLoader
workers read their own rows and memory stays flat in the number of images. Nothing is decoded from PNG and no
teacher is run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .shards import Shard, decode
from .stages.normalize import as_uint8


class ShardRows:
    """Rows of one dataset spread over shards, read on demand: item j is row `row[j]` of `paths[shard[j]]`.

    `rows[idx]` returns an array (len(idx), *row shape), like indexing an in-memory array, so the batch code takes
    either. Files open on first read in each process (pipeline.shards.Shard), never in the parent of DataLoader
    workers. A file that cannot be read fails with its name."""

    def __init__(self, paths: list[str | Path], key: str, shard: np.ndarray, row: np.ndarray):
        self.shards = [Shard(p) for p in paths]
        self.key, self.shard, self.row = key, np.asarray(shard, np.int64), np.asarray(row, np.int64)
        if len(self.shard) and len(paths):
            ds = self.shards[int(self.shard[0])].f[key]
            self.row_shape, self.dtype = ds.shape[1:], ds.dtype
            self.shards[int(self.shard[0])].close()
        else:
            self.row_shape, self.dtype = (), np.uint8

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.row_shape)

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(idx, np.int64))
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        for k in np.unique(self.shard[idx]):
            sel = np.flatnonzero(self.shard[idx] == k)
            rows = self.row[idx[sel]]
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
            shard = self.shards[int(k)]
            try:
                block = shard.f[self.key][unique]
            except (OSError, KeyError, ValueError) as e:
                raise OSError(f"{shard.path}: cannot read {self.key} rows {unique[:4].tolist()}...: {e}") from e
            out[sel] = block[inverse]
        return out


def report_text(findings_impression: str, report: str) -> str:
    """The report side of a pair: findings + impression, else the whole report; "" when there is no text."""
    return findings_impression.strip() or " ".join(report.split())


@dataclass
class ImageReportPairs:
    image_id: list[str]
    images: np.ndarray | ShardRows  # (N, s, s) uint8 at the model's input size
    reports: list[str]  # findings + impression (the full report when those are empty)
    shard: np.ndarray  # (N,) which shard each pair comes from (the sampler keeps reads near-sequential)


def _split_rows(normalized: Shard, reports: Shard, splits: set[str], texts: dict[str, str]) -> list[int]:
    return [i for i, (image_id, s) in enumerate(zip(normalized.image_ids, decode(normalized.f["split"][()])))
            if s in splits and texts.get(image_id)]


def _check_inputs(inputs: Shard, ids: list[str], size: int) -> float:
    """The model_inputs shard holds the same images at `size`; returns its scale (normalized -> input pixels)."""
    if inputs.image_ids != ids:
        raise ValueError(f"{inputs.path} and its normalize shard hold different images")
    if int(inputs.attrs["size"]) != size:
        raise ValueError(f"{inputs.path} holds {inputs.attrs['size']} px images, the model takes {size} px")
    return float(inputs.attrs["scale"])


def load_pairs(input_shards: list[str | Path], normalize_shards: list[str | Path], report_shards: list[str | Path],
               splits: set[str], size: int) -> ImageReportPairs:
    """Image <-> report pairs of `splits` (images from the model_inputs shards at `size`, read on demand); images
    without report text are left out."""
    ids, reports, shard, row = [], [], [], []
    for k, (ipath, npath, rpath) in enumerate(zip(input_shards, normalize_shards, report_shards)):
        with Shard(ipath) as m, Shard(npath) as n, Shard(rpath) as r:
            texts = {image_id: report_text(fi, full) for image_id, fi, full in zip(
                r.image_ids, decode(r.f["findings_impression"][()]), decode(r.f["report"][()]))}
            _check_inputs(m, n.image_ids, size)
            keep = _split_rows(n, r, splits, texts)
            ids += [n.image_ids[i] for i in keep]
            reports += [texts[n.image_ids[i]] for i in keep]
            shard += [k] * len(keep)
            row += keep
    return ImageReportPairs(ids, ShardRows(list(input_shards), "image", shard, row), reports, np.array(shard, np.int64))


@dataclass
class RegionData:
    """Everything the student's batches are made of. Pairs are (ROI, phrase) links found by `pairing.pair_rois`;
    one ROI may carry several phrases. Texts are kept as strings and tokenized by the trainer."""

    image_id: list[str]
    images: np.ndarray | ShardRows  # (N, s, s) uint8 at the model's input size
    reports: list[str]
    shard: np.ndarray  # (N,) which shard each image comes from
    pair_image: np.ndarray  # (M,) index into images
    pair_box: np.ndarray  # (M, 4) float32 ROI boxes in the pixels of `images`
    pair_text: list[str]  # the caption the ROI is pulled towards
    pair_negatives: list[list[str]]  # (M, <= K) hard negative captions
    pair_laterality: list[str]
    pair_rule: list[str]  # lesion | zone | lung
    teacher_roi: np.ndarray | ShardRows  # (M, Dt) float16, the frozen teacher's embedding of each pair's ROI
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
    out: dict[str, list] = {k: [] for k in ("image_id", "shard", "row", "reports", "pair_image", "pair_box",
                                            "pair_text", "pair_negatives", "pair_laterality", "pair_rule", "roi_shard",
                                            "roi_row")}
    keys = ("inputs", "normalized", "crops", "reports", "embed")
    for shard_index, paths in enumerate(zip(*(shards[k] for k in keys))):
        with Shard(paths[0]) as m, Shard(paths[1]) as n, Shard(paths[2]) as c, Shard(paths[3]) as r, \
                Shard(paths[4]) as e:
            if e.attrs["teacher_sha256"] != attrs["teacher_sha256"]:
                raise ValueError(f"{paths[4]} was embedded by another teacher than {shards['concepts']}")
            ids = n.image_ids
            if not (ids == c.image_ids == e.image_ids):
                raise ValueError(f"shards {', '.join(map(str, paths))} hold different images")
            scale = _check_inputs(m, ids, size)
            row = {image_id: i for i, image_id in enumerate(r.image_ids)}
            split = decode(n.f["split"][()])
            keep = [i for i, image_id in enumerate(ids) if split[i] in splits and image_id in row]
            if not keep:
                continue
            fi, full = decode(r.f["findings_impression"][()]), decode(r.f["report"][()])
            roi_boxes, roi_offsets = c.f["rois/roi_box"][()], c.f["rois/offsets"][()]
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
                out["shard"].append(shard_index)
                out["row"].append(i)
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
                out["roi_shard"] += [shard_index] * len(shard_rois)
                out["roi_row"] += shard_rois
    return RegionData(
        out["image_id"], ShardRows(list(shards["inputs"]), "image", out["shard"], out["row"]), out["reports"],
        np.array(out["shard"], np.int64), np.array(out["pair_image"], dtype=np.int64),
        np.array(out["pair_box"], np.float32).reshape(-1, 4), out["pair_text"], out["pair_negatives"],
        out["pair_laterality"], out["pair_rule"],
        ShardRows(list(shards["embed"]), "rois/roi_embedding", out["roi_shard"], out["roi_row"]),
        table["prompt"], np.asarray(table["swap"], dtype=np.int64), table["embedding"].astype(np.float32),
        float(attrs["logit_scale"]), attrs["teacher_sha256"])
