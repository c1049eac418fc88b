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
    assert df.set_index("image_path").loc[str((tmp_path / "imgs" / "0.png").resolve()), "Edema"] == 1.0
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


def write_table(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ids_that_are_not_safe_file_names_are_mapped_and_no_png_leaves_the_folder(tmp_path, make_dicom, norm_cfg):
    from pipeline.stages import normalize

    (tmp_path / "run" / "results").mkdir(parents=True)
    dicom = make_dicom("film.dcm")
    ids = ["../../../../../x", str(tmp_path / "abs" / "x"), ".hidden", "ok-1.2_3"]
    table = write_table(tmp_path / "t.csv", [{"image_id": i, "image_path": str(dicom), "patient_id": f"p{k}",
                                              "study_id": f"s{k}"} for k, i in enumerate(ids)])
    cfg = data_cfg(source="csv", root=str(table), shard_size=8)
    ingest.run(cfg, tmp_path / "run/results/studies.csv", tmp_path / "run/results/shards.json")
    studies = ingest.load_studies(tmp_path / "run/results/studies.csv")
    mapped = studies.set_index("source_image_id")["image_id"]
    assert mapped["../../../../../x"].startswith("id-") and mapped[".hidden"].startswith("id-")
    assert studies.set_index("image_id").loc["ok-1.2_3", "source_image_id"] == ""  # a safe id is kept as is
    png = tmp_path / "run/results/png"
    normalize.run(tmp_path / "run/results/studies.csv", "00000", tmp_path / "run/results/n.h5", png, norm_cfg)
    assert sorted(p.name for p in png.iterdir()) == sorted(f"{i}.png" for i in studies["image_id"])
    assert not list(tmp_path.rglob("x.png"))
    # the second guard: the PNG writer refuses a path outside its folder whatever the table says
    with pytest.raises(normalize.Rejected, match="not a safe file name"):
        normalize.png_path(png, "../x")
    with pytest.raises(normalize.Rejected):
        normalize.png_path(png, "/abs/path/x")


def test_non_utf8_row_is_rejected_with_its_row_and_the_rest_ingested(tmp_path):
    table = tmp_path / "t.csv"
    lines = ["image_id,image_path,patient_id,study_id,report"]
    lines += [f"i{k},i{k}.png,p{k},s{k},No effusion." for k in range(5)]
    data = ("\n".join(lines) + "\n").encode().replace(b"i2.png,p2,s2,No", b"i2.png,p2,s2,N\xe9o")
    table.write_bytes(data)
    rejected = []
    df, _ = ingest.ingest(data_cfg(source="csv", root=str(table)), rejected)
    assert sorted(df["image_id"]) == ["i0", "i1", "i3", "i4"]
    assert rejected == [{"table": "t.csv", "row": 3, "image_id": "",
                         "reason": "column report: byte 0xe9 is not UTF-8"}]


def test_duplicated_image_id_flags_both_rows_and_the_rest_goes_on(tmp_path):
    rows = [{"image_id": i, "image_path": f"{k}.png", "patient_id": f"p{k}", "study_id": f"s{k}"}
            for k, i in enumerate(["a", "b", "a", "c"])]
    rows.append({"image_id": "d", "image_path": "", "patient_id": "p9", "study_id": "s9"})  # no path
    table = write_table(tmp_path / "t.csv", rows)
    ingest.run(data_cfg(source="csv", root=str(table)), tmp_path / "studies.csv", tmp_path / "shards.json")
    assert sorted(ingest.load_studies(tmp_path / "studies.csv")["image_id"]) == ["b", "c"]
    rejected = pd.read_csv(tmp_path / "rejected.csv", dtype=str, keep_default_na=False)
    assert list(rejected.columns) == ingest.REJECTED_COLUMNS
    by_row = rejected.set_index("row")
    assert by_row.loc["1", "reason"] == by_row.loc["3", "reason"] == "image_id shared by rows 1, 3"
    assert by_row.loc["5", "reason"] == "no image_path" and by_row.loc["5", "image_id"] == "d"


def test_mimic_row_with_a_bad_byte_or_id_is_rejected_not_the_table(tmp_path):
    write_mimic_tree(tmp_path, gz=False)
    meta = tmp_path / "mimic-cxr-2.0.0-metadata.csv"
    lines = meta.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"PA", b"P\xffA")  # row 1
    lines[2] = lines[2].replace(b"10000000", b"1000x000", 1)  # row 2: subject_id not an integer
    meta.write_bytes(b"\n".join(lines))
    rejected = []
    df, _ = ingest.ingest(data_cfg(source="mimic-cxr", root=str(tmp_path), views=["PA", "AP", "LATERAL"]), rejected)
    assert len(df) == 10 and [r["row"] for r in rejected] == [1, 2]
    assert "0xff is not UTF-8" in rejected[0]["reason"] and "not an integer" in rejected[1]["reason"]


def test_without_an_image_id_column_ids_are_pseudonymous_hashes_of_the_relative_path(tmp_path, caplog):
    table = write_table(tmp_path / "t.csv", [{"image_path": "imgs/SMITH_JOHN_1950.png", "patient_id": "p",
                                              "study_id": "s"}])
    with caplog.at_level("INFO", logger="pipeline.ingest"):
        df, _ = ingest.ingest(data_cfg(source="csv", root=str(table)))
    image_id = df["image_id"].iloc[0]
    assert "SMITH" not in image_id and image_id == ingest.path_image_id(tmp_path / "imgs/SMITH_JOHN_1950.png", tmp_path)
    assert image_id.startswith("img-") and len(image_id) == 20
    assert "no image_id column" in caplog.text
    # stable: the same table elsewhere gives the same ids
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    write_table(moved / "t.csv", [{"image_path": "imgs/SMITH_JOHN_1950.png", "patient_id": "p", "study_id": "s"}])
    assert ingest.ingest(data_cfg(source="csv", root=str(moved / "t.csv")))[0]["image_id"].iloc[0] == image_id


def test_report_scrubbing_hook(tmp_path):
    report = ("Patient: John Smith\nFINDINGS: Compared with 03/14/2021 and March 3, 2020, seen by Dr. Jones.\n"
              "IMPRESSION: No effusion. Call MRN 12345.")
    table = write_table(tmp_path / "t.csv", [{"image_id": "a", "image_path": "a.png", "patient_id": "p",
                                              "study_id": "s", "report": report}])
    df, _ = ingest.ingest(data_cfg(source="csv", root=str(table)))
    assert df["report"].iloc[0] == report  # verbatim by default
    df, _ = ingest.ingest(data_cfg(source="csv", root=str(table), scrub_reports=["builtin", r"MRN \d+"]))
    assert df["report"].iloc[0] == ("Patient: ___\nFINDINGS: Compared with ___ and ___, seen by Dr. ___.\n"
                                    "IMPRESSION: No effusion. Call ___.")
