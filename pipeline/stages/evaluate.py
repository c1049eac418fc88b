"""evaluate: the student against a global-only control, ablations and the baseline teacher, on the patient-level
test split. This module is the stage: it loads the test set, draws and pins the evaluation sets (manifests), runs
every model and compares them; the metrics live in pipeline/evaluation/ by family (zeroshot, retrieval, regional,
robustness, grounding, controls, report; the embedder in evaluation/embedder.py), the statistics in pipeline/stats.py.

Metrics (each with a patient-level bootstrap 95% interval, pipeline/stats.py):
- zero-shot classification, CheXzero style: per observation, the softmax over a positive and a negative prompt
  ensemble gives p(positive); AUROC against the dataset's labels (1 positive; 0 or blank negative; -1 left out),
  and accuracy on a 5x200-style subset (test images positive for exactly one of the five CheXpert 5x200 classes,
  up to 200 each, argmax over the five positive prompt ensembles);
- image -> report and report -> image retrieval over the test studies (one frontal image each): R@1/5/10, median rank;
- region <-> phrase: for each test ROI <-> phrase pair (pairing.pair_rois, certain present phrases, side spelt out
  as in training), top-1 among the test captions (deduplicated after vocab.normalize_text, so case twins are one
  candidate), phrase -> ROI R@1/5/10 over all test ROIs;
- robustness: statements built from the pair's parsed attributes in one grammar (vocab.statement), so the true
  and the alternative statement differ only in what is tested: the other side (laterality), negated, uncertain,
  another finding the report does not state there; and the converse: an ROI of a lung or zone where the report
  states nothing present prefers "there is no X in ..." over "there is X in ..." for each X the report negates.
  A text tower that merely pushes every "no ..." away wins the first and loses the converse;
- grounding, where the synthetic truth has a box: the phrase's heat map over the image's ROIs (each ROI box
  painted with its softmax similarity), pointing game, IoU of the map thresholded at half its maximum, and CNR
  (MS-CXR: |mean in - mean out| / sqrt(var in + var out)); beside it the dense patch-level map (grounding.py:
  every projected patch token against the phrase, smoothed, upsampled) with CNR, mIoU over thresholds 0.1-0.5 and
  pointing game (`grounding/dense_*`);
- groundability: a present statement should ground somewhere and a negated one ("there is no X in the left lung"
  where the report leaves that lung clear) nowhere: `groundable/present_accuracy`, `groundable/negated_accuracy`;
- benchmarks (evaluate.benchmarks.<name>.root, off by default): MS-CXR, RSNA, NIH boxes, SIIM, CheXpert / MIMIC
  5x200 from their official files (pipeline/benchmarks.py), for every run.

Runs: every run of evaluate.runs (and the seed replicas of student and the control), `baseline` (the teacher), the
external baselines of evaluate.baselines (e.g. OpenAI CLIP, BiomedCLIP: zero-shot as they are, each with its own
tokenizer and preprocessing, models.create), and `<run>/crop` for the crop baselines (each ROI embedded as the crop stage's ROI image, not pooled). metrics.json
holds every run's figures, the mean and spread of student and control over seeds, and paired differences
(student - control over seeds; student - each ablation) on the same patient resamples. A run's interval is the
patient bootstrap's; the means over seeds and student - control have a two-level bootstrap interval over seeds x
patients (stats.two_level: each round draws the seeds with replacement and the patients; seed k of the student is
paired with seed k of the control), so they hold training variance too.

Every evaluation set is a manifest (ids, seed, SHA-256) under results/evaluate/manifests/. With evaluate.manifests
naming a folder of pinned manifests, the sets fixed by the data alone (test images, the 5x200 subset, retrieval
studies, ground-truth boxes) must match exactly, else the run stops; the sets whose ROIs come from the trained U-Net
(region pairs, clear regions) keep the pinned entries found again (lungs and zones by name, lesions by their boxes)
and report how many were found: a U-Net retrained on another CPU finds slightly different lesions.
Evaluation also stops when a test patient is a training patient. Each run's `model.pt` was chosen by the trainer on
the validate split: nothing is chosen on the test set. `evaluate.split: validate` measures every figure on the
validate split instead, for tuning: the pinned manifests (test sets) and the public benchmarks are left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import stats
from ..config import seed_replicas
from ..data import ShardRows, join_shards
from ..evaluation import regional
from ..evaluation.controls import CONTROLS, ControlImages, null_band
from ..evaluation.embedder import Embedder
from ..evaluation.grounding import (dense_grounding_figures, groundable_figures, grounding_figures, heat_map,
                                    roi_grounding_figures)
from ..evaluation.report import HEADLINE, ORACLE, benchmarks_markdown, plot, report_markdown
from ..evaluation.retrieval import region_phrase_figures, retrieval_figures, top1_unique
from ..evaluation.robustness import alternatives, robustness_figures
from ..evaluation.zeroshot import FIVE, five_by_200, zeroshot_figures
from ..geometry import box_iou, holds_centre, mask_box
from ..io import atomic_path, usable_threads
from ..pairing import accuracy_on_truth, clear_regions, pair_caption, pair_rois, read_truth, stated_findings
from ..shards import Shard, decode
from ..vocab import REGIONAL
from .crop import ZONES, pad_box, zone_boxes, zone_edges
from .normalize import as_uint8, letterbox_mask, to_normalized

# what other modules and tests import from here, now defined in pipeline/evaluation/
__all__ = ["Embedder", "alternatives", "grounding_figures", "heat_map", "load_test_set", "run", "top1_unique"]

log = logging.getLogger("pipeline.evaluate")


@dataclass
class TestSet:
    image_id: list[str]
    patient_id: list[str]
    study_id: list[str]
    images: ShardRows  # (N, S, S) uint8 normalized, read on demand (index with arrays or slices: batches)
    labels: np.ndarray  # (N, 14) the source's labels
    reports: list[str]
    roi_owner: np.ndarray  # (R,) the image of each ROI of all test images
    roi_of: list[np.ndarray]  # per image: its ROI indices
    roi_box: np.ndarray  # (R, 4) normalized pixels
    roi_crop: ShardRows  # (R, r, r) uint8, the crop stage's ROI images (the crop baselines), read on demand
    roi_name: list[str] = field(default_factory=list)  # (R,) "image", "right lung", "left lower zone", "lesion"
    roi_where: list[tuple] = field(default_factory=list)  # (R,) (kind, side, zone)
    findings: list[set] = field(default_factory=list)  # per image: (observation, side, zone, box or None) present
    hedged: list[set] = field(default_factory=list)  # per image: (observation, side) stated as possible
    pairs: list[dict] = field(default_factory=list)  # image, roi, text, observation, laterality, zone, gt_box, stated
    clear: list[dict] = field(default_factory=list)  # image, roi, observation, laterality, zone: nothing stated there


def load_test_set(normalize_shards, crop_shards, report_shards, truth_dir=None, split: str = "test",
                  keep_ids: list[str] | None = None, oracle: bool = False) -> TestSet:
    """The test images with their ROIs, ROI <-> phrase pairs and clear regions; `keep_ids` restricts the images to
    a pinned list (in the data's order). Images and ROI crops are read from the shards on demand.
    oracle: the ROIs from the synthetic ground truth instead of the crop stage's (`oracle_rois`; needs truth_dir),
    paired with the phrases by the same rule; the ROI crops are then the crop stage's rows of the predicted ROIs
    and not read (the oracle is scored with pooled ROIs only)."""
    if oracle and not truth_dir:
        raise ValueError("oracle ROIs need the synthetic ground truth (truth_dir)")
    box, region = read_truth(truth_dir) if truth_dir else ({}, {})
    drawn = regional.truth_findings(truth_dir) if truth_dir else None
    joined = list(join_shards({"normalized": normalize_shards, "crops": crop_shards, "reports": report_shards},
                              {split}, keep_ids))
    shard, row = [x.shard for x in joined], [x.row for x in joined]
    every = np.arange(len(joined))
    labels = ShardRows(list(report_shards), "labels_source", shard, [x.report_row for x in joined])[every]
    transforms = ShardRows(list(normalize_shards), "transform", shard, row)[every]
    if oracle:
        size = ShardRows(list(normalize_shards), "image", shard, row).shape[-1]
        with Shard(crop_shards[0]) as c:
            crop_cfg = c.config  # the rule that made the predicted ROIs: the oracle's are padded alike
    out = {k: [] for k in ("roi_owner", "roi_of", "roi_box", "roi_shard", "roi_row", "roi_name", "roi_where", "pairs",
                           "clear", "findings", "hedged")}
    n_rois = 0
    for index, x in enumerate(joined):
        rois, ph = x.rois, x.phrases
        if oracle:
            rois = oracle_rois(truth_mask(truth_dir, x.image_id, size), drawn.get(x.image_id, set()),
                               transforms[index], rois, size, crop_cfg)
        n = len(rois["roi_kind"])
        out["roi_owner"].append(np.full(n, index))
        out["roi_box"].append(np.asarray(rois["roi_box"], np.float64).reshape(-1, 4))
        out["roi_of"].append(np.arange(n_rois, n_rois + n))
        out["roi_shard"] += [x.shard] * n
        out["roi_row"] += range(x.roi_start, x.roi_start + n)
        out["roi_where"] += list(zip(rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]))
        out["roi_name"] += [roi_name(*where) for where in out["roi_where"][-n:]]
        found, hedged = present_findings(ph)
        if drawn is not None:  # the drawn findings, their boxes in normalized pixels like the ROIs'
            found = {(o, side, zone, tuple(to_normalized(np.array([box], float), transforms[index])[0].tolist()))
                     for o, side, zone, box in drawn.get(x.image_id, set())}
        out["findings"].append(found)
        out["hedged"].append(set() if drawn is not None else hedged)
        stated = stated_findings(ph)
        for pair in pair_rois(rois, ph, uncertain="drop"):
            p = pair.phrase
            key = (x.study_id, " ".join(ph["phrase_sentence"][p].split()), ph["phrase_observation"][p])
            gt = box.get((x.image_id, region.get(key, -1)))
            side = ph["phrase_laterality"][p]
            out["pairs"].append({
                "image": index, "roi": n_rois + pair.roi, "text": pair_caption(ph["phrase"][p], side, False, "drop"),
                "observation": ph["phrase_observation"][p], "laterality": side,
                "zone": ph["phrase_zone"][p], "stated": stated,
                "gt_box": None if gt is None else to_normalized(np.array([gt], float), transforms[index])[0].tolist()})
        out["clear"] += [{"image": index, "roi": n_rois + roi, "observation": o, "laterality": side, "zone": zone}
                         for roi, o, side, zone in clear_regions(rois, ph)]
        n_rois += n
    return TestSet([x.image_id for x in joined], [x.patient_id for x in joined], [x.study_id for x in joined],
                   ShardRows(list(normalize_shards), "image", shard, row, convert=as_uint8),
                   np.asarray(labels, np.float32).reshape(-1, 14), [x.report for x in joined],
                   np.concatenate(out["roi_owner"]) if out["roi_owner"] else np.zeros(0, np.int64),
                   out["roi_of"], np.concatenate(out["roi_box"]) if out["roi_box"] else np.zeros((0, 4)),
                   ShardRows(list(crop_shards), "rois/roi_image", out["roi_shard"], out["roi_row"]),
                   out["roi_name"], out["roi_where"], out["findings"], out["hedged"], out["pairs"], out["clear"])


def truth_mask(truth_dir: str | Path, image_id: str, size: int) -> np.ndarray | None:
    """The synthetic truth's bit mask (bit 1 right lung, 2 left lung, 4 lesion) in the normalized grid (letterboxed
    like its image), or None where the image has none."""
    from PIL import Image

    path = Path(truth_dir, "masks", f"{image_id}.png")
    return letterbox_mask(np.asarray(Image.open(path)), size) if path.exists() else None


def oracle_rois(bits: np.ndarray | None, drawn: set, transform: np.ndarray, predicted: dict, size: int,
                crop_cfg: dict) -> dict:
    """Ground-truth ROIs of one image in the crop shard's layout (roi_kind, roi_laterality, roi_zone, roi_area,
    roi_box in normalized pixels): the predicted whole-image ROI as it is; each true lung's box and its zones by the
    crop stage's rule (crop.zone_boxes on the true lung mask); a lesion ROI per drawn regional finding, its box the
    truth's (original pixels, mapped like the ground-truth boxes; a bilateral finding's box cut at the midline
    between the true lungs for each side), its zone the truth's or, without one, the crop stage's rule (the zone holding its centre row). Boxes
    padded like the crop stage's (crop.pad_box with the crop shard's pad and min_size). drawn: regional.truth_findings
    of the image. No mask: the image ROI alone."""
    out = {k: [] for k in ("roi_kind", "roi_laterality", "roi_zone", "roi_area", "roi_box")}

    def add(box, kind, side, zone, area, pad=True):
        out["roi_box"].append(pad_box(box, size, crop_cfg["pad"], crop_cfg["min_size"]) if pad else tuple(box))
        out["roi_kind"].append(kind)
        out["roi_laterality"].append(side)
        out["roi_zone"].append(zone)
        out["roi_area"].append(int(area))

    for k, kind in enumerate(predicted["roi_kind"]):
        if kind == "image":
            add(predicted["roi_box"][k], "image", "", "", 0, pad=False)
    if bits is None:
        return out
    lungs = {side: (bits & bit) > 0 for side, bit in (("right", 1), ("left", 2))}
    for side, lung in lungs.items():
        if lung.any():
            add(mask_box(lung), "lung", side, "", lung.sum())
            for zone, zbox, area in zone_boxes(lung):
                add(zbox, "zone", side, zone, area)
    both = lungs["right"].any() and lungs["left"].any()
    midline = (mask_box(lungs["right"])[2] + mask_box(lungs["left"])[0]) / 2 if both else size / 2
    for o, side, zone, box in sorted(drawn, key=str):
        x0, y0, x1, y1 = to_normalized(np.array([box], float), transform)[0]
        lung = lungs.get(side)
        if lung is None or not lung.any():
            continue
        if side == "right":  # the patient's right on the image's left: a bilateral finding's box cut at the midline
            x1 = min(x1, midline)
        else:
            x0 = max(x0, midline)
        if x1 <= x0 or y1 <= y0:
            continue
        if not zone:
            edges = zone_edges(lung)
            zone = ZONES[int(np.clip(np.searchsorted(edges, (y0 + y1) / 2, side="right") - 1, 0, 2))]
        add((x0, y0, x1, y1), "lesion", side, zone, (x1 - x0) * (y1 - y0))
    return out


def present_findings(phrases: dict) -> tuple[set, set]:
    """From a parsed report: (observation, side, zone, None) of its certain present regional phrases (bilateral on
    both sides), and (observation, side) where it is unknown: hedged, or stated without a side (either lung)."""
    found, hedged = set(), set()
    for o, neg, unc, side, zone in zip(phrases["phrase_observation"], phrases["phrase_negated"],
                                       phrases["phrase_uncertain"], phrases["phrase_laterality"], phrases["phrase_zone"]):
        if neg or o not in REGIONAL:
            continue
        for s in (("right", "left") if side in ("bilateral", "") else (side,) if side in ("right", "left") else ()):
            if unc or not side:
                hedged.add((o, s))
            else:
                found.add((o, s, zone or "", None))
    return found, hedged


def roi_name(kind: str, side: str, zone: str) -> str:
    """An ROI in words: "image", "right lung", "left lower zone", "lesion" (a lesion is told apart by its box)."""
    return {"lung": f"{side} lung", "zone": f"{side} {zone} zone"}.get(kind, kind)


# ------------------------------------------------------------------------------------------ manifests
MANIFEST_SETS = ("test_images", "five_by_200", "retrieval", "region_pairs", "clear_regions", "grounding")


class ManifestMismatch(ValueError):
    """A pinned evaluation set no longer matches the data."""


def manifest_body(ids: list, seed: int | None, description: str) -> str:
    return json.dumps({"description": description, "seed": seed, "ids": ids}, indent=1)


def write_manifest(path: Path, body: str) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(body)
    ids = json.loads(body)
    return {"path": str(path), "n": len(ids["ids"]), "seed": ids["seed"],
            "sha256": hashlib.sha256(body.encode()).hexdigest()}


def pin(results: str | Path, folder: str | Path, seed: int, truth_dir: str | Path | None = None) -> dict:
    """Draw the evaluation sets from a run's normalize, crop and report shards, as `run` does, and write them to
    `folder` (what `evaluate.manifests` pins) without evaluating a model."""
    shards = sorted(Path(results, "crop").glob("shard-*.h5"))
    test = load_test_set([Path(results, "normalize", p.name) for p in shards], shards,
                         [Path(results, "reports", p.name) for p in shards], truth_dir)
    _, _, bodies = evaluation_sets(test, seed)
    return {name: write_manifest(Path(folder, f"{name}.json"), body) for name, body in bodies.items()}


def pinned_ids(folder: str | Path, name: str) -> list | None:
    """The ids of a pinned set, or None when the folder holds none for it."""
    path = Path(folder, f"{name}.json")
    return json.loads(path.read_text())["ids"] if folder and path.exists() else None


def check_pinned(folder: str | Path, name: str, body: str) -> None:
    """Stop when the set drawn from the data differs from the pinned one, saying how. For the sets whose every
    entry is fixed by the data alone (image ids, parsed labels, the seed)."""
    path = Path(folder, f"{name}.json")
    if not folder or not path.exists():
        return
    pinned = path.read_text()
    if pinned == body:
        return
    old, new = json.loads(pinned)["ids"], json.loads(body)["ids"]
    key = lambda x: json.dumps(x)  # noqa: E731
    gone, added = [x for x in old if key(x) not in set(map(key, new))], [x for x in new if key(x) not in set(map(key, old))]
    raise ManifestMismatch(
        f"evaluate.manifests: the pinned set {path} no longer matches the data (sha256 "
        f"{hashlib.sha256(pinned.encode()).hexdigest()[:12]} pinned, {hashlib.sha256(body.encode()).hexdigest()[:12]} "
        f"now; {len(gone)} pinned entries missing, e.g. {gone[:1]}; {len(added)} new, e.g. {added[:1]}). The test "
        f"split or the report parsing changed: compare like with like, or pin the new sets on purpose "
        f"(copy results/evaluate/manifests/*.json there) or set evaluate.manifests to \"\" to draw them afresh.")


# A pinned ROI is found again by name (lungs, zones, the whole image: every image has them, from the U-Net or the
# prior); a lesion ROI, whose existence and box depend on the trained U-Net, by its box: the same lesion outlined by
# another U-Net overlaps it (IoU >= 0.3) or holds its centre (small lesions' boxes vary most between U-Nets).
LESION_IOU = 0.3


def roi_ref(test: TestSet, roi: int) -> list:
    """[name, box]: the box (normalized pixels, 0.1 px) only for a lesion."""
    name = test.roi_name[roi]
    return [name, [round(float(v), 1) for v in test.roi_box[roi]] if name == "lesion" else None]


def same_lesion(a, b) -> bool:
    return box_iou(a, b) >= LESION_IOU or holds_centre(a, b) or holds_centre(b, a)


def same_roi(pinned: list, now: list) -> bool:
    return pinned[0] == now[0] and (pinned[1] is None or (now[1] is not None and same_lesion(pinned[1], now[1])))


def pair_entries(test: TestSet) -> list[list]:
    """region_pairs: [image_id, ROI name, lesion box or None, caption], one per test pair."""
    return [[test.image_id[p["image"]], *roi_ref(test, p["roi"]), p["text"]] for p in test.pairs]


def clear_entries(test: TestSet) -> list[list]:
    """clear_regions: [image_id, ROI name, observation] (lung and zone ROIs only: no box needed)."""
    return [[test.image_id[c["image"]], test.roi_name[c["roi"]], c["observation"]] for c in test.clear]


def match_pinned(pinned: list, current: list, stable, roi) -> list[int]:
    """For each pinned entry in turn, the first unused current entry with the same fixed part (`stable`) whose ROI
    is the pinned one (`roi`, same_roi): the current indices found, in pinned order."""
    by_key: dict[str, list[int]] = {}
    for i, c in enumerate(current):
        by_key.setdefault(json.dumps(stable(c)), []).append(i)
    used, found = set(), []
    for p in pinned:
        i = next((i for i in by_key.get(json.dumps(stable(p)), []) if i not in used and same_roi(roi(p), roi(current[i]))),
                 None)
        if i is not None:
            used.add(i)
            found.append(i)
    return found


def follow_pinned(folder: str | Path, test: TestSet) -> dict[str, dict]:
    """Restrict the test pairs and clear regions to the pinned ones that the data give again, in place. What the
    data alone fix must match (the images, every pinned caption and negated observation, every pinned ground-truth
    box: else ManifestMismatch); what the trained U-Net moves (which lesions it finds, their boxes, so which ROI a
    phrase is paired with) may not: the pinned entries found are counted and the run goes on.
    Returns {set: {"pinned": n, "found": k}}."""
    out = {}
    pairs, clear, grounding = (pinned_ids(folder, n) for n in ("region_pairs", "clear_regions", "grounding"))
    images = set(test.image_id)
    for name, entries in (("region_pairs", pairs), ("clear_regions", clear), ("grounding", grounding)):
        if entries is None:
            continue
        if name == "region_pairs" and any(len(e) != 4 or isinstance(e[1], int) for e in entries):
            raise ManifestMismatch(f"evaluate.manifests: {folder}/region_pairs.json names ROIs by their row in a crop "
                                   f"shard (an older format): pin the sets again (python -m pipeline pin {folder})")
        gone = sorted({e[0] for e in entries} - images)
        if gone:
            raise ManifestMismatch(f"evaluate.manifests: {len(gone)} image(s) of the pinned {folder}/{name}.json are "
                                   f"not test images of the data, e.g. {gone[:3]}")
    # the parts the data alone fix: every pinned caption and negated observation is still the data's, every pinned
    # ground-truth box still the truth of its caption (whichever ROI the phrase is paired with in this run)
    stated = {json.dumps([test.image_id[p["image"]], p["text"]]) for p in test.pairs}
    negated = {json.dumps([test.image_id[c["image"]], c["observation"]]) for c in test.clear}
    truth: dict[str, list] = {}
    for p in test.pairs:
        truth.setdefault(json.dumps([test.image_id[p["image"]], p["text"]]), []).append(p["gt_box"])
    # (an image whose lungs this run found nowhere, with crop.fallback none, has no pairs: not found, no stop)
    lungs = {test.image_id[test.roi_owner[r]] for r, (kind, _, _) in enumerate(test.roi_where) if kind == "lung"}
    changed = {"region_pairs": [e for e in pairs or [] if e[0] in lungs and json.dumps([e[0], e[3]]) not in stated],
               "clear_regions": [e for e in clear or [] if e[0] in lungs and json.dumps([e[0], e[2]]) not in negated],
               "grounding": [e for e in grounding or [] if e[0] in lungs and not any(
                   b is not None and np.allclose(e[2], b, atol=0.01) for b in truth.get(json.dumps(e[:2]), []))]}
    for name, entries in changed.items():
        if entries:
            what = "ground-truth box" if name == "grounding" else "report phrase"
            raise ManifestMismatch(f"evaluate.manifests: {len(entries)} pinned entries of {folder}/{name}.json have a "
                                   f"{what} the data no longer give, e.g. {entries[0]}: the data or the report parsing "
                                   f"changed, not the model (pin the sets again on purpose, or set evaluate.manifests "
                                   f"to \"\")")
    if pairs is not None:
        now = pair_entries(test)
        keep = match_pinned(pairs, now, lambda e: [e[0], e[3]], lambda e: e[1:3])
        test.pairs = [test.pairs[i] for i in keep]
        out["region_pairs"] = {"pinned": len(pairs), "found": len(keep)}
        if grounding is not None:
            out["grounding"] = {"pinned": len(grounding), "found": sum(p["gt_box"] is not None for p in test.pairs)}
    if clear is not None:
        now = clear_entries(test)
        keep = match_pinned(clear, now, lambda e: [e[0], e[2]], lambda e: [e[1], None])
        test.clear = [test.clear[i] for i in keep]
        out["clear_regions"] = {"pinned": len(clear), "found": len(keep)}
    for name, n in out.items():
        (log.warning if n["found"] < n["pinned"] else log.info)(
            "evaluate.manifests: %d of %d pinned %s found in this run's ROIs", n["found"], n["pinned"], name)
    return out


def training_patients(normalize_shards, splits: tuple[str, ...] = ("train", "validate")) -> set[str]:
    patients = set()
    for path in normalize_shards:
        with Shard(path) as n:
            patients |= {p for p, s in zip(decode(n.f["patient_id"][()]), decode(n.f["split"][()])) if s in splits}
    return patients


def model_figures(emb: Embedder, test: TestSet, five: tuple[np.ndarray, np.ndarray], retrieval: np.ndarray,
                  roi_mode: str = "pooled") -> tuple[dict, dict]:
    """All figures of one model as {metric: (unit patients, stat over unit indices)}, and curves for the plots.
    roi_mode: "pooled" (patch tokens under the box, as trained) or "crop" (each ROI's crop as an image)."""
    img, roi = emb.images_and_rois(test.images, test.roi_owner, test.roi_box)
    if roi_mode == "crop":
        roi = emb.crops(test.roi_crop)
    patients = np.array(test.patient_id)
    out, roc = zeroshot_figures(emb, img, test.labels, patients, five)
    out.update(retrieval_figures(emb, img, test.reports, retrieval, patients))
    pair_units = [test.patient_id[p["image"]] for p in test.pairs]
    out.update(region_phrase_figures(emb, roi, test.pairs, pair_units))
    out.update(roi_grounding_figures(emb, test, roi))
    out.update(robustness_figures(emb, roi, test.pairs, test.clear, [test.patient_id[o] for o in test.roi_owner]))
    if roi_mode == "pooled":
        out.update(regional_figures(emb, test, roi))
    if test.pairs and roi_mode == "pooled":
        out.update(dense_grounding_figures(emb, test))
        out.update(groundable_figures(emb, test, roi))
    return out, {"roc": roc}


def oracle_figures(emb: Embedder, test: TestSet) -> dict:
    """The regional figures of a test set with ground-truth ROIs (load_test_set(oracle=True)): presence/*,
    region/same_position_top1 and region/top1."""
    _, roi = emb.images_and_rois(test.images, test.roi_owner, test.roi_box)
    out = regional_figures(emb, test, roi)
    top1 = region_phrase_figures(emb, roi, test.pairs, [test.patient_id[p["image"]] for p in test.pairs])
    if "region/top1" in top1:
        out["region/top1"] = top1["region/top1"]
    return out


def regional_figures(emb: Embedder, test: TestSet, roi: np.ndarray) -> dict:
    """presence/* at fixed positions and region/same_position_top1 (evaluation/regional.py) of pooled ROIs."""
    items = regional.presence_items(test.roi_where, test.roi_owner, test.findings, test.hedged, test.roi_box)
    out = regional.presence_figures(roi, emb.texts, emb.scale, items,
                                    [test.patient_id[test.roi_owner[r]] for r in items["roi"]])
    out.update(regional.same_position_figures(roi, emb.texts, test.pairs,
                                              [test.patient_id[p["image"]] for p in test.pairs]))
    return out


# ------------------------------------------------------------------------------------------ stage
def evaluation_sets(test: TestSet, seed: int, split: str = "test"
                    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, dict[str, str]]:
    """The 5x200 subset, the retrieval studies, and the body of every manifest (described as sets of `split`)."""
    five = five_by_200(test.labels, seed)
    first_of_study = {}
    for i, study in enumerate(test.study_id):
        first_of_study.setdefault(study, i)
    retrieval = np.array(sorted(first_of_study.values()), dtype=np.int64)
    bodies = {
        "test_images": manifest_body(test.image_id, None, f"{split} split images with a report"),
        "five_by_200": manifest_body([[test.image_id[i], FIVE[c]] for i, c in zip(*five)], seed,
                                     "images positive for exactly one of the five classes, <= 200 each"),
        "retrieval": manifest_body([test.image_id[i] for i in retrieval], None,
                                   f"one image per {split} study (the first by image_id)"),
        "region_pairs": manifest_body(pair_entries(test), None, f"{split} ROI <-> phrase pairs (image_id, ROI name, "
                                      "lesion box in normalized pixels or null, caption)"),
        "clear_regions": manifest_body(clear_entries(test), None, "converse test: lung and zone ROIs with nothing "
                                       "stated, each observation the report negates (image_id, ROI name, observation)"),
        "grounding": manifest_body([[test.image_id[p["image"]], p["text"], p["gt_box"]] for p in test.pairs
                                    if p["gt_box"] is not None], None, "pairs with a ground-truth box (normalized pixels)"),
    }
    return five, retrieval, bodies


def run_benchmarks(checkpoints: dict[str, str], model_names: dict[str, str], out_dir: Path, cfg: dict,
                   prepare_cfg: dict, device: torch.device) -> dict:
    """Every benchmark of evaluate.benchmarks with a root, for every run: {benchmark: {run: figures}}; the cases
    pinned in <out_dir>/benchmarks/<name>/manifest.json, grounding pictures of a fixed sample beside it."""
    from .. import benchmarks
    from ..predict import segmenter_path

    chosen = {n: b for n, b in cfg.get("benchmarks", {}).items() if b.get("root")}
    if not chosen:
        return {}
    seg = segmenter_path(prepare_cfg)
    seg = seg if seg.is_file() else None
    out = {}
    for name, b in chosen.items():
        pinned = benchmarks.manifest(name, b["root"], out_dir / "benchmarks" / name / "manifest.json", b["seed"],
                                     b["split"], b["images"] or None)
        prompts = (benchmarks.gloria_prompts(json.loads(Path(b["prompts"]).read_text()), b["prompts_per_class"], b["seed"])
                   if b["prompts"] else None)
        out[name] = {}
        for run_name, weights in checkpoints.items():
            emb = Embedder(weights, model_names[run_name], device)
            out[name][run_name], pictures = benchmarks.evaluate(emb, pinned, prepare_cfg, seg, cfg["bootstrap"],
                                                                cfg["seed"], prompts, cfg["benchmark_pictures"])
            benchmarks.draw(pictures, name, run_name, out_dir / "benchmarks" / name)
            log.info("benchmark %s, %s: %s", name, run_name, ", ".join(
                f"{k} {v['value']:.3f}" for k, v in out[name][run_name].items() if k != "_cases" and k.count("/") <= 1))
    return out


def run(inputs: dict, checkpoints: dict[str, str], model_names: dict[str, str], out_dir: str | Path, cfg: dict,
        truth_dir: str | Path | None = None, threads: int = 1, prepare_cfg: dict | None = None) -> dict:
    """Evaluate every checkpoint (run name -> weights) and write metrics.json, report.md, plots and manifests.
    cfg: the evaluate section (split, control, seeds, manifests, crop_baselines, bootstrap, seed, benchmarks);
    prepare_cfg: the normalize, segment and crop sections, for the benchmarks' images."""
    torch.set_num_threads(usable_threads(threads))
    out_dir, folder, seed, split = Path(out_dir), cfg["manifests"], cfg["seed"], cfg.get("split", "test")
    if split != "test" and folder:
        log.info("evaluate.split: %s draws its evaluation sets from the data; the pinned manifests in %s are test "
                 "sets and are not used", split, folder)
        folder = ""
    keep = pinned_ids(folder, "test_images")
    test = load_test_set(inputs["normalized"], inputs["crops"], inputs["reports"], truth_dir, split=split,
                         keep_ids=keep)
    if keep is not None and len(test.image_id) != len(keep):
        missing = sorted(set(keep) - set(test.image_id))
        raise ManifestMismatch(f"evaluate.manifests: {len(missing)} image(s) of the pinned {folder}/test_images.json "
                               f"are not test images with a report in the ingested data, e.g. {missing[:3]}")
    if not test.image_id:
        raise ValueError(f"evaluate.split: {split}: no {split} images with a report in the ingested data "
                         f"(data.split, or the source's own split table)")
    trained_on = {"test": ("train", "validate"), "validate": ("train",)}[split]
    leaked = sorted(set(test.patient_id) & training_patients(inputs["normalized"], trained_on))
    if leaked:
        raise ValueError(f"{len(leaked)} {split} patient(s) are also {' / '.join(trained_on)} patients, e.g. "
                         f"{leaked[0]}")
    five, retrieval, bodies = evaluation_sets(test, seed, split)
    for name in ("test_images", "five_by_200", "retrieval"):  # fixed by the data alone: must match exactly
        check_pinned(folder, name, bodies[name])
    found = follow_pinned(folder, test) if folder else {}
    if found:  # the sets written are the ones evaluated: the pinned entries found again
        bodies.update({k: v for k, v in evaluation_sets(test, seed, split)[2].items() if k in found})
    manifests = {name: write_manifest(out_dir / "manifests" / f"{name}.json", body) for name, body in bodies.items()}
    for name, n in found.items():
        manifests[name].update(n)

    oracle = None  # the synthetic truth's ROIs beside the predicted ones, for student and the control
    if truth_dir and Path(truth_dir, "masks").is_dir():
        oracle = load_test_set(inputs["normalized"], inputs["crops"], inputs["reports"], truth_dir, split=split,
                               keep_ids=keep, oracle=True)
    boot = stats.PatientBootstrap(test.patient_id, cfg["bootstrap"], seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, replicates, curves = {}, {}, {}

    def score(key: str, emb: Embedder, test_set: TestSet, mode: str = "pooled", figures_of=None) -> None:
        if figures_of is None:
            figures, curves[key] = model_figures(emb, test_set, five, retrieval, mode)
        else:
            figures, curves[key] = figures_of(emb, test_set), {"roc": {}}
        results[key], replicates[key] = {}, {}
        for metric, (units, stat) in figures.items():
            replicates[key][metric] = boot.replicate(stat, units)
            results[key][metric] = stats.figure(stat(np.arange(len(units))), replicates[key][metric], len(units))
        log.info("%s: %s", key, ", ".join(f"{k} {results[key][k]['value']:.3f}" for k in HEADLINE if k in results[key]))

    for name, weights in checkpoints.items():
        emb = Embedder(weights, model_names[name], device)
        score(name, emb, test)
        if oracle is not None and name.partition("@")[0] in ("student", cfg["control"]):
            score(f"{name}/{ORACLE}", emb, oracle, figures_of=oracle_figures)
        if name == "baseline" or name in cfg["crop_baselines"]:
            score(f"{name}/crop", emb, test, "crop")
        if name in cfg["input_controls"]:  # the same ROI boxes over the mean image / another patient's image
            for control in CONTROLS:
                if control == "other_patient" and len(set(test.patient_id)) < 2:
                    log.warning("input control other_patient skipped: the %s split has one patient", split)
                    continue
                score(f"{name}/{control}", emb, replace(test, images=ControlImages(test.images, control,
                                                                                   test.patient_id, seed)))
    band, architecture = [], model_names.get("student", next(iter(model_names.values()), None))
    for k in range(cfg["null_models"] if architecture else 0):  # untrained inits: what chance scores
        figures, _ = model_figures(Embedder(None, architecture, device, init_seed=k), test, five, retrieval)
        band.append({m: float(stat(np.arange(len(units)))) for m, (units, stat) in figures.items()})
    if band:
        log.info("null band (%d untrained %s): %s", len(band), architecture, ", ".join(
            f"{k} {v['low']:.3f}-{v['high']:.3f}" for k, v in null_band(band).items() if k in HEADLINE))
    seeds, paired = compare(results, replicates, cfg)
    metrics = {"runs": results, "seeds": seeds, "paired": paired, "manifests": manifests,
               "null_band": {"architecture": architecture, "models": len(band), "figures": null_band(band)},
               "test": {"split": split, "images": len(test.image_id), "patients": len(boot.patients),
                        "studies": len(retrieval),
                        "pairs": len(test.pairs), "clear_regions": len(test.clear),
                        "grounding_boxes": manifests["grounding"]["n"], "five_by_200": len(five[0]),
                        "bootstrap": cfg["bootstrap"], "seed": seed, "control": cfg["control"],
                        "intervals": {"run": "patient-level bootstrap, 95% percentile",
                                      "seeds and student - control": stats.TWO_LEVEL},
                        "external": sorted(cfg.get("baselines", {}))}}
    if oracle is not None:
        metrics["test"]["oracle_rois"] = {"images": len(oracle.image_id), "rois": len(oracle.roi_where),
                                          "pairs": len(oracle.pairs)}
    if prepare_cfg is not None and split != "test":
        log.info("evaluate.split: %s: the public benchmarks (scored on their own test parts) are skipped", split)
    elif prepare_cfg is not None:
        metrics["benchmarks"] = run_benchmarks(checkpoints, model_names, out_dir, cfg, prepare_cfg, device)
    if truth_dir:  # synthetic source: how often pairing picked the region a phrase describes (all splits)
        metrics["pairing_on_truth"] = accuracy_on_truth(inputs["crops"], inputs["reports"], truth_dir)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    from ..benchmarks import markdown  # the benchmarks' tables (pipeline.benchmarks imports pipeline.evaluation)

    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics) + benchmarks_markdown(metrics, markdown))
    shown = [k for k in ("student", cfg["control"], "baseline") if k in results] or list(results)
    plot({k: curves[k] for k in shown}, {k: results[k] for k in shown}, out_dir, split)  # a curve / bar per model
    return metrics


