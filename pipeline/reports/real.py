"""Real reports with expert labels: the Indiana University (Open-i) XML reports, a NegBio-format gold table,
the label mapping between ChestX-ray14 (NegBio) and CheXpert, and study-level label scoring.

The scoring follows how the gold standard was made: NegBio's labels are binary (1 = mentioned as present or
uncertain, 0 = negated or not mentioned), so a parsed study label of 1 or -1 counts as positive.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

# CheXpert observation <- the NegBio (ChestX-ray14) columns it is the union of. The 8 shared findings:
# "Lung Lesion" is CheXpert's single label for a mass or a nodule; the other seven have one column each.
LABEL_MAP: dict[str, list[str]] = {
    "Atelectasis": ["Atelectasis"],
    "Cardiomegaly": ["Cardiomegaly"],
    "Pleural Effusion": ["Effusion"],
    "Pneumonia": ["Pneumonia"],
    "Pneumothorax": ["Pneumothorax"],
    "Consolidation": ["Consolidation"],
    "Edema": ["Edema"],
    "Lung Lesion": ["Mass", "Nodule"],
}
SHARED = list(LABEL_MAP)
# the IU sections a report is made of, in the order they are written out
IU_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


def iu_report(xml: bytes | str) -> tuple[str, str]:
    """(uId, report text with "SECTION: body" paragraphs) of one ecgen-radiology XML file."""
    root = ET.fromstring(xml)
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError("no <uId id=...>")
    parts = []
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        text = " ".join((node.text or "").split())
        if label in IU_SECTIONS and text:
            parts.append(f"{label}: {text}")
    return uid.get("id"), "\n\n".join(parts)


def read_iu(tgz: str | Path) -> pd.DataFrame:
    """The reports of an IU tar.gz of XML files -> (study_id, report). A file that does not parse is skipped
    with its reason in `errors` (DataFrame.attrs)."""
    rows, errors = [], []
    with tarfile.open(tgz) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            try:
                rows.append(iu_report(tar.extractfile(member).read()))
            except (ET.ParseError, ValueError) as e:
                errors.append((member.name, str(e)))
    df = pd.DataFrame(rows, columns=["study_id", "report"])
    df.attrs["errors"] = errors
    return df


def read_reports(table: str | Path) -> pd.DataFrame:
    """A CSV of reports: `study_id` (or NegBio's `filename`) and `report`."""
    df = pd.read_csv(table, dtype=str, keep_default_na=False).rename(columns={"filename": "study_id"})
    missing = {"study_id", "report"} - set(df.columns)
    if missing:
        raise ValueError(f"{table}: missing column(s) {sorted(missing)}")
    return df[["study_id", "report"]]


def read_gold(table: str | Path) -> pd.DataFrame:
    """A NegBio-format gold table (`filename`, then 0 / 1 per ChestX-ray14 finding) -> the shared CheXpert
    labels as 0 / 1, indexed by study_id."""
    df = pd.read_csv(table, dtype={"filename": str}).rename(columns={"filename": "study_id"})
    if "study_id" not in df.columns:
        raise ValueError(f"{table}: no `filename` (or `study_id`) column")
    missing = sorted({c for cols in LABEL_MAP.values() for c in cols} - set(df.columns))
    if missing:
        raise ValueError(f"{table}: missing NegBio column(s) {missing}")
    return map_negbio(df.set_index("study_id"))


def map_negbio(df: pd.DataFrame) -> pd.DataFrame:
    """NegBio columns -> CheXpert observations (a study is positive for an observation when any of its NegBio
    columns is 1)."""
    return pd.DataFrame({obs: (df[cols].fillna(0).to_numpy() > 0).any(axis=1).astype(int)
                         for obs, cols in LABEL_MAP.items()}, index=df.index)


def positive(labels: dict[str, float]) -> dict[str, int]:
    """A parsed study's CheXpert labels as the gold's binary: 1 or -1 (present or uncertain) -> 1."""
    return {o: int(labels.get(o) in (1.0, -1.0)) for o in SHARED}


def label_scores(gold: pd.DataFrame, predicted: pd.DataFrame) -> dict:
    """Per-label precision, recall, F1 and support, and the macro F1 over the shared labels, on the studies
    both tables have. `predicted`: 0 / 1 per shared label, indexed by study_id."""
    ids = gold.index.intersection(predicted.index)
    out: dict = {"studies": len(ids), "labels": {}}
    for obs in SHARED:
        g = gold.loc[ids, obs].to_numpy() > 0
        p = predicted.loc[ids, obs].to_numpy() > 0
        tp, fp, fn = int((g & p).sum()), int((~g & p).sum()), int((g & ~p).sum())
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out["labels"][obs] = {"precision": prec, "recall": rec, "f1": f1, "support": int(g.sum()),
                              "tp": tp, "fp": fp, "fn": fn}
    out["macro_f1"] = float(np.nanmean([v["f1"] for v in out["labels"].values()]))
    return out


def confusions(gold: pd.DataFrame, predicted: pd.DataFrame, phrases: dict[str, list], top: int = 8) -> dict:
    """The confusions that cost most, per shared label: for false positives, the phrases that fired (the
    positive or uncertain ones); for misses, the studies' phrases of that label (negated, or offered only as a possibility)
    or, when the parser found none, the study ids. `phrases[study_id]`: the parser's Phrase objects."""
    ids = gold.index.intersection(predicted.index)
    out = {}
    for obs in SHARED:
        fired: Counter = Counter()
        negated: Counter = Counter()
        unseen: list[str] = []
        for sid in ids:
            g, p = gold.at[sid, obs] > 0, predicted.at[sid, obs] > 0
            mine = [ph for ph in phrases.get(sid, []) if ph.observation == obs]
            if p and not g:
                fired.update(_key(ph) for ph in mine if not ph.negated)
            elif g and not p:
                if mine:
                    negated.update(_key(ph) for ph in mine)
                else:
                    unseen.append(sid)
        out[obs] = {"false_positive_phrases": fired.most_common(top),
                    "missed_negated_phrases": negated.most_common(top), "missed_unmentioned": unseen}
    return out


def _key(ph) -> str:
    return f"{ph.phrase.lower()}{' (?)' if ph.uncertain else ''}"
