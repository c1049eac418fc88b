"""evaluate: every run against the global baseline (the teacher) on the patient-level test split.

Metrics (each with a bootstrap 95% interval over its units: images, studies, pairs or boxes):
- zero-shot classification, CheXzero style: per observation, the softmax over a positive and a negative prompt
  ensemble gives p(positive); AUROC against the dataset's labels (1 positive; 0 or blank negative; -1 left out),
  and accuracy on a 5x200-style subset (test images positive for exactly one of the five CheXpert 5x200 classes,
  up to 200 each, argmax over the five positive prompt ensembles);
- image -> report and report -> image retrieval over the test studies (one frontal image each): R@1/5/10, median rank;
- region <-> phrase: for each test ROI <-> phrase pair (pairing.pair_rois, certain present phrases), top-1 among
  the test captions, laterality (the phrase over its side-swapped copy), phrase -> ROI R@1/5/10 over all test ROIs;
- robustness (issue #8): the true phrase over its side swap, its negation, its uncertain form, and another
  finding at the same place, per finding;
- grounding, where the synthetic truth has a box: the phrase's heat map over the image's ROIs (each ROI box
  painted with its softmax similarity), pointing game, IoU of the map thresholded at half its maximum, and CNR
  (MS-CXR: |mean in - mean out| / sqrt(var in + var out)).

Every evaluation set is a pinned manifest (ids, seed, SHA-256) under results/evaluate/manifests/; evaluation stops
when a test patient is also a training patient. Checkpoints are the runs' final ones: nothing is chosen on the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..data import report_text
from ..io import atomic_path, usable_threads
from ..labels import OBSERVATIONS
from ..pairing import CANONICAL, caption, pair_rois, read_truth, swap_sides
from ..shards import Shard, decode
from .normalize import as_uint8, to_normalized

log = logging.getLogger("pipeline.evaluate")
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
POSITIVE = ["{}", "{} is present", "findings consistent with {}"]
NEGATIVE = ["no {}", "no evidence of {}", "{} is absent"]
PREFERENCES = ("side", "negated", "uncertain", "other_finding")
ROI_KEYS = ["roi_kind", "roi_laterality", "roi_zone", "roi_area", "roi_box"]  # all but the crops


@dataclass
class TestSet:
    image_id: list[str]
    patient_id: list[str]
    study_id: list[str]
    images: np.ndarray  # (N, S, S) uint8 normalized
    labels: np.ndarray  # (N, 14) the source's labels
    reports: list[str]
    roi_owner: np.ndarray  # (R,) the image of each ROI of all test images
    roi_of: list[np.ndarray]  # per image: its ROI indices
    roi_box: np.ndarray  # (R, 4) normalized pixels
    pairs: list[dict] = field(default_factory=list)  # image, roi, text, observation, laterality, zone, gt_box


def load_test_set(normalize_shards, crop_shards, report_shards, truth_dir=None, split: str = "test",
                  ) -> TestSet:
    """The test images with their ROI boxes and ROI <-> phrase pairs."""
    box, region = read_truth(truth_dir) if truth_dir else ({}, {})
    out = {k: [] for k in ("image_id", "patient_id", "study_id", "images", "labels", "reports", "roi_owner",
                           "roi_of", "roi_box", "pairs")}
    n_rois = 0
    for npath, cpath, rpath in zip(normalize_shards, crop_shards, report_shards):
        with Shard(npath) as n, Shard(cpath) as c, Shard(rpath) as r:
            row = {image_id: i for i, image_id in enumerate(r.image_ids)}
            splits, patients = decode(n.f["split"][()]), decode(n.f["patient_id"][()])
            fi, full = decode(r.f["findings_impression"][()]), decode(r.f["report"][()])
            keep = [i for i, s in enumerate(splits) if s == split and n.image_ids[i] in row]
            if not keep:
                continue
            images, transforms = as_uint8(n.f["image"][()][keep]), n.f["transform"][()][keep]
            all_rois, all_phrases = c.ragged_rows("rois", ROI_KEYS), r.ragged_rows("phrases")
            studies = decode(r.f["study_id"][()])
            for k, i in enumerate(keep):
                image_id, j = n.image_ids[i], row[n.image_ids[i]]
                text = report_text(fi[j], full[j])
                if not text:
                    continue
                index = len(out["image_id"])
                rois, ph, study = all_rois[i], all_phrases[j], studies[j]
                out["image_id"].append(image_id)
                out["patient_id"].append(patients[i])
                out["study_id"].append(study)
                out["images"].append(images[k])
                out["labels"].append(r.f["labels_source"][j])
                out["reports"].append(text)
                out["roi_owner"].append(np.full(len(rois["roi_kind"]), index))
                out["roi_box"].append(np.asarray(rois["roi_box"], np.float64).reshape(-1, 4))
                out["roi_of"].append(np.arange(n_rois, n_rois + len(rois["roi_kind"])))
                for pair in pair_rois(rois, ph, uncertain="drop"):
                    p = pair.phrase
                    key = (study, " ".join(ph["phrase_sentence"][p].split()), ph["phrase_observation"][p])
                    gt = box.get((image_id, region.get(key, -1)))
                    out["pairs"].append({
                        "image": index, "roi": n_rois + pair.roi, "text": ph["phrase"][p],
                        "observation": ph["phrase_observation"][p], "laterality": ph["phrase_laterality"][p],
                        "zone": ph["phrase_zone"][p],
                        "gt_box": None if gt is None else to_normalized(np.array([gt], float), transforms[k])[0].tolist()})
                n_rois += len(rois["roi_kind"])
    full = out["images"][0].shape[-1] if out["images"] else 0
    return TestSet(out["image_id"], out["patient_id"], out["study_id"],
                   np.stack(out["images"]) if out["images"] else np.zeros((0, full, full), np.uint8),
                   np.array(out["labels"], np.float32).reshape(-1, 14), out["reports"],
                   np.concatenate(out["roi_owner"]) if out["roi_owner"] else np.zeros(0, np.int64),
                   out["roi_of"], np.concatenate(out["roi_box"]) if out["roi_box"] else np.zeros((0, 4)), out["pairs"])


# ------------------------------------------------------------------------------------------ manifests
def write_manifest(path: Path, ids: list, seed: int | None, description: str) -> dict:
    body = json.dumps({"description": description, "seed": seed, "ids": ids}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(body)
    return {"path": str(path), "n": len(ids), "seed": seed, "sha256": hashlib.sha256(body.encode()).hexdigest()}


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


# ------------------------------------------------------------------------------------------ statistics
def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties at one half (what sklearn's roc_auc_score gives); NaN with one class."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap(stat, n: int, rounds: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of stat(indices) over `rounds` resamples of n units (NaN when rounds is 0)."""
    if rounds == 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(rounds)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _figure(stat, n: int, rounds: int, seed: int) -> dict:
    value = stat(np.arange(n)) if n else float("nan")
    lo, hi = bootstrap(stat, n, rounds, seed)
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "n": int(n)}


