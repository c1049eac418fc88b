import numpy as np
import pandas as pd
import pytest

from conftest import write_chexpert_tree, write_mimic_tree
from pipeline import config
from pipeline.stages import ingest


def data_cfg(**over):
    cfg = config.load()["data"]
    cfg.update(over)
    return cfg


def test_mimic_layout(tmp_path):
    write_mimic_tree(tmp_path)
    df, plan = ingest.ingest(data_cfg(source="mimic-cxr", root=str(tmp_path), shard_size=3))
    assert len(df) == 8  # 4 patients x (PA + AP); laterals dropped by the default view filter
    assert set(df["view"]) == {"PA", "AP"}
    first = df.set_index("image_id").loc["0000aaaa-bbbbbbbb"]
    assert first["patient_id"] == "10000000" and first["study_id"] == "50000000"
    assert first["image_path"].endswith("files/p10/p10000000/s50000000/0000aaaa-bbbbbbbb.dcm")
    assert "No pneumothorax." in first["report"]
    assert df.set_index("image_id").loc["0010aaaa-bbbbbbbb", "report"] == ""  # study without a report file
    # labels: blank -> NaN, values kept
    assert first["Pneumothorax"] == 0.0 and np.isnan(first["Edema"]) and np.isnan(first["Atelectasis"])
    # the official split is used
    assert df.groupby("patient_id")["split"].first().to_dict() == {
        "10000000": "train", "10000101": "validate", "10000202": "test", "10000303": "train"}
    assert plan["n_images"] == 8 and sorted(plan["shards"]) == ["00000", "00001", "00002"]
    assert sum(s["n_images"] for s in plan["shards"].values()) == 8


def test_mimic_view_filter_from_config(tmp_path):
    write_mimic_tree(tmp_path, gz=False)
    df, _ = ingest.ingest(data_cfg(source="mimic-cxr", root=str(tmp_path), views=["LATERAL"]))
    assert len(df) == 4 and set(df["view"]) == {"LATERAL"}


def test_chexpert_layout_with_plus_reports(tmp_path):
    root = write_chexpert_tree(tmp_path)
    plus = tmp_path / "df_chexpert_plus.csv"
    pd.DataFrame({"path_to_image": ["train/patient00001/study1/view1_frontal.jpg"],
                  "report": ["FINDINGS: Cardiomegaly. IMPRESSION: Enlarged heart."]}).to_csv(plus, index=False)
    df, _ = ingest.ingest(data_cfg(source="chexpert", root=str(root), chexpert={"reports": str(plus)}))
    assert len(df) == 5 and set(df["view"]) == {"PA"}
    row = df.set_index("image_id").loc["patient00001_study1_view1_frontal"]
    assert row["report"].startswith("FINDINGS: Cardiomegaly") and row["sex"] == "Female" and row["age"] == 61
    assert row["Cardiomegaly"] == 1.0 and row["Pleural Effusion"] == -1.0 and np.isnan(row["Edema"])
    assert row["image_path"].endswith("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert df.set_index("patient_id").loc["patient00005", "split"] == "validate"
    assert set(df.loc[df["patient_id"] != "patient00005", "split"]) <= {"train", "test"}


def test_chexpert_folder_under_another_name(tmp_path):
    root = write_chexpert_tree(tmp_path)
    moved = root.rename(tmp_path / "chexpert")
    df, _ = ingest.ingest(data_cfg(source="chexpert", root=str(moved)))
    assert all(p.startswith(str(moved)) for p in df["image_path"])


def test_csv_table_relative_paths_and_hash_split(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = [{"image_path": f"imgs/{i}.png", "patient_id": f"P{i // 2}", "study_id": f"S{i}",
             "report": "No effusion.", "Edema": 1 if i == 0 else ""} for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    df, _ = ingest.ingest(data_cfg(source="csv", root=str(tmp_path / "table.csv")))
    assert len(df) == 40
    assert df.set_index("image_id").loc["0", "image_path"] == str((tmp_path / "imgs" / "0.png").resolve())
    assert df.set_index("image_id").loc["0", "Edema"] == 1.0
    assert set(df["split"]) == {"train", "validate", "test"}
    ingest.check_patient_splits(df)


def test_csv_missing_column_is_a_clear_error(tmp_path):
    pd.DataFrame({"image_path": ["a.png"], "study_id": ["s"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ingest.IngestError, match="lacks required column.*patient_id"):
        ingest.ingest(data_cfg(source="csv", root=str(tmp_path / "t.csv")))


def test_no_patient_in_two_splits():
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", ""]})
    with pytest.raises(ingest.IngestError, match="more than one split"):
        ingest.assign_splits(df, {"train": 0.8, "validate": 0.1, "test": 0.1, "seed": 0})
    many = pd.DataFrame({"patient_id": [f"p{i % 300}" for i in range(900)], "split": ""})
    out = ingest.assign_splits(many, {"train": 0.8, "validate": 0.1, "test": 0.1, "seed": 0})
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    shares = out.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.07) and shares["test"] == pytest.approx(0.1, abs=0.05)


def test_split_hash_is_stable_and_seeded():
    assert ingest.hash_fraction("10000032", 0) == ingest.hash_fraction("10000032", 0)
    assert ingest.hash_fraction("10000032", 0) != ingest.hash_fraction("10000032", 1)


def test_shard_plan_is_a_pure_function_of_table_and_size(tmp_path):
    df = pd.DataFrame({"image_id": [f"i{i:03d}" for i in range(10)], "split": ["test", "train"] * 5})
    a, plan_a = ingest.plan_shards(df, 4)
    b, plan_b = ingest.plan_shards(df.sample(frac=1, random_state=3), 4)
    assert plan_a == plan_b and a["image_id"].tolist() == b["image_id"].tolist()
    assert [s["n_images"] for s in plan_a["shards"].values()] == [4, 4, 2]
    assert a["split"].tolist()[:5] == ["train"] * 5  # split-major order: test images share shards
    assert ingest.plan_shards(df, 5)[1] != plan_a


def test_run_writes_table_and_plan(tmp_path):
    write_mimic_tree(tmp_path / "mimic")
    cfg = data_cfg(source="mimic-cxr", root=str(tmp_path / "mimic"), shard_size=4)
    ingest.run(cfg, tmp_path / "studies.csv", tmp_path / "shards.json")
    studies = ingest.load_studies(tmp_path / "studies.csv")
    assert pd.api.types.is_string_dtype(studies["patient_id"]) and studies["patient_id"].iloc[0] == "10000000"
    assert len(ingest.load_studies(tmp_path / "studies.csv", "00001")) == 4
    assert list(studies.columns) == ingest.COLUMNS + ["shard"]


def test_view_values_are_normalised_and_unknown_views_kept(tmp_path):
    assert [ingest.normalize_view(v) for v in ("AP Supine", "AP_SUPINE", "ap", " PA ", "PA/AP", "", None,
                                               "Lateral", "AP AXIAL", "LL")] == [
        "AP", "AP", "AP", "PA", "FRONTAL", "UNKNOWN", "UNKNOWN", "LATERAL", "OTHER", "LL"]
    table = tmp_path / "images.csv"
    pd.DataFrame({"image_path": [f"i{i}.png" for i in range(5)], "patient_id": list("abcde"),
                  "study_id": list("abcde"), "view": ["PA", "AP Supine", "", "PA/AP", "LATERAL"]}).to_csv(table, index=False)
    df, _ = ingest.ingest(data_cfg(source="csv", root=str(table)))
    assert sorted(df["view"]) == ["AP", "FRONTAL", "PA", "UNKNOWN"]  # only the lateral filtered out
