import pytest

from pipeline.pairing import caption, hard_negatives, pair_rois, swap_sides


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


@pytest.mark.parametrize("text,swapped", [
    ("small left pleural effusion", "small right pleural effusion"),
    ("Right lower lobe opacity", "Left lower lobe opacity"),
    ("RLL and LUL nodules", "LLL and RUL nodules"),
    ("opacity in the lingula", "opacity in the right middle lobe"),
    ("right middle lobe consolidation", "lingula consolidation"),
    ("Lingula opacity", "Right middle lobe opacity"),
    ("left-sided effusion", "right-sided effusion"),
    ("bilateral effusions", "bilateral effusions"),
    ("no pneumothorax", "no pneumothorax"),
])
def test_swap_sides(text, swapped):
    assert swap_sides(text) == swapped
    assert swap_sides(swap_sides(text)) == text


def test_hard_negatives_and_captions():
    neg = hard_negatives("small left pleural effusion", "Pleural Effusion", "left", "lower")
    assert neg["negated"] == ["no small left pleural effusion"]
    assert neg["side"] == ["small right pleural effusion"]
    assert neg["uncertain"] == ["possible small left pleural effusion"]
    assert neg["other_finding"] == ["atelectasis in the left lower zone", "consolidation in the left lower zone"]
    assert hard_negatives("bibasilar atelectasis", "Atelectasis", "bilateral", "lower")["side"] == []
    assert caption("Edema", "bilateral", "") == "pulmonary edema in both lungs"
    assert caption("Atelectasis", "bilateral", "lower") == "atelectasis in both lower zones"
    assert caption("Pneumothorax", "left", "") == "pneumothorax in the left lung"
    assert caption("Pneumothorax", "", "") == "pneumothorax"
    assert caption("Lung Lesion", "right", "upper") == "nodule in the right upper zone"
