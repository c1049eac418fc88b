"""Scoring a report parser against sentence-level gold mentions.

Gold and prediction are compared per sentence and observation: observation F1 over (sentence, observation)
pairs; on the pairs both have, accuracy of negation, uncertainty, laterality and zone. Several mentions of one
observation in a sentence combine like the labeler's rule (present > uncertain > negated) and their sides
combine (left + right = bilateral).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..labels import OBSERVATIONS, derive_labels

RANK = {"+": 3, "?": 2, "-": 1}


def status_of(negated: bool, uncertain: bool) -> str:
    return "-" if negated else ("?" if uncertain else "+")


# How hedged findings label a study (`parse_reports.hedge`). "chexpert": every hedged finding is uncertain (-1),
# whatever its grade, as the CheXpert labeler labels it and MIMIC-CXR's mimic-cxr-2.0.0-chexpert.csv reads.
# "two_grade": a "probable" finding is uncertain (-1), one only offered as a possibility sets no label, as expert
# labels count it (NegBio's gold standard on the IU reports leaves "may represent pneumonia" unlabelled).
HEDGE_CONVENTIONS = ("chexpert", "two_grade")


def study_labels(mentions, hedge: str = "chexpert") -> dict[str, float]:
    """The study's 14 labels from (observation, negated, grade) mentions, grade "" | "probable" | "possible".

    The CheXpert labeler's rule (present > uncertain > negated > not mentioned, `pipeline.labels`); `hedge`
    (HEDGE_CONVENTIONS) says what a hedged mention gives. Under "two_grade" a study whose findings are only
    offered as possibilities is still not "No Finding"."""
    if hedge not in HEDGE_CONVENTIONS:
        raise ValueError(f"hedge convention {hedge!r}: expected one of {HEDGE_CONVENTIONS}")
    mentions = list(mentions)
    if hedge == "chexpert":
        return derive_labels((o, neg, bool(h)) for o, neg, h in mentions)
    labels = derive_labels((o, neg, bool(h)) for o, neg, h in mentions if h != "possible")
    if labels["No Finding"] == 1.0 and any(h == "possible" and not neg and o in OBSERVATIONS
                                           and o not in ("Support Devices", "No Finding") for o, neg, h in mentions):
        labels["No Finding"] = float("nan")
    return labels


def combine_sides(sides: set[str]) -> str:
    sides = set(sides) - {""}
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return sides.pop() if sides else ""


def by_observation(mentions) -> dict[str, tuple[str, str, set[str]]]:
    """Mentions (objects with observation, negated, uncertain, laterality, zone) of one sentence ->
    {observation: (status, laterality, zones)}."""
    status: dict[str, str] = {}
    sides: dict[str, set[str]] = {}
    zones: dict[str, set[str]] = {}
    for m in mentions:
        s = status_of(m.negated, m.uncertain)
        if RANK[s] > RANK.get(status.get(m.observation, ""), 0):
            status[m.observation] = s
        sides.setdefault(m.observation, set()).add(m.laterality)
        zones.setdefault(m.observation, set()).add(m.zone)
    return {o: (status[o], combine_sides(sides[o]), zones[o]) for o in status}


def score(gold: list[dict], predicted: list[dict]) -> dict:
    """gold[i]: {observation: (status, laterality or None, zone or None)} for sentence i (None = not judged);
    predicted[i]: `by_observation` of the parser's mentions in sentence i."""
    tp = fp = fn = neg_ok = unc_ok = side_ok = side_n = zone_ok = zone_n = 0
    for g, p in zip(gold, predicted):
        both = set(g) & set(p)
        tp, fp, fn = tp + len(both), fp + len(set(p) - set(g)), fn + len(set(g) - set(p))
        for obs in both:
            g_status, g_side, g_zone = g[obs]
            p_status, p_side, p_zones = p[obs]
            neg_ok += (g_status == "-") == (p_status == "-")
            unc_ok += (g_status == "?") == (p_status == "?")
            if g_side is not None:
                side_n, side_ok = side_n + 1, side_ok + (g_side == p_side)
            if g_zone is not None:
                zone_n, zone_ok = zone_n + 1, zone_ok + (g_zone in p_zones)
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"sentences": len(gold), "mentions": tp + fn, "observation_f1": div(2 * tp, 2 * tp + fp + fn),
            "precision": div(tp, tp + fp), "recall": div(tp, tp + fn), "negation_accuracy": div(neg_ok, tp),
            "uncertainty_accuracy": div(unc_ok, tp), "laterality_accuracy": div(side_ok, side_n),
            "zone_accuracy": div(zone_ok, zone_n)}


