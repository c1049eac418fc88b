"""Streaming U-Net training: examples read per batch from disk equal the in-memory ones, CheXmask tables are
indexed (not held), and CheXmask's Preprocessed (1024 x 1024) grid lands on the right pixels."""

import gzip
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import config, masks
from pipeline.shards import ShardWriter
from pipeline.stages import normalize
from pipeline.stages import train_segmenter as ts

SHAPE = (60, 80)  # original films: wider than tall, so the letterbox pads top and bottom


def lungs(h=60, w=80):
    right, left = np.zeros((h, w), bool), np.zeros((h, w), bool)
    right[10:50, 8:30] = True  # the patient's right lung is on the image's left
    left[12:52, 40:74] = True
    return right, left


def film(i, h=60, w=80):
    img = np.full((h, w), 30 + 5 * i, np.uint8)
    right, left = lungs(h, w)
    img[right | left] = 200
    return img


def write_shard(path, ids, splits, size):
    """A normalize-format shard of the films `ids` (the columns train_segmenter reads)."""
    images, transforms = zip(*(normalize.letterbox(film(i) / 255.0, size) for i in range(len(ids))))
    with ShardWriter(path, stage="normalize", stage_version=0, config={}, image_id=ids) as w:
        w.rows("image", np.stack(images))
        w.rows("transform", np.stack(transforms))
        w.rows("original_size", np.tile(SHAPE, (len(ids), 1)).astype(np.int32))
        w.rows("patient_id", [f"p-{i}" for i in ids])
        w.rows("split", splits)


def chexmask_text(ids, right, left, height, width):
    """A CheXmask table as published: Landmarks a numpy array printed over several lines, inside quotes."""
    frame = pd.DataFrame({"dicom_id": ids, "Dice RCA (Mean)": 0.9, "Dice RCA (Max)": 0.95,
                          "Landmarks": "[[ 1  2]\n [ 3  4]]", "Left Lung": masks.rle_encode(left),
                          "Right Lung": masks.rle_encode(right), "Heart": "", "Height": height, "Width": width})
    return frame.to_csv(index=False)


@pytest.fixture
def mask_set(tmp_path, norm_cfg):
    """Six ingested films in two shards (img1 validate, img3 test); a gzipped CheXmask table for img0-img4
    (img4 below min_dice) and one never ingested; lesion boxes for img0; a masks table for a film not ingested."""
    ids = [f"img{i}" for i in range(6)]
    write_shard(tmp_path / "shard-00000.h5", ids[:3], ["train", "validate", "train"], norm_cfg["size"])
    write_shard(tmp_path / "shard-00001.h5", ids[3:], ["test", "train", "train"], norm_cfg["size"])
    right, left = lungs()
    text = chexmask_text(ids[:5] + ["not-ingested"], right, left, *SHAPE)
    text = text.replace("img4,0.9", "img4,0.5")  # below min_dice
    (tmp_path / "MIMIC-CXR-JPG.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "boxes.csv").write_text("image,label,x,y,w,h\nimg0,Nodule,10,15,8,8\n")
    Image.fromarray(film(9)).save(tmp_path / "extra.png")
    for name, m in zip(("right", "left"), lungs()):
        Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / f"extra-{name}.png")
    pd.DataFrame([{"image_path": "extra.png", "right_lung": "extra-right.png", "left_lung": "extra-left.png",
                   "patient_id": "p-extra", "split": "train"}]).to_csv(tmp_path / "masks.csv", index=False)
    sources = [{"format": "chexmask", "path": str(tmp_path / "MIMIC-CXR-JPG.csv.gz")},
               {"format": "boxes", "path": str(tmp_path / "boxes.csv")},
               {"format": "masks", "path": str(tmp_path / "masks.csv")}]
    ingested = ts.ingested_images(sorted(tmp_path.glob("shard-*.h5")), None)
    return sources, ingested


FRACTIONS = {"train": 1.0, "validate": 0.0, "test": 0.0}


def test_streaming_examples_equal_the_in_memory_ones(mask_set, norm_cfg, tmp_path):
    sources, ingested = mask_set
    in_memory = ts.real_examples(sources, ingested, norm_cfg, FRACTIONS)
    streaming = ts.real_datasets(sources, ingested, norm_cfg, FRACTIONS, tmp_path / "unpacked")
    assert {k: len(v) for k, v in streaming.items()} == {"train": 3, "validate": 1, "test": 1}
    for split, data in streaming.items():
        # read by two DataLoader workers, as training reads them
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2)
        batches = [[t.numpy() for t in b] for b in loader]
        for j, arr in enumerate(in_memory[split]):
            np.testing.assert_array_equal(np.concatenate([b[j] for b in batches]), arr)
    images, m, known, boxed = in_memory["train"]
    # sorted by key: "extra" (a film not ingested, normalized when read), img0 (with a box), img2
    assert known.tolist() == [[True, True, False], [True, True, True], [True, True, False]]
    assert boxed.tolist() == [False, True, False]
    right, left = (normalize.letterbox_mask(x.astype(np.uint8), norm_cfg["size"]) > 0 for x in lungs())
    np.testing.assert_array_equal(m[2, 0], right)
    np.testing.assert_array_equal(m[2, 1], left)
    np.testing.assert_array_equal(images[1], ingested.rows["img0"][0][0].f["image"][0])


