"""Training and test data from the cached shards: stages are joined by image_id, never by row number.

`join_shards` is the one join of a split's shards: `load_pairs` (the teacher: images and reports),
`load_region_data` (the student: images, reports, ROI boxes paired with finding phrases, their hard negatives, the
teacher's ROI and concept embeddings) and evaluate.load_test_set are built on it. What is small stays in memory
(ids, report text, ROI boxes, captions); what grows with the data is read on demand as `ShardRows`: images from
the model_inputs shards (already at the model's size, uncompressed) or, for evaluation, the normalize shards, ROI
crops, and the teacher's ROI embeddings from the embed shards. ShardRows open their files lazily in each process,
so DataLoader workers read their own rows and memory stays flat in the number of images. Nothing is decoded from
PNG and no teacher is run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .labels import OBSERVATIONS
from .shards import Shard, decode
from .stages.normalize import as_uint8


class ShardRows:
    """Rows of one dataset spread over shards, read on demand: item j is row `row[j]` of `paths[shard[j]]`.

    `rows[idx]` returns an array (len(idx), *row shape), like indexing an in-memory array, so the batch code takes
    either. Files open on first read in each process (pipeline.shards.Shard), never in the parent of DataLoader
    workers. A file that cannot be read fails with its name."""

    def __init__(self, paths: list[str | Path], key: str, shard: np.ndarray, row: np.ndarray,
                 convert: Callable[[np.ndarray], np.ndarray] | None = None):
        """convert: applied to each block read (e.g. normalize.as_uint8 for 16-bit normalized images); a module
        level function, so the rows still pickle to DataLoader workers."""
        self.shards = [Shard(p) for p in paths]
        self.key, self.shard, self.row = key, np.asarray(shard, np.int64), np.asarray(row, np.int64)
        self.convert = convert
        if len(self.shard) and len(paths):
            ds = self.shards[int(self.shard[0])].f[key]
            self.row_shape, self.dtype = ds.shape[1:], ds.dtype
            if convert is not None:
                self.dtype = convert(np.zeros((0, *self.row_shape), ds.dtype)).dtype
            self.shards[int(self.shard[0])].close()
        else:
            self.row_shape, self.dtype = (), np.uint8

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.row_shape)

    def __getitem__(self, idx) -> np.ndarray:
        """An int gives one row; a slice, a list or an array of ints gives (len, *row shape)."""
        if isinstance(idx, (int, np.integer)):
            return self[[idx]][0]
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.atleast_1d(np.asarray(idx, np.int64))
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        for k in np.unique(self.shard[idx]):
            sel = np.flatnonzero(self.shard[idx] == k)
            rows = self.row[idx[sel]]
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
            shard = self.shards[int(k)]
            try:
                ds = shard.f[self.key]
                # a run of consecutive rows (a batch of a shard in order) is one slice read, much faster in h5py
                block = ds[unique[0] : unique[-1] + 1] if unique[-1] - unique[0] + 1 == len(unique) else ds[unique]
            except (OSError, KeyError, ValueError) as e:
                raise OSError(f"{shard.path}: cannot read {self.key} rows {unique[:4].tolist()}...: {e}") from e
            if self.convert is not None:
                block = self.convert(block)
            out[sel] = block[inverse]
        return out


def report_text(findings_impression: str, report: str) -> str:
    """The report side of a pair: findings + impression, else the whole report; "" when there is no text."""
    return findings_impression.strip() or " ".join(report.split())


# a sentence ends at . ! or ? followed by space and a capital, a digit or MIMIC's ___ (never inside "2.5 cm")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9_])")


def sentences(text: str) -> list[str]:
    """The sentences of a report text (findings + impression), in order; the text itself when it has one."""
    return [s for s in (x.strip() for x in SENTENCE_END.split(text)) if s] or [text]


@dataclass
class ImageReportPairs:
    image_id: list[str]
    images: np.ndarray | ShardRows  # (N, s, s) uint8 at the model's input size
    reports: list[str]  # findings + impression (the full report when those are empty)
    shard: np.ndarray  # (N,) which shard each pair comes from (the sampler keeps reads near-sequential)
    labels: np.ndarray | None = None  # (N, 14) CheXpert study labels (1, 0, -1, NaN), for label-aware negatives


ROI_KEYS = ["roi_kind", "roi_laterality", "roi_zone", "roi_area", "roi_box"]


@dataclass
class SplitImage:
    """One image of a split as `join_shards` finds it in every stage's shard."""

    shard: int  # index into the aligned shard lists
    row: int  # its row in the normalize shard (and the model_inputs, crop and embed shards, which follow it)
    report_row: int  # its row in the report shard (joined by image_id: that shard has its own order)
    image_id: str
    patient_id: str
    study_id: str
    report: str  # report_text: never empty
    rois: dict  # the crop shard's ROIs of this image (ROI_KEYS columns); {} without crop shards
    phrases: dict  # the report shard's parsed phrases of this image; {} without crop shards
    roi_start: int  # the row of its first ROI in the crop shard's (and the embed shard's) rois group
    scale: float  # model_inputs pixels per normalized pixel (1.0 without model_inputs shards)


