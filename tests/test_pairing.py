import pytest

from pipeline.pairing import negative_captions, on_finding, pair_caption, pair_rois, stated_findings
from pipeline.vocab import REGIONAL, SIDE_WORDS, caption, mirror_text, normalize_text, other_side, spell_side


def rois(*items):
    kinds, sides, zones, areas = zip(*items)
    return {"roi_kind": list(kinds), "roi_laterality": list(sides), "roi_zone": list(zones), "roi_area": list(areas)}


def phrases(*items):
    obs, neg, unc, side, zone = zip(*items)
    return {"phrase_observation": list(obs), "phrase_negated": list(neg), "phrase_uncertain": list(unc),
            "phrase_laterality": list(side), "phrase_zone": list(zone)}


IMAGE_ROIS = rois(("image", "", "", 0), ("lung", "right", "", 900), ("zone", "right", "upper", 300),
                  ("zone", "right", "middle", 300), ("zone", "right", "lower", 300), ("lung", "left", "", 800),
                  ("zone", "left", "upper", 260), ("zone", "left", "middle", 270), ("zone", "left", "lower", 270),
                  ("lesion", "left", "lower", 120), ("lesion", "left", "upper", 40))


def test_pairs_follow_side_and_zone():
    ph = phrases(("Pleural Effusion", False, False, "left", "lower"),   # lesion ROI on the left, lower
                 ("Lung Opacity", False, False, "right", "middle"),     # no lesion on the right: the zone ROI
                 ("Pneumothorax", False, False, "right", ""),           # side only: the lung ROI
                 ("Atelectasis", False, False, "bilateral", "lower"),   # both sides
                 ("Pneumothorax", True, False, "left", ""),             # negated: not a positive pair
                 ("Edema", False, False, "", ""),                       # no side: stays global
                 ("Cardiomegaly", False, False, "", ""),                # not a lung region
                 ("Pneumonia", False, True, "right", "lower"))          # hedged: dropped by default
    got = [(p.roi, p.phrase, p.rule) for p in pair_rois(IMAGE_ROIS, ph)]
    assert got == [(9, 0, "lesion"), (3, 1, "zone"), (1, 2, "lung"), (4, 3, "zone"), (9, 3, "lesion")]
    with_hedged = pair_rois(IMAGE_ROIS, ph, uncertain="positive")
    assert (4, 7, "zone") in [(p.roi, p.phrase, p.rule) for p in with_hedged]


def test_side_only_lesion_phrase_takes_the_largest_lesion():
    ph = phrases(("Lung Lesion", False, False, "left", ""))
    assert [(p.roi, p.rule) for p in pair_rois(IMAGE_ROIS, ph)] == [(9, "lesion")]


def test_spread_findings_pair_with_the_lung_or_zone_never_a_lesion():
    # a pneumothorax is air along the pleura and edema a haze: a lesion ROI on their side is another finding's
    ph = phrases(("Pneumothorax", False, False, "left", ""), ("Edema", False, False, "bilateral", "middle"))
    assert [(p.roi, p.phrase, p.rule) for p in pair_rois(IMAGE_ROIS, ph)] == [(5, 0, "lung"), (3, 1, "zone"),
                                                                               (7, 1, "zone")]


def test_a_phrase_without_a_zone_leaves_the_lesion_another_finding_names():
    # "left lower lobe atelectasis" claims the left lower lesion; "left lung nodule" names no zone: it takes the
    # upper lesion although the lower one is larger
    ph = phrases(("Atelectasis", False, False, "left", "lower"), ("Lung Lesion", False, False, "left", ""))
    assert [(p.roi, p.phrase) for p in pair_rois(IMAGE_ROIS, ph)] == [(9, 0), (10, 1)]
    # with every lesion on its side claimed, it falls back to the lung
    only_lower = rois(*[r for r in zip(*IMAGE_ROIS.values()) if r[2] != "upper" or r[0] != "lesion"])
    assert [(p.roi, p.rule) for p in pair_rois(only_lower, ph)] == [(9, "lesion"), (5, "lung")]
    # the same finding said twice, once with its zone, keeps its lesion
    twice = phrases(("Atelectasis", False, False, "left", "lower"), ("Atelectasis", False, False, "left", ""))
    assert [(p.roi, p.rule) for p in pair_rois(only_lower, twice)] == [(9, "lesion"), (9, "lesion")]
    # a hedged phrase claims its zone's lesion whether hedged phrases are paired or dropped: training ("own") and
    # evaluation ("drop") give the nodule the same ROI
    hedged = phrases(("Pneumonia", False, True, "left", "lower"), ("Lung Lesion", False, False, "left", ""))
    assert [(p.roi, p.phrase) for p in pair_rois(IMAGE_ROIS, hedged, uncertain="drop")] == [(10, 1)]
    assert [(p.roi, p.phrase) for p in pair_rois(IMAGE_ROIS, hedged, uncertain="own")] == [(9, 0), (10, 1)]
    # a pneumothorax never takes a lesion, so it claims none: the nodule keeps the largest
    ph = phrases(("Pneumothorax", False, False, "left", "lower"), ("Lung Lesion", False, False, "left", ""))
    assert [(p.roi, p.rule) for p in pair_rois(IMAGE_ROIS, ph)] == [(8, "zone"), (9, "lesion")]


