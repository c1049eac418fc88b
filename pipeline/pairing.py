"""ROI <-> phrase pairing and hard negative captions, from the crop and parse_reports attributes alone.

The same path runs on real and synthetic data: nothing here reads ground truth.

Pairing, for each present (or, if allowed, uncertain) phrase of a regional observation:
1. a lesion ROI on the phrase's side, in its zone when it names one; a phrase that names no zone takes the largest
   lesion on its side that no other finding's phrase names by its zone (vocab.SPREAD findings, a pneumothorax or
   edema, never take a lesion ROI);
2. else the zone ROI of that side and zone;
3. else the lung ROI of that side ("bilateral" pairs with both sides).
A phrase with no side ("mild pulmonary edema") is not paired: it still teaches through the report.

Hard negatives of a phrase (the L_neg captions): its negation, the other side, its uncertain form, and other
findings at the same place. Sides, zones, captions and the mirror of a text come from `pipeline/vocab.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .vocab import REGIONAL, SPREAD, caption, normalize_text, other_side, spell_side


@dataclass
class Pair:
    roi: int  # index into the image's ROIs
    phrase: int  # index into the image's phrases
    rule: str  # lesion | zone | lung


def pair_rois(rois: dict[str, list], phrases: dict[str, list], uncertain: str = "drop") -> list[Pair]:
    """Pairs for one image. rois: roi_kind, roi_laterality, roi_zone, roi_area (lists, one per ROI);
    phrases: phrase_observation, phrase_negated, phrase_uncertain, phrase_laterality, phrase_zone.
    uncertain: "drop" (hedged phrases get no ROI), "positive" or "own" (paired like present ones; "own" gives them
    a caption of their own, see `pair_caption`)."""
    kinds, sides, zones = rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]
    areas = rois.get("roi_area", [0] * len(kinds))
    stated = []  # (phrase, observation, side, zone, hedged) of every regional finding stated on a side
    for p, (obs, neg, unc, side, zone) in enumerate(zip(
            phrases["phrase_observation"], phrases["phrase_negated"], phrases["phrase_uncertain"],
            phrases["phrase_laterality"], phrases["phrase_zone"])):
        if not neg and obs in REGIONAL and side:
            stated += [(p, obs, s, zone, unc) for s in (("right", "left") if side == "bilateral" else (side,))]
    wanted = [(p, obs, s, zone) for p, obs, s, zone, unc in stated if not (unc and uncertain == "drop")]

    def lesions(side, zone):
        return [i for i, k in enumerate(kinds) if k == "lesion" and sides[i] == side and (not zone or zones[i] == zone)]

    # a lesion in the zone a phrase names belongs to that phrase's finding: a phrase that names no zone takes only
    # lesions no other finding claims ("small right pneumothorax" must not take the lower-zone lesion of "right
    # lower lobe atelectasis"); with none left it pairs with the lung. Hedged phrases claim too, whatever
    # `uncertain` says, so that training and evaluation pair alike
    claimed = {(i, obs) for _, obs, s, zone, _ in stated if zone and obs not in SPREAD for i in lesions(s, zone)}
    pairs = []
    for p, obs, s, zone in wanted:
        free = [] if obs in SPREAD else [i for i in lesions(s, zone)
                                         if zone or not any(j == i and o != obs for j, o in claimed)]
        if free:
            pairs.append(Pair(max(free, key=lambda i: areas[i]), p, "lesion"))
            continue
        zone_roi = [i for i, k in enumerate(kinds) if k == "zone" and sides[i] == s and zones[i] == zone]
        if zone and zone_roi:
            pairs.append(Pair(zone_roi[0], p, "zone"))
            continue
        lung = [i for i, k in enumerate(kinds) if k == "lung" and sides[i] == s]
        if lung:
            pairs.append(Pair(lung[0], p, "lung"))
    return pairs


_HEDGE = re.compile(r"\b(possible|possibly|probable|probably|likely|may|might|suspected|suspicious|questionable|"
                    r"cannot be excluded|could)\b", re.I)


def pair_caption(phrase: str, side: str, uncertain: bool, mode: str) -> str:
    """The text a paired ROI is pulled towards: the phrase with its side in its own words (vocab.spell_side), in
    mode "own" a hedged phrase kept hedged."""
    text = spell_side(phrase, side)
    if uncertain and mode == "own" and not _HEDGE.search(text):
        return f"possible {text}"
    return text


def stated_findings(phrases: dict[str, list]) -> set[tuple[str, str]]:
    """(observation, side) of every phrase a report states as present or possible; side "" when it names none."""
    return {(o, s) for o, n, s in zip(phrases["phrase_observation"], phrases["phrase_negated"],
                                      phrases["phrase_laterality"]) if not n}


def negative_captions(phrase: str, observation: str, side: str, zone: str, uncertain: bool, mode: str,
                      k: int = 4, stated: set[tuple[str, str]] = frozenset()) -> list[str]:
    """The k hard negatives of one paired phrase for L_neg, in a fixed order: its negation, the other side (from the
    parsed side, vocab.other_side), the uncertainty counterpart (mode "own" only: the hedged form of a certain
    phrase, the certain form of a hedged one), then other findings at the same place that the report does not
    state there (`stated`: see stated_findings; a finding stated without a side counts everywhere). A negative
    equal to the positive after vocab.normalize_text is never returned. Fewer than k when the pool runs out."""
    base = " ".join((_HEDGE.sub("", phrase) if uncertain else phrase).split()) or phrase
    positive = pair_caption(phrase, side, uncertain, mode)
    out = [f"no {spell_side(base, side)}"]
    if side in ("left", "right"):
        out.append(pair_caption(other_side(base, side), side, uncertain, mode))
    if mode == "own":
        out.append(spell_side(base, side) if uncertain else f"possible {spell_side(base, side)}")
    here = {o for o, s in stated if s in (side, "bilateral", "") or side == "bilateral"}
    # the other findings in turn from the one after the phrase's own, so that not every phrase's first "other
    # finding" is the first of the list (atelectasis)
    names = list(REGIONAL)
    start = names.index(observation) + 1 if observation in names else 0
    out += [caption(o, side, zone) for o in names[start:] + names[:start] if o != observation and o not in here]
    seen, kept = {normalize_text(positive)}, []
    for text in out:
        if normalize_text(text) not in seen:
            seen.add(normalize_text(text))
            kept.append(text)
    return kept[:k]


def clear_regions(rois: dict, phrases: dict) -> list[tuple[int, str, str, str]]:
    """(ROI, observation, side, zone) of the regions a report says are clear: each lung and zone ROI on a side where
    the report states no regional finding as present or possible (a finding without a side counts for both), with
    each regional observation the report negates. Training pairs lung ROIs with "no X in the right lung"
    (`clear_captions`); evaluation's converse test uses them all."""
    busy = set()
    for o, n, side in zip(phrases["phrase_observation"], phrases["phrase_negated"], phrases["phrase_laterality"]):
        if not n and o in REGIONAL:
            busy |= {"right", "left"} if side in ("bilateral", "") else {side}
    negated = sorted({o for o, n in zip(phrases["phrase_observation"], phrases["phrase_negated"]) if n and o in REGIONAL})
    return [(i, o, side, zone) for i, (kind, side, zone) in enumerate(zip(
        rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]))
        if kind in ("lung", "zone") and side in ("right", "left") and side not in busy for o in negated]