def compare(results: dict, replicates: dict, cfg: dict) -> tuple[dict, dict]:
    """Mean over seeds of student and the control (and of their oracle-ROI figures), with the SD over seeds and the
    two-level interval (stats.two_level: seeds x patients); student - control as the mean over seeds of the
    per-seed difference (seeds paired by index) with its two-level interval; student - each other run (first seed)
    on the shared patient resamples (stats.paired)."""
    control = cfg["control"]
    seeds, paired = {}, {}

    def two_level(a: list[str], b: list[str], m: str) -> dict:
        return stats.two_level([results[r][m]["value"] for r in a], [replicates[r][m] for r in a],
                               [results[r][m]["value"] for r in b] if b else None,
                               [replicates[r][m] for r in b] if b else None, results[a[0]][m]["n"], cfg["seed"])

    def diff(a: list[str], b: list[str]) -> dict:
        shared = sorted(set.intersection(*(set(results[r]) for r in a + b)))
        return {m: stats.paired([results[r][m]["value"] for r in a], [replicates[r][m] for r in a],
                                [results[r][m]["value"] for r in b], [replicates[r][m] for r in b],
                                results[a[0]][m]["n"]) for m in shared}

    for suffix in ("", f"/{ORACLE}"):
        family = {name: {r: f"{r}{suffix}" for r in seed_replicas({"evaluate": cfg}, name) if f"{r}{suffix}" in results}
                  for name in ("student", control)}
        for name, runs in family.items():
            runs = list(runs.values())
            if not runs and suffix:
                continue
            metrics = set.intersection(*(set(results[r]) for r in runs)) if runs else set()
            seeds[f"{name}{suffix}"] = {m: {
                "mean": float(np.mean([results[r][m]["value"] for r in runs])),
                "sd": float(np.std([results[r][m]["value"] for r in runs], ddof=1)) if len(runs) > 1 else 0.0,
                "values": [results[r][m]["value"] for r in runs], "runs": runs,
                **{k: v for k, v in two_level(runs, [], m).items() if k in ("ci_low", "ci_high", "interval")}}
                for m in sorted(metrics)}
        both = [r for r in family["student"] if r.replace("student", control, 1) in family[control]]
        if both:
            a = [family["student"][r] for r in both]
            b = [family[control][r.replace("student", control, 1)] for r in both]
            shared = sorted(set.intersection(*(set(results[r]) for r in a + b)))
            paired[f"student{suffix} - {control}{suffix}"] = {m: two_level(a, b, m) for m in shared}

    if "student" in results:
        for name in results:
            if name != "student" and "@" not in name and name != control and not name.endswith(f"/{ORACLE}"):
                paired[f"student - {name}"] = diff(["student"], [name])
    return seeds, paired