def test_pairing_accuracy_judges_a_bilateral_finding_by_its_half_on_the_rois_side():
    # bilateral edema drawn as one box across both lungs: its centre (x=200) is on the midline, in neither lung
    edema = (100, 100, 300, 200)
    right_mid, left_mid = (20, 90, 190, 210), (210, 90, 380, 210)  # the patient's right lung is the image's left
    assert on_finding(edema, right_mid, True, "right") and on_finding(edema, left_mid, True, "left")
    assert not on_finding(edema, right_mid, False, "right") and not on_finding(edema, left_mid, False, "left")
    # the half on the other side does not count
    assert not on_finding(edema, left_mid, True, "right")
    # a one-sided finding: its centre
    assert on_finding((30, 100, 90, 160), right_mid, False, "right")
    assert not on_finding((30, 100, 90, 160), left_mid, False, "left")


def test_a_side_said_twice_mirrors_once():
    # "left lingular" names the left side twice: its mirror is the right middle lobe, not "right right middle lobe"
    assert mirror_text("left lingular opacity") == "right middle lobe opacity"
    assert mirror_text("Left lingula atelectasis") == "Right middle lobe atelectasis"
    assert mirror_text("rightward shift of the mediastinum") == "leftward shift of the mediastinum"


@pytest.mark.parametrize("text,mirrored", [
    ("small left pleural effusion", "small right pleural effusion"),
    ("Right lower lobe opacity", "Left lower lobe opacity"),
    ("RLL and LUL nodules", "LLL and RUL nodules"),
    ("opacity in the lingula", "opacity in the right middle lobe"),
    ("right middle lobe consolidation", "lingula consolidation"),
    ("RML opacity", "lingula opacity"),
    ("lingular atelectasis", "right middle lobe atelectasis"),
    ("Lingula opacity", "Right middle lobe opacity"),
    ("left-sided effusion", "right-sided effusion"),
    ("bilateral effusions", "bilateral effusions"),
    ("no pneumothorax", "no pneumothorax"),
])
def test_flips_mirror_sides_and_lobe_names(text, mirrored):
    assert mirror_text(text) == mirrored
    # mirrored twice, every side word is back on its side (the RML may come back spelt out)
    sides = lambda t: [SIDE_WORDS[w] for w in t.lower().split() if w in SIDE_WORDS]  # noqa: E731
    assert sides(mirror_text(mirrored)) in (sides(text), ["right"])


# MIMIC-style phrases with their parsed (observation, side, zone), side from the words or from the sentence
MIMIC_PHRASES = [
    ("small left pleural effusion", "Pleural Effusion", "left", "lower"),
    ("RML opacity", "Lung Opacity", "right", "middle"),
    ("lingular atelectasis", "Atelectasis", "left", "middle"),
    ("RLL consolidation", "Consolidation", "right", "lower"),
    ("LUL nodule", "Lung Lesion", "left", "upper"),
    ("blunting of the costophrenic angle", "Pleural Effusion", "left", "lower"),  # "... on the left."
    ("apical pneumothorax", "Pneumothorax", "right", "upper"),  # "Right: apical pneumothorax."
    ("Left apex mass", "Lung Lesion", "left", "upper"),
    ("bibasilar atelectasis", "Atelectasis", "bilateral", "lower"),
    ("bilateral pleural effusions", "Pleural Effusion", "bilateral", "lower"),
    ("opacity at the right base", "Lung Opacity", "right", "lower"),
    ("possible left lower lobe pneumonia", "Pneumonia", "left", "lower"),
]


