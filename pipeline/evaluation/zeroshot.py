"""Zero-shot classification, CheXzero style: per observation, the softmax over a positive and a negative prompt
ensemble gives p(positive); AUROC against the dataset's labels (1 positive; 0 or blank negative; -1 left out), and
accuracy on a 5x200-style subset (test images positive for exactly one of the five CheXpert 5x200 classes, up to
200 each, argmax over the five positive prompt ensembles)."""

from __future__ import annotations

import numpy as np

from .. import stats
from ..labels import OBSERVATIONS

FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
POSITIVE = ["{}", "{} is present", "findings consistent with {}"]
NEGATIVE = ["no {}", "no evidence of {}", "{} is absent"]


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



def zeroshot_figures(emb, img: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                     five: tuple[np.ndarray, np.ndarray]) -> tuple[dict, dict]:
    """auroc/<observation>, auroc/mean and 5x200/accuracy as {metric: (unit patients, stat)}, and the ROC curves
    {observation: (labels, scores)}. img: (N, D) image embeddings; patients: (N,) their patients."""
    out, roc = {}, {}
    image_units = list(patients)
    pos = np.stack([emb.ensemble(POSITIVE, o.lower()) for o in OBSERVATIONS])
    neg = np.stack([emb.ensemble(NEGATIVE, o.lower()) for o in OBSERVATIONS])
    logits = emb.scale * np.stack([img @ pos.T, img @ neg.T])  # (2, N, 14)
    prob = np.exp(logits[0]) / np.exp(logits).sum(0)
    aurocs = {}  # observation -> (has a label, positive, p(positive)) over all test images
    for k, o in enumerate(OBSERVATIONS):
        known, y = labels[:, k] != -1, (labels[:, k] == 1).astype(np.int64)
        if o == "No Finding" or y[known].sum() < 2 or (1 - y[known]).sum() < 2:
            continue
        aurocs[o] = (known, y, prob[:, k])
        out[f"auroc/{o}"] = (image_units, lambda i, m=known, y=y, s=prob[:, k]: stats.auroc(y[i][m[i]], s[i][m[i]]))
        roc[o] = (y[known].tolist(), prob[known, k].tolist())
    if aurocs:
        out["auroc/mean"] = (image_units, lambda i: float(np.nanmean(
            [stats.auroc(y[i][m[i]], s[i][m[i]]) for m, y, s in aurocs.values()])))
    idx, cls = five
    if len(idx):
        five_logits = img[idx] @ pos[[OBSERVATIONS.index(o) for o in FIVE]].T
        right = (five_logits.argmax(1) == cls).astype(float)
        out["5x200/accuracy"] = (list(patients[idx]), lambda i: right[i].mean())
    return out, roc
