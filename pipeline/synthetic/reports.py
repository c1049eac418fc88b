"""MIMIC-CXR style reports for synthetic studies, with the ground truth of every finding phrase.

Each present finding is described with its side, zone and size in MIMIC's words: lobe names and their
abbreviations (RLL, lingula, "lingular"), bases and costophrenic angles, comparisons ("unchanged from prior",
"has increased since ___"), hedges of two grades ("probable", "is likely"; "possible", "cannot be excluded",
"may represent"). Absent findings are negated, alone or in lists ("No focal consolidation, pleural effusion,
or pneumothorax."), normal studies get the usual boilerplate ("No acute cardiopulmonary process."), and
de-identification leaves "___". Every finding phrase is written with its ground truth (observation, negated,
hedge, the side and zone its words state as `pipeline.vocab` reads them, the finding it describes). The study
labels come from the phrases by the parser's rule (`pipeline.reports.score.study_labels`); the parser does
not always read this wording right, so its label agreement is measured, not 1.0 by construction.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass

import numpy as np

from .. import vocab
from ..reports.score import study_labels
from .anatomy import Finding

# where, in a report's words; the lobe names come from the shared vocabulary
LOBES = {
    ("right", "upper"): [vocab.LOBE_NAMES[("right", "upper")], "right apex", "right upper lung zone", "RUL"],
    ("right", "middle"): [vocab.LOBE_NAMES[("right", "middle")], "right mid lung", "RML"],
    ("right", "lower"): [vocab.LOBE_NAMES[("right", "lower")], "right base", "right lung base", "RLL"],
    ("left", "upper"): [vocab.LOBE_NAMES[("left", "upper")], "left apex", "left upper lung zone", "LUL"],
    ("left", "middle"): [vocab.LOBE_NAMES[("left", "middle")], "left mid lung", "lingular segment"],
    ("left", "lower"): [vocab.LOBE_NAMES[("left", "lower")], "left base", "left lung base", "LLL"],
}
# the same places as adjectives ("lingular consolidation", "right basilar opacity")
LOBE_ADJECTIVES = {("right", "upper"): ["right upper lobe", "right apical"], ("right", "middle"): ["right middle lobe"],
                   ("right", "lower"): ["right lower lobe", "right basilar"], ("left", "upper"): ["left upper lobe",
                   "left apical"], ("left", "middle"): ["lingular"], ("left", "lower"): ["left lower lobe", "left basilar"]}
SEVERITY = {"small": "mild", "moderate": "moderate", "large": "severe"}
# hedges by grade (see pipeline/reports/lexicon.py): a probable finding is labelled uncertain, a possible one not
HEDGES = {"possible": ["Possible {m}.", "{M} cannot be excluded.", "Findings may represent {m}.",
                       "Cannot exclude {m}.", "Subtle {m} is questioned."],
          "probable": ["Probable {m}.", "Likely {m}.", "{M} is likely."]}
# statements of a present finding, with comparisons to a prior study ("___": the de-identified date)
PRESENT = ["{M}.", "There is {a} {m}.", "{M}, unchanged from prior.", "{M} is unchanged from ___.",
           "Compared to the prior study from ___, {m} has increased.", "{M} is again seen.", "Interval development "
           "of {a} {m}.", "No interval change in the {m}."]
# typos only in words that carry no observation, so label agreement stays exact
# (none of these words is part of a lexicon pattern in pipeline/reports/lexicon.py)
TYPOS = {"visualized": "visualised", "the lungs": "teh lungs", "obtained": "obtaned", "contours": "contuors"}


@dataclass
class Phrase:
    section: str  # findings | impression
    sentence_index: int
    sentence: str
    phrase: str  # the mention itself, e.g. "small left pleural effusion"
    finding: str  # synthetic finding kind, or "" for a normal statement
    observation: str  # CheXpert observation, or "" when none
    negated: bool
    uncertain: bool
    laterality: str  # right | left | bilateral | "": as the phrase's words say
    zone: str  # upper | middle | lower | "": as the words say (an effusion is lower)
    size: str
    region: int  # index of the finding in the image's finding list, -1 when none
    hedge: str = ""  # "" | probable | possible (uncertain is True for both)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _mention(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """(mention text, CheXpert observation) for a present finding."""
    side, zone, size = f.laterality, f.zone, f.size
    lobe = str(rng.choice(LOBES[(side, zone)])) if (side, zone) in LOBES else ""
    adj = str(rng.choice(LOBE_ADJECTIVES[(side, zone)])) if (side, zone) in LOBE_ADJECTIVES else ""
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    if f.kind == "pleural_effusion":
        return pick([f"{size} {side} pleural effusion", f"{size} {side} effusion",
                     f"{size} {side} pleural effusion with blunting of the costophrenic angle",
                     f"{size} amount of {side} pleural fluid", f"blunting of the {side} costophrenic angle",
                     f"{size} layering {side} pleural effusion", f"{size} {side}-sided pleural effusion"]), \
            "Pleural Effusion"
    if f.kind == "pneumothorax":
        return pick([f"{size} {side} apical pneumothorax", f"{size} {side} pneumothorax",
                     f"{size} {side} pneumothorax with a visible pleural line"]), "Pneumothorax"
    if f.kind == "consolidation":
        if rng.random() < 0.5:
            return pick([f"{lobe} consolidation", f"focal consolidation in the {lobe}", f"{adj} consolidation",
                         f"consolidation of the {lobe}"]), "Consolidation"
        return pick([f"{lobe} opacity", f"patchy opacity in the {lobe}", f"airspace opacity in the {lobe}",
                     f"{adj} opacity", f"{adj} airspace disease", f"hazy {adj} opacities"]), "Lung Opacity"
    if f.kind == "nodule":
        mm = {"small": 6, "moderate": 9, "large": 12}[size] + int(rng.integers(0, 3))
        return pick([f"{mm} mm nodule in the {lobe}", f"{mm} mm {lobe} pulmonary nodule",
                     f"{mm} mm {adj} nodule"]), "Lung Lesion"
    if f.kind == "mass":
        cm = {"small": 3.1, "moderate": 4.2, "large": 5.5}[size]
        return pick([f"{cm:.1f} cm mass in the {lobe}", f"{lobe} mass measuring {cm:.1f} cm"]), "Lung Lesion"
    if f.kind == "atelectasis":
        if zone == "lower":
            return pick([f"{side} basilar atelectasis", f"plate-like atelectasis at the {lobe}",
                         f"{adj} atelectasis", f"atelectatic changes at the {lobe}"]), "Atelectasis"
        return pick([f"linear atelectasis in the {lobe}", f"{lobe} subsegmental atelectasis",
                     f"{adj} atelectasis"]), "Atelectasis"
    if f.kind == "edema":
        sev = SEVERITY[size]
        return pick([f"{sev} pulmonary edema", f"{sev} interstitial pulmonary edema",
                     f"perihilar haziness consistent with {sev} pulmonary edema",
                     f"{sev} bilateral perihilar edema", f"{sev} interstitial edema"]), "Edema"
    if f.kind == "cardiomegaly":
        return pick([f"{size} cardiomegaly", "enlarged cardiac silhouette", f"{size} enlargement of the heart",
                     "heart size is enlarged"]), "Cardiomegaly"
    if f.kind == "support_devices":
        if f.detail == "endotracheal tube":
            return pick(["endotracheal tube terminating 4 cm above the carina",
                         "endotracheal tube in standard position"]), "Support Devices"
        return pick(["right internal jugular central venous catheter with tip in the low SVC",
                     "right IJ line terminating at the cavoatrial junction"]), "Support Devices"
    raise ValueError(f.kind)


# absent findings: negated sentences, each with the observations it negates
NEGATIONS = {
    "pneumothorax": [("No pneumothorax.", [("pneumothorax", "Pneumothorax")]),
                     ("There is no pneumothorax.", [("pneumothorax", "Pneumothorax")]),
                     ("No PTX.", [("PTX", "Pneumothorax")])],
    "pleural_effusion": [("No pleural effusion.", [("pleural effusion", "Pleural Effusion")]),
                         ("The lungs are clear without effusion.", [("effusion", "Pleural Effusion")])],
    "consolidation": [("No focal consolidation.", [("focal consolidation", "Consolidation")]),
                      ("There is no evidence of focal consolidation.", [("focal consolidation", "Consolidation")])],
    "edema": [("No pulmonary edema.", [("pulmonary edema", "Edema")]),
              ("There is no evidence of pulmonary edema.", [("pulmonary edema", "Edema")])],
    "cardiomegaly": [("Heart size is normal.", [("heart size", "Cardiomegaly")]),
                     ("The heart is not enlarged.", [("heart", "Cardiomegaly")]),
                     ("Normal heart size.", [("normal heart size", "Cardiomegaly")])],
    "atelectasis": [("No bibasilar atelectasis.", [("bibasilar atelectasis", "Atelectasis")]),
                    ("There is no atelectasis.", [("atelectasis", "Atelectasis")])],
    "nodule": [("No suspicious pulmonary nodules.", [("pulmonary nodules", "Lung Lesion")])],
}
COMBINED = [
    ("No pleural effusion or pneumothorax.", ["pleural_effusion", "pneumothorax"],
     [("pleural effusion", "Pleural Effusion"), ("pneumothorax", "Pneumothorax")]),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     ["consolidation", "pleural_effusion", "pneumothorax"],
     [("focal consolidation", "Consolidation"), ("pleural effusion", "Pleural Effusion"),
      ("pneumothorax", "Pneumothorax")]),
    ("There is no focal consolidation, effusion, or pneumothorax.",
     ["consolidation", "pleural_effusion", "pneumothorax"],
     [("focal consolidation", "Consolidation"), ("effusion", "Pleural Effusion"), ("pneumothorax", "Pneumothorax")]),
    ("No pleural effusion, pneumothorax, or pulmonary edema.", ["pleural_effusion", "pneumothorax", "edema"],
     [("pleural effusion", "Pleural Effusion"), ("pneumothorax", "Pneumothorax"), ("pulmonary edema", "Edema")]),
    ("Lungs are clear without consolidation or edema.", ["consolidation", "edema"],
     [("consolidation", "Consolidation"), ("edema", "Edema")]),
    ("No evidence of pneumonia, effusion, or pneumothorax.", ["consolidation", "pleural_effusion", "pneumothorax"],
     [("pneumonia", "Pneumonia"), ("effusion", "Pleural Effusion"), ("pneumothorax", "Pneumothorax")]),
]
NORMAL = [
    ("The cardiomediastinal silhouette is unremarkable.", [("cardiomediastinal silhouette", "Enlarged Cardiomediastinum")]),
    ("Hilar contours are normal.", []),
    ("No acute osseous abnormality is visualized.", [("osseous abnormality", "Fracture")]),
    ("The costophrenic angles are sharp.", [("costophrenic angles are sharp", "Pleural Effusion")]),
    ("The lungs are well expanded and clear.", []),
]
# impressions of a study without findings
NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute intrathoracic process.",
                      "Normal chest radiograph.", "No acute cardiopulmonary abnormality.",
                      "No radiographic evidence of acute cardiopulmonary disease."]


def _stated(text: str, kind: str = "") -> dict:
    """A phrase's side and zone are what its words say (the anatomy is in `region`); pleural fluid
    collects at the base, so an effusion is in the lower zone even when the text names no zone."""
    words = text.lower().replace(",", " ").split()
    side = next((vocab.SIDE_WORDS[w] for w in words if w in vocab.SIDE_WORDS), "")
    zone = next((vocab.ZONE_WORDS[w] for w in words if w in vocab.ZONE_WORDS),
                "lower" if kind == "pleural_effusion" else "")
    return {"laterality": side, "zone": zone}


class ReportWriter:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.phrases: list[Phrase] = []
        self.sentences: dict[str, list[str]] = {"findings": [], "impression": []}

    def _add(self, section: str, sentence: str, mentions: list[dict]) -> None:
        if self.rng.random() < 0.04:
            for right, wrong in TYPOS.items():
                if right in sentence:
                    sentence = sentence.replace(right, wrong, 1)
                    break
        idx = len(self.sentences[section])
        self.sentences[section].append(sentence)
        for m in mentions:
            self.phrases.append(Phrase(section=section, sentence_index=idx, sentence=sentence, **m))

    def present(self, section: str, i: int, f: Finding, hedge: str) -> None:
        text, obs = _mention(f, self.rng)
        if hedge:
            template = str(self.rng.choice(HEDGES[hedge]))
        else:  # a statement ("... is enlarged") takes no comparison template
            template = str(self.rng.choice(PRESENT if " is " not in text else PRESENT[:1]))
        sentence = template.format(M=_cap(text), m=text, a="an" if text[0].lower() in "aeiou" else "a")
        self._add(section, sentence, [dict(phrase=text, finding=f.kind, observation=obs, negated=False,
                                           uncertain=bool(hedge), **_stated(text, f.kind),
                                           size=f.size, region=i, hedge=hedge)])
        if f.kind == "consolidation" and not hedge and self.rng.random() < 0.3:
            self._add(section, "This may represent pneumonia in the appropriate clinical setting.",
                      [dict(phrase="pneumonia", finding=f.kind, observation="Pneumonia", negated=False,
                            uncertain=True, laterality="", zone="", size=f.size, region=i, hedge="possible")])
        if f.kind == "pleural_effusion" and self.rng.random() < 0.3:
            other = "left" if f.laterality == "right" else "right"
            self._add(section, f"No {other} pleural effusion.",
                      [dict(phrase=f"{other} pleural effusion", finding=f.kind, observation="Pleural Effusion",
                            negated=True, uncertain=False, laterality=other, zone="lower", size="", region=-1)])

    def negated(self, section: str, sentence: str, mentions: list[tuple[str, str]], kinds: list[str]) -> None:
        self._add(section, sentence, [dict(phrase=p, finding=k, observation=o, negated=True, uncertain=False,
                                           **_stated(p), size="", region=-1)
                                      for (p, o), k in zip(mentions, kinds)])

    def normal(self, section: str, sentence: str, mentions: list[tuple[str, str]]) -> None:
        self._add(section, sentence, [dict(phrase=p, finding="", observation=o, negated=True, uncertain=False,
                                           **_stated(p), size="", region=-1) for p, o in mentions])


def write_report(findings: list[Finding], rng: np.random.Generator, sex: str, view: str,
                 layout: str = "full") -> tuple[str, list[Phrase]]:
    """Report text and its phrases. layout: full | impression_only | empty_findings."""
    w = ReportWriter(rng)
    present = {f.kind for f in findings}
    hedged = [str(rng.choice(["probable", "possible"])) if rng.random() < 0.15
              and f.kind not in ("support_devices", "cardiomegaly") else "" for f in findings]

    if layout != "impression_only":
        if layout == "full":
            w._add("findings", f"{'PA and lateral' if view == 'PA' else 'Portable AP upright'} views of the chest "
                               "were obtained.", [])
            for i, (f, h) in enumerate(zip(findings, hedged)):
                w.present("findings", i, f, h)
            absent = [k for k in NEGATIONS if k not in present]
            combos = [c for c in COMBINED if not set(c[1]) & present]
            used: set[str] = set()
            if combos and rng.random() < 0.5:
                sentence, kinds, mentions = combos[int(rng.integers(len(combos)))]
                w.negated("findings", sentence, mentions, kinds)
                used |= set(kinds)
            for k in absent:
                if k not in used and rng.random() < 0.6:
                    sentence, mentions = NEGATIONS[k][int(rng.integers(len(NEGATIONS[k])))]
                    w.negated("findings", sentence, mentions, [k] * len(mentions))
            for sentence, mentions in NORMAL:
                if rng.random() < 0.4 and not (mentions and mentions[0][1] == "Enlarged Cardiomediastinum"
                                               and "cardiomegaly" in present):
                    w.normal("findings", sentence, mentions)
    # impression: the main findings again, or a normal statement
    main = [(i, f) for i, f in enumerate(findings) if f.kind != "support_devices"][:2]
    if main:
        for i, f in main:
            w.present("impression", i, f, hedged[i])
    else:
        w._add("impression", str(rng.choice(NORMAL_IMPRESSIONS)), [])
    if main and rng.random() < 0.1:
        w._add("impression", "Dr. ___ was notified of the findings by telephone at ___.", [])

    age = "___-year-old " + ("woman" if sex == "F" else "man")
    indication = str(rng.choice(["with cough and fever.", "with shortness of breath.", "with chest pain.",
                                 "status post line placement.", "with ___ , evaluate for pneumonia."]))
    parts = ["                                 FINAL REPORT",
             f" EXAMINATION:  CHEST ({'PA AND LAT' if view == 'PA' else 'PORTABLE AP'})", "",
             f" INDICATION:  {age} {indication}", "",
             f" COMPARISON:  {rng.choice(['___', 'None.', 'Chest radiograph ___.'])}", ""]
    if layout != "impression_only":
        parts += [" FINDINGS: ", ""]
        parts += [_fill(w.sentences["findings"]) if w.sentences["findings"] else " ___"]
        parts += [""]
    parts += [" IMPRESSION: ", "", _fill(w.sentences["impression"]), ""]
    return "\n".join(parts), w.phrases


def _fill(sentences: list[str]) -> str:
    """Lines of 78 characters like MIMIC's, never broken at a hyphen ("right-sided" stays one word)."""
    return textwrap.fill("  ".join(sentences), 78, initial_indent=" ", subsequent_indent=" ", break_on_hyphens=False)


def derive_labels(phrases: list[Phrase]) -> dict[str, float]:
    """The study's CheXpert labels from its phrases, by the parser's rule (`pipeline.reports.score`)."""
    return study_labels((p.observation, p.negated, p.hedge) for p in phrases)


def phrase_rows(study_id: str, phrases: list[Phrase]) -> list[dict]:
    return [{"study_id": study_id, **asdict(p)} for p in phrases]
