"""Robustness: statements built from the pair's parsed attributes in one grammar (vocab.statement), so the true and
the alternative statement differ only in what is tested: the other side (laterality), negated, uncertain, another
finding the report does not state there; and the converse: an ROI of a lung or zone where the report states nothing
present prefers "there is no X in ..." over "there is X in ..." for each X the report negates. A text tower that
merely pushes every "no ..." away wins the first and loses the converse: `robust/balanced_negation` is the mean of
the two."""

from __future__ import annotations

import numpy as np

from ..vocab import OTHER_SIDE, REGIONAL, statement

PREFERENCES = ("side", "negated", "uncertain", "other_finding", "converse")


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



def robustness_figures(emb, roi: np.ndarray, pairs: list[dict], clear: list[dict], roi_patient: list[str]) -> dict:
    """robust/<kind>, robust/<kind>/<finding>, region/laterality (= robust/side) and robust/balanced_negation as
    {metric: (unit patients, stat)}; roi_patient: the patient of each ROI."""
    out = {}
    for kind, tests in alternatives(pairs, clear).items():
        if not tests:
            continue
        rois = roi[[x[0] for x in tests]]
        wins = ((rois * emb.texts([x[1] for x in tests])).sum(1) > (rois * emb.texts([x[2] for x in tests])).sum(1))
        wins = wins.astype(float)
        units = [roi_patient[x[0]] for x in tests]
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
    return out