def clear_captions(observation: str, side: str, zone: str) -> tuple[str, list[str]]:
    """The caption a clear region is pulled towards and its hard negative: "no pneumothorax in the right lung" over
    "pneumothorax in the right lung". What a report negates grounds to a region with nothing there."""
    present = caption(observation, side, zone)
    return f"no {present}", [present]


def read_truth(truth_dir: str | Path) -> tuple[dict, dict]:
    """The synthetic ground truth: {(dicom_id, finding_index): (x0, y0, x1, y1) original pixels} and
    {(study_id, sentence, observation): finding_index} for the phrases that describe a drawn finding."""
    import pandas as pd

    findings = pd.read_csv(Path(truth_dir, "findings.csv"), dtype={"dicom_id": str, "study_id": str})
    phrases = pd.read_csv(Path(truth_dir, "phrases.csv"), dtype={"study_id": str}, keep_default_na=False)
    box = {(r.dicom_id, r.finding_index): (r.x0, r.y0, r.x1, r.y1) for r in findings.itertuples()}
    region = {(r.study_id, " ".join(r.sentence.split()), r.observation): int(r.region)
              for r in phrases.itertuples() if r.region != "" and int(r.region) >= 0}
    return box, region


def on_finding(finding_box, roi_box, bilateral: bool, roi_side: str) -> bool:
    """Whether a paired ROI sits on the finding: the centre of the finding's box inside the ROI's box (both x0, y0,
    x1, y1 in one pixel grid). A bilateral finding is drawn as one box across both lungs, whose centre lies between
    them: it is judged by its half on the ROI's side (the patient's right is the image's left)."""
    fx0, fy0, fx1, fy1 = finding_box
    if bilateral:
        mid = (fx0 + fx1) / 2
        fx0, fx1 = (fx0, mid) if roi_side == "right" else (mid, fx1)
    cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
    x0, y0, x1, y1 = roi_box
    return bool(x0 <= cx <= x1 and y0 <= cy <= y1)