def join_shards(shards: dict, splits: set[str], keep_ids: list[str] | None = None, size: int | None = None,
                teacher_sha256: str | None = None) -> Iterator[SplitImage]:
    """The one join of a split's shards by image_id, in data order (shard by shard, normalize rows in order).

    shards: aligned per-shard path lists under "normalized" and "reports", and optionally "inputs"
    (model_inputs, checked to hold `size` px images), "crops" (ROIs and phrases are read only with these) and
    "embed" (checked to come from the teacher `teacher_sha256`). The normalize, model_inputs, crop and embed
    shards must hold the same images in the same rows. Images of other splits, outside `keep_ids` (when given),
    without a report row or without report text are left out."""
    wanted = set(keep_ids) if keep_ids is not None else None
    optional = [k for k in ("inputs", "crops", "embed") if k in shards]
    for index, paths in enumerate(zip(shards["normalized"], shards["reports"], *(shards[k] for k in optional))):
        with ExitStack() as stack:
            n, r, *rest = (stack.enter_context(Shard(p)) for p in paths)
            other = dict(zip(optional, rest))
            ids = n.image_ids
            for s in rest:
                if s.image_ids != ids:
                    raise ValueError(f"{s.path} and {n.path} hold different images")
            scale = 1.0
            if "inputs" in other:
                m = other["inputs"]
                if size is not None and int(m.attrs["size"]) != size:
                    raise ValueError(f"{m.path} holds {m.attrs['size']} px images, the model takes {size} px")
                scale = float(m.attrs["scale"])
            e = other.get("embed")
            if e is not None and teacher_sha256 is not None and e.attrs["teacher_sha256"] != teacher_sha256:
                raise ValueError(f"{e.path} was embedded by another teacher (sha256 {teacher_sha256[:12]}...)")
            report_row = {image_id: j for j, image_id in enumerate(r.image_ids)}
            split = decode(n.f["split"][()])
            keep = [i for i, image_id in enumerate(ids) if split[i] in splits and image_id in report_row
                    and (wanted is None or image_id in wanted)]
            if not keep:
                continue
            patients, studies = decode(n.f["patient_id"][()]), decode(r.f["study_id"][()])
            fi, full = decode(r.f["findings_impression"][()]), decode(r.f["report"][()])
            regional = "crops" in other
            if regional:
                c = other["crops"]
                rois, roi_offsets = c.ragged_rows("rois", ROI_KEYS), c.f["rois/offsets"][()]
                phrases = r.ragged_rows("phrases")
            for i in keep:
                j = report_row[ids[i]]
                text = report_text(fi[j], full[j])
                if not text:
                    continue
                yield SplitImage(index, i, j, ids[i], patients[i], studies[j], text,
                                 rois[i] if regional else {}, phrases[j] if regional else {},
                                 int(roi_offsets[i]) if regional else 0, scale)


def load_pretraining_pairs(shards: list[str | Path], splits: set[str], size: int) -> ImageReportPairs:
    """Image <-> report pairs of the pretraining cohort (stages/pretraining.py) in `splits`, images read on demand."""
    ids, reports, shard, rows, labels = [], [], [], [], []
    for k, path in enumerate(shards):
        with Shard(path) as f:
            if int(f.attrs["size"]) != size:
                raise ValueError(f"{path} holds {f.attrs['size']} px films, the model takes {size} px")
            split = decode(f.f["split"][()])
            fi, full = decode(f.f["findings_impression"][()]), decode(f.f["report"][()])
            shard_labels = f.f["labels"][()]
            for i, image_id in enumerate(f.image_ids):
                text = report_text(fi[i], full[i])
                if split[i] in splits and text:
                    ids.append(image_id), reports.append(text), shard.append(k), rows.append(i)
                    labels.append(shard_labels[i])
    shard = np.array(shard, np.int64)
    return ImageReportPairs(ids, ShardRows(list(shards), "image", shard, rows), reports, shard,
                            np.array(labels, np.float32).reshape(-1, len(OBSERVATIONS)))


