"""ROI <-> phrase pairing and hard negative captions, from the crop and parse_reports attributes alone.

The same path runs on real and synthetic data: nothing here reads ground truth.

Pairing, for each present (or, if allowed, uncertain) phrase of a regional observation:
1. a lesion ROI on the phrase's side, in its zone when it names one (else the largest lesion on that side);
2. else the zone ROI of that side and zone;
3. else the lung ROI of that side ("bilateral" pairs with both sides).
A phrase with no side ("mild pulmonary edema") is not paired: it still teaches through the report.

Hard negatives of a phrase (the L_neg captions): its negation, the other side, its uncertain form, and other
findings at the same place. `swap_sides` turns left into right in any text, for side-aware flips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# observations that sit in a lung region; the others (heart, mediastinum, devices, bones) stay global
REGIONAL = {"Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Lung Opacity", "Pleural Effusion",
            "Pleural Other", "Pneumonia", "Pneumothorax"}
CANONICAL = {"Atelectasis": "atelectasis", "Consolidation": "consolidation", "Edema": "pulmonary edema",
             "Lung Lesion": "nodule", "Lung Opacity": "opacity", "Pleural Effusion": "pleural effusion",
             "Pleural Other": "pleural thickening", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}
ZONE_WORDS = {"upper": "upper zone", "middle": "mid zone", "lower": "lower zone"}


@dataclass
class Pair:
    roi: int  # index into the image's ROIs
    phrase: int  # index into the image's phrases
    rule: str  # lesion | zone | lung


def pair_rois(rois: dict[str, list], phrases: dict[str, list], uncertain: str = "drop") -> list[Pair]:
    """Pairs for one image. rois: roi_kind, roi_laterality, roi_zone, roi_area (lists, one per ROI);
    phrases: phrase_observation, phrase_negated, phrase_uncertain, phrase_laterality, phrase_zone.
    uncertain: "drop" (hedged phrases get no ROI) or "positive" (paired like present ones)."""
    kinds, sides, zones = rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]
    areas = rois.get("roi_area", [0] * len(kinds))
    pairs = []
    for p, (obs, neg, unc, side, zone) in enumerate(zip(
            phrases["phrase_observation"], phrases["phrase_negated"], phrases["phrase_uncertain"],
            phrases["phrase_laterality"], phrases["phrase_zone"])):
        if neg or obs not in REGIONAL or not side or (unc and uncertain == "drop"):
            continue
        for s in (("right", "left") if side == "bilateral" else (side,)):
            lesions = [i for i, k in enumerate(kinds) if k == "lesion" and sides[i] == s and (not zone or zones[i] == zone)]
            if lesions:
                pairs.append(Pair(max(lesions, key=lambda i: areas[i]), p, "lesion"))
                continue
            zone_roi = [i for i, k in enumerate(kinds) if k == "zone" and sides[i] == s and zones[i] == zone]
            if zone and zone_roi:
                pairs.append(Pair(zone_roi[0], p, "zone"))
                continue
            lung = [i for i, k in enumerate(kinds) if k == "lung" and sides[i] == s]
            if lung:
                pairs.append(Pair(lung[0], p, "lung"))
    return pairs


_SIDE = re.compile(r"\b(right middle lobe|lingula|left|right|rul|lul|rll|lll)\b", re.I)
_SWAP = {"left": "right", "right": "left", "rul": "lul", "lul": "rul", "rll": "lll", "lll": "rll",
         "lingula": "right middle lobe", "right middle lobe": "lingula"}


def swap_sides(text: str) -> str:
    """Left <-> right in any text, keeping case ("Left" -> "Right", "RLL" -> "LLL"); the lingula (left only)
    becomes the right middle lobe and back."""
    def repl(m: re.Match) -> str:
        word = m.group(0)
        new = _SWAP[word.lower()]
        if word.isupper() and len(word) == 3:  # RLL -> LLL
            return new.upper()
        return new[:1].upper() + new[1:] if word[0].isupper() else new

    return _SIDE.sub(repl, text)


def caption(observation: str, side: str, zone: str) -> str:
    """A plain caption from attributes: "pleural effusion in the left lower zone", "edema in both lungs"."""
    name = CANONICAL.get(observation, observation.lower())
    if side == "bilateral":
        return f"{name} in both {ZONE_WORDS[zone]}s" if zone in ZONE_WORDS else f"{name} in both lungs"
    place = " ".join(filter(None, (side, ZONE_WORDS.get(zone, "") or ("lung" if side else ""))))
    return f"{name} in the {place}" if place else name


def hard_negatives(phrase: str, observation: str, side: str, zone: str, others: int = 2) -> dict[str, list[str]]:
    """Negative captions for one present phrase, by kind: negated, side, uncertain, other finding."""
    out = {"negated": [f"no {phrase}"], "uncertain": [f"possible {phrase}"], "side": [], "other_finding": []}
    if side in ("left", "right"):
        out["side"].append(swap_sides(phrase))
    for obs in [o for o in CANONICAL if o != observation][:others]:
        out["other_finding"].append(caption(obs, side, zone))
    return out
