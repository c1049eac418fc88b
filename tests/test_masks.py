"""Mask sources of segment.train: fixtures written here in each published format."""

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import masks
from pipeline.stages import train_segmenter as ts


def two_lungs(h=60, w=80):
    """A both-lungs mask: the patient's right lung (image left) narrower than the left one, a gap between."""
    m = np.zeros((h, w), bool)
    m[10:50, 8:30] = True  # image left = patient's right
    m[12:52, 40:74] = True
    return m


def encode_published(mask):
    """RLE as CheXmask's paper defines it, written independently of the module: for each run of ones in the
    row-major flattened mask, its 1-based first index and its length."""
    flat = mask.reshape(-1)
    pairs, i = [], 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            pairs += [i + 1, j - i]
            i = j
        else:
            i += 1
    return " ".join(map(str, pairs))


def test_chexmask_rle_round_trips_the_published_convention():
    rng = np.random.default_rng(0)
    for m in (two_lungs(), rng.random((17, 23)) > 0.6, np.ones((4, 5), bool), np.zeros((4, 5), bool)):
        rle = encode_published(m)
        np.testing.assert_array_equal(masks.rle_decode(rle, *m.shape), m)
        assert masks.rle_encode(m) == rle
    # one pixel at row 2, col 3 of a 5-wide image: 1-based absolute start 2*5+3+1 = 14
    one = masks.rle_decode("14 1", 4, 5)
    assert one.sum() == 1 and one[2, 3]
    assert not masks.rle_decode(float("nan"), 3, 3).any()


def write_chexmask(path, ids, shape=(60, 80), quality=(0.9, 0.5)):
    right, left = two_lungs(*shape), two_lungs(*shape)
    right[:, 35:] = False
    left[:, :35] = False
    rows = [{"dicom_id": i, "Dice RCA (Max)": q + 0.05, "Dice RCA (Mean)": q, "Landmarks": "[1, 2]",
             "Left Lung": encode_published(left), "Right Lung": encode_published(right), "Heart": "",
             "Height": shape[0], "Width": shape[1]} for i, q in zip(ids, quality)]
    text = pd.DataFrame(rows).to_csv(index=False)
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return right, left


def test_chexmask_csv_gz_filters_on_quality_and_keeps_patient_sides(tmp_path):
    path = tmp_path / "MIMIC-CXR-JPG.csv.gz"
    right, left = write_chexmask(path, ["good-id", "poor-id"])
    anns = masks.read_chexmask(path)
    assert [a.key for a in anns] == ["good-id"]  # Dice RCA (Mean) 0.5 < 0.7 dropped
    r, l = anns[0].lungs()
    np.testing.assert_array_equal(r, right)
    np.testing.assert_array_equal(l, left)
    assert masks.detect_format(path) == "chexmask"
    assert [a.key for a in masks.read_chexmask(path, min_dice=0.4)] == ["good-id", "poor-id"]


def test_chexmask_ids_map_to_ingest_image_ids():
    assert masks.image_key("train/patient18591/study2/view1_frontal.jpg") == "patient18591_study2_view1_frontal"
    assert masks.image_key("00028162_002.png") == "00028162_002"
    assert masks.image_key("02aa804e-bde0afdd-112c0b34") == "02aa804e-bde0afdd-112c0b34"


def test_both_lungs_mask_splits_with_the_patients_right_on_the_image_left():
    right, left = masks.split_lungs(two_lungs())
    assert right[:, 8:30].any() and not right[:, 31:].any()  # image left half
    assert left[:, 40:74].any() and not left[:, :39].any()
    assert (right | left).sum() == two_lungs().sum() and not (right & left).any()
    touching = two_lungs()
    touching[30:32, 30:40] = True  # lungs joined by a thin bridge: cut at the narrowest column
    r, l = masks.split_lungs(touching)
    assert r[10:50, 8:30].all() and not r[:, 40:].any() and l[12:52, 40:74].all() and not l[:, :30].any()


def test_nih_and_rsna_box_tables_with_their_real_headers(tmp_path):
    nih = tmp_path / "BBox_List_2017.csv"
    nih.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661\n"
                   "00013118_008.png,Infiltrate,100,100,50,20\n"
                   "00014716_007.png,Nodule,10,20,30,40\n")
    anns = {a.key: a for a in masks.read_boxes(nih)}
    assert sorted(anns) == ["00013118_008", "00014716_007"]
    np.testing.assert_allclose(anns["00013118_008"].boxes[1], [100, 100, 150, 120])
    assert anns["00013118_008"].extra["labels"] == ["Atelectasis", "Infiltration"]  # NIH's "Infiltrate" renamed
    rsna = tmp_path / "stage_2_train_labels.csv"
    rsna.write_text("patientId,x,y,width,height,Target\n"
                    "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0\n"
                    "00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1\n"
                    "00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1\n")
    anns = {a.key: a for a in masks.read_boxes(rsna)}
    assert len(anns["0004cfab-14fd-4e49-80ba-63a80b6bddd6"].boxes) == 0  # known: no lesion
    np.testing.assert_allclose(anns["00436515-870c-4b36-a041-de91049b9ab4"].boxes,
                               [[264, 152, 477, 531], [562, 152, 818, 605]])
    assert masks.box_mask(np.array([[1, 2, 4, 3]]), (5, 6)).sum() == 3


