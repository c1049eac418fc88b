"""Report parsing: a hand-written sentence set with figures, bad input, sections, labels, the shard."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import config
from pipeline.labels import OBSERVATIONS
from pipeline.shards import Shard, check
from pipeline.reports import score
from pipeline.stages import parse_reports as pr

SENTENCES = Path(__file__).parent / "data" / "report_sentences.txt"
CHEXPERT_STYLE = Path(__file__).parent / "data" / "chexpert_style_reports.txt"


@pytest.fixture(scope="module")
def cfg():
    return config.load()["parse_reports"]


def test_hand_written_sentence_set_meets_the_targets(cfg):
    sentences, gold = score.read_sentence_file(SENTENCES)
    assert len(sentences) >= 150
    parsed = pr.parse_reports(sentences, cfg)
    figures = score.score(gold, [score.by_observation(r.phrases) for r in parsed])
    print(figures)
    assert figures["observation_f1"] >= 0.90
    assert figures["negation_accuracy"] >= 0.95
    assert figures["laterality_accuracy"] >= 0.95
    assert figures["uncertainty_accuracy"] >= 0.90


def test_labels_agree_with_the_chexpert_labelers_rules_on_a_labeler_style_set(cfg):
    reports, gold = score.read_label_file(CHEXPERT_STYLE)
    assert len(reports) >= 120
    figures = score.label_agreement(gold, [r.labels for r in pr.parse_reports(reports, cfg)])
    print({k: v for k, v in figures.items() if k != "differ"}, [(reports[i], *rest) for i, *rest in figures["differ"]])
    assert figures["labelled_cells"] >= 240
    assert figures["agreement"] >= 0.95 and figures["agreement_either"] >= 0.95
    # under the two-grade hedge, the possibilities go unlabelled: far from the labeler
    two = score.label_agreement(gold, [r.labels for r in pr.parse_reports(reports, {**cfg, "hedge": "two_grade"})])
    assert two["agreement"] < 0.90


def test_label_agreement_counts_cells_by_hand():
    nan = float("nan")
    blank = {o: nan for o in OBSERVATIONS}
    gold = [{**blank, "Edema": 1.0, "No Finding": nan}, {**blank, "Pneumothorax": 0.0, "No Finding": 1.0}]
    pred = [{**blank, "Edema": -1.0}, {**blank, "Pneumothorax": 0.0, "No Finding": 1.0, "Cardiomegaly": 0.0}]
    f = score.label_agreement(gold, pred)
    assert (f["labelled_cells"], f["cells_either"]) == (3, 4)
    assert f["agreement"] == pytest.approx(2 / 3) and f["agreement_either"] == pytest.approx(2 / 4)
    assert [d[:2] for d in f["differ"]] == [(0, "Edema"), (1, "Cardiomegaly")]


@pytest.mark.parametrize("sentence,hedge", [
    ("Left upper lobe opacity, most suggestive of pneumonia.", "probable"),
    ("Left upper lobe opacity, strongly suggestive of pneumonia.", "probable"),
    ("Left upper lobe opacity, suggestive of pneumonia.", "possible"),
    ("In the appropriate clinical setting, the opacity is compatible with pneumonia.", "possible"),
])
def test_hedge_grades_of_real_wording(cfg, sentence, hedge):
    assert [p.hedge for p in pr.parse_reports([sentence], cfg)[0].phrases if p.observation == "Pneumonia"] == [hedge]


@pytest.mark.parametrize("sentence,negated", [
    ("Heart size normal.", ["Cardiomegaly"]),
    ("Normal cardiomediastinal silhouette.", ["Enlarged Cardiomediastinum"]),
    ("Heart size and mediastinal contours are within normal limits.", ["Cardiomegaly", "Enlarged Cardiomediastinum"]),
    ("The heart is normal in size and the lungs are clear.", ["Cardiomegaly"]),
    ("Normal size of the heart.", ["Cardiomegaly"]),
    ("The lungs are clear.", []),  # the labeler has no mention in it: no label
    ("Heart size is at the upper limits of normal.", []),
    ("The heart is not normal in size.", []),
])
def test_normal_statements_negate_what_the_chexpert_labeler_negates(cfg, sentence, negated):
    rep = pr.parse_reports([sentence], cfg)[0]
    assert sorted(o for o, v in rep.labels.items() if v == 0.0) == negated
    assert rep.labels["No Finding"] == 1.0
    assert all(p.negated and p.laterality == "" for p in rep.phrases)


def test_scorer_counts_misses_and_wrong_attributes():
    m = lambda o, neg=False, unc=False, side="", zone="": score._Mention(o, neg, unc, side, zone)  # noqa: E731
    gold = [{"Edema": ("+", None, None), "Pneumothorax": ("-", "left", None)}, {"Atelectasis": ("?", "right", "lower")}]
    pred = [score.by_observation([m("Edema"), m("Pneumothorax", neg=False, side="left")]),
            score.by_observation([m("Atelectasis", unc=True, side="left", zone="lower"), m("Mass")])]
    f = score.score(gold, pred)
    assert f["observation_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert f["negation_accuracy"] == pytest.approx(2 / 3) and f["laterality_accuracy"] == pytest.approx(1 / 2)
    assert f["zone_accuracy"] == 1.0
    assert score.combine_sides({"left", "right"}) == "bilateral"


@pytest.mark.parametrize("sentence,expected", [
    ("No effusion or pneumothorax.", [("Pleural Effusion", True, False), ("Pneumothorax", True, False)]),
    ("Possible consolidation.", [("Consolidation", False, True)]),
    ("Cannot exclude pneumothorax.", [("Pneumothorax", False, True)]),
    ("No pneumothorax but small left effusion.", [("Pneumothorax", True, False), ("Pleural Effusion", False, False)]),
    ("No change in the right effusion.", [("Pleural Effusion", False, False)]),
    ("Small pericardial effusion.", []),
    # real report wording (sentences written for this test)
    ("Heart size is mildly enlarged.", [("Cardiomegaly", False, False)]),
    ("The heart remains slightly large.", [("Cardiomegaly", False, False)]),
    ("The heart is not enlarged.", [("Cardiomegaly", True, False)]),
    ("The heart is borderline in size.", [("Cardiomegaly", False, True)]),
    ("Left base atelectasis versus scarring.", [("Atelectasis", False, True)]),
    ("Streaky left basilar opacity which may represent atelectasis or early pneumonia.",
     [("Lung Opacity", False, False), ("Atelectasis", False, True), ("Pneumonia", False, True)]),
    ("Mild pulmonary vascular congestion without overt edema.", [("Edema", True, False)]),
    ("Calcified granulomas from old granulomatous infection.", []),
    ("Anterior mediastinal mass is again seen.", []),
    ("Soft tissue edema over the right shoulder.", []),
    ("A 7 mm nodular opacity in the left upper lobe.", [("Lung Opacity", False, False)]),
    ("A 7 mm nodule in the left upper lobe.", [("Lung Lesion", False, False)]),
    ("No pleural effusion.. Minimal right basilar atelectasis.", [("Pleural Effusion", True, False),
                                                                  ("Atelectasis", False, False)]),
    ("Small bilateral effusions are unchanged.", [("Pleural Effusion", False, False)]),
    ("The costophrenic angles are sharp.", [("Pleural Effusion", True, False)]),
    ("No XXXX pneumothorax.", [("Pneumothorax", True, False)]),
    ("Please correlate clinically for pneumonia.", [("Pneumonia", False, True)]),
    # Pneumonia and Pneumothorax in the words of real reports (written for this test)
    ("Right lower lobe opacity with volume loss, in keeping with pneumonitis.", [("Lung Opacity", False, False),
                                                                                 ("Pneumonia", False, False)]),
    ("Clinically correlate for signs and symptoms of infection.", []),
    ("Small loculated right hydropneumothorax.", []),
    ("A skin fold simulating a pneumothorax projects over the left apex.", [("Pneumothorax", True, False)]),
    ("Underlying infection cannot be entirely excluded.", [("Pneumonia", False, True)]),
    ("The left pneumothorax is no longer seen.", [("Pneumothorax", True, False)]),
    ("Interval clearing of the lingular pneumonia.", [("Pneumonia", True, False)]),
    ("Right lower lobe infectious infiltrate.", [("Pneumonia", False, False)]),
    ("Remote history of pneumonia.", []),
    ("No effusion; right lower lobe pneumonia.", [("Pleural Effusion", True, False), ("Pneumonia", False, False)]),
    ("No pneumothorax, with new left lower lobe pneumonia.", [("Pneumothorax", True, False),
                                                              ("Pneumonia", False, False)]),
])
def test_negation_uncertainty_and_scope(cfg, sentence, expected):
    got = [(p.observation, p.negated, p.uncertain) for p in pr.parse_reports([sentence], cfg)[0].phrases]
    assert got == expected


def test_phrase_keeps_its_finding_and_place(cfg):
    ph = pr.parse_reports(["Right lower lobe opacity, likely atelectasis. Small left pleural effusion."],
                          cfg)[0].phrases
    assert [(p.phrase, p.laterality, p.zone) for p in ph] == [
        ("Right lower lobe opacity", "right", "lower"), ("atelectasis", "right", "lower"),
        ("Small left pleural effusion", "left", "lower")]
    assert ph[2].size == "small" and ph[1].uncertain and ph[2].sentence_index == 1


@pytest.mark.parametrize("sentence, expected", [
    ("8 mm nodule in the right upper lobe.", [("Lung Lesion", "8 mm")]),
    ("There is a 1.2 cm nodule in the left lower lobe.", [("Lung Lesion", "1.2 cm")]),
    ("Left upper lobe mass measuring 3 x 4 cm.", [("Lung Lesion", "3 x 4 cm")]),
    ("A 6mm right lower lobe nodule.", [("Lung Lesion", "6 mm")]),
    ("Mild pulmonary edema.", [("Edema", "mild")]),
    ("Trace left pleural effusion.", [("Pleural Effusion", "trace")]),
    ("Tiny right apical pneumothorax.", [("Pneumothorax", "tiny")]),
    ("Moderate right pleural effusion.", [("Pleural Effusion", "moderate")]),
    ("Large left pleural effusion.", [("Pleural Effusion", "large")]),
    ("Small to moderate right pleural effusion.", [("Pleural Effusion", "small to moderate")]),
    ("Heart size is mildly enlarged.", [("Cardiomegaly", "mild")]),
    ("Left pleural effusion.", [("Pleural Effusion", "")]),
])
def test_phrase_size_is_the_measurement_or_the_grade_word_as_written(cfg, sentence, expected):
    assert [(p.observation, p.size) for p in pr.parse_reports([sentence], cfg)[0].phrases] == expected


def test_a_distance_is_no_size():
    assert pr.size_of("endotracheal tube tip 3 cm above the carina") == ""
    assert pr.size_of("3x4x5 mm opacity") == "3 x 4 x 5 mm" and pr.size_of("mass of 5.5 centimeters") == "5.5 cm"


def test_sections_of_a_mimic_report():
    text = (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ with cough.\n\n"
            " COMPARISON:  None.\n\n FINDINGS: \n\n Lungs are clear.  No effusion.\n\n IMPRESSION: \n\n"
            " No acute process.\n")
    s = pr.split_sections(text)
    assert s["findings"] == "Lungs are clear. No effusion." and s["impression"] == "No acute process."
    assert s["indication"] == "___ with cough." and s["comparison"] == "None."
    assert pr.split_sections("Heart size normal. No effusion.") == {"findings": "Heart size normal. No effusion."}
    # unheaded text after a short section still counts as findings
    assert pr.split_sections("INDICATION: cough\n\nSmall left effusion.")["findings"] == "Small left effusion."
    assert pr.split_sections("Conclusion: mild edema.") == {"impression": "mild edema."}


@pytest.mark.parametrize("text,status", [
    ("", "empty"), ("   ", "empty"), ("___", "empty"), ("___ . ___", "empty"), (None, "empty"),
    ("xqzt vbnm plkj wrtp", "ok"), ("Keine Auffälligkeiten. Herz normal gross.", "ok"),
    ("INDICATION: chest pain", "no_sections"),
])
def test_bad_reports_give_valid_rows_without_phrases(cfg, text, status):
    rep = pr.parse_reports([text], cfg)[0]
    assert rep.status == status and rep.phrases == []
    assert rep.labels["No Finding"] == 1.0 and all(np.isnan(rep.labels[o]) for o in OBSERVATIONS[:8])


def test_very_long_report_is_cut_not_crashed(cfg):
    text = "FINDINGS: " + "Small left pleural effusion. " * 2000  # ~58,000 characters
    rep = pr.parse_reports([text], {**cfg, "max_chars": 20000})[0]
    assert rep.status == "truncated" and len(rep.phrases) > 500
    assert rep.labels["Pleural Effusion"] == 1.0


def test_labels_follow_the_chexpert_rule(cfg):
    rep = pr.parse_reports(["FINDINGS: No right effusion. Small left effusion. Probable pneumonia. "
                            "No pneumothorax. IMPRESSION: Pneumonia cannot be excluded."], cfg)[0]
    lab = rep.labels
    assert lab["Pleural Effusion"] == 1.0 and lab["Pneumonia"] == -1.0 and lab["Pneumothorax"] == 0.0
    assert np.isnan(lab["No Finding"]) and np.isnan(lab["Edema"])


def test_every_hedged_finding_is_uncertain_by_default_as_the_chexpert_labeler_labels_it(cfg):
    assert cfg["hedge"] == "chexpert"
    rep = pr.parse_reports(["FINDINGS: Minimal patchy airspace disease in the lingula, may reflect atelectasis or "
                            "consolidation. No effusion. IMPRESSION: Pneumothorax cannot be excluded."], cfg)[0]
    assert {p.observation: p.hedge for p in rep.phrases if p.uncertain} == {
        "Atelectasis": "possible", "Consolidation": "possible", "Pneumothorax": "possible"}
    lab = rep.labels
    assert lab["Atelectasis"] == lab["Consolidation"] == lab["Pneumothorax"] == -1.0
    assert lab["Lung Opacity"] == 1.0 and lab["Pleural Effusion"] == 0.0 and np.isnan(lab["No Finding"])
    assert score.study_labels([("Pneumothorax", False, "probable")])["Pneumothorax"] == -1.0


def test_two_grade_hedge_leaves_a_finding_only_offered_as_a_possibility_unlabelled(cfg):
    two = {**cfg, "hedge": "two_grade"}
    rep = pr.parse_reports(["FINDINGS: Patchy right basilar opacity may represent pneumonia. No effusion. "
                            "IMPRESSION: Right base opacity. Pneumonia cannot be excluded."], two)[0]
    ph = [p for p in rep.phrases if p.observation == "Pneumonia"]
    assert ph and all(p.uncertain and p.hedge == "possible" for p in ph)
    lab = rep.labels
    assert np.isnan(lab["Pneumonia"]) and lab["Lung Opacity"] == 1.0 and lab["Pleural Effusion"] == 0.0
    assert rep.labels_as("chexpert")["Pneumonia"] == -1.0  # the phrases keep their grade: either convention
    # hedged but never "No Finding"
    only = pr.parse_reports(["IMPRESSION: Possible small left pneumothorax."], two)[0].labels
    assert np.isnan(only["Pneumothorax"]) and np.isnan(only["No Finding"])
    assert score.study_labels([("Pneumothorax", False, "probable")], "two_grade")["Pneumothorax"] == -1.0
    with pytest.raises(ValueError, match="hedge convention"):
        score.study_labels([], "expert")


def test_standalone_command_writes_phrases_and_labels(tmp_path):
    from pipeline.__main__ import main

    pd.DataFrame({"study_id": ["s1", "s2", "s3"],
                  "report": ["FINDINGS: Small left pleural effusion. No pneumothorax.", "", "Probable edema."]}
                 ).to_csv(tmp_path / "reports.csv", index=False)
    assert main(["parse-reports", str(tmp_path / "reports.csv"), "-o", str(tmp_path / "out")]) == 0
    phrases = pd.read_csv(tmp_path / "out" / "phrases.csv")
    labels = pd.read_csv(tmp_path / "out" / "labels.csv", dtype={"study_id": str}).set_index("study_id")
    assert len(phrases) == 3 and set(phrases["study_id"]) == {"s1", "s3"}
    assert labels.loc["s1", "Pleural Effusion"] == 1 and labels.loc["s1", "Pneumothorax"] == 0
    assert labels.loc["s3", "Edema"] == -1 and labels.loc["s2", "No Finding"] == 1
    assert np.isnan(labels.loc["s2", "Edema"])
    # the CheXpert labeler's file convention: 1 / 0 / -1 / blank
    assert "1.0" not in (tmp_path / "out" / "labels.csv").read_text()


def test_stage_shard_on_synthetic_reports(tmp_path, cfg):
    from pipeline.stages import ingest, synthesize

    syn = config.load()["data"]["synthetic"]
    syn.update(n_studies=40, image_size=96, lateral_fraction=0.0)
    synthesize.run(syn, tmp_path / "data", workers=2)
    data = config.load()["data"]
    data.update(synthetic={**syn, "out_dir": str(tmp_path / "data")}, shard_size=100)
    ingest.run(data, tmp_path / "studies.csv", tmp_path / "shards.json")
    counts = pr.run(tmp_path / "studies.csv", "00000", tmp_path / "reports.h5", cfg)
    assert check(tmp_path / "reports.h5") == []
    # synthetic labels come from the writer's ground-truth phrases; the parser reads the MIMIC-style wording back
    assert counts["label_agreement"] >= 0.98
    with Shard(tmp_path / "reports.h5") as s:
        rows = [s.row(i) for i in range(len(s.image_ids))]
        assert set(rows[0]) >= {"labels", "labels_source", "phrases", "label_prompts", "findings_impression"}
        assert all(r["status"] == "ok" for r in rows)
        # some studies are normal (no finding phrases); most are not
        assert sum(bool(r["phrases"]["phrase_observation"]) for r in rows) > len(rows) / 2
        assert list(s.attrs["observations"]) == OBSERVATIONS
