"""evaluate: the student against a global-only control, ablations and the baseline teacher, on the patient-level
test split.

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
(student - control pooled over seeds; student - each ablation) on the same patient resamples.

Every evaluation set is a manifest (ids, seed, SHA-256) under results/evaluate/manifests/. With evaluate.manifests
naming a folder of pinned manifests, the sets fixed by the data alone (test images, the 5x200 subset, retrieval
studies, ground-truth boxes) must match exactly, else the run stops; the sets whose ROIs come from the trained U-Net
(region pairs, clear regions) keep the pinned entries found again (lungs and zones by name, lesions by their boxes)
and report how many were found: a U-Net retrained on another CPU finds slightly different lesions.
Evaluation also stops when a test patient is a training patient. Each run's `model.pt` was chosen by the trainer on
the validate split: nothing is chosen on the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import models, stats
from ..config import seed_replicas
from ..data import ShardRows, join_shards
from ..evaluation import regional
from ..evaluation.controls import CONTROLS, ControlImages, null_band
from ..geometry import box_iou, holds_centre
from ..io import atomic_path, usable_threads
from ..labels import OBSERVATIONS
from ..pairing import accuracy_on_truth, clear_regions, pair_caption, pair_rois, read_truth, stated_findings
from ..shards import Shard, decode
from ..vocab import OTHER_SIDE, REGIONAL, normalize_text, statement
from .normalize import as_uint8, to_normalized

log = logging.getLogger("pipeline.evaluate")
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
POSITIVE = ["{}", "{} is present", "findings consistent with {}"]
NEGATIVE = ["no {}", "no evidence of {}", "{} is absent"]
PREFERENCES = ("side", "negated", "uncertain", "other_finding", "converse")


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
                  keep_ids: list[str] | None = None) -> TestSet:
    """The test images with their ROIs, ROI <-> phrase pairs and clear regions; `keep_ids` restricts the images to
    a pinned list (in the data's order). Images and ROI crops are read from the shards on demand."""
    box, region = read_truth(truth_dir) if truth_dir else ({}, {})
    drawn = regional.truth_findings(truth_dir) if truth_dir else None
    joined = list(join_shards({"normalized": normalize_shards, "crops": crop_shards, "reports": report_shards},
                              {split}, keep_ids))
    shard, row = [x.shard for x in joined], [x.row for x in joined]
    every = np.arange(len(joined))
    labels = ShardRows(list(report_shards), "labels_source", shard, [x.report_row for x in joined])[every]
    transforms = ShardRows(list(normalize_shards), "transform", shard, row)[every]
    out = {k: [] for k in ("roi_owner", "roi_of", "roi_box", "roi_shard", "roi_row", "roi_name", "roi_where", "pairs",
                           "clear", "findings", "hedged")}
    n_rois = 0
    for index, x in enumerate(joined):
        rois, ph = x.rois, x.phrases
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


def training_patients(normalize_shards) -> set[str]:
    patients = set()
    for path in normalize_shards:
        with Shard(path) as n:
            patients |= {p for p, s in zip(decode(n.f["patient_id"][()]), decode(n.f["split"][()]))
                         if s in ("train", "validate")}
    return patients


def five_by_200(labels: np.ndarray, seed: int, per_class: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Test images positive for exactly one of the five classes, up to `per_class` each, drawn with `seed`."""
    cols = [OBSERVATIONS.index(o) for o in FIVE]
    pos = labels[:, cols] == 1
    rng = np.random.default_rng(seed)
    idx, cls = [], []
    for c in range(len(FIVE)):
        members = np.flatnonzero(pos[:, c] & (pos.sum(1) == 1))
        chosen = np.sort(rng.permutation(members)[:per_class])
        idx += chosen.tolist()
        cls += [c] * len(chosen)
    return np.array(idx, dtype=np.int64), np.array(cls, dtype=np.int64)


# ------------------------------------------------------------------------------------------ one model
class Embedder:
    def __init__(self, weights: str | Path | None, name: str, device: torch.device, init_seed: int = 0):
        """weights None: an untrained model, initialised with `init_seed` (the null band)."""
        self.name, self.device = name, device
        if weights is None:
            torch.manual_seed(init_seed)
        self.model = models.create(name, pretrained=None if weights is None else str(weights)).to(device).eval()
        self.scale = float(self.model.logit_scale.detach().exp().clamp(max=100))
        self._cache: dict[str, np.ndarray] = {}

    def images(self, images: np.ndarray) -> np.ndarray:
        return models.embed_images(self.model, images)

    def images_and_rois(self, images: np.ndarray, owner: np.ndarray, boxes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        return models.embed_images_and_rois(self.model, images, owner, boxes)

    def crops(self, crops: np.ndarray) -> np.ndarray:
        """Each ROI as an image of its own (the crop baselines): the crop stage's ROI image at the model's size."""
        return models.embed_images(self.model, crops)

    def texts(self, texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            self._cache.update(zip(new, models.embed_texts(self.model, self.name, new)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)

    def ensemble(self, templates: list[str], name: str) -> np.ndarray:
        e = self.texts([t.format(name) for t in templates]).mean(0)
        return e / np.linalg.norm(e)


def roi_weights(scores: np.ndarray, scale: float) -> np.ndarray:
    """Softmax of one phrase's similarities over an image's ROIs."""
    w = np.exp(scale * (scores - scores.max()))
    return w / w.sum()


def heat_map(scores: np.ndarray, boxes: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Each ROI box painted with its softmax weight among the image's ROIs; a pixel keeps its highest weight."""
    w = roi_weights(scores, scale)
    heat = np.zeros((size, size), np.float32)
    for weight, (x0, y0, x1, y1) in sorted(zip(w, boxes), key=lambda t: t[0]):
        ys, xs = slice(max(0, int(y0)), max(0, int(np.ceil(y1)))), slice(max(0, int(x0)), max(0, int(np.ceil(x1))))
        heat[ys, xs] = np.maximum(heat[ys, xs], weight)
    return heat / max(float(heat.max()), 1e-12)


def grounding_figures(heat: np.ndarray, gt: list[float]) -> tuple[float, float, float]:
    """(pointing hit, IoU of heat >= 0.5 with the box, CNR) for one heat map and one ground-truth box."""
    size = heat.shape[0]
    inside = np.zeros_like(heat, dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in gt)
    inside[max(0, y0) : min(size, y1), max(0, x0) : min(size, x1)] = True
    if not inside.any():
        return float("nan"), float("nan"), float("nan")
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    # the peak is a plateau over an ROI box: point at its centre
    plateau = np.argwhere(heat >= heat[peak] - 1e-6)
    cy, cx = plateau.mean(0).round().astype(int)
    hit = float(inside[cy, cx])
    mask = heat >= 0.5
    iou = float((mask & inside).sum() / max((mask | inside).sum(), 1))
    a, b = heat[inside], heat[~inside]
    cnr = float(abs(a.mean() - b.mean()) / np.sqrt(a.var() + b.var() + 1e-12)) if len(b) else float("nan")
    return hit, iou, cnr


def top1_unique(roi: np.ndarray, texts: list[str], embed) -> np.ndarray:
    """Per pair, 1.0 when its caption is the best of the test captions for its ROI. Candidates are the captions
    after vocab.normalize_text, each once, so case or punctuation twins (which embed alike) cannot tie."""
    keys = [normalize_text(t) for t in texts]
    first = {}
    for t, k in zip(texts, keys):
        first.setdefault(k, t)
    pool = sorted(first)
    best = (roi @ embed([first[k] for k in pool]).T).argmax(1)
    return (np.array(pool)[best] == np.array(keys)).astype(float)


def alternatives(pairs: list[dict], clear: list[dict]) -> dict[str, list[tuple[int, str, str, str]]]:
    """Robustness tests as (ROI, true statement, alternative, observation) in one grammar (vocab.statement); a kind's test
    is skipped for a pair where it has no alternative (no side to swap for a bilateral phrase)."""
    out = {k: [] for k in PREFERENCES}
    for p in pairs:
        o, side, zone, roi = p["observation"], p["laterality"], p["zone"], p["roi"]
        true = statement(o, side, zone)
        if side in ("left", "right"):
            out["side"].append((roi, true, statement(o, OTHER_SIDE[side], zone), o))
        out["negated"].append((roi, true, statement(o, side, zone, negated=True), o))
        out["uncertain"].append((roi, true, statement(o, side, zone, uncertain=True), o))
        here = {x for x, s in p["stated"] if s in (side, "bilateral", "") or side == "bilateral"}
        names = list(REGIONAL)
        start = names.index(o) if o in names else 0
        other = next((x for x in names[start + 1 :] + names[:start] if x not in here and x != o), None)
        if other:
            out["other_finding"].append((roi, true, statement(other, side, zone), o))
    for c in clear:
        o, side, zone = c["observation"], c["laterality"], c["zone"]
        out["converse"].append((c["roi"], statement(o, side, zone, negated=True), statement(o, side, zone), o))
    return out


def model_figures(emb: Embedder, test: TestSet, five: tuple[np.ndarray, np.ndarray], retrieval: np.ndarray,
                  roi_mode: str = "pooled") -> tuple[dict, dict]:
    """All figures of one model as {metric: (unit patients, stat over unit indices)}, and curves for the plots.
    roi_mode: "pooled" (patch tokens under the box, as trained) or "crop" (each ROI's crop as an image)."""
    out, curves = {}, {"roc": {}}
    img, roi = emb.images_and_rois(test.images, test.roi_owner, test.roi_box)
    if roi_mode == "crop":
        roi = emb.crops(test.roi_crop)
    patients = np.array(test.patient_id)
    image_units = list(patients)
    # zero-shot
    pos = np.stack([emb.ensemble(POSITIVE, o.lower()) for o in OBSERVATIONS])
    neg = np.stack([emb.ensemble(NEGATIVE, o.lower()) for o in OBSERVATIONS])
    logits = emb.scale * np.stack([img @ pos.T, img @ neg.T])  # (2, N, 14)
    prob = np.exp(logits[0]) / np.exp(logits).sum(0)
    aurocs = {}  # observation -> (has a label, positive, p(positive)) over all test images
    for k, o in enumerate(OBSERVATIONS):
        known, y = test.labels[:, k] != -1, (test.labels[:, k] == 1).astype(np.int64)
        if o == "No Finding" or y[known].sum() < 2 or (1 - y[known]).sum() < 2:
            continue
        aurocs[o] = (known, y, prob[:, k])
        out[f"auroc/{o}"] = (image_units, lambda i, m=known, y=y, s=prob[:, k]: stats.auroc(y[i][m[i]], s[i][m[i]]))
        curves["roc"][o] = (y[known].tolist(), prob[known, k].tolist())
    if aurocs:
        out["auroc/mean"] = (image_units, lambda i: float(np.nanmean(
            [stats.auroc(y[i][m[i]], s[i][m[i]]) for m, y, s in aurocs.values()])))
    idx, cls = five
    if len(idx):
        five_logits = img[idx] @ pos[[OBSERVATIONS.index(o) for o in FIVE]].T
        right = (five_logits.argmax(1) == cls).astype(float)
        out["5x200/accuracy"] = (list(patients[idx]), lambda i: right[i].mean())
    # retrieval over studies
    rep = emb.texts([test.reports[i] for i in retrieval])
    sim = img[retrieval] @ rep.T
    for name, s in (("i2r", sim), ("r2i", sim.T)):
        rank = 1 + (s > np.diag(s)[:, None]).sum(1)
        units = list(patients[retrieval])
        for k in (1, 5, 10):
            out[f"{name}/R@{k}"] = (units, lambda i, r=rank, k=k: (r[i] <= k).mean())
        out[f"{name}/median_rank"] = (units, lambda i, r=rank: float(np.median(r[i])))
    # regions
    pairs = test.pairs
    if pairs:
        units = [test.patient_id[p["image"]] for p in pairs]
        texts = [p["text"] for p in pairs]
        r = roi[[p["roi"] for p in pairs]]
        top1 = top1_unique(r, texts, emb.texts)
        out["region/top1"] = (units, lambda i: top1[i].mean())
        t = emb.texts(texts)
        true_sim = (r * t).sum(1)
        rank = 1 + ((t @ roi.T) > true_sim[:, None]).sum(1)
        for k in (1, 5, 10):
            out[f"phrase2roi/R@{k}"] = (units, lambda i, k=k: (rank[i] <= k).mean())
        # grounding
        g = np.full((len(pairs), 3), np.nan)
        for k, p in enumerate(pairs):
            if p["gt_box"] is not None:
                rois = test.roi_of[p["image"]]
                heat = heat_map(roi[rois] @ t[k], test.roi_box[rois], test.images.shape[-1], emb.scale)
                g[k] = grounding_figures(heat, p["gt_box"])
        for c, name in enumerate(("pointing_game", "iou", "cnr")):
            if np.isfinite(g[:, c]).any():
                out[f"grounding/{name}"] = (units, lambda i, col=g[:, c]: float(np.nanmean(col[i]))
                                            if np.isfinite(col[i]).any() else np.nan)
    for kind, tests in alternatives(pairs, test.clear).items():
        if not tests:
            continue
        rois = roi[[x[0] for x in tests]]
        wins = ((rois * emb.texts([x[1] for x in tests])).sum(1) > (rois * emb.texts([x[2] for x in tests])).sum(1))
        wins = wins.astype(float)
        units = [test.patient_id[test.roi_owner[x[0]]] for x in tests]
        out[f"robust/{kind}"] = (units, lambda i, w=wins: w[i].mean())
        obs = np.array([x[3] for x in tests])
        for o in sorted(set(obs)):
            sel = obs == o
            out[f"robust/{kind}/{o}"] = (units, lambda i, w=wins, sel=sel: w[i][sel[i]].mean() if sel[i].any() else np.nan)
    if "robust/side" in out:
        out["region/laterality"] = out["robust/side"]
    if "robust/negated" in out and "robust/converse" in out:  # one figure: each part's mean, then their mean
        (a_units, a), (b_units, b) = out["robust/negated"], out["robust/converse"]
        na = len(a_units)
        out["robust/balanced_negation"] = (list(a_units) + list(b_units), lambda i: float(np.nanmean(
            [a(i[i < na]) if (i < na).any() else np.nan, b(i[i >= na] - na) if (i >= na).any() else np.nan])))
    if roi_mode == "pooled":
        items = regional.presence_items(test.roi_where, test.roi_owner, test.findings, test.hedged, test.roi_box)
        out.update(regional.presence_figures(roi, emb.texts, emb.scale, items,
                                             [test.patient_id[test.roi_owner[r]] for r in items["roi"]]))
        out.update(regional.same_position_figures(roi, emb.texts, pairs, [test.patient_id[p["image"]] for p in pairs]))
    if pairs and roi_mode == "pooled":
        out.update(dense_grounding_figures(emb, test))
        out.update(groundable_figures(emb, test, roi))
    return out, curves


def dense_grounding_figures(emb: Embedder, test: TestSet) -> dict:
    """grounding/dense_*: the patch-level similarity map (grounding.similarity_map) of each pair with a ground-truth
    box, scored like MS-CXR (CNR clamped and signed, mIoU over thresholds 0.1-0.5, pointing game), beside the
    ROI-level map's figures. Skipped for a model without open_clip's projected patch tokens."""
    from .. import grounding

    cases = [k for k, p in enumerate(test.pairs) if p["gt_box"] is not None]
    if not cases or getattr(getattr(emb.model, "visual", None), "proj", None) is None:
        return {}
    images = sorted({test.pairs[k]["image"] for k in cases})
    row = {image: j for j, image in enumerate(images)}
    patches = grounding.patch_features(emb.model, test.images[images])
    size = test.images.shape[-1]
    texts = emb.texts([test.pairs[k]["text"] for k in cases])
    keys = ("cnr", "cnr_signed", "miou", "pointing_game")
    g = np.full((len(test.pairs), len(keys)), np.nan)
    for k, t in zip(cases, texts):
        p = test.pairs[k]
        f = grounding.phrase_figures(grounding.similarity_map(patches[row[p["image"]]], t, (size, size)), [p["gt_box"]])
        g[k] = [f[x] for x in keys]
    units = [test.patient_id[p["image"]] for p in test.pairs]
    return {f"grounding/dense_{name}": (units, lambda i, col=g[:, c]: float(np.nanmean(col[i]))
                                        if np.isfinite(col[i]).any() else np.nan) for c, name in enumerate(keys)}


def groundable_figures(emb: Embedder, test: TestSet, roi: np.ndarray) -> dict:
    """Generalised grounding: does the model point somewhere only when there is something to point at? A statement
    grounds when some region prefers it over its negation (grounding.presence >= 0.5, no threshold fitted).
    present: "there is X in <place>" of each test pair, over all its image's ROIs; negated: "there is no X in the
    <side> lung" for a side the report leaves clear while negating X (pairing.clear_regions), over that side's lung
    and zone ROIs, which should all prefer the negation. `ground` makes the same call before drawing a map."""
    from .. import grounding

    correct, negated, units = [], [], []
    for p in test.pairs:
        pos, neg = emb.texts([statement(p["observation"], p["laterality"], p["zone"]),
                              statement(p["observation"], p["laterality"], p["zone"], negated=True)])
        correct.append(grounding.presence(roi[test.roi_of[p["image"]]], pos, neg, emb.scale).max() >= 0.5)
        negated.append(False)
        units.append(test.patient_id[p["image"]])
    sides: dict[tuple, list[int]] = {}
    for c in test.clear:
        sides.setdefault((c["image"], c["observation"], c["laterality"]), []).append(c["roi"])
    for (image, o, side), rois in sides.items():
        pos, neg = emb.texts([statement(o, side, ""), statement(o, side, "", negated=True)])
        correct.append(grounding.presence(roi[rois], pos, neg, emb.scale).max() < 0.5)
        negated.append(True)
        units.append(test.patient_id[image])
    correct, negated = np.array(correct, float), np.array(negated, bool)
    out = {}

    def accuracy(i, which):
        sel = negated[i] == which
        return float(correct[i][sel].mean()) if sel.any() else np.nan

    if (~negated).any():
        out["groundable/present_accuracy"] = (units, lambda i: accuracy(i, False))
    if negated.any():
        out["groundable/negated_accuracy"] = (units, lambda i: accuracy(i, True))
    if negated.any() and (~negated).any():
        out["groundable/balanced_accuracy"] = (units, lambda i: float(np.nanmean([accuracy(i, False), accuracy(i, True)])))
    return out


# ------------------------------------------------------------------------------------------ stage
REGIONAL_HEADLINE = ["presence/auroc", "region/same_position_top1", "robust/balanced_negation", "robust/negated",
                     "robust/converse", "region/laterality", "region/top1"]
HEADLINE = ["presence/auroc", "region/same_position_top1", "robust/balanced_negation", "auroc/mean", "5x200/accuracy",
            "i2r/R@1", "i2r/R@10", "r2i/R@1", "r2i/R@10", "region/top1", "region/laterality", "phrase2roi/R@1", "robust/negated", "robust/converse", "robust/uncertain",
            "robust/other_finding", "grounding/pointing_game", "grounding/iou", "grounding/cnr",
            "grounding/dense_pointing_game", "grounding/dense_miou", "grounding/dense_cnr",
            "groundable/negated_accuracy", "groundable/present_accuracy"]


def evaluation_sets(test: TestSet, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, dict[str, str]]:
    """The 5x200 subset, the retrieval studies, and the body of every manifest."""
    five = five_by_200(test.labels, seed)
    first_of_study = {}
    for i, study in enumerate(test.study_id):
        first_of_study.setdefault(study, i)
    retrieval = np.array(sorted(first_of_study.values()), dtype=np.int64)
    bodies = {
        "test_images": manifest_body(test.image_id, None, "test split images with a report"),
        "five_by_200": manifest_body([[test.image_id[i], FIVE[c]] for i, c in zip(*five)], seed,
                                     "images positive for exactly one of the five classes, <= 200 each"),
        "retrieval": manifest_body([test.image_id[i] for i in retrieval], None,
                                   "one image per test study (the first by image_id)"),
        "region_pairs": manifest_body(pair_entries(test), None, "test ROI <-> phrase pairs (image_id, ROI name, "
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
    cfg: the evaluate section (control, seeds, manifests, crop_baselines, bootstrap, seed, benchmarks);
    prepare_cfg: the normalize, segment and crop sections, for the benchmarks' images."""
    torch.set_num_threads(usable_threads(threads))
    out_dir, folder, seed = Path(out_dir), cfg["manifests"], cfg["seed"]
    keep = pinned_ids(folder, "test_images")
    test = load_test_set(inputs["normalized"], inputs["crops"], inputs["reports"], truth_dir, keep_ids=keep)
    if keep is not None and len(test.image_id) != len(keep):
        missing = sorted(set(keep) - set(test.image_id))
        raise ManifestMismatch(f"evaluate.manifests: {len(missing)} image(s) of the pinned {folder}/test_images.json "
                               f"are not test images with a report in the ingested data, e.g. {missing[:3]}")
    leaked = sorted(set(test.patient_id) & training_patients(inputs["normalized"]))
    if leaked:
        raise ValueError(f"{len(leaked)} test patient(s) are also training / validation patients, e.g. {leaked[0]}")
    five, retrieval, bodies = evaluation_sets(test, seed)
    for name in ("test_images", "five_by_200", "retrieval"):  # fixed by the data alone: must match exactly
        check_pinned(folder, name, bodies[name])
    found = follow_pinned(folder, test) if folder else {}
    if found:  # the sets written are the ones evaluated: the pinned entries found again
        bodies.update({k: v for k, v in evaluation_sets(test, seed)[2].items() if k in found})
    manifests = {name: write_manifest(out_dir / "manifests" / f"{name}.json", body) for name, body in bodies.items()}
    for name, n in found.items():
        manifests[name].update(n)

    boot = stats.PatientBootstrap(test.patient_id, cfg["bootstrap"], seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, replicates, curves = {}, {}, {}

    def score(key: str, emb: Embedder, test_set: TestSet, mode: str = "pooled") -> None:
        figures, curves[key] = model_figures(emb, test_set, five, retrieval, mode)
        results[key], replicates[key] = {}, {}
        for metric, (units, stat) in figures.items():
            replicates[key][metric] = boot.replicate(stat, units)
            results[key][metric] = stats.figure(stat(np.arange(len(units))), replicates[key][metric], len(units))
        log.info("%s: %s", key, ", ".join(f"{k} {results[key][k]['value']:.3f}" for k in HEADLINE if k in results[key]))

    for name, weights in checkpoints.items():
        emb = Embedder(weights, model_names[name], device)
        score(name, emb, test)
        if name == "baseline" or name in cfg["crop_baselines"]:
            score(f"{name}/crop", emb, test, "crop")
        if name in cfg["input_controls"]:  # the same ROI boxes over the mean image / another patient's image
            for control in CONTROLS:
                if control == "other_patient" and len(set(test.patient_id)) < 2:
                    log.warning("input control other_patient skipped: the test split has one patient")
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
               "test": {"images": len(test.image_id), "patients": len(boot.patients), "studies": len(retrieval),
                        "pairs": len(test.pairs), "clear_regions": len(test.clear),
                        "grounding_boxes": manifests["grounding"]["n"], "five_by_200": len(five[0]),
                        "bootstrap": cfg["bootstrap"], "seed": seed, "control": cfg["control"],
                        "external": sorted(cfg.get("baselines", {}))}}
    if prepare_cfg is not None:
        metrics["benchmarks"] = run_benchmarks(checkpoints, model_names, out_dir, cfg, prepare_cfg, device)
    if truth_dir:  # synthetic source: how often pairing picked the region a phrase describes (all splits)
        metrics["pairing_on_truth"] = accuracy_on_truth(inputs["crops"], inputs["reports"], truth_dir)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics) + benchmarks_markdown(metrics))
    shown = [k for k in ("student", cfg["control"], "baseline") if k in results] or list(results)
    plot({k: curves[k] for k in shown}, {k: results[k] for k in shown}, out_dir)  # one curve / bar per model
    return metrics


def compare(results: dict, replicates: dict, cfg: dict) -> tuple[dict, dict]:
    """Mean and spread over seeds of student and the control, and paired differences on the shared resamples:
    student - control pooled over seeds, and student - each other run (first seed)."""
    control = cfg["control"]
    family = {name: [r for r in seed_replicas({"evaluate": cfg}, name) if r in results] for name in ("student", control)}
    seeds = {}
    for name, runs in family.items():
        metrics = set.intersection(*(set(results[r]) for r in runs)) if runs else set()
        seeds[name] = {m: {"mean": float(np.mean([results[r][m]["value"] for r in runs])),
                           "sd": float(np.std([results[r][m]["value"] for r in runs], ddof=1)) if len(runs) > 1 else 0.0,
                           "values": [results[r][m]["value"] for r in runs], "runs": runs} for m in sorted(metrics)}
    paired = {}

    def diff(a: list[str], b: list[str]) -> dict:
        shared = sorted(set.intersection(*(set(results[r]) for r in a + b)))
        return {m: stats.paired([results[r][m]["value"] for r in a], [replicates[r][m] for r in a],
                                [results[r][m]["value"] for r in b], [replicates[r][m] for r in b],
                                results[a[0]][m]["n"]) for m in shared}

    if family["student"] and family[control]:
        paired[f"student - {control}"] = diff(family["student"], family[control])
    if "student" in results:
        for name in results:
            if name != "student" and "@" not in name and name != control:
                paired[f"student - {name}"] = diff(["student"], [name])
    return seeds, paired


def _cell(f: dict | None) -> str:
    if f is None or not np.isfinite(f["value"]):
        return "-"
    if not np.isfinite(f["ci_low"]):
        return f"{f['value']:.3f}"
    return f"{f['value']:.3f} ({f['ci_low']:.3f} to {f['ci_high']:.3f})"


def _seeds_cell(f: dict | None) -> str:
    return "-" if f is None or not np.isfinite(f["mean"]) else f"{f['mean']:.3f} ± {f['sd']:.3f}"


def report_markdown(metrics: dict) -> str:
    runs, t = metrics["runs"], metrics["test"]
    control = t["control"]
    lines = ["# Region-Aware MedCLIP: evaluation", "",
             f"Test split: {t['images']} images of {t['patients']} patients, {t['studies']} studies (retrieval), "
             f"{t['pairs']} ROI-phrase pairs, {t['clear_regions']} clear-region tests, {t['grounding_boxes']} "
             f"ground-truth boxes, {t['five_by_200']} images in the 5x200-style subset. Intervals: patient-level "
             f"bootstrap 95% ({t['bootstrap']} resamples, seed {t['seed']}), the same resamples for every run. "
             f"`{control}` is the control (the student's init, steps, batches, flips and seed, with the regional "
             "losses off); `baseline` is the teacher; `/crop` rows embed each ROI's crop as an image"
             + (f"; external baselines, zero-shot: {', '.join(t['external'])}" if t.get("external") else "") + ".", ""]
    band = metrics.get("null_band", {})
    controlled = [n for n in runs if n.endswith(tuple(f"/{c}" for c in CONTROLS))]
    keys = [k for k in REGIONAL_HEADLINE if any(k in r for r in runs.values())]
    if keys:
        shown = [n for n in runs if "/" not in n and (any(c.startswith(f"{n}/") for c in controlled) or not controlled)]
        lines += ["## Figures only the image can win", "",
                  "Presence of each regional finding at fixed positions (AUROC over images at one lung or zone "
                  "position), region <-> phrase top-1 among findings at the pair's own position, and negation as one "
                  "balanced figure; laterality and plain top-1 beside them (both can be won from where a box sits). "
                  "`/mean_image` and `/other_patient`: every test image replaced by the mean test image or by another "
                  "patient's image, the ROI boxes kept. A gain counts only where the real images beat these controls "
                  "and lie above the chance row.", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name in shown:
            lines += [f"| {n} | " + " | ".join(_cell(runs[n].get(k)) for k in keys) + " |"
                      for n in [name] + [c for c in controlled if c.startswith(f"{name}/")]]
        if band.get("models"):
            f = band["figures"]
            lines.append(f"| chance: {band['models']} untrained {band['architecture']} | " + " | ".join(
                f"{f[k]['mean']:.3f} ({f[k]['low']:.3f} to {f[k]['high']:.3f})" if k in f else "-" for k in keys) + " |")
        lines.append("")
    seeds, paired = metrics["seeds"], metrics["paired"].get(f"student - {control}", {})
    if paired:
        n_seeds = len(next(iter(seeds["student"].values()))["runs"]) if seeds.get("student") else 0
        lines += [f"## Student vs {control} ({n_seeds} seeds)", "",
                  f"Mean ± SD over seeds; the difference is the mean over seeds with its paired 95% interval pooled "
                  f"over the seeds.", "", f"| metric | student | {control} | student - {control} |", "|---|---|---|---|"]
        keys = [k for k in HEADLINE if k in paired] + sorted(k for k in paired if k not in HEADLINE)
        lines += [f"| {k} | {_seeds_cell(seeds['student'].get(k))} | {_seeds_cell(seeds[control].get(k))} | "
                  f"{_cell(paired[k])} |" for k in keys if k.count("/") == 1]
        lines.append("")

    def table(title: str, keys: list[str]) -> None:
        keys = [k for k in keys if any(k in r for r in runs.values())]
        if not keys:
            return
        lines.extend([f"## {title}", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"])
        lines.extend(f"| {name} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for name, r in runs.items())
        lines.append("")

    table("Headline, every run", HEADLINE)
    others = {k: v for k, v in metrics["paired"].items() if k != f"student - {control}"}
    if others:
        keys = [k for k in HEADLINE if any(k in v for v in others.values())]
        lines.extend(["## Paired differences (first seed)", "", "| comparison | " + " | ".join(keys) + " |",
                      "|---" * (len(keys) + 1) + "|"])
        lines.extend(f"| {name} | " + " | ".join(_cell(v.get(k)) for k in keys) + " |" for name, v in others.items())
        lines.append("")
    table("Retrieval", [f"{d}/{m}" for d in ("i2r", "r2i", "phrase2roi") for m in ("R@1", "R@5", "R@10", "median_rank")])
    table("Zero-shot AUROC per observation", [f"auroc/{o}" for o in OBSERVATIONS])
    table("Robustness: the true statement preferred over", [f"robust/{k}" for k in PREFERENCES])
    per_finding = sorted({k for r in runs.values() for k in r if k.count("/") == 2})
    table("Robustness per finding", per_finding)
    if "pairing_on_truth" in metrics:
        p = metrics["pairing_on_truth"]
        lines.extend([f"Pairing on the synthetic truth (all splits): {p['right']} of {p['judged']} judged pairs right "
                      f"({p['accuracy']:.3f}).", ""])
    lines.extend(["## Evaluation sets (manifests)", "", "Sets pinned by `evaluate.manifests` whose ROIs come from the "
                  "trained U-Net (region pairs, clear regions, grounding) are evaluated on the pinned entries found "
                  "again: lungs and zones by name, lesions by box (IoU >= 0.3, or one box holds the other's centre).", "",
                  "| set | n | pinned entries found | seed | sha256 |", "|---|---|---|---|---|"])
    found = lambda v: f"{v['found']} of {v['pinned']}" if "pinned" in v else "-"  # noqa: E731
    lines.extend(f"| {k} | {v['n']} | {found(v)} | {v['seed']} | `{v['sha256'][:16]}` |"
                 for k, v in metrics["manifests"].items())
    return "\n".join(lines) + "\n"


def benchmarks_markdown(metrics: dict) -> str:
    from ..benchmarks import markdown

    return ("\n" + markdown(metrics["benchmarks"])) if metrics.get("benchmarks") else ""


def plot(curves: dict, results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    observations = sorted({o for c in curves.values() for o in c["roc"]})
    if observations:
        cols = min(4, len(observations))
        rows = -(-len(observations) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for ax, o in zip(axes.flat, observations):
            for name, c in curves.items():
                if o in c["roc"]:
                    y, s = c["roc"][o]
                    fpr, tpr, _ = roc_curve(y, s)
                    ax.plot(fpr, tpr, label=f"{name} {results[name][f'auroc/{o}']['value']:.2f}")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
            ax.set_title(o, fontsize=9)
            ax.legend(fontsize=6, loc="lower right")
        for ax in list(axes.flat)[len(observations):]:
            ax.axis("off")
        fig.suptitle("Zero-shot ROC on the test split")
    else:  # a small test split may have no observation with two positives and two negatives
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no observation with >= 2 positives\nand >= 2 negatives in the test split", ha="center",
                va="center")
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_dir / "roc.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    keys = ["i2r/R@1", "i2r/R@5", "i2r/R@10", "r2i/R@1", "r2i/R@5", "r2i/R@10", "phrase2roi/R@1", "phrase2roi/R@5"]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / max(len(results), 1)
    for j, (name, r) in enumerate(results.items()):
        vals = [r.get(k, {"value": np.nan})["value"] for k in keys]
        err = [[max(0.0, v - r[k]["ci_low"]) if k in r and np.isfinite(r[k]["ci_low"]) else 0 for k, v in zip(keys, vals)],
               [max(0.0, r[k]["ci_high"] - v) if k in r and np.isfinite(r[k]["ci_high"]) else 0 for k, v in zip(keys, vals)]]
        ax.bar(np.arange(len(keys)) + j * width, vals, width, yerr=err, label=name, capsize=2)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend(fontsize=7)
    ax.set_title("Retrieval on the test split (95% bootstrap intervals)")
    fig.tight_layout()
    with atomic_path(out_dir / "retrieval.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
