"""Evaluation building blocks against independent computations: AUROC, the patient bootstrap, paired intervals,
top-1 with case twins, the robustness statements, clear regions and pinned manifests."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline import stats
from pipeline.pairing import clear_regions
from pipeline.evaluation.retrieval import top1_unique
from pipeline.evaluation.robustness import alternatives
from pipeline.stages.evaluate import (ManifestMismatch, check_pinned, clear_entries, follow_pinned, manifest_body,
                                      pair_entries, pinned_ids)
from pipeline.stages.evaluate import TestSet as Split  # not a pytest class
from pipeline.trainer import caption_groups


def test_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        score = rng.integers(0, 6, 40).astype(float)  # many ties
        if 0 < y.sum() < len(y):
            assert stats.auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert np.isnan(stats.auroc(np.ones(5), np.arange(5.0)))


def test_patient_bootstrap_keeps_a_patients_units_together():
    units = ["p1", "p1", "p1", "p2", "p3", "p3"]
    boot = stats.PatientBootstrap(units, rounds=200, seed=0)
    owner = np.array([boot.number[p] for p in units])
    for draw, idx in zip(boot.draws, boot.indices(units)):
        # exactly the units of the drawn patients, each as many times as its patient was drawn
        expected = np.concatenate([np.flatnonzero(owner == p) for p in draw])
        assert sorted(idx.tolist()) == sorted(expected.tolist())
    # another kind of unit (one per patient) sees the same patients in every round
    per_patient = boot.indices(["p1", "p2", "p3"])
    for draw, idx in zip(boot.draws, per_patient):
        assert sorted(idx.tolist()) == sorted(draw.tolist())


def test_patient_bootstrap_interval_by_hand():
    units = ["a", "a", "b", "c", "c", "c", "d"]
    values = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    boot = stats.PatientBootstrap(units, rounds=500, seed=3)
    reps = boot.replicate(lambda i: values[i].mean(), units)
    by_hand = []
    members = {p: [k for k, u in enumerate(units) if u == p] for p in boot.patients}
    for draw in boot.draws:
        chosen = [k for p in draw for k in members[boot.patients[p]]]
        by_hand.append(values[chosen].mean())
    assert np.allclose(reps, by_hand)
    lo, hi = stats.interval(reps)
    assert lo == pytest.approx(np.percentile(by_hand, 2.5)) and hi == pytest.approx(np.percentile(by_hand, 97.5))


def test_paired_interval_pools_seeds_on_shared_resamples():
    units = [f"p{i}" for i in range(30)]
    rng = np.random.default_rng(1)
    a1, a2, b1, b2 = (rng.random(30) for _ in range(4))
    boot = stats.PatientBootstrap(units, rounds=300, seed=2)
    rep = lambda v: boot.replicate(lambda i: v[i].mean(), units)  # noqa: E731
    f = stats.paired([a1.mean(), a2.mean()], [rep(a1), rep(a2)], [b1.mean(), b2.mean()], [rep(b1), rep(b2)], 30)
    assert f["value"] == pytest.approx((a1.mean() + a2.mean()) / 2 - (b1.mean() + b2.mean()) / 2)
    diff = [((a1[i].mean() + a2[i].mean()) - (b1[i].mean() + b2[i].mean())) / 2 for i in boot.indices(units)]
    assert f["ci_low"] == pytest.approx(np.percentile(diff, 2.5)) and f["ci_high"] == pytest.approx(np.percentile(diff, 97.5))
    # a model against itself: exactly zero, with a zero-width interval
    same = stats.paired([a1.mean()], [rep(a1)], [a1.mean()], [rep(a1)], 30)
    assert same["value"] == same["ci_low"] == same["ci_high"] == 0.0


def test_top1_counts_case_twins_as_one_candidate():
    texts = ["Left apex mass", "left apex mass", "right base opacity"]
    table = {"left apex mass": [1.0, 0.0], "Left apex mass": [1.0, 0.0], "right base opacity": [0.0, 1.0]}
    embed = lambda ts: np.array([table[t] for t in ts])  # noqa: E731  twins embed alike, as a real tower does
    roi = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    assert top1_unique(roi, texts, embed).tolist() == [1.0, 1.0, 1.0]  # with a case-sensitive pool one would lose
    assert top1_unique(roi[:, ::-1], texts, embed).tolist() == [0.0, 0.0, 0.0]


def test_robustness_statements_differ_only_in_the_tested_attribute():
    pairs = [{"roi": 4, "observation": "Pleural Effusion", "laterality": "left", "zone": "lower",
              "stated": {("Pleural Effusion", "left"), ("Pleural Other", "left")}},
             {"roi": 7, "observation": "Atelectasis", "laterality": "bilateral", "zone": "lower",
              "stated": {("Atelectasis", "bilateral")}}]
    clear = [{"roi": 9, "observation": "Pneumothorax", "laterality": "right", "zone": ""}]
    tests = alternatives(pairs, clear)
    assert tests["side"] == [(4, "there is pleural effusion in the left lower zone",
                              "there is pleural effusion in the right lower zone", "Pleural Effusion")]  # none bilateral
    assert tests["negated"][0][2] == "there is no pleural effusion in the left lower zone"
    assert tests["uncertain"][0][2] == "there may be pleural effusion in the left lower zone"
    # the other finding (the next in vocab.REGIONAL) is one the report does not state there: pleural thickening is
    # stated on the left, so pneumonia
    assert tests["other_finding"][0][2] == "there is pneumonia in the left lower zone"
    assert tests["converse"] == [(9, "there is no pneumothorax in the right lung", "there is pneumothorax in the right lung",
                                  "Pneumothorax")]


def test_clear_regions_are_sides_with_nothing_stated():
    rois = {"roi_kind": ["image", "lung", "zone", "lung", "zone", "lesion"],
            "roi_laterality": ["", "right", "right", "left", "left", "left"],
            "roi_zone": ["", "", "lower", "", "upper", "upper"]}
    phrases = {"phrase_observation": ["Lung Lesion", "Pneumothorax", "Pleural Effusion", "Cardiomegaly"],
               "phrase_negated": [False, True, True, False], "phrase_laterality": ["left", "", "", ""]}
    got = clear_regions(rois, phrases)
    assert got == [(1, "Pleural Effusion", "right", ""), (1, "Pneumothorax", "right", ""),
                   (2, "Pleural Effusion", "right", "lower"), (2, "Pneumothorax", "right", "lower")]
    # a present finding without a side could be anywhere: no side is clear
    phrases["phrase_observation"][3], phrases["phrase_laterality"][3] = "Edema", ""
    assert clear_regions(rois, phrases) == []


def test_a_pinned_manifest_that_no_longer_matches_stops_with_a_message(tmp_path):
    body = manifest_body(["img1", "img2", "img3"], None, "test split images with a report")
    (tmp_path / "test_images.json").write_text(body)
    assert pinned_ids(tmp_path, "test_images") == ["img1", "img2", "img3"]
    assert pinned_ids(tmp_path, "retrieval") is None and pinned_ids("", "test_images") is None
    check_pinned(tmp_path, "test_images", body)  # the same set: fine
    check_pinned(tmp_path, "retrieval", body)  # nothing pinned for this set: fine
    changed = manifest_body(["img1", "img2", "img4"], None, "test split images with a report")
    with pytest.raises(ManifestMismatch, match=r"no longer matches the data .*1 pinned entries missing, e.g. \['img3'\]"):
        check_pinned(tmp_path, "test_images", changed)
    assert json.loads(changed)["ids"][-1] == "img4"


def crops_of_one_unet(lesion_boxes: list, gt=(9.0, 9.0, 21.0, 21.0)) -> Split:
    """One test image as a U-Net's crops saw it: image, right lung, right lower zone, then its lesions; a nodule
    phrase on the first lesion (with a ground-truth box), an effusion phrase on the right lung, one clear region."""
    names = ["image", "right lung", "right lower zone"] + ["lesion"] * len(lesion_boxes)
    boxes = np.array([[0, 0, 64, 64], [2, 2, 30, 60], [2, 40, 30, 60]] + lesion_boxes, float)
    nodule = 3 + len(lesion_boxes) - 1  # the U-Net's lesion rows come in the order it found them: the last one here
    pairs = [{"image": 0, "roi": nodule, "text": "right lower lobe nodule", "gt_box": list(gt)},
             {"image": 0, "roi": 1, "text": "small right pleural effusion", "gt_box": None}]
    clear = [{"image": 0, "roi": 2, "observation": "Pneumothorax", "laterality": "right", "zone": "lower"}]
    where = [("image", "", ""), ("lung", "right", ""), ("zone", "right", "lower")] + [("lesion", "right", "lower")] * len(
        lesion_boxes)
    return Split(["img-a"], ["pat-a"], ["study-a"], None, np.zeros((1, 14)), ["report"], np.zeros(len(names), int),
                 [np.arange(len(names))], boxes, None, roi_name=names, roi_where=where, pairs=pairs, clear=clear)


def pin_sets(folder, test: Split) -> None:
    grounding = [[test.image_id[p["image"]], p["text"], p["gt_box"]] for p in test.pairs if p["gt_box"] is not None]
    for name, ids in (("region_pairs", pair_entries(test)), ("clear_regions", clear_entries(test)),
                      ("grounding", grounding)):
        (folder / f"{name}.json").write_text(manifest_body(ids, None, name))


def test_pinned_rois_are_found_by_name_and_lesions_by_overlap_whatever_their_row(tmp_path):
    pin_sets(tmp_path, crops_of_one_unet([[10, 10, 20, 20]]))
    assert json.loads((tmp_path / "region_pairs.json").read_text())["ids"][0] == [
        "img-a", "lesion", [10.0, 10.0, 20.0, 20.0], "right lower lobe nodule"]
    # another U-Net: one more lesion found first (every row moves), the nodule's box a pixel off
    other = crops_of_one_unet([[40, 40, 50, 50], [11, 10, 21, 20]])
    found = follow_pinned(tmp_path, other)
    assert found == {"region_pairs": {"pinned": 2, "found": 2}, "grounding": {"pinned": 1, "found": 1},
                     "clear_regions": {"pinned": 1, "found": 1}}
    assert [p["roi"] for p in other.pairs] == [4, 1]
    # a U-Net that misses the nodule (its lesion lies elsewhere): the pair is not found, the run goes on
    missed = crops_of_one_unet([[40, 40, 50, 50]])
    assert follow_pinned(tmp_path, missed)["region_pairs"] == {"pinned": 2, "found": 1}
    assert [p["text"] for p in missed.pairs] == ["small right pleural effusion"]


def test_pinned_sets_stop_when_the_ground_truth_or_the_images_differ(tmp_path):
    pin_sets(tmp_path, crops_of_one_unet([[10, 10, 20, 20]]))
    with pytest.raises(ManifestMismatch, match="1 pinned entries of .*grounding.json have a ground-truth box"):
        follow_pinned(tmp_path, crops_of_one_unet([[10, 10, 20, 20]], gt=(30.0, 9.0, 41.0, 21.0)))
    other = crops_of_one_unet([[10, 10, 20, 20]])
    other.image_id = ["img-b"]
    with pytest.raises(ManifestMismatch, match="not test images of the data"):
        follow_pinned(tmp_path, other)
    # the parser's words are the data's too: a changed caption or negated observation stops, whatever the U-Net
    reparsed = crops_of_one_unet([[10, 10, 20, 20]])
    reparsed.pairs[1]["text"] = "right pleural effusion"
    with pytest.raises(ManifestMismatch, match="region_pairs.json have a report phrase the data no longer give"):
        follow_pinned(tmp_path, reparsed)
    reparsed = crops_of_one_unet([[10, 10, 20, 20]])
    reparsed.clear[0]["observation"] = "Pleural Effusion"
    with pytest.raises(ManifestMismatch, match="clear_regions.json have a report phrase"):
        follow_pinned(tmp_path, reparsed)
    # the older format named an ROI by its row in the crop shard: it asks to pin again
    (tmp_path / "region_pairs.json").write_text(manifest_body([["img-a", 3, "right lower lobe nodule"]], None, "old"))
    with pytest.raises(ManifestMismatch, match="pin the sets again"):
        follow_pinned(tmp_path, crops_of_one_unet([[10, 10, 20, 20]]))


def test_caption_groups_mark_duplicates_after_normalisation():
    groups = caption_groups(["Left apex mass.", "left  apex mass", "No acute process.", "right apex mass"])
    assert groups[0] == groups[1] != groups[2] and groups[3] not in (groups[0], groups[2])


def test_compare_gives_student_minus_control_and_seed_means_the_two_level_interval():
    from pipeline.stages.evaluate import compare

    units = [f"p{i}" for i in range(20)]
    rng = np.random.default_rng(4)
    boot = stats.PatientBootstrap(units, rounds=200, seed=0)
    cfg = {"control": "global_only", "seeds": 3, "seed": 9}
    results, replicates, values = {}, {}, {}
    for run in ("student", "student@1", "student@2", "global_only", "global_only@1", "global_only@2", "baseline"):
        values[run] = rng.random(20)
        replicates[run] = {"m/x": boot.replicate(lambda i, v=values[run]: v[i].mean(), units)}
        results[run] = {"m/x": stats.figure(values[run].mean(), replicates[run]["m/x"], 20)}
    seeds, paired = compare(results, replicates, cfg)
    s, c = ["student", "student@1", "student@2"], ["global_only", "global_only@1", "global_only@2"]
    expected = stats.two_level([values[r].mean() for r in s], [replicates[r]["m/x"] for r in s],
                               [values[r].mean() for r in c], [replicates[r]["m/x"] for r in c], 20, 9)
    assert paired["student - global_only"]["m/x"] == expected
    assert paired["student - global_only"]["m/x"]["interval"].startswith("two-level bootstrap over seeds x patients")
    mean = stats.two_level([values[r].mean() for r in s], [replicates[r]["m/x"] for r in s], n=20, seed=9)
    assert (seeds["student"]["m/x"]["ci_low"], seeds["student"]["m/x"]["ci_high"]) == (mean["ci_low"], mean["ci_high"])
    assert seeds["student"]["m/x"]["mean"] == pytest.approx(np.mean([values[r].mean() for r in s]))
    # one seed against another run: the patient bootstrap on the shared resamples
    assert paired["student - baseline"]["m/x"] == stats.paired(
        [values["student"].mean()], [replicates["student"]["m/x"]], [values["baseline"].mean()],
        [replicates["baseline"]["m/x"]], 20)


def test_retrieval_ranks_ties_at_their_mid_rank_so_identical_images_score_chance():
    from pipeline.evaluation.retrieval import true_rank

    sim = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.9, 0.3, 0.2], [0.3, 0.3, 0.7, 0.7]])
    np.testing.assert_array_equal(true_rank(sim, np.diag(sim)), [2.5, 1.0, 1.5])
    # the mean-image control: one image for every report; report -> image retrieval must sit at chance, not at R@1 1
    rng = np.random.default_rng(0)
    img = np.repeat(rng.standard_normal((1, 8)), 50, axis=0)
    rep = rng.standard_normal((50, 8))
    r2i = true_rank((img @ rep.T).T, np.diag((img @ rep.T).T))
    assert np.all(r2i == 25.5) and (r2i <= 10).mean() == 0.0