def load_pairs(input_shards: list[str | Path], normalize_shards: list[str | Path], report_shards: list[str | Path],
               splits: set[str], size: int) -> ImageReportPairs:
    """Image <-> report pairs of `splits` (images from the model_inputs shards at `size`, read on demand); images
    without report text are left out."""
    joined = list(join_shards({"inputs": input_shards, "normalized": normalize_shards, "reports": report_shards},
                              splits, size=size))
    shard = np.array([x.shard for x in joined], np.int64)
    # the parsed study labels (parse_reports' convention), for label-aware negatives; None where shards lack them
    labels = None
    if joined and all(_has(p, "labels") for p in report_shards):
        labels = ShardRows(list(report_shards), "labels", shard, [x.report_row for x in joined])[:]
    return ImageReportPairs([x.image_id for x in joined],
                            ShardRows(list(input_shards), "image", shard, [x.row for x in joined]),
                            [x.report for x in joined], shard, labels)


def _has(path: str | Path, key: str) -> bool:
    with Shard(path) as s:
        return key in s.f


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


def load_region_data(shards: dict, splits: set[str], size: int, uncertain: str = "own", negatives: int = 4,
                     max_pairs_per_image: int = 4, clear_pairs: int = 0) -> RegionData:
    """The student's training data, joined by image_id from one shard id each of: `inputs` (model_inputs, the
    images at `size`), `normalized` (the split), `crops`, `reports` and `embed` (join_shards); plus the `concepts`
    file.
    clear_pairs: up to this many lung ROIs per image where the report states nothing, each paired with one finding
    the report negates (pairing.clear_captions; rule "clear")."""
    from .pairing import clear_captions, clear_regions, negative_captions, pair_caption, pair_rois, stated_findings

    with Shard(shards["concepts"]) as c:
        table, attrs = c.table("concepts"), c.attrs
    out: dict[str, list] = {k: [] for k in ("image_id", "shard", "row", "reports", "pair_image", "pair_box",
                                            "pair_text", "pair_negatives", "pair_laterality", "pair_rule", "roi_shard",
                                            "roi_row")}
    for image in join_shards({k: shards[k] for k in ("inputs", "normalized", "crops", "reports", "embed")}, splits,
                             size=size, teacher_sha256=attrs["teacher_sha256"]):
        index = len(out["image_id"])
        out["image_id"].append(image.image_id)
        out["shard"].append(image.shard)
        out["row"].append(image.row)
        out["reports"].append(image.report)
        rois, ph = image.rois, image.phrases
        stated = stated_findings(ph)
        chosen = []  # (ROI of the image, caption, negatives, laterality, rule)
        for pair in pair_rois(rois, ph, uncertain=uncertain)[:max_pairs_per_image]:
            p = pair.phrase
            unc = bool(ph["phrase_uncertain"][p])
            obs, side, zone = ph["phrase_observation"][p], ph["phrase_laterality"][p], ph["phrase_zone"][p]
            chosen.append((pair.roi, pair_caption(ph["phrase"][p], side, unc, uncertain),
                           negative_captions(ph["phrase"][p], obs, side, zone, unc, uncertain, negatives, stated),
                           rois["roi_laterality"][pair.roi], pair.rule))
        by_lung: dict[int, list] = {}
        for c in clear_regions(rois, ph):
            if rois["roi_kind"][c[0]] == "lung":
                by_lung.setdefault(c[0], []).append(c)
        # one negated finding per clear lung, taken in turn across images for variety
        for roi, obs, side, zone in [cs[index % len(cs)] for cs in by_lung.values()][:clear_pairs]:
            chosen.append((roi, *clear_captions(obs, side, zone), side, "clear"))
        for roi, text, negs, side, rule in chosen:
            out["pair_image"].append(index)
            out["pair_box"].append(rois["roi_box"][roi] * image.scale)
            out["pair_text"].append(text)
            out["pair_negatives"].append(negs)
            out["pair_laterality"].append(side)
            out["pair_rule"].append(rule)
            out["roi_shard"].append(image.shard)
            out["roi_row"].append(image.roi_start + roi)
    return RegionData(
        out["image_id"], ShardRows(list(shards["inputs"]), "image", out["shard"], out["row"]), out["reports"],
        np.array(out["shard"], np.int64), np.array(out["pair_image"], dtype=np.int64),
        np.array(out["pair_box"], np.float32).reshape(-1, 4), out["pair_text"], out["pair_negatives"],
        out["pair_laterality"], out["pair_rule"],
        ShardRows(list(shards["embed"]), "rois/roi_embedding", out["roi_shard"], out["roi_row"]),
        table["prompt"], np.asarray(table["swap"], dtype=np.int64), table["embedding"].astype(np.float32),
        float(attrs["logit_scale"]), attrs["teacher_sha256"])
