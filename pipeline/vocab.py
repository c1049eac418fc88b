"""The one vocabulary of places and regional findings: sides, zones, lobes, their words, and the mirror map.

Report parsing (which words state a side or a zone), pairing and hard negatives (the other side of a phrase),
side-aware flips (every side-bearing text mirrored), the concept prompts, the synthetic report writer and the
evaluation all read it from here, so "RML", "lingula", "bibasilar" or "costophrenic angle" mean one thing.

Sides are the patient's: "right" is on the image's left on a PA / AP film. Zones are thirds of a lung (upper,
middle, lower). A lobe names a side and a zone; the mirror of a lobe is the lobe in the same zone of the other
lung: RUL <-> LUL, RLL <-> LLL, and the right middle lobe <-> the lingula (the left lung has no middle lobe; the
lingula is its anatomical counterpart, the part of the left upper lobe beside the heart that mirrors the RML).
"""

from __future__ import annotations

import re

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
OTHER_SIDE = {"right": "left", "left": "right", "bilateral": "bilateral", "": ""}

# observations that sit in a lung region (the others: heart, mediastinum, devices, bones stay global) and the
# plain name a caption gives each
REGIONAL = {"Atelectasis": "atelectasis", "Consolidation": "consolidation", "Edema": "pulmonary edema",
            "Lung Lesion": "nodule", "Lung Opacity": "opacity", "Pleural Effusion": "pleural effusion",
            "Pleural Other": "pleural thickening", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}
# findings that spread over a lung or a zone instead of forming one opacity: pairing gives them the lung or zone ROI,
# never a lesion ROI (a pneumothorax is air along the pleura, edema a haze around both hila)
SPREAD = {"Edema", "Pneumothorax"}
# where a finding sits when the report names no zone (pleural fluid collects at the base)
DEFAULT_ZONE = {"Pleural Effusion": "lower"}

# lobes: abbreviation and full name -> (side, zone)
LOBES = {"rul": ("right", "upper"), "rml": ("right", "middle"), "rll": ("right", "lower"),
         "lul": ("left", "upper"), "lll": ("left", "lower"), "lingula": ("left", "middle"),
         "lingular": ("left", "middle")}
LOBE_NAMES = {("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
              ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
              ("left", "middle"): "lingula", ("left", "lower"): "left lower lobe"}

# single (lower-case) tokens that state a side, as the parser reads them
SIDE_WORDS = {"left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral",
              "bibasilar": "bilateral", "bibasal": "bilateral", "both": "bilateral", "b/l": "bilateral",
              "biapical": "bilateral", "left-sided": "left", "right-sided": "right",
              **{w: side for w, (side, _) in LOBES.items()}}
# single tokens that state a zone
ZONE_WORDS = {"upper": "upper", "apical": "upper", "apex": "upper", "apices": "upper", "biapical": "upper",
              "mid": "middle", "middle": "middle", "perihilar": "middle", "hilar": "middle", "lower": "lower",
              "basilar": "lower", "basal": "lower", "base": "lower", "bases": "lower", "bibasilar": "lower",
              "bibasal": "lower", "retrocardiac": "lower", "costophrenic": "lower", "infrahilar": "lower",
              "subpulmonic": "lower", **{w: zone for w, (_, zone) in LOBES.items()}}
ZONE_PLACES = {"upper": "upper zone", "middle": "mid zone", "lower": "lower zone"}

# what a horizontal flip turns each side-bearing word into (longest first when matching)
MIRROR = {"left": "right", "right": "left", "rul": "lul", "lul": "rul", "rll": "lll", "lll": "rll",
          "rml": "lingula", "right middle lobe": "lingula", "lingula": "right middle lobe",
          "lingular": "right middle lobe", "left lingula": "right middle lobe", "left lingular": "right middle lobe",
          "rightward": "leftward", "leftward": "rightward", "dextroscoliosis": "levoscoliosis", "levoscoliosis": "dextroscoliosis",
          "dextroconvex": "levoconvex", "levoconvex": "dextroconvex"}
_MIRROR_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, MIRROR), key=len, reverse=True)) + r")\b", re.I)


def mirror_text(text: str) -> str:
    """The text of the mirrored image: left <-> right and every lobe to its mirror, case kept ("Left" ->
    "Right", "RLL" -> "LLL", "RML" -> "lingula", "lingular" -> "right middle lobe")."""
    def repl(m: re.Match) -> str:
        word = m.group(0)
        new = MIRROR[word.lower()]
        if word.isupper() and len(word) > 1:  # RLL -> LLL, RML -> lingula
            return new.upper() if len(new) == len(word) else new
        return new[:1].upper() + new[1:] if word[0].isupper() else new

    return _MIRROR_RE.sub(repl, text)


def states_side(text: str) -> bool:
    """Whether the words of a text carry a side that a flip would change."""
    return bool(_MIRROR_RE.search(text))


def spell_side(phrase: str, side: str) -> str:
    """The phrase with its side in its own words: a phrase whose side came from its sentence ("blunting of the
    costophrenic angle" in "... on the left") gets it appended, so mirroring it gives the other side."""
    if side not in ("left", "right") or states_side(phrase):
        return phrase
    return f"{phrase} on the {side}"


def other_side(phrase: str, side: str) -> str:
    """The same phrase about the other lung ("" for a bilateral or sideless one)."""
    if side not in ("left", "right"):
        return ""
    return mirror_text(spell_side(phrase, side))


def place(side: str, zone: str) -> str:
    """Where, in words: "the left lower zone", "the right lung", "both lungs", "both lower zones"."""
    if side == "bilateral":
        return f"both {ZONE_PLACES[zone]}s" if zone in ZONE_PLACES else "both lungs"
    if not side:
        return ""
    return f"the {side} {ZONE_PLACES.get(zone, 'lung')}"


def caption(observation: str, side: str, zone: str) -> str:
    """A plain caption from attributes: "pleural effusion in the left lower zone", "edema in both lungs"."""
    name = REGIONAL.get(observation, observation.lower())
    where = place(side, zone)
    return f"{name} in {where}" if where else name


def statement(observation: str, side: str, zone: str, negated: bool = False, uncertain: bool = False) -> str:
    """A sentence-style statement from attributes, one grammar for every polarity so that two statements differ
    only in the attribute they are built from: "there is pleural effusion in the left lower zone", "there is no
    ...", "there may be ...". (Evaluation's robustness alternatives; training never uses this grammar.)"""
    verb = "there is no" if negated else "there may be" if uncertain else "there is"
    return f"{verb} {caption(observation, side, zone)}"


_PUNCT = re.compile(r"[^\w/]+")


def normalize_text(text: str) -> str:
    """Texts equal under this are the same caption: case, punctuation and spacing do not count."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())