def test_a_chexmask_table_is_indexed_not_held(mask_set, tmp_path):
    anns = masks.read_chexmask(tmp_path / "MIMIC-CXR-JPG.csv.gz", cache_dir=tmp_path / "unpacked")
    assert [a.key for a in anns] == ["img0", "img1", "img2", "img3", "not-ingested"]
    # each annotation holds a byte offset and the grid, never the RLE text, and survives pickling (workers)
    assert all(isinstance(v, int) for a in anns for v in a.lungs.args)
    right, left = pickle.loads(pickle.dumps(anns[3])).lungs()
    np.testing.assert_array_equal(right, lungs()[0])
    np.testing.assert_array_equal(left, lungs()[1])


def test_streaming_training_is_bit_identical_to_the_in_memory_path(mask_set, norm_cfg, tmp_path):
    sources, ingested = mask_set
    cfg = {**config.load()["segment"], "input_size": 64, "decoder_channels": [16, 16, 8, 8, 8], "min_steps": 0,
           "epochs": 2, "batch_size": 3, "patience": 1, "num_workers": 2}
    streaming = ts.real_datasets(sources, ingested, norm_cfg, FRACTIONS, tmp_path / "unpacked")
    in_memory = ts.real_examples(sources, ingested, norm_cfg, FRACTIONS)
    a, ma = ts.train({k: streaming[k] for k in ("train", "validate")}, cfg)
    b, mb = ts.train({k: in_memory[k] for k in ("train", "validate")}, cfg)
    assert ma["loss"] == mb["loss"]
    np.testing.assert_equal(ma["validate"], mb["validate"])  # NaN (no lesion labels) equals NaN
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cores, threads, workers", [(2, 2, 0), (2, 4, 0), (4, 2, 2), (3, 2, 1), (16, 8, 2)])
def test_workers_run_only_on_cores_the_training_threads_leave_free(mask_set, norm_cfg, tmp_path, monkeypatch,
                                                                    cores, threads, workers):
    # a worker on a core the training's threads use preempts one of them and every step waits for it
    sources, ingested = mask_set
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(cores)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process keeps its own thread count
    asked = []
    real_loader = ts._loader
    monkeypatch.setattr(ts, "_loader", lambda data, bs, w, *a: asked.append(w) or real_loader(data, bs, 0, *a))
    cfg = {**config.load()["segment"], "input_size": 64, "decoder_channels": [16, 16, 8, 8, 8], "min_steps": 0,
           "epochs": 1, "batch_size": 3, "num_workers": 2}
    splits = ts.real_datasets(sources, ingested, norm_cfg, FRACTIONS, tmp_path / "unpacked")
    _, metrics = ts.train({k: splits[k] for k in ("train", "validate")}, cfg, threads=threads, max_steps=1)
    assert asked == [workers, workers] and metrics["num_workers"] == workers  # the training and validate loaders


@pytest.mark.parametrize("side, size", [(256, 128), (256, 64), (128, 128), (240, 64), (64, 4)])
def test_masks_downsample_as_the_area_mean_thresholded(side, size):
    masks = np.random.default_rng(side + size).random((2, 3, side, side)) > 0.6
    masks[0, 0, : side // 2] = True  # a solid half: block sums of 0 and of every pixel
    expected = (torch.nn.functional.interpolate(torch.from_numpy(masks).float().reshape(-1, 1, side, side),
                                                size=(size, size), mode="area") > 0.5).float()
    expected = expected.reshape(2, 3, size, size).numpy()
    np.testing.assert_array_equal(ts.downsample_masks(masks, size).numpy(), expected)
    np.testing.assert_array_equal(ts.downsample_masks(masks[0], size).numpy(), expected[0])


def preprocess_like_chexmask(mask):
    """CheXmask's preparation, written here from its description: pad to a square, centred, resize to 1024."""
    h, w = mask.shape
    side = max(h, w)
    square = np.zeros((side, side), bool)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = mask
    return np.asarray(Image.fromarray(square).resize((1024, 1024), Image.Resampling.NEAREST))


def test_chexmask_preprocessed_masks_decode_to_the_right_pixels(tmp_path, norm_cfg):
    right, left = lungs()
    folder = tmp_path / "Preprocessed"
    folder.mkdir()
    # Height / Width of a Preprocessed row are not relied on: the grid is 1024 x 1024
    (folder / "MIMIC-CXR-JPG.csv").write_text(chexmask_text(["img0"], preprocess_like_chexmask(right),
                                                            preprocess_like_chexmask(left), 1024, 1024))
    ann, = masks.read_chexmask(folder / "MIMIC-CXR-JPG.csv")
    assert ann.preprocessed and ann.lungs()[0].shape == (1024, 1024)
    back = [masks.preprocessed_to_original(m, SHAPE) for m in ann.lungs()]
    np.testing.assert_array_equal(back[0], right)
    np.testing.assert_array_equal(back[1], left)
    # through the join: the same masks as the OriginalResolution table gives
    write_shard(tmp_path / "shard-00000.h5", ["img0"], ["train"], norm_cfg["size"])
    ingested = ts.ingested_images([tmp_path / "shard-00000.h5"], None)
    original = tmp_path / "MIMIC-CXR-JPG.csv"
    original.write_text(chexmask_text(["img0"], right, left, *SHAPE))
    pre = ts.real_examples([{"format": "chexmask", "path": str(folder / "MIMIC-CXR-JPG.csv")}], ingested, norm_cfg,
                           FRACTIONS)["train"][1]
    orig = ts.real_examples([{"format": "chexmask", "path": str(original)}], ingested, norm_cfg, FRACTIONS)["train"][1]
    np.testing.assert_array_equal(pre, orig)
    assert np.flatnonzero(pre[0, 0].any(0)).max() < norm_cfg["size"] // 2  # the right lung on the image's left