def _film(path, shape=(60, 80), background=40):
    img = np.full(shape, background, np.uint8)
    img[two_lungs(*shape)] = 200
    Image.fromarray(img).save(path)


def test_sources_combine_and_a_test_patients_mask_never_trains(tmp_path, norm_cfg):
    """A lungs table over files that are not ingested: each image takes its patient's ingest split; the
    test patient's image is held out. Boxes from a second source join the same image by its id."""
    rows = []
    for i, patient in enumerate(["p-train", "p-validate", "p-test", "p-new"]):
        _film(tmp_path / f"img{i}.png", background=40 + 10 * i)  # each film told apart by its background
        Image.fromarray(two_lungs().astype(np.uint8) * 255).save(tmp_path / f"lungs{i}.png")
        rows.append({"image_path": f"img{i}.png", "lung_mask_path": f"lungs{i}.png", "patient_id": patient})
    pd.DataFrame(rows).to_csv(tmp_path / "lungs.csv", index=False)
    (tmp_path / "boxes.csv").write_text("image,label,x,y,w,h\nimg0,Nodule,10,10,8,8\n")
    ingested = ts.Ingested({}, {}, {}, {"p-train": "train", "p-validate": "validate", "p-test": "test"})
    sources = [{"format": "lungs", "path": str(tmp_path / "lungs.csv")},
               {"format": "boxes", "path": str(tmp_path / "boxes.csv")}]
    ex = ts.real_examples(sources, ingested, norm_cfg, {"train": 1.0, "validate": 0.0, "test": 0.0})
    assert len(ex["train"][0]) == 2 and len(ex["validate"][0]) == 1 and len(ex["test"][0]) == 1
    images, m, known, boxed = ex["train"]
    assert known.tolist() == [[True, True, True], [True, True, False]] and boxed.tolist() == [True, False]
    # the right lung (channel 0) lies on the image's left in the normalized grid too
    cols = np.flatnonzero(m[1, 0].any(0))
    assert cols.max() < norm_cfg["size"] // 2 <= np.flatnonzero(m[1, 1].any(0)).min()
    test_image = ex["test"][0][0]
    assert not any(np.array_equal(test_image, t) for t in ex["train"][0])


def test_an_ingested_test_image_stays_out_of_training(tmp_path, norm_cfg):
    size = norm_cfg["size"]
    image = np.zeros((size, size), np.uint8)
    rows = {"a": (image, "train", "p1", np.array([size / 60, size / 80, 0, 0.0]), (60, 80)),
            "b": (image + 1, "test", "p2", np.array([size / 60, size / 80, 0, 0.0]), (60, 80))}
    path = tmp_path / "MIMIC-CXR-JPG.csv"
    write_chexmask(path, ["a", "b"], quality=(0.9, 0.9))
    ex = ts.real_examples([{"format": "chexmask", "path": str(path)}],
                          ts.Ingested(rows, {}, {}, {"p1": "train", "p2": "test"}), norm_cfg,
                          {"train": 1.0, "validate": 0.0, "test": 0.0})
    assert len(ex["train"][0]) == 1 and (ex["train"][0][0] == 0).all()
    assert len(ex["test"][0]) == 1


def test_box_supervision_ignores_pixels_inside_the_box():
    import torch

    y = torch.zeros(1, 3, 16, 16)
    y[0, 2, 4:8, 4:8] = 1
    known, boxed = torch.tensor([[False, False, True]]), torch.tensor([True])
    pw = torch.ones(1, 3, 1, 1)
    inside = torch.full((1, 3, 16, 16), -10.0)
    inside[0, 2, 5:7, 5:7] = 10.0  # a blob inside the box touching neither edge
    filled = torch.full((1, 3, 16, 16), -10.0)
    filled[0, 2, 4:8, 4:8] = 10.0
    outside = filled.clone()
    outside[0, 2, 12, 12] = 10.0
    loss = {k: float(ts.loss_fn(v, y, pw, known, boxed)) for k, v in
            (("inside", inside), ("filled", filled), ("outside", outside))}
    assert loss["filled"] < loss["outside"] and loss["filled"] < loss["inside"]
    # a blob spanning the box's rows and columns (a cross) is as good as the filled box
    cross = torch.full((1, 3, 16, 16), -10.0)
    cross[0, 2, 4:8, 5] = cross[0, 2, 5, 4:8] = 10.0
    assert float(ts.loss_fn(cross, y, pw, known, boxed)) == pytest.approx(loss["filled"], abs=1e-3)