@pytest.mark.parametrize("phrase,observation,side,zone", MIMIC_PHRASES)
@pytest.mark.parametrize("uncertain", [False, True])
@pytest.mark.parametrize("mode", ["own", "drop", "positive"])
def test_no_hard_negative_equals_its_positive(phrase, observation, side, zone, uncertain, mode):
    positive = pair_caption(phrase, side, uncertain, mode)
    negatives = negative_captions(phrase, observation, side, zone, uncertain, mode, k=8)
    keys = [normalize_text(n) for n in negatives]
    assert normalize_text(positive) not in keys
    assert len(set(keys)) == len(keys)
    # the mirrored positive differs from the positive whenever the phrase has a side (flips change the text)
    if side in ("left", "right"):
        assert normalize_text(mirror_text(positive)) != normalize_text(positive)
        assert any(normalize_text(other_side(phrase.replace("possible ", ""), side)) in k for k in keys)


def test_side_from_the_sentence_is_spelt_out():
    assert spell_side("blunting of the costophrenic angle", "left") == "blunting of the costophrenic angle on the left"
    assert other_side("blunting of the costophrenic angle", "left") == "blunting of the costophrenic angle on the right"
    assert other_side("RML opacity", "right") == "lingula opacity"
    assert other_side("bibasilar atelectasis", "bilateral") == ""
    assert spell_side("small left pleural effusion", "left") == "small left pleural effusion"
    negatives = negative_captions("blunting of the costophrenic angle", "Pleural Effusion", "left", "lower", False, "own")
    assert negatives[:3] == ["no blunting of the costophrenic angle on the left",
                             "blunting of the costophrenic angle on the right",
                             "possible blunting of the costophrenic angle on the left"]


def test_other_finding_negatives_skip_what_the_report_states_there():
    ph = {"phrase_observation": ["Pleural Effusion", "Atelectasis", "Consolidation", "Pneumothorax"],
          "phrase_negated": [False, False, False, True], "phrase_laterality": ["left", "left", "right", "left"]}
    stated = stated_findings(ph)
    assert stated == {("Pleural Effusion", "left"), ("Atelectasis", "left"), ("Consolidation", "right")}
    neg = negative_captions("small left pleural effusion", "Pleural Effusion", "left", "lower", False, "own", 12, stated)
    others = neg[3:]
    assert not any("atelectasis" in n for n in others)  # stated on the left: never a negative there
    assert "consolidation in the left lower zone" in others  # stated on the right only: fair on the left
    assert "pneumothorax in the left lower zone" in others  # negated in the report: a fair negative


def test_negatives_and_captions():
    assert negative_captions("small left pleural effusion", "Pleural Effusion", "left", "lower", False, "own") == [
        "no small left pleural effusion", "small right pleural effusion", "possible small left pleural effusion",
        "pleural thickening in the left lower zone"]  # the other findings start after the phrase's own
    firsts = {negative_captions("x", o, "left", "lower", False, "drop", 3)[2] for o in REGIONAL}
    assert len(firsts) == len(REGIONAL)  # each finding's first "other finding" is another one
    assert negative_captions("bibasilar atelectasis", "Atelectasis", "bilateral", "lower", False, "drop", 2) == [
        "no bibasilar atelectasis", "consolidation in both lower zones"]
    assert caption("Edema", "bilateral", "") == "pulmonary edema in both lungs"
    assert caption("Atelectasis", "bilateral", "lower") == "atelectasis in both lower zones"
    assert caption("Pneumothorax", "left", "") == "pneumothorax in the left lung"
    assert caption("Pneumothorax", "", "") == "pneumothorax"
    assert caption("Lung Lesion", "right", "upper") == "nodule in the right upper zone"


def test_clear_regions_pull_towards_what_the_report_negates():
    from pipeline.pairing import clear_captions, clear_regions

    rois = {"roi_kind": ["lung", "lung", "zone"], "roi_laterality": ["right", "left", "left"],
            "roi_zone": ["", "", "lower"]}
    ph = {"phrase_observation": ["Pleural Effusion", "Pneumothorax"], "phrase_negated": [False, True],
          "phrase_laterality": ["left", ""]}
    assert clear_regions(rois, ph) == [(0, "Pneumothorax", "right", "")]  # the left lung has an effusion
    assert clear_captions("Pneumothorax", "right", "") == ("no pneumothorax in the right lung",
                                                           ["pneumothorax in the right lung"])
    # a flip mirrors it like any other caption
    assert mirror_text(clear_captions("Pneumothorax", "right", "")[0]) == "no pneumothorax in the left lung"
