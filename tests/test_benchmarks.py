"""Benchmark readers on fixtures written in each dataset's official format (headers as published, quirks kept),
the pinned manifests, and one benchmark evaluated end to end with a randomly initialised tiny model."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT
from pipeline import benchmarks
from pipeline.dicom import DicomSpec, write_dicom
from pipeline.labels import OBSERVATIONS


def _png(path, h=80, w=100, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).convert(mode).save(path)


def write_ms_cxr(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
        "d1,Pneumothorax,small left apical pneumothorax,files/p10/p10233088/s54276838/d1.jpg,60,5,20,15,100,80,test\n"
        "d1,Pneumothorax,small left apical pneumothorax,files/p10/p10233088/s54276838/d1.jpg,60,25,10,10,100,80,test\n"
        "d2,Cardiomegaly,enlarged heart,files/p11/p11000001/s50000001/d2.jpg,30,40,40,30,100,80,test\n")
    for d, p in (("d1", "p10/p10233088/s54276838"), ("d2", "p11/p11000001/s50000001")):
        _png(root / "files" / p / f"{d}.jpg", mode="RGB")  # MIMIC-CXR-JPG: greyscale saved as JPEG


def test_ms_cxr_groups_rows_into_multi_box_phrases(tmp_path):
    write_ms_cxr(tmp_path)
    cases, files = benchmarks.read("ms_cxr", tmp_path)
    assert [c["text"] for c in cases] == ["small left apical pneumothorax", "enlarged heart"]
    assert cases[0]["boxes"] == [[60, 5, 80, 20], [60, 25, 70, 35]] and cases[0]["patient"] == "p10233088"
    assert cases[1]["category"] == "Cardiomegaly" and files[0].name == "MS_CXR_Local_Alignment_v1.1.0.csv"


def test_rsna_aggregates_boxes_per_patient_and_takes_gloria_test_split(tmp_path):
    rows = ["patientId,x,y,width,height,Target"]
    for k in range(40):
        if k % 4 == 0:
            rows += [f"pat{k:03d},100,200,50,60,1", f"pat{k:03d},500,210,40,40,1"]
        else:
            rows.append(f"pat{k:03d},,,,,0")
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    cases, _ = benchmarks.read("rsna_pneumonia", tmp_path, split="all")
    assert len(cases) == 40 and cases[0]["boxes"] == [[100, 200, 150, 260], [500, 210, 540, 250]]
    assert cases[0]["label"] == 1 and cases[1]["label"] == 0 and cases[1]["boxes"] == []
    test, _ = benchmarks.read("rsna_pneumonia", tmp_path)
    assert len(test) == 6  # 40 -> 12 held out -> 6 test, as sklearn splits it with random_state 0
    assert [c["patient"] for c in test] == benchmarks.gloria_split([f"pat{k:03d}" for k in range(40)])


def test_nih_bbox_odd_header_and_infiltrate(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661\n"
        "00014716_007.png,Infiltrate,686.101694915254,131.543050847458,185.491525423729,313.491525423729\n"
        "00014716_007.png,Infiltrate,100,100,10,10\n")
    _png(tmp_path / "images_001" / "images" / "00013118_008.png")
    cases, _ = benchmarks.read("nih_bbox", tmp_path)
    assert [c["category"] for c in cases] == ["Atelectasis", "Infiltration"]
    assert cases[0]["boxes"][0] == pytest.approx([225.084745762712, 547.019216763771, 311.864406779661, 626.205657])
    assert len(cases[1]["boxes"]) == 2 and cases[1]["text"] == "infiltration" and cases[1]["patient"] == "00014716"
    assert cases[0]["image"].endswith("images_001/images/00013118_008.png")


def test_siim_rle_is_relative_and_column_major():
    # runs (gap 3, length 2), (gap 4, length 1): flat 3-4 and 9, column-major in a 4 x 4 image
    mask = benchmarks.decode_siim_rle("3 2 4 1", 4, 4)
    assert sorted(zip(*np.nonzero(mask))) == [(0, 1), (1, 2), (3, 0)]
    assert not benchmarks.decode_siim_rle(" -1", 4, 4).any() and not benchmarks.decode_siim_rle("-1", 4, 4).any()


def test_siim_reader_leading_space_column_and_several_rows(tmp_path):
    (tmp_path / "train-rle.csv").write_text(
        "ImageId, EncodedPixels\n1.2.3.1, -1\n1.2.3.2, 10 5 100 5\n1.2.3.2, 5000 3\n")
    folder = tmp_path / "dicom-images-train" / "1.2" / "1.2.9"
    folder.mkdir(parents=True)
    write_dicom(folder / "1.2.3.2.dcm", np.zeros((32, 32), np.uint16), DicomSpec(), uid_prefix="1.2.3")
    cases, _ = benchmarks.read("siim_pneumothorax", tmp_path)
    assert [(c["patient"], c["label"]) for c in cases] == [("1.2.3.1", 0), ("1.2.3.2", 1)]
    assert cases[1]["rle"] == ["10 5 100 5", "5000 3"] and cases[1]["image"].endswith("1.2.9/1.2.3.2.dcm")


def _chexpert_rows(n_per=3):
    rows = []
    for k, task in enumerate(benchmarks.FIVE * n_per):
        labels = {o: "" for o in OBSERVATIONS}
        labels[task] = "1.0"
        rows.append({"Path": f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg", "Sex": "Male",
                     "Age": 60, "Frontal/Lateral": "Frontal", "AP/PA": "AP", **labels})
    extra = dict(rows[0], Path="CheXpert-v1.0-small/train/patient99999/study1/view1_frontal.jpg")
    extra["Edema"] = "-1.0"  # uncertain: excluded
    lateral = dict(rows[1], **{"Frontal/Lateral": "Lateral", "AP/PA": ""})
    return rows + [extra, lateral]


def test_chexpert_5x200_recipe_seeded(tmp_path):
    pd.DataFrame(_chexpert_rows()).to_csv(tmp_path / "train.csv", index=False)
    cases, _ = benchmarks.read("chexpert_5x200", tmp_path, seed=0)
    assert len(cases) == 15 and {c["label"] for c in cases} == set(benchmarks.FIVE)
    assert all("patient99999" not in c["image"] for c in cases)
    labels = pd.DataFrame([{o: (1.0 if o == t else 0.0) for o in OBSERVATIONS} for t in benchmarks.FIVE * 10])
    a, b = benchmarks.five_by_200(labels, seed=1, per_class=3), benchmarks.five_by_200(labels, seed=1, per_class=3)
    assert a == b and len(a) == 15 and a != benchmarks.five_by_200(labels, seed=2, per_class=3)


def test_mimic_5x200_from_the_jpg_tables(tmp_path):
    rows, meta = [], []
    for k, task in enumerate(benchmarks.FIVE * 2):
        rows.append({"subject_id": 10000000 + k, "study_id": 50000000 + k,
                     **{o: (1.0 if o == task else np.nan) for o in OBSERVATIONS}})
        meta += [{"dicom_id": f"a{k}", "subject_id": 10000000 + k, "study_id": 50000000 + k, "ViewPosition": "LATERAL"},
                 {"dicom_id": f"b{k}", "subject_id": 10000000 + k, "study_id": 50000000 + k, "ViewPosition": "PA"}]
    pd.DataFrame(rows).to_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(meta).to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    cases, files = benchmarks.read("mimic_5x200", tmp_path)
    assert len(cases) == 10 and len(files) == 2
    assert cases[0]["image"].endswith("files/p10/p10000000/s50000000/b0.jpg")


def test_gloria_prompt_grammar_joins_parts_in_key_order():
    vocab = {"Edema": {"severity": ["", "mild"], "subtype": ["edema"], "location": ["", "in the bases"]}}
    prompts = benchmarks.gloria_prompts(vocab, None, 0)["Edema"]
    assert prompts == [" edema ", " edema in the bases", "mild edema ", "mild edema in the bases"]
    assert len(benchmarks.gloria_prompts(vocab, 2, 0)["Edema"]) == 2


def test_manifest_is_pinned_and_stops_when_a_source_changes(tmp_path):
    root = tmp_path / "ms"
    write_ms_cxr(root)
    path = tmp_path / "manifest.json"
    first = benchmarks.manifest("ms_cxr", root, path)
    again = benchmarks.manifest("ms_cxr", root, path)
    assert first["sha256"] == again["sha256"] and first["n"] == 2 and json.loads(path.read_text())["sources"]
    table = root / "MS_CXR_Local_Alignment_v1.1.0.csv"
    table.write_text(table.read_text() + "d3,Edema,edema,files/p12/p12/s1/d3.jpg,1,1,5,5,100,80,test\n")
    with pytest.raises(benchmarks.BenchmarkError, match="changed since"):
        benchmarks.manifest("ms_cxr", root, path)


def test_benchmark_command_on_ms_cxr_fixture(tmp_path):
    import open_clip
    import torch

    import pipeline.models  # noqa: F401

    root = tmp_path / "ms"
    write_ms_cxr(root)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(open_clip.create_model("medclip-tiny").state_dict(), ckpt)
    out = subprocess.run([sys.executable, "-m", "pipeline", "benchmark", "ms_cxr", "--checkpoint", str(ckpt),
                          "--root", str(root), "--model", "medclip-tiny", "--bootstrap", "10", "--segmenter",
                          str(tmp_path / "none.pt"), "-o", str(tmp_path / "pics")],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "2 cases pinned" in out.stdout and "dense/cnr " in out.stdout and "dense/pointing_game" in out.stdout
    assert "dense/miou/Pneumothorax" in out.stdout and (tmp_path / "results/benchmarks/ms_cxr/manifest.json").exists()
    assert len(list((tmp_path / "pics").glob("ms_cxr-*.png"))) == 2


def _closed_figures(monkeypatch):
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    return figures


def test_benchmark_pictures_have_a_labelled_colour_bar_per_map(tmp_path, monkeypatch):
    from pipeline import benchmarks

    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32), bool)
    truth[8:16, 8:16] = True
    figures = {"pointing_game": 1.0, "cnr": 0.5}
    picture = {"image": rng.integers(0, 255, (32, 32), dtype=np.uint8), "text": "left pleural effusion",
               "truth": truth, "maps": {"dense": rng.random((32, 32)), "roi": rng.random((32, 32))},
               "figures": {"dense": figures, "roi": figures}}
    closed = _closed_figures(monkeypatch)
    written = benchmarks.draw([picture], "ms_cxr", "student", tmp_path)
    assert len(written) == 1 and written[0].is_file()
    labels = [ax.get_ylabel() for ax in closed[-1].axes]
    assert len(closed[-1].axes) == 4, labels  # two maps, each with its colour bar's axes
    assert any("cosine similarity" in s for s in labels) and any("ROI weight" in s for s in labels), labels


def test_a_bench_child_runs_in_its_own_process_and_names_itself_when_it_fails():
    from pipeline.bench.child import run_child

    got = run_child("pipeline.bench.child.peak_rss()", "bench test")
    assert set(got) == {"peak_rss_mb", "worker_peak_rss_mb"} and got["peak_rss_mb"] > 0
    with pytest.raises(RuntimeError, match="bench test child failed"):
        run_child("pipeline.bench.child.no_such_function()", "bench test")