# ------------------------------------------------------------------------------------------ one model
class Embedder:
    def __init__(self, weights: str | Path, name: str, device: torch.device):
        self.name, self.device = name, device
        self.model = models.create(name, pretrained=str(weights)).to(device).eval()
        self.scale = float(self.model.logit_scale.detach().exp().clamp(max=100))
        self._cache: dict[str, np.ndarray] = {}

    def images(self, images: np.ndarray) -> np.ndarray:
        return models.embed_images(self.model, images)

    def images_and_rois(self, images: np.ndarray, owner: np.ndarray, boxes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        return models.embed_images_and_rois(self.model, images, owner, boxes)

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


def other_finding(observation: str, side: str, zone: str) -> str:
    names = list(CANONICAL)
    other = names[(names.index(observation) + 1) % len(names)] if observation in names else names[0]
    return caption(other, side, zone)


def evaluate_model(emb: Embedder, test: TestSet, five: tuple[np.ndarray, np.ndarray], retrieval: np.ndarray,
                   rounds: int, seed: int) -> tuple[dict, dict]:
    """All figures of one model -> ({metric: figure}, {curves for the plots})."""
    figures, curves = {}, {"roc": {}}
    img, roi = emb.images_and_rois(test.images, test.roi_owner, test.roi_box)
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
        figures[f"auroc/{o}"] = _figure(lambda i, m=known, y=y, s=prob[:, k]: auroc(y[i][m[i]], s[i][m[i]]),
                                        len(y), rounds, seed)
        curves["roc"][o] = (y[known].tolist(), prob[known, k].tolist())
    if aurocs:
        figures["auroc/mean"] = _figure(
            lambda i: float(np.nanmean([auroc(y[i][m[i]], s[i][m[i]]) for m, y, s in aurocs.values()])),
            len(test.image_id), rounds, seed)
    idx, cls = five
    if len(idx):
        five_logits = img[idx] @ pos[[OBSERVATIONS.index(o) for o in FIVE]].T
        right = (five_logits.argmax(1) == cls).astype(float)
        figures["5x200/accuracy"] = _figure(lambda i: right[i].mean(), len(idx), rounds, seed)
    # retrieval over studies
    rep = emb.texts([test.reports[i] for i in retrieval])
    sim = img[retrieval] @ rep.T
    for name, s in (("i2r", sim), ("r2i", sim.T)):
        rank = 1 + (s > np.diag(s)[:, None]).sum(1)
        for k in (1, 5, 10):
            figures[f"{name}/R@{k}"] = _figure(lambda i, r=rank, k=k: (r[i] <= k).mean(), len(rank), rounds, seed)
        figures[f"{name}/median_rank"] = _figure(lambda i, r=rank: float(np.median(r[i])), len(rank), rounds, seed)
    # regions
    pairs = test.pairs
    if pairs:
        texts = [p["text"] for p in pairs]
        pool = sorted(set(texts))
        pool_emb = emb.texts(pool)
        r = roi[[p["roi"] for p in pairs]]
        top1 = (np.array(pool)[(r @ pool_emb.T).argmax(1)] == np.array(texts)).astype(float)
        figures["region/top1"] = _figure(lambda i: top1[i].mean(), len(pairs), rounds, seed)
        t = emb.texts(texts)
        true_sim = (r * t).sum(1)
        rank = 1 + ((t @ roi.T) > true_sim[:, None]).sum(1)
        for k in (1, 5, 10):
            figures[f"phrase2roi/R@{k}"] = _figure(lambda i, k=k: (rank[i] <= k).mean(), len(pairs), rounds, seed)
        alternatives = {
            "side": [swap_sides(p["text"]) for p in pairs], "negated": [f"no {p['text']}" for p in pairs],
            "uncertain": [f"possible {p['text']}" for p in pairs],
            "other_finding": [other_finding(p["observation"], p["laterality"], p["zone"]) for p in pairs]}
        for kind, alt in alternatives.items():
            valid = np.array([a != p["text"] for a, p in zip(alt, pairs)])
            wins = (true_sim > (r * emb.texts(alt)).sum(1)).astype(float)
            w = wins[valid]
            figures[f"robust/{kind}"] = _figure(lambda i, w=w: w[i].mean(), len(w), rounds, seed)
            obs = np.array([p["observation"] for p in pairs])[valid]
            for o in sorted(set(obs)):
                wo = w[obs == o]
                figures[f"robust/{kind}/{o}"] = _figure(lambda i, wo=wo: wo[i].mean(), len(wo), rounds, seed)
        figures["region/laterality"] = figures["robust/side"]
        # grounding
        boxed = [k for k, p in enumerate(pairs) if p["gt_box"] is not None]
        g = []
        for k in boxed:
            p = pairs[k]
            rois = test.roi_of[p["image"]]
            heat = heat_map(roi[rois] @ t[k], test.roi_box[rois], test.images.shape[-1], emb.scale)
            g.append(grounding_figures(heat, p["gt_box"]))
        g = np.array(g, dtype=np.float64).reshape(-1, 3)
        for c, name in enumerate(("pointing_game", "iou", "cnr")):
            col = g[:, c]
            figures[f"grounding/{name}"] = _figure(lambda i, col=col: float(np.nanmean(col[i])), len(col), rounds, seed)
    return figures, curves


# ------------------------------------------------------------------------------------------ stage
HEADLINE = ["auroc/mean", "5x200/accuracy", "i2r/R@1", "i2r/R@10", "r2i/R@1", "r2i/R@10", "region/top1",
            "region/laterality", "phrase2roi/R@1", "robust/negated", "robust/uncertain", "robust/other_finding",
            "grounding/pointing_game", "grounding/iou", "grounding/cnr"]


def run(inputs: dict, checkpoints: dict[str, str], model_names: dict[str, str], out_dir: str | Path, cfg: dict,
        truth_dir: str | Path | None = None, threads: int = 1) -> dict:
    """Evaluate every checkpoint (run name -> weights) and write metrics.json, report.md, plots and manifests."""
    torch.set_num_threads(usable_threads(threads))
    out_dir = Path(out_dir)
    test = load_test_set(inputs["normalized"], inputs["crops"], inputs["reports"], truth_dir)
    leaked = sorted(set(test.patient_id) & training_patients(inputs["normalized"]))
    if leaked:
        raise ValueError(f"{len(leaked)} test patient(s) are also training / validation patients, e.g. {leaked[0]}")
    seed = cfg["seed"]
    five = five_by_200(test.labels, seed)
    first_of_study = {}
    for i, study in enumerate(test.study_id):
        first_of_study.setdefault(study, i)
    retrieval = np.array(sorted(first_of_study.values()), dtype=np.int64)
    m = out_dir / "manifests"
    manifests = {
        "test_images": write_manifest(m / "test_images.json", test.image_id, None, "test split images with a report"),
        "five_by_200": write_manifest(m / "five_by_200.json", [[test.image_id[i], FIVE[c]] for i, c in zip(*five)],
                                      seed, "images positive for exactly one of the five classes, <= 200 each"),
        "retrieval": write_manifest(m / "retrieval.json", [test.image_id[i] for i in retrieval], None,
                                    "one image per test study (the first by image_id)"),
        "region_pairs": write_manifest(m / "region_pairs.json", [
            [test.image_id[p["image"]], int(p["roi"] - test.roi_of[p["image"]][0]), p["text"]] for p in test.pairs],
            None, "test ROI <-> phrase pairs (image_id, ROI row in the crop shard, phrase)"),
        "grounding": write_manifest(m / "grounding.json", [
            [test.image_id[p["image"]], p["text"], p["gt_box"]] for p in test.pairs if p["gt_box"] is not None],
            None, "pairs with a ground-truth box (normalized pixels)"),
    }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, curves = {}, {}
    for name, weights in checkpoints.items():
        emb = Embedder(weights, model_names[name], device)
        results[name], curves[name] = evaluate_model(emb, test, five, retrieval, cfg["bootstrap"], seed)
        log.info("%s: %s", name, ", ".join(f"{k} {results[name][k]['value']:.3f}" for k in HEADLINE
                                          if k in results[name]))
    metrics = {"runs": results, "manifests": manifests,
               "test": {"images": len(test.image_id), "studies": len(retrieval), "pairs": len(test.pairs),
                        "grounding_boxes": manifests["grounding"]["n"], "five_by_200": len(five[0]),
                        "bootstrap": cfg["bootstrap"], "seed": seed}}
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics))
    plot(curves, results, out_dir)
    return metrics


