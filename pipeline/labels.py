"""The 14 CheXpert observations, in the column order of the CheXpert labeler and MIMIC-CXR's tables.

Label values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned (never 0 for "unknown").
"""

OBSERVATIONS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]

_RANK = {1.0: 3, -1.0: 2, 0.0: 1}


def derive_labels(mentions) -> dict[str, float]:
    """Study labels from (observation, negated, uncertain) mentions, by the CheXpert labeler's rule:
    positive beats uncertain beats negative; NaN when not mentioned. No Finding is 1 when no observation
    other than Support Devices is positive or uncertain, else blank."""
    best: dict[str, float] = {}
    for observation, negated, uncertain in mentions:
        if observation not in _OBS_SET:
            continue
        value = 0.0 if negated else (-1.0 if uncertain else 1.0)
        if observation not in best or _RANK[value] > _RANK[best[observation]]:
            best[observation] = value
    labels = {o: best.get(o, float("nan")) for o in OBSERVATIONS}
    abnormal = any(labels[o] in (1.0, -1.0) for o in OBSERVATIONS if o not in ("Support Devices", "No Finding"))
    labels["No Finding"] = float("nan") if abnormal else 1.0
    return labels


# how a report says that a finding is there (1) or not (0), in pairs that differ only in that, for training the text
# side (the teacher's polarity term). None is a zero-shot prompt of evaluation (evaluation.zeroshot) or the
# grammar of its regional and robustness tests (vocab.statement), so zero-shot figures measure whether the
# reading of "no" carries over to wordings it was never trained on.
SAID = (("{} seen", "{} not seen"), ("{} noted", "no {} noted"), ("with {}", "without {}"),
        ("positive for {}", "negative for {}"), ("{} identified", "no {} identified"), ("{} visible", "{} not visible"))


def said(observation: str, value: float, form: int) -> str:
    """Label `value` (1 or 0) of `observation` in the wording SAID[form]: said("Edema", 0.0, 2) = "without edema"."""
    return SAID[form][0 if value == 1.0 else 1].format(observation.lower())


def label_prompts(labels: dict[str, float]) -> list[str]:
    """The label level of the text units: "pleural effusion", "no pneumothorax", "possible edema"."""
    out = []
    for o in OBSERVATIONS:
        v = labels.get(o)
        if v == 1.0:
            out.append(o.lower())
        elif v == 0.0 and o != "No Finding":
            out.append(f"no {o.lower()}")
        elif v == -1.0:
            out.append(f"possible {o.lower()}")
    return out


STATED = [k for k, o in enumerate(OBSERVATIONS) if o != "No Finding"]  # columns a report states as present or absent


_OBS_SET = set(OBSERVATIONS)
