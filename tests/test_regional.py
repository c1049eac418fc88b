"""Figures only the image can win, and what they stand beside: the fixed-position presence AUROC (an oracle scores
1, a model that sees only position 0.5), same-position top-1, the input controls and the null band."""

import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from pipeline.evaluation import regional
from pipeline.evaluation.controls import ControlImages, null_band, other_patient
from pipeline.vocab import REGIONAL, statement

WHERE = [("image", "", "")] + [(k, s, z) for s in ("right", "left") for k, z in
                               (("lung", ""), ("zone", "upper"), ("zone", "middle"), ("zone", "lower"))]


def text_table(dim: int = 512):
    """Every text its own random unit vector (seeded by the text): near-orthogonal in 512 dimensions."""
    cache = {}

    def texts(strings):
        for t in strings:
            if t not in cache:
                v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(dim)
                cache[t] = v / np.linalg.norm(v)
        return np.stack([cache[t] for t in strings])

    return texts


def cohort(n_images: int = 24, seed: int = 0):
    """n images with the nine ROIs of WHERE each; findings drawn at random per side and zone."""
    rng = np.random.default_rng(seed)
    roi_where = WHERE * n_images
    owner = np.repeat(np.arange(n_images), len(WHERE))
    findings = []
    for _ in range(n_images):
        f = set()
        for o in ("Pleural Effusion", "Pneumothorax", "Consolidation"):
            for side in ("right", "left"):
                if rng.random() < 0.4:
                    f.add((o, side, str(rng.choice(["upper", "middle", "lower"])), None))
        findings.append(f)
    return roi_where, owner, findings, [set()] * n_images



def oracle_model(roi_where, owner, findings, texts, boxes=None) -> np.ndarray:
    """The oracle model: each lung and zone ROI embeds the statements of what is true of it (present or absent)."""
    model = np.zeros((len(roi_where), 512))
    for r, (kind, side, zone) in enumerate(roi_where):
        if kind in ("lung", "zone"):
            for o in REGIONAL:
                y = regional.presence_label(findings[owner[r]], set(), o, side, zone,
                                            *(() if boxes is None else (boxes[r],)))
                if np.isfinite(y):
                    model[r] += texts([statement(o, side, zone, negated=not y)])[0]
    return model

def test_presence_labels_follow_side_and_zone():
    found = {("Pleural Effusion", "left", "lower", None), ("Edema", "right", "", None)}
    label = regional.presence_label
    assert label(found, set(), "Pleural Effusion", "left", "lower") == 1
    assert label(found, set(), "Pleural Effusion", "left", "") == 1  # the lung holds its lower zone
    assert label(found, set(), "Pleural Effusion", "left", "upper") == 0
    assert label(found, set(), "Pleural Effusion", "right", "lower") == 0
    assert label(found, set(), "Edema", "right", "") == 1 and np.isnan(label(found, set(), "Edema", "right", "upper"))
    assert np.isnan(label(set(), {("Pneumothorax", "left")}, "Pneumothorax", "left", ""))  # hedged: unknown
    # with a box, a zone holds the finding by the share of its box inside the zone's box, whatever its label
    apex = {("Pneumothorax", "left", "upper", (10.0, 0.0, 20.0, 40.0))}
    assert label(apex, set(), "Pneumothorax", "left", "upper", (0, 0, 30, 20)) == 1  # half of it
    assert label(apex, set(), "Pneumothorax", "left", "middle", (0, 20, 30, 40)) == 1  # the other half: there too
    assert np.isnan(label(apex, set(), "Pneumothorax", "left", "lower", (0, 36, 30, 60)))  # 10 %: spills over
    assert label(apex, set(), "Pneumothorax", "left", "lower", (0, 41, 30, 60)) == 0