def _cell(f: dict | None) -> str:
    if f is None or not np.isfinite(f["value"]):
        return "-"
    if not np.isfinite(f["ci_low"]):
        return f"{f['value']:.3f}"
    return f"{f['value']:.3f} ({f['ci_low']:.3f}-{f['ci_high']:.3f})"


def report_markdown(metrics: dict) -> str:
    runs = metrics["runs"]
    t = metrics["test"]
    lines = ["# Region-Aware MedCLIP: evaluation", "",
             f"Test split: {t['images']} images, {t['studies']} studies (retrieval), {t['pairs']} ROI-phrase pairs, "
             f"{t['grounding_boxes']} ground-truth boxes, {t['five_by_200']} images in the 5x200-style subset. "
             f"Cells: value (bootstrap 95% interval, {t['bootstrap']} resamples, seed {t['seed']}). "
             "`baseline` is the global-only teacher.", ""]

    def table(title: str, keys: list[str]) -> None:
        keys = [k for k in keys if any(k in r for r in runs.values())]
        if not keys:
            return
        lines.extend([f"## {title}", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"])
        lines.extend(f"| {name} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for name, r in runs.items())
        lines.append("")

    table("Headline", HEADLINE)
    table("Retrieval", [f"{d}/{m}" for d in ("i2r", "r2i", "phrase2roi") for m in ("R@1", "R@5", "R@10", "median_rank")])
    table("Zero-shot AUROC per observation", [f"auroc/{o}" for o in OBSERVATIONS])
    table("Robustness: the true phrase preferred over", [f"robust/{k}" for k in PREFERENCES])
    per_finding = sorted({k for r in runs.values() for k in r if k.count("/") == 2})
    table("Robustness per finding", per_finding)
    lines.extend(["## Evaluation sets (pinned manifests)", "", "| set | n | seed | sha256 |", "|---|---|---|---|"])
    lines.extend(f"| {k} | {v['n']} | {v['seed']} | `{v['sha256'][:16]}` |" for k, v in metrics["manifests"].items())
    return "\n".join(lines) + "\n"


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
