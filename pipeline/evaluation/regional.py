"""Regional figures that only the image can win: a model that sees which position an ROI stands for, and nothing
else, scores chance on each of them.

- Presence at fixed positions (`presence/auroc`): every lung and zone ROI of every test image is scored for each
  regional finding, p = softmax over "there is X in <place>" and "there is no X in <place>" (vocab.statement).
  The AUROC is taken over the images at one position (ROIs of the same name: "left lower zone"), then averaged
  over the positions with at least two positives and two negatives: per finding (`presence/auroc/<finding>`) and
  over findings. Within one position every ROI sits in the same place, so position cannot separate the classes.
- Same-position top-1 (`region/same_position_top1`): a test pair's ROI chooses among statements of the regional
  findings at the pair's own side and zone; the findings its report states there (other than its own) are left
  out, so every other candidate is false. It chooses between findings, not sides.
- Balanced negation (`robust/balanced_negation`): the mean of robust/negated and robust/converse. A text tower that
  pushes every "no ..." one way wins one of the two and loses the other.

The truth of presence is the synthetic ground truth where the source has one (findings.csv: kind, side, box),
else the parsed report: certain present phrases are positives, hedged ones and ones without a side are left out,
anything else negative. A lung holds the findings of its side; a zone the findings whose box lies in its ROI box
(HOLDS), or from a report, those of its zone (a finding with a side but no zone: unknown in the zones).

Position is fixed, box geometry is not: lung and zone boxes of one name differ from image to image with the
U-Net's outline, and a finding can change that outline (an effusion narrows the segmented lung). The
`/mean_image` control keeps each image's boxes over the mean image, so what box geometry alone scores shows there;
a figure counts as the image's only where it beats that control (the paired `student - student/mean_image` rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats
from ..geometry import box_share
from ..vocab import REGIONAL, statement

# synthetic finding kinds -> the observation their phrases are labelled with (ground_truth/phrases.csv)
KIND_OBSERVATION = {"atelectasis": "Atelectasis", "consolidation": "Consolidation", "edema": "Edema",
                    "mass": "Lung Lesion", "nodule": "Lung Lesion", "pleural_effusion": "Pleural Effusion",
                    "pneumothorax": "Pneumothorax"}


def truth_findings(truth_dir: str | Path) -> dict[str, set[tuple]]:
    """{dicom_id: {(observation, side, zone, box)}} of the regional findings drawn on each synthetic film, box
    (x0, y0, x1, y1) in original pixels; a bilateral finding on both sides; zone "" where the finding has none."""
    import pandas as pd

    table = pd.read_csv(Path(truth_dir, "findings.csv"), dtype={"dicom_id": str}, keep_default_na=False)
    out: dict[str, set] = {}
    for r in table.itertuples():
        o = KIND_OBSERVATION.get(r.finding)
        if o is None or r.laterality not in ("right", "left", "bilateral"):
            continue
        for side in (("right", "left") if r.laterality == "bilateral" else (r.laterality,)):
            out.setdefault(r.dicom_id, set()).add((o, side, r.zone or "", (r.x0, r.y0, r.x1, r.y1)))
    return out


# a zone holds a finding when this share of the finding's box lies in the zone's box, and is clear of it at or
# below CLEAR; in between (a finding that spills over the zone's edge) it is left out
HOLDS, CLEAR = 0.25, 0.05


def presence_label(findings: set[tuple], hedged: set[tuple[str, str]], observation: str, side: str, zone: str,
                   roi_box=None) -> float:
    """1 present, 0 absent, NaN unknown: X at (side, zone), zone "" the whole lung. findings: (observation, side,
    zone, box or None) present, box in the ROI's pixels; hedged: (observation, side) stated as possible or without
    a side. In a zone, a finding with a box is placed by the share of its box inside the zone's ROI box (a
    pneumothorax labelled "upper" that runs down into the middle zone is there too); without one, by its zone."""
    if (observation, side) in hedged:
        return np.nan
    here = [(z, box) for o, s, z, box in findings if o == observation and s == side]
    if not here:
        return 0.0
    if not zone:
        return 1.0
    if roi_box is not None and all(box is not None for _, box in here):
        share = max(box_share(box, roi_box) for _, box in here)
        return 1.0 if share >= HOLDS else 0.0 if share <= CLEAR else np.nan
    zones = [z for z, _ in here]
    if zone in zones:
        return 1.0
    return np.nan if "" in zones else 0.0


def presence_items(roi_where: list[tuple[str, str, str]], roi_owner: np.ndarray, findings: list[set],
                   hedged: list[set], roi_box: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One item per (lung or zone ROI, regional finding) with a known label: roi, observation, position (the ROI's
    name), label. roi_box: (R, 4) in the pixels of the findings' boxes."""
    rows = []
    for roi, (kind, side, zone) in enumerate(roi_where):
        if kind not in ("lung", "zone") or side not in ("right", "left"):
            continue
        image = int(roi_owner[roi])
        for o in REGIONAL:
            y = presence_label(findings[image], hedged[image], o, side, zone,
                               None if roi_box is None else roi_box[roi])
            if np.isfinite(y):
                rows.append((roi, o, f"{side} {zone or 'lung'}", y, side, zone))
    cols = list(zip(*rows)) if rows else [[]] * 6
    return {"roi": np.array(cols[0], np.int64), "observation": np.array(cols[1], object),
            "position": np.array(cols[2], object), "label": np.array(cols[3], float), "side": list(cols[4]),
            "zone": list(cols[5])}


