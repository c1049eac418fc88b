"""Retrieval: image -> report and report -> image over the test studies (one frontal image each): R@1/5/10 and
median rank; region <-> phrase: for each test ROI <-> phrase pair (pairing.pair_rois, certain present phrases, side
spelt out as in training), top-1 among the test captions (deduplicated after vocab.normalize_text, so case twins
are one candidate), phrase -> ROI R@1/5/10 over all test ROIs."""

from __future__ import annotations

import numpy as np

from ..vocab import normalize_text


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



TIE = 1e-6  # cosine similarities this close are one score (identical inputs, e.g. the mean-image control)


def true_rank(sim: np.ndarray, true: np.ndarray) -> np.ndarray:
    """1-based rank of each row's true item (score `true`) among the row's scores `sim`, ties at their mid-rank:
    a model that scores every candidate the same ranks the true one in the middle, never first."""
    better = (sim > true[:, None] + TIE).sum(1)
    tied = (np.abs(sim - true[:, None]) <= TIE).sum(1) - 1  # the true item itself is not a tie
    return 1 + better + tied / 2


def retrieval_figures(emb, img: np.ndarray, reports: list[str], retrieval: np.ndarray, patients: np.ndarray) -> dict:
    """i2r/* and r2i/* over the studies of `retrieval` (one image index each) as {metric: (unit patients, stat)}."""
    out = {}
    rep = emb.texts([reports[i] for i in retrieval])
    sim = img[retrieval] @ rep.T
    for name, s in (("i2r", sim), ("r2i", sim.T)):
        rank = true_rank(s, np.diag(s))
        units = list(patients[retrieval])
        for k in (1, 5, 10):
            out[f"{name}/R@{k}"] = (units, lambda i, r=rank, k=k: (r[i] <= k).mean())
        out[f"{name}/median_rank"] = (units, lambda i, r=rank: float(np.median(r[i])))
    return out


def region_phrase_figures(emb, roi: np.ndarray, pairs: list[dict], units: list[str]) -> dict:
    """region/top1 (the pair's caption the best of the test captions for its ROI) and phrase2roi/R@k (the pair's ROI
    ranked among all test ROIs) as {metric: (unit patients, stat)}; units: the patient of each pair."""
    if not pairs:
        return {}
    out = {}
    texts = [p["text"] for p in pairs]
    r = roi[[p["roi"] for p in pairs]]
    top1 = top1_unique(r, texts, emb.texts)
    out["region/top1"] = (units, lambda i: top1[i].mean())
    t = emb.texts(texts)
    true_sim = (r * t).sum(1)
    rank = true_rank(t @ roi.T, true_sim)
    for k in (1, 5, 10):
        out[f"phrase2roi/R@{k}"] = (units, lambda i, k=k: (rank[i] <= k).mean())
    return out
