"""The real-report scorer: IU XML reading, NegBio label mapping, per-label figures; synthetic wording read back."""

import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from pipeline import config
from pipeline.labels import OBSERVATIONS
from pipeline.reports import real, score

NEGBIO = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
          "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "normal"]

# reports written for this test, in IU's XML layout
REPORTS = {
    "CXR1": ("Heart size is mildly enlarged. Small left pleural effusion.", "Cardiomegaly and small left effusion."),
    "CXR2": ("The lungs are clear. No pneumothorax or effusion.", "No acute disease."),
    "CXR3": ("Patchy right lower lobe opacity.", "Opacity may represent pneumonia."),
    "CXR4": ("A 1 cm nodule in the left upper lobe.", "Left upper lobe nodule."),
    "CXR5": ("Left basilar atelectasis versus scarring.", ""),
}
GOLD = {"CXR1": ["Cardiomegaly", "Effusion"], "CXR2": ["normal"], "CXR3": ["Pneumonia"], "CXR4": ["Mass"],
        "CXR5": ["Atelectasis"], "CXR6": ["Edema"]}


def _xml(uid: str, findings: str, impression: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/><MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="COMPARISON">None.</AbstractText><AbstractText Label="INDICATION"/>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText></Abstract></Article></MedlineCitation>'
            f'</eCitation>').encode()


@pytest.fixture
def dev_set(tmp_path):
    tgz = tmp_path / "reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        files = {f"ecgen-radiology/{k[3:]}.xml": _xml(k, *v) for k, v in REPORTS.items()}
        files["ecgen-radiology/bad.xml"] = b"<eCitation><uId"  # a broken file is skipped with its reason
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    gold = pd.DataFrame([{"filename": k, **{c: int(c in v) for c in NEGBIO}} for k, v in GOLD.items()])
    gold.to_csv(tmp_path / "gold.csv", index=False)
    return tgz, tmp_path / "gold.csv"


def test_iu_reader_keeps_sections_and_skips_bad_files(dev_set):
    table = real.read_iu(dev_set[0])
    assert sorted(table["study_id"]) == sorted(REPORTS)
    assert [name for name, _ in table.attrs["errors"]] == ["ecgen-radiology/bad.xml"]
    text = table.set_index("study_id").at["CXR1", "report"]
    assert text.startswith("COMPARISON: None.") and "FINDINGS: Heart size" in text and "IMPRESSION: Cardiomegaly" in text
    assert "INDICATION" not in text  # empty sections are left out
    assert "IMPRESSION" not in table.set_index("study_id").at["CXR5", "report"]


def test_label_mapping_unions_mass_and_nodule():
    df = pd.DataFrame([{c: 0 for c in NEGBIO} | {"Mass": 1}, {c: 0 for c in NEGBIO} | {"Nodule": 1},
                       {c: 0 for c in NEGBIO} | {"Effusion": 1, "Infiltration": 1}], index=["a", "b", "c"])
    mapped = real.map_negbio(df)
    assert list(mapped.columns) == real.SHARED and set(real.SHARED) <= set(OBSERVATIONS)
    assert mapped["Lung Lesion"].tolist() == [1, 1, 0]
    assert mapped.loc["c"].to_dict() == {o: int(o == "Pleural Effusion") for o in real.SHARED}
    assert real.positive({"Pneumonia": -1.0, "Edema": 0.0, "Atelectasis": float("nan"), "Cardiomegaly": 1.0}) == {
        o: int(o in ("Pneumonia", "Cardiomegaly")) for o in real.SHARED}


def test_label_scores_by_hand():
    ids = ["a", "b", "c", "d"]
    gold = pd.DataFrame({o: [0, 0, 0, 0] for o in real.SHARED}, index=ids)
    pred = gold.copy()
    gold["Edema"] = [1, 1, 0, 0]
    pred["Edema"] = [1, 0, 1, 0]  # tp 1, fn 1, fp 1
    gold["Cardiomegaly"] = pred["Cardiomegaly"] = [1, 1, 1, 0]
    res = real.label_scores(gold, pred.drop(index="d"))
    assert res["studies"] == 3
    assert res["labels"]["Edema"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "tp": 1, "fp": 1,
                                      "fn": 1}
    assert res["labels"]["Cardiomegaly"]["f1"] == 1.0 and np.isnan(res["labels"]["Pneumonia"]["f1"])
    assert res["macro_f1"] == pytest.approx(0.75)  # labels with no gold and no prediction do not count