def fixed_position_auroc(label: np.ndarray, score: np.ndarray, position: np.ndarray) -> float:
    """Mean over positions of the AUROC among the items at that position (>= 2 of each class); NaN if none."""
    values = []
    for p in np.unique(position):
        at = position == p
        y = label[at]
        if y.sum() >= 2 and (1 - y).sum() >= 2:
            values.append(stats.auroc(y, score[at]))
    return float(np.mean(values)) if values else np.nan


def presence_figures(roi: np.ndarray, texts, scale: float, items: dict, units: list[str]) -> dict:
    """presence/auroc and presence/auroc/<finding> as {metric: (units, stat)}; texts: str list -> embeddings."""
    if not len(items["roi"]):
        return {}
    pos = texts([statement(o, s, z) for o, s, z in zip(items["observation"], items["side"], items["zone"])])
    neg = texts([statement(o, s, z, negated=True) for o, s, z in zip(items["observation"], items["side"], items["zone"])])
    r = roi[items["roi"]]
    score = 1.0 / (1.0 + np.exp(-scale * ((r * pos).sum(1) - (r * neg).sum(1))))  # softmax of the two
    label, position, observation = items["label"], items["position"], items["observation"]
    out = {}
    findings = [o for o in REGIONAL if (observation == o).any()]
    for o in findings:
        sel = observation == o
        out[f"presence/auroc/{o}"] = (units, lambda i, sel=sel: fixed_position_auroc(
            label[i][sel[i]], score[i][sel[i]], position[i][sel[i]]))

    def pooled(i):
        values = [fixed_position_auroc(label[i][observation[i] == o], score[i][observation[i] == o],
                                       position[i][observation[i] == o]) for o in findings]
        return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan

    out["presence/auroc"] = (units, pooled)
    return out


def same_position_candidates(observation: str, side: str, zone: str, stated: set[tuple[str, str]]) -> list[str]:
    """The pair's own finding first, then every regional finding its report does not state at that side."""
    here = {o for o, s in stated if s in (side, "bilateral", "") or side == "bilateral"}
    return [observation] + [o for o in REGIONAL if o != observation and o not in here]


def same_position_figures(roi: np.ndarray, texts, pairs: list[dict], units: list[str]) -> dict:
    """region/same_position_top1: 1 when the pair's own statement is the best of its candidates."""
    if not pairs:
        return {}
    wins = np.full(len(pairs), np.nan)  # NaN: a report stating every finding there leaves nothing to choose
    for k, p in enumerate(pairs):
        cands = same_position_candidates(p["observation"], p["laterality"], p["zone"], p["stated"])
        if len(cands) > 1:
            sims = texts([statement(o, p["laterality"], p["zone"]) for o in cands]) @ roi[p["roi"]]
            best = np.abs(sims - sims.max()) <= 1e-6  # a tie at the top is shared, never won outright
            wins[k] = float(best[0]) / best.sum()
    return {"region/same_position_top1": (units, lambda i: float(np.nanmean(wins[i])) if np.isfinite(wins[i]).any()
                                          else np.nan)}