def accuracy_on_truth(crop_shards, report_shards, truth_dir: str | Path, uncertain: str = "drop") -> dict:
    """Score pairing on the synthetic ground truth: a pair is right when the centre of the finding its phrase
    describes lies inside the paired ROI (original pixels); for a bilateral phrase, the centre of the finding's half
    on the ROI's side. Only the synthetic source has this truth."""
    from .shards import Shard, decode

    corners, region = read_truth(truth_dir)
    counts = {"pairs": 0, "judged": 0, "right": 0, "lesion": 0, "zone": 0, "lung": 0}
    by_rule = {rule: {"judged": 0, "right": 0} for rule in ("lesion", "zone", "lung")}
    for crop_path, report_path in zip(crop_shards, report_shards):
        with Shard(crop_path) as c, Shard(report_path) as r:
            report_row = {image_id: i for i, image_id in enumerate(r.image_ids)}
            studies = decode(r.f["study_id"][()])
            all_rois = c.ragged_rows("rois", ["roi_kind", "roi_laterality", "roi_zone", "roi_area", "roi_box_original"])
            all_phrases = r.ragged_rows("phrases")
            for i, image_id in enumerate(c.image_ids):
                rois, ph, study = all_rois[i], all_phrases[report_row[image_id]], studies[report_row[image_id]]
                for pair in pair_rois(rois, ph, uncertain=uncertain):
                    counts["pairs"] += 1
                    counts[pair.rule] += 1
                    key = (study, " ".join(ph["phrase_sentence"][pair.phrase].split()),
                           ph["phrase_observation"][pair.phrase])
                    if key not in region or (image_id, region[key]) not in corners:
                        continue
                    right = on_finding(corners[(image_id, region[key])], rois["roi_box_original"][pair.roi],
                                       ph["phrase_laterality"][pair.phrase] == "bilateral",
                                       rois["roi_laterality"][pair.roi])
                    for tally in (counts, by_rule[pair.rule]):
                        tally["judged"] += 1
                        tally["right"] += right
    counts["accuracy"] = counts["right"] / max(counts["judged"], 1)
    # per rule: a lung ROI holds almost any finding of its side, so the lesion rule's figure is the demanding one
    counts["by_rule"] = {rule: {**t, "accuracy": t["right"] / t["judged"] if t["judged"] else None}
                         for rule, t in by_rule.items()}
    return counts