def test_bench_on_a_written_gold_table(dev_set, capsys):
    from pipeline import bench

    tgz, gold = dev_set
    res = bench.run("parse-reports", iu=str(tgz), gold=str(gold), misses=2)
    out = capsys.readouterr().out
    assert "skipped ecgen-radiology/bad.xml" in out and "macro F1" in out
    assert res["reports"] == 5 and res["not_in_reports"] == 1  # CXR6 has a gold row but no report
    lab = res["labels"]
    assert lab["Cardiomegaly"]["tp"] == 1 and lab["Pleural Effusion"]["tp"] == 1 and lab["Atelectasis"]["tp"] == 1
    assert lab["Lung Lesion"]["tp"] == 1  # "nodule" against gold Mass: one Lung Lesion
    # scored in the gold's convention: "may represent pneumonia" is offered as a possibility, unlabelled there,
    # a miss against this gold; under the config's CheXpert convention (-1, counted as present) a hit
    assert res["hedge"] == "two_grade" and res["config_hedge"] == "chexpert"
    assert lab["Pneumonia"] == {**lab["Pneumonia"], "tp": 0, "fn": 1, "fp": 0}
    assert res["confusions"]["Pneumonia"]["missed_negated_phrases"][0][0].endswith("(?)")
    assert res["by_convention"]["chexpert"]["labels"]["Pneumonia"]["tp"] == 1
    assert res["by_convention"]["two_grade"]["macro_f1"] == res["macro_f1"]
    assert "under the chexpert convention (this config)" in out
    assert np.isnan(lab["Edema"]["f1"]) or lab["Edema"]["f1"] == 0.0


def test_synthetic_wording_parses_back_to_its_ground_truth():
    """The writer's MIMIC-style wording (lobes, lingula, costophrenic angles, hedges, comparisons, negated lists,
    ___) read back by the parser: per-sentence observations, negation, hedges, sides and zones, and labels."""
    from pipeline.stages import parse_reports as pr
    from pipeline.synthetic.anatomy import Finding
    from pipeline.synthetic.reports import derive_labels, write_report

    rng = np.random.default_rng(7)
    kinds = ["pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass", "atelectasis", "edema",
             "cardiomegaly", "support_devices"]

    def finding(kind):
        if kind == "edema":
            return Finding(kind, "bilateral", "middle", "moderate")
        if kind in ("cardiomegaly", "support_devices"):
            return Finding(kind, "right" if kind == "support_devices" else "", "", "moderate",
                           detail="central venous catheter")
        zone = {"pleural_effusion": "lower", "pneumothorax": "upper"}.get(kind, str(rng.choice(["upper", "middle",
                                                                                                  "lower"])))
        return Finding(kind, str(rng.choice(["right", "left"])), zone, str(rng.choice(["small", "large"])))

    texts, truths = [], []
    for _ in range(250):
        chosen = [] if rng.random() < 0.25 else list(rng.choice(kinds, size=2, replace=False))
        text, phrases = write_report([finding(k) for k in chosen], rng, "F", "PA")
        texts.append(text)
        truths.append(phrases)
    joined = " ".join(texts).lower()
    for words in ("lingula", "costophrenic angle", "unchanged from", "___", "cannot be excluded", "probable",
                  "no acute", "pneumothorax, or", "rll"):
        assert words in joined, words
    parsed = pr.parse_reports(texts, config.load()["parse_reports"])
    gold, pred, agree = [], [], []
    for truth, rep in zip(truths, parsed):
        keys = {" ".join(p.sentence.split()) for p in truth if p.observation} | {
            " ".join(p.sentence.split()) for p in rep.phrases}
        for k in keys:
            g = score.by_observation([p for p in truth if p.observation and " ".join(p.sentence.split()) == k])
            gold.append({o: (s, side, next(iter(z - {""}), "") or None) for o, (s, side, z) in g.items()})
            pred.append(score.by_observation([p for p in rep.phrases if " ".join(p.sentence.split()) == k]))
        a, b = derive_labels(truth), rep.labels
        agree.append(np.mean([a[o] == b[o] or (np.isnan(a[o]) and np.isnan(b[o])) for o in OBSERVATIONS]))
        # hedge grades carry through: a possible finding is uncertain in the truth and the parse alike
        assert {p.hedge for p in rep.phrases} <= {"", "probable", "possible"}
    figures = score.score(gold, pred)
    print(figures, np.mean(agree))
    assert figures["observation_f1"] >= 0.99 and figures["negation_accuracy"] >= 0.99
    assert figures["uncertainty_accuracy"] >= 0.99 and figures["laterality_accuracy"] >= 0.99
    assert figures["zone_accuracy"] >= 0.99 and np.mean(agree) >= 0.99