def test_a_report_finding_without_a_side_is_unknown_in_both_lungs():
    from pipeline.stages.evaluate import present_findings

    phrases = {"phrase_observation": ["Edema", "Pleural Effusion", "Pneumothorax"],
               "phrase_negated": [False, False, True], "phrase_uncertain": [False, True, False],
               "phrase_laterality": ["", "left", ""], "phrase_zone": ["", "", ""]}
    found, hedged = present_findings(phrases)
    assert found == set() and hedged == {("Edema", "right"), ("Edema", "left"), ("Pleural Effusion", "left")}
    assert np.isnan(regional.presence_label(found, hedged, "Edema", "right", ""))
    assert regional.presence_label(found, hedged, "Pneumothorax", "right", "") == 0


def test_an_oracle_scores_presence_auroc_one_and_a_position_only_model_one_half():
    roi_where, owner, findings, hedged = cohort()
    items = regional.presence_items(roi_where, owner, findings, hedged)
    units = [f"p{owner[r]}" for r in items["roi"]]
    texts = text_table()
    # oracle: each ROI embeds the statements that are true of it (present or absent, per finding)
    oracle = oracle_model(roi_where, owner, findings, texts)
    figures = regional.presence_figures(oracle, texts, 10.0, items, units)
    everyone = np.arange(len(units))
    assert figures["presence/auroc"][1](everyone) == pytest.approx(1.0)
    assert figures["presence/auroc/Pleural Effusion"][1](everyone) == pytest.approx(1.0)
    # position only: an ROI's embedding is its position's, whatever the image shows
    place = {w: np.random.default_rng(k).standard_normal(512) for k, w in enumerate(WHERE)}
    blind = np.stack([place[w] for w in roi_where])
    figures = regional.presence_figures(blind, texts, 10.0, items, units)
    assert figures["presence/auroc"][1](everyone) == pytest.approx(0.5)


def test_same_position_top1_chooses_between_findings_at_one_place():
    texts = text_table()
    pair = {"roi": 0, "observation": "Pleural Effusion", "laterality": "left", "zone": "lower",
            "stated": {("Pleural Effusion", "left"), ("Atelectasis", "left")}}
    candidates = regional.same_position_candidates("Pleural Effusion", "left", "lower", pair["stated"])
    assert candidates[0] == "Pleural Effusion" and "Atelectasis" not in candidates  # stated there: not a wrong answer
    right = texts([statement("Pleural Effusion", "left", "lower")])
    wrong = texts([statement("Pneumothorax", "left", "lower")])
    assert regional.same_position_figures(right, texts, [pair], ["p"])["region/same_position_top1"][1](np.arange(1)) == 1
    assert regional.same_position_figures(wrong, texts, [pair], ["p"])["region/same_position_top1"][1](np.arange(1)) == 0


def test_the_mean_image_control_feeds_the_mean_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8)).astype(np.uint8)
    control = ControlImages(images, "mean_image", ["a", "a", "b", "c", "c"])
    mean = np.round(images.astype(float).mean(0)).astype(np.uint8)
    assert control.shape == images.shape and np.array_equal(control[[0, 3]], np.stack([mean, mean]))
    assert np.array_equal(control[1:3], np.stack([mean, mean])) and np.array_equal(control[4], mean)


def test_the_other_patient_control_feeds_another_patients_image():
    patients = ["a", "a", "b", "c", "c", "d"]
    images = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    control = ControlImages(images, "other_patient", patients, seed=3)
    got = control[np.arange(6)][:, 0, 0]
    assert all(patients[g] != patients[i] for i, g in enumerate(got))
    assert np.array_equal(other_patient(patients, 3), other_patient(patients, 3))  # seeded
    with pytest.raises(ValueError, match="unknown input control"):
        ControlImages(images, "blank", patients)