def read_sentence_file(path: str | Path) -> tuple[list[str], list[dict]]:
    """`sentence | Observation:status[:laterality[:zone]]; ...` lines (see tests/data/report_sentences.txt)."""
    sentences, gold = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sentence, _, expected = line.partition("|")
        g = {}
        for item in filter(None, (e.strip() for e in expected.split(";"))):
            obs, status, *rest = item.split(":")
            g[obs] = (status, (rest[0] or None) if rest else None, (rest[1] or None) if len(rest) > 1 else None)
        sentences.append(sentence.strip())
        gold.append(g)
    return sentences, gold


def read_label_file(path: str | Path) -> tuple[list[str], list[dict[str, float]]]:
    """`report | Observation:label; ...` lines (label 1 / 0 / -1; observations not named are blank), the study
    labels a labeler gives each report (see tests/data/chexpert_style_reports.txt)."""
    reports, gold = [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        report, _, expected = line.partition("|")
        labels = {o: float("nan") for o in OBSERVATIONS}
        for item in filter(None, (e.strip() for e in expected.split(";"))):
            obs, value = (x.strip() for x in item.rsplit(":", 1))
            if obs not in labels:
                raise ValueError(f"{path}: unknown observation {obs!r}")
            labels[obs] = float(value)
        reports.append(report.strip())
        gold.append(labels)
    return reports, gold


def label_agreement(gold: list[dict[str, float]], predicted: list[dict[str, float]]) -> dict:
    """How far two labelers' study labels agree, cell by cell (report x observation): `agreement` on the cells
    the gold labels (1, 0 or -1), `agreement_either` on the cells either labels (a label the gold leaves blank
    counts against), and the cells that differ as (report index, observation, gold, predicted)."""
    same = lambda a, b: a == b or (a != a and b != b)  # noqa: E731  (NaN equals NaN: both blank)
    labelled = either = agree = agree_either = 0
    differ = []
    for i, (g, p) in enumerate(zip(gold, predicted)):
        for o in OBSERVATIONS:
            a, b = g[o], p[o]
            if a != a and b != b:
                continue
            either += 1
            agree_either += same(a, b)
            if a == a:
                labelled += 1
                agree += same(a, b)
            if not same(a, b):
                differ.append((i, o, a, b))
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"reports": len(gold), "labelled_cells": labelled, "agreement": div(agree, labelled),
            "cells_either": either, "agreement_either": div(agree_either, either), "differ": differ}


def synthetic_gold(phrases_csv: str | Path) -> dict[tuple[str, str], dict]:
    """Gold per (study_id, sentence) from the synthetic ground truth's phrases.csv."""
    gt = pd.read_csv(phrases_csv, dtype={"study_id": str}, keep_default_na=False)
    gold: dict[tuple[str, str], dict] = {}
    for key, rows in gt.groupby(["study_id", "sentence"], sort=False):
        ms = [_Mention(r.observation, r.negated in (True, "True"), r.uncertain in (True, "True"), r.laterality, r.zone)
              for r in rows.itertuples() if r.observation]
        gold[(key[0], " ".join(key[1].split()))] = {
            o: (s, side, next(iter(z - {""}), "") or None) for o, (s, side, z) in by_observation(ms).items()}
    return gold


class _Mention:
    def __init__(self, observation, negated, uncertain, laterality, zone):
        self.observation, self.negated, self.uncertain = observation, negated, uncertain
        self.laterality, self.zone = laterality, zone
