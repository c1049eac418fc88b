"""Grounding, where the synthetic truth has a box: the phrase's heat map over the image's ROIs (each ROI box painted
with its softmax similarity), pointing game, IoU of the map thresholded at half its maximum, and CNR (MS-CXR:
|mean in - mean out| / sqrt(var in + var out)); beside it the dense patch-level map (pipeline/grounding.py: every
projected patch token against the phrase, smoothed, upsampled) with CNR, mIoU over thresholds 0.1-0.5 and pointing
game (`grounding/dense_*`). Groundability: a present statement should ground somewhere and a negated one ("there is
no X in the left lung" where the report leaves that lung clear) nowhere (`groundable/*`).

`test` below is the evaluate stage's TestSet (or anything with its fields: pairs, clear, patient_id, images, roi_of,
roi_box)."""

from __future__ import annotations

import numpy as np

from ..vocab import statement


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



def roi_grounding_figures(emb, test, roi: np.ndarray) -> dict:
    """grounding/pointing_game, grounding/iou, grounding/cnr of the ROI-level heat map, over the test pairs with a
    ground-truth box, as {metric: (unit patients, stat)}."""
    pairs = test.pairs
    if not pairs:
        return {}
    units = [test.patient_id[p["image"]] for p in pairs]
    t = emb.texts([p["text"] for p in pairs])
    g = np.full((len(pairs), 3), np.nan)
    for k, p in enumerate(pairs):
        if p["gt_box"] is not None:
            rois = test.roi_of[p["image"]]
            heat = heat_map(roi[rois] @ t[k], test.roi_box[rois], test.images.shape[-1], emb.scale)
            g[k] = grounding_figures(heat, p["gt_box"])
    out = {}
    for c, name in enumerate(("pointing_game", "iou", "cnr")):
        if np.isfinite(g[:, c]).any():
            out[f"grounding/{name}"] = (units, lambda i, col=g[:, c]: float(np.nanmean(col[i]))
                                        if np.isfinite(col[i]).any() else np.nan)
    return out


def dense_grounding_figures(emb, test) -> dict:
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


def groundable_figures(emb, test, roi: np.ndarray) -> dict:
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