def test_the_null_band_reproduces_and_summarises_untrained_models():
    from pipeline.evaluation.embedder import Embedder

    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96)).astype(np.uint8)
    a, b, c = (Embedder(None, "medclip-tiny", torch.device("cpu"), init_seed=k).images(images) for k in (1, 1, 2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    band = null_band([{"m": 0.4, "x": np.nan}, {"m": 0.6}, {"m": 0.5}])
    assert band["m"]["mean"] == pytest.approx(0.5) and band["m"]["n"] == 3 and "x" not in band
    assert band["m"]["low"] == pytest.approx(0.405) and band["m"]["high"] == pytest.approx(0.595)


def test_the_evaluation_package_imports_no_stage():
    code = ("import sys, pipeline.evaluation.regional, pipeline.evaluation.controls; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.stages')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_pooled_presence_auroc_recomputes_each_findings_auroc_in_every_bootstrap_round():
    from pipeline import stats

    roi_where, owner, findings, hedged = cohort(n_images=40, seed=3)
    items = regional.presence_items(roi_where, owner, findings, hedged)
    units = [f"p{owner[r] // 2}" for r in items["roi"]]  # two images a patient
    roi = np.random.default_rng(1).standard_normal((len(roi_where), 512))  # a noisy model: AUROCs vary by round
    figures = regional.presence_figures(roi, text_table(), 10.0, items, units)
    boot = stats.PatientBootstrap(units, rounds=60, seed=0)
    pooled = boot.replicate(figures["presence/auroc"][1], units)
    per_finding = np.array([boot.replicate(stat, units) for k, (_, stat) in figures.items() if k.count("/") == 2])
    assert np.isfinite(per_finding).any(axis=1).sum() == 3  # the three findings the cohort draws
    # round by round: the mean of that round's per-finding AUROCs (each taken over the round's resample)
    assert np.allclose(pooled, np.nanmean(per_finding, axis=0), equal_nan=True)
    assert np.nanstd(pooled) > 0.005  # the rounds differ: the interval is not the point value's


def truth_film(tmp_path, image_id: str, rng) -> tuple[set, np.ndarray]:
    """A synthetic truth mask (120 x 100 source pixels, bit 1 right lung on the image's left, bit 2 left lung, bit 4
    lesion) written like the synthesize stage, and its drawn regional findings (original-pixel boxes)."""
    from PIL import Image

    bits = np.zeros((120, 100), np.uint8)
    top = int(rng.integers(10, 20))
    bits[top:100, 10:45] |= 1
    bits[top:100, 55:90] |= 2
    drawn = set()
    for o, zone, rows in (("Pleural Effusion", "lower", (80, 99)), ("Lung Lesion", "upper", (top + 2, top + 12))):
        for side, cols in (("right", (15, 30)), ("left", (60, 75))):
            if rng.random() < 0.5:
                bits[rows[0]:rows[1], cols[0]:cols[1]] |= 4
                drawn.add((o, side, zone, (float(cols[0]), float(rows[0]), float(cols[1]), float(rows[1]))))
    (tmp_path / "masks").mkdir(exist_ok=True)
    Image.fromarray(bits).save(tmp_path / "masks" / f"{image_id}.png")
    return drawn, bits


def test_oracle_rois_follow_the_crop_stages_rule_and_an_oracle_model_scores_presence_one(tmp_path):
    from pipeline.geometry import mask_box
    from pipeline.stages.crop import pad_box, zone_boxes
    from pipeline.stages.evaluate import oracle_rois, truth_mask
    from pipeline.stages.normalize import fit, letterbox_mask, to_normalized

    rng = np.random.default_rng(0)
    size, cfg = 64, {"pad": 0.1, "min_size": 8}
    nh, nw, top, left = fit(120, 100, size)
    transform = np.array([nh / 120, nw / 100, top, left])
    predicted = {"roi_kind": ["image", "lung"], "roi_box": [(left, top, left + nw, top + nh), (0, 0, 9, 9)]}
    roi_where, owner, boxes, findings = [], [], [], []
    for k in range(16):
        drawn, bits = truth_film(tmp_path, f"img{k}", rng)
        mask = truth_mask(tmp_path, f"img{k}", size)
        assert np.array_equal(mask, letterbox_mask(bits, size))
        rois = oracle_rois(mask, drawn, transform, predicted, size, cfg)
        assert rois["roi_kind"][:2] == ["image", "lung"] and rois["roi_box"][0] == predicted["roi_box"][0]
        right = (mask & 1) > 0  # the crop stage's rule on the true lung: the same boxes, padded alike
        assert rois["roi_box"][1] == pad_box(mask_box(right), size, 0.1, 8)
        assert rois["roi_box"][2:5] == [pad_box(b, size, 0.1, 8) for _, b, _ in zone_boxes(right)]
        lesions = [b for kind, b in zip(rois["roi_kind"], rois["roi_box"]) if kind == "lesion"]
        assert sorted(lesions) == sorted(pad_box(to_normalized(np.array([b]), transform)[0], size, 0.1, 8)
                                         for *_, b in drawn)
        where = list(zip(rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]))
        roi_where += where
        owner += [k] * len(where)
        boxes += list(rois["roi_box"])
        findings.append({(o, s, z, tuple(to_normalized(np.array([b]), transform)[0])) for o, s, z, b in drawn})
    owner, boxes = np.array(owner), np.array(boxes)
    items = regional.presence_items(roi_where, owner, findings, [set()] * 16, boxes)
    units = [f"p{owner[r]}" for r in items["roi"]]
    assert set(items["position"]) >= {"right lower", "left upper", "right lung"}
    texts = text_table()
    model = oracle_model(roi_where, owner, findings, texts, boxes)
    figures = regional.presence_figures(model, texts, 10.0, items, units)
    everyone = np.arange(len(units))
    assert figures["presence/auroc"][1](everyone) == pytest.approx(1.0)
    assert figures["presence/auroc/Lung Lesion"][1](everyone) == pytest.approx(1.0)


def test_a_tie_at_the_top_of_the_same_position_candidates_is_shared_not_won():
    pair = {"observation": "Pleural Effusion", "laterality": "left", "zone": "lower", "roi": 0, "stated": set()}
    texts = lambda t: np.ones((len(t), 4))  # noqa: E731 -- every statement embeds the same: all candidates tie
    figures = regional.same_position_figures(np.ones((1, 4)), texts, [pair], ["p1"])
    n = len(regional.same_position_candidates("Pleural Effusion", "left", "lower", set()))
    assert figures["region/same_position_top1"][1](np.array([0])) == pytest.approx(1 / n)


def test_the_bars_give_no_result_inside_the_band_and_a_verdict_outside_it():
    from pipeline.evaluation.report import bars_markdown

    def fig(v, lo=None, hi=None):
        return {"value": v, "ci_low": v - 0.05 if lo is None else lo, "ci_high": v + 0.05 if hi is None else hi}

    def seeds(mean):
        return {"mean": mean, "sd": 0.01, "ci_low": mean - 0.05, "ci_high": mean + 0.05}

    band = {k: {"mean": 0.5, "low": 0.45, "high": 0.55} for k in ("auroc/mean", "presence/auroc",
                                                                   "robust/balanced_negation")}
    band["region/same_position_top1"] = {"mean": 0.1, "low": 0.0, "high": 0.2}
    band["i2r/R@10"] = {"mean": 0.1, "low": 0.05, "high": 0.15}
    metrics = {
        "test": {"control": "global_only", "studies": 117, "patients": 90},  # chance 10 / 117
        "null_band": {"figures": band},
        "runs": {"baseline": {"auroc/mean": fig(0.85), "i2r/R@10": fig(30 / 117)},  # 3x chance exactly: met
                 "student/mean_image": {"presence/auroc": fig(0.50), "region/same_position_top1": fig(0.25)},
                 "global_only/mean_image": {"presence/auroc": fig(0.40), "region/same_position_top1": fig(0.1)}},
        "seeds": {"student": {"presence/auroc": seeds(0.70), "region/same_position_top1": seeds(0.18),
                              "robust/balanced_negation": seeds(0.52)}},
        "paired": {"student - global_only": {
            "presence/auroc": fig(0.12, 0.075, 0.165),  # the interval above 0, the student above the band: met
            "region/same_position_top1": fig(0.15, 0.05, 0.25),  # large, but the student inside the band
            "auroc/mean": fig(-0.03), "i2r/R@10": fig(-0.01)}},  # R@10's interval reaches -0.06
    }

    def verdicts():
        return {r.split(" | ")[0].lstrip("| "): r.rstrip(" |").split(" | ")[-1] for r in bars_markdown(metrics)
                if r.startswith("| ") and not r.startswith("| bar")}

    assert verdicts() == {
        "the base: mean zero-shot AUROC": "met",
        "the base: image -> report R@10, x chance": "met",
        "presence AUROC at fixed positions, student - control": "met",
        "same-position region top-1, student - control": "no result: inside the band",
        "global zero-shot AUROC, student - control (at most 0.02 lost)": "not met",
        "image -> report R@10, student - control (at most 0.02 lost)":
            "met on the point estimate (the interval reaches -0.060)",
        "balanced negation, the student": "not met",  # short of 0.75 (and inside the band): a miss, not "no result"
        # the student's 0.25 above the band's top, the control's 0.40 below its bottom
        "mean-image control: both arms' regional figures inside the band": "not met",
        "power: the interval of presence AUROC, student - control": "met",  # 0.045 on either side
    }
    metrics["paired"]["student - global_only"]["presence/auroc"] = fig(0.12, -0.01, 0.2)  # the interval holds 0
    metrics["null_band"]["figures"]["auroc/mean"]["high"] = 0.9  # the base reaches its bar inside the band
    metrics["runs"]["baseline"]["i2r/R@10"] = fig(29 / 117)
    del metrics["null_band"]["figures"]["robust/balanced_negation"]
    metrics["seeds"]["student"]["robust/balanced_negation"] = seeds(0.8)
    got = verdicts()
    assert got["presence AUROC at fixed positions, student - control"] == "not met"
    assert got["the base: mean zero-shot AUROC"] == "no result: inside the band"
    assert got["the base: image -> report R@10, x chance"] == "not met"
    assert got["balanced negation, the student"] == "met (no band to compare)"
    assert got["power: the interval of presence AUROC, student - control"] == "not met"  # 0.13 above
    metrics["paired"]["student - global_only"]["presence/auroc"] = fig(0.12, 0.07, 0.17)  # 0.05 + 2e-17 above: met
    assert verdicts()["power: the interval of presence AUROC, student - control"] == "met"
    power = next(r for r in bars_markdown(metrics) if r.startswith("| power"))
    assert "0.050 on its wider side; 90 patients" in power
    metrics["paired"]["student - global_only"]["presence/auroc"] = fig(0.12, 0.06, 0.16)  # lopsided: 0.06 below
    assert verdicts()["power: the interval of presence AUROC, student - control"] == "not met"
    assert any(r.startswith("What was tried") for r in bars_markdown(metrics))  # said where a bar is not met
    del metrics["paired"]["student - global_only"]["presence/auroc"]  # no headline: no power row
    assert "power: the interval of presence AUROC, student - control" not in verdicts()
    every_bar_met = bars_markdown({"test": {"control": "global_only", "studies": 117}, "runs": {"baseline": {
        "auroc/mean": fig(0.85)}}, "null_band": {"figures": {"auroc/mean": {"mean": 0.5, "low": 0.45, "high": 0.55}}}})
    assert any(r.endswith("| met |") for r in every_bar_met)
    assert not any(r.startswith("What was tried") for r in every_bar_met)
