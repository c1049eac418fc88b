"""Segmentation and cropping: box and zone geometry on drawn masks, coordinates, weights, empty output."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import config
from pipeline.shards import Shard, ShardWriter, check
from pipeline.stages import crop, segment, train_segmenter
from pipeline.stages.normalize import to_original

# load_unet returns channels-last weights: the trained (plain-layout) function up to the other summation order
CHANNELS_LAST_CLOSE = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture
def crop_cfg():
    return config.load()["crop"]


@pytest.fixture
def seg_cfg():
    cfg = config.load()["segment"]
    cfg.update(input_size=64, decoder_channels=[16, 16, 8, 8, 8], min_steps=0)
    return cfg


def lung(size=128, rows=(30, 90), cols=(20, 55)):
    m = np.zeros((size, size), bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_a_lung_splits_into_three_zones_of_equal_height():
    zones = crop.zone_boxes(lung(rows=(30, 90)))
    assert [(z, box[1], box[3]) for z, box, _ in zones] == [("upper", 30, 50), ("middle", 50, 70), ("lower", 70, 90)]
    assert all(box[0] == 20 and box[2] == 55 for _, box, _ in zones)


def test_a_lesion_touching_two_zones_is_one_roi_zoned_by_its_centre():
    right = lung(rows=(30, 90), cols=(20, 55))
    left = lung(rows=(30, 90), cols=(73, 108))
    lesion = np.zeros_like(right)
    lesion[44:60, 30:40] = True  # rows 44-59 cross the upper/middle edge at 50; centre 51.5 -> middle
    tiny = np.zeros_like(right)
    tiny[80:82, 80:82] = True  # 4 pixels: below min_lesion_area
    rois = crop.lesion_rois(lesion | tiny, right, left, min_area=10)
    assert [(r.kind, r.laterality, r.zone, r.box, r.area) for r in rois] == [
        ("lesion", "right", "middle", (30, 44, 40, 60), 160)]


def test_image_rois_from_masks_and_the_fallbacks(crop_cfg):
    right, left = lung(cols=(20, 55)), lung(cols=(73, 108))
    transform, size = np.array([0.5, 0.5, 0.0, 14.0]), np.array([256, 200])
    rois = crop.image_rois(right, left, np.zeros_like(right), False, transform, size, crop_cfg)
    assert [(r.kind, r.laterality, r.zone) for r in rois] == [
        ("image", "", ""), ("lung", "right", ""), ("zone", "right", "upper"), ("zone", "right", "middle"),
        ("zone", "right", "lower"), ("lung", "left", ""), ("zone", "left", "upper"), ("zone", "left", "middle"),
        ("zone", "left", "lower")]
    assert rois[0].box == (14.0, 0.0, 114.0, 128.0)  # the letterbox content, padding left out
    empty = np.zeros_like(right)
    prior = crop.image_rois(empty, empty, empty, True, transform, size, crop_cfg)
    assert len(prior) == 9 and {r.source for r in prior[1:]} == {"prior"}
    assert prior[1].laterality == "right" and prior[1].box[2] < prior[5].box[0]  # right lung on the image left
    none = crop.image_rois(empty, empty, empty, True, transform, size, {**crop_cfg, "fallback": "none"})
    assert [r.kind for r in none] == ["image"]


def test_pad_and_min_size_stay_inside_the_image():
    assert crop.pad_box((10, 10, 30, 50), 128, 0.1, 4) == pytest.approx((8, 6, 32, 54))
    assert crop.pad_box((0, 0, 4, 4), 128, 0.0, 16) == pytest.approx((0, 0, 10, 10))
    assert crop.pad_box((120, 60, 128, 70), 128, 0.5, 4) == pytest.approx((116, 55, 128, 75))


def test_crops_resample_the_box():
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))  # brightness grows with x
    out = crop.crop_resize(image, np.array([[0, 0, 64, 64], [32, 0, 64, 64]], float), 16)
    np.testing.assert_allclose(out[0, 0], image[0, 1::4] + 2, atol=2)  # 4x box average at pixel centres
    assert out[1].min() >= 126  # the right half only


def _write_inputs(tmp_path, right, left, lesion, transform=(0.5, 0.5, 0.0, 14.0), size=(256, 200)):
    n = len(right)
    ids = [f"img{i}" for i in range(n)]
    images = np.random.default_rng(0).integers(0, 255, (n, 128, 128), dtype=np.uint8)
    with ShardWriter(tmp_path / "norm.h5", stage="normalize", stage_version=1, config={}, image_id=ids) as w:
        w.rows("image", images)
        w.rows("transform", np.tile(np.array(transform, float), (n, 1)))
        w.rows("original_size", np.tile(np.array(size, np.int32), (n, 1)))
    masks = np.stack([right, left, lesion], 1)
    q = segment.quality(masks, 0.05)
    with ShardWriter(tmp_path / "seg.h5", stage="segment", stage_version=1, config={}, image_id=ids) as w:
        for c, name in enumerate(segment.CLASSES):
            w.rows(name, masks[:, c].astype(np.uint8))
        for k, v in q.items():
            w.rows(k, v)
    return tmp_path / "norm.h5", tmp_path / "seg.h5"


def test_crop_shard_maps_boxes_back_to_original_pixels(tmp_path, crop_cfg):
    right, left = lung(cols=(20, 55))[None], lung(cols=(73, 108))[None]
    lesion = np.zeros_like(right)
    lesion[0, 72:84, 25:40] = True  # centre row 77.5: lower third of rows 30-90
    norm, seg = _write_inputs(tmp_path, right, left, lesion)
    counts = crop.run(norm, seg, tmp_path / "crop.h5", crop_cfg)
    assert counts == {"images": 1, "rois": 10, "lesion_rois": 1, "prior_rois": 0}
    assert check(tmp_path / "crop.h5") == []
    with Shard(tmp_path / "crop.h5") as s:
        r = s.row(0)["rois"]
        assert r["roi_image"].shape == (10, crop_cfg["roi_size"], crop_cfg["roi_size"])
        np.testing.assert_allclose(r["roi_box_original"], to_original(r["roi_box"], np.array([0.5, 0.5, 0.0, 14.0])),
                                   rtol=1e-5)
        image_box = r["roi_box_original"][r["roi_kind"].index("image")]
        np.testing.assert_allclose(image_box, [0, 0, 200, 256], atol=1e-3)  # the whole original image
        assert r["roi_kind"][-1] == "lesion" and r["roi_zone"][-1] == "lower" and r["roi_laterality"][-1] == "right"


def test_a_segmenter_that_finds_nothing_does_not_stop_the_shard(tmp_path, seg_cfg, crop_cfg):
    model = segment.build_unet(seg_cfg)
    with torch.no_grad():
        head = model.segmentation_head[0]
        head.weight.zero_()
        head.bias.fill_(-20.0)  # every pixel "not lung"
    torch.save(model.state_dict(), tmp_path / "blind.pt")
    empty = np.zeros((3, 128, 128), bool)
    norm, _ = _write_inputs(tmp_path, empty, empty, empty)
    counts = segment.run(norm, tmp_path / "blind.pt", tmp_path / "seg.h5", seg_cfg)
    assert counts["no_lungs"] == 3
    c = crop.run(norm, tmp_path / "seg.h5", tmp_path / "crop.h5", crop_cfg)
    assert c["prior_rois"] == 3 * 8 and check(tmp_path / "crop.h5") == []


def test_external_weights_load_from_a_path(tmp_path, seg_cfg):
    model = segment.build_unet(seg_cfg)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a plain state dict
    torch.save({"state_dict": model.state_dict(), "config": seg_cfg}, tmp_path / "ckpt.pt")
    x = torch.rand(1, 1, 64, 64)
    for name in ("bare.pt", "ckpt.pt"):
        loaded = segment.load_unet(tmp_path / name, {**seg_cfg, "decoder_channels": seg_cfg["decoder_channels"]})
        assert torch.allclose(loaded(x), model.eval()(x), **CHANNELS_LAST_CLOSE)
    # a checkpoint's own architecture wins over the config's
    other = segment.load_unet(tmp_path / "ckpt.pt", {**seg_cfg, "decoder_channels": [64, 32, 16, 16, 8]})
    assert torch.allclose(other(x), model.eval()(x), **CHANNELS_LAST_CLOSE)


def test_inference_runs_channels_last_and_gives_the_plain_layouts_masks(tmp_path, seg_cfg):
    torch.manual_seed(0)
    model = segment.build_unet(seg_cfg).eval()
    torch.save(model.state_dict(), tmp_path / "unet.pt")
    loaded = segment.load_unet(tmp_path / "unet.pt", seg_cfg)
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (20, 128, 128), dtype=np.uint8)
    with torch.no_grad():  # the NCHW reference, thresholded at the images' size as predict does
        logits = model(segment.to_input(images, seg_cfg["input_size"]))
        plain = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(128, 128), mode="bilinear")) > 0.5
    masks = segment.predict(loaded, images, seg_cfg["input_size"])
    assert masks.shape == (20, 3, 128, 128)
    # the two layouts sum in another order: at most a pixel in 100,000 may sit on the other side of 0.5
    assert (masks != plain.numpy()).mean() < 1e-5


def test_clean_lungs_keeps_the_largest_piece_and_fills_holes():
    m = np.zeros((1, 3, 32, 32), bool)
    m[0, 0, 5:25, 3:12] = True
    m[0, 0, 10, 6] = False  # a hole
    m[0, 0, 28:30, 28:30] = True  # a speck
    segment.clean_lungs(m)
    assert m[0, 0, 10, 6] and not m[0, 0, 28:30, 28:30].any() and m[0, 0].sum() == 20 * 9


def test_train_segmenter_writes_a_loadable_checkpoint_and_dice(tmp_path, seg_cfg):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (6, 64, 64)).astype(np.uint8)
    masks = np.zeros((6, 3, 64, 64), bool)
    masks[:, 0, 10:50, 8:28] = masks[:, 1, 10:50, 36:56] = True
    images[masks[:, 0] | masks[:, 1]] += 150  # lungs bright enough to learn in a few steps
    cfg = {**seg_cfg, "epochs": 3, "batch_size": 3, "min_lesion_area": 1}
    model, metrics = train_segmenter.train({"train": (images, masks), "validate": (images[:2], masks[:2])}, cfg)
    train_segmenter.save(model, metrics, cfg, tmp_path / "unet.pt", tmp_path / "metrics.json")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["validate"]) >= {"dice_right_lung", "dice_left_lung", "dice_lesion"}
    assert len(saved["loss"]) == 3 and saved["loss"][-1] < saved["loss"][0]
    reloaded = segment.load_unet(tmp_path / "unet.pt", seg_cfg)
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(reloaded(x), model.eval()(x), **CHANNELS_LAST_CLOSE)


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert train_segmenter.dice(a, b) == pytest.approx(0.5)
    assert np.isnan(train_segmenter.dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_qc_ranks_failed_segmentations_first(tmp_path):
    from pipeline import qc

    good_r, good_l = lung(rows=(20, 110), cols=(15, 60)), lung(rows=(20, 110), cols=(70, 112))
    right = np.stack([good_r, np.zeros_like(good_r), good_r])
    left = np.stack([good_l, np.zeros_like(good_l), lung(rows=(20, 110), cols=(70, 75))])  # tiny left lung
    norm, seg = _write_inputs(tmp_path, right, left, np.zeros_like(right))
    (tmp_path / "normalize").mkdir()
    (tmp_path / "segment").mkdir()
    norm.rename(tmp_path / "normalize" / "shard-00000.h5")
    seg.rename(tmp_path / "segment" / "shard-00000.h5")
    csv_path, png_path, table = qc.run(tmp_path / "segment", n=2)
    assert table["image_id"].tolist() == ["img1", "img2", "img0"]  # no lungs, then left/right off, then fine
    assert table["flags"].tolist() == ["no_lungs;small_lungs;left_right", "left_right", ""]
    assert csv_path.exists() and png_path.stat().st_size > 1000


def test_encoder_weights_from_a_local_rgb_state_dict(tmp_path, seg_cfg):
    donor = segment.smp.Unet(encoder_name=seg_cfg["encoder"], encoder_weights=None, in_channels=3, classes=1)
    torch.save(donor.encoder.state_dict(), tmp_path / "imagenet.pth")  # as torchvision / timm ship them: RGB
    model = segment.build_unet(seg_cfg)
    train_segmenter.load_encoder_weights(model, tmp_path / "imagenet.pth")
    first = next(k for k, v in model.encoder.state_dict().items() if v.ndim == 4)
    torch.testing.assert_close(model.encoder.state_dict()[first], donor.encoder.state_dict()[first].sum(1, keepdim=True))


def test_augmentation_moves_image_and_masks_together():
    x = torch.zeros(4, 1, 64, 64)
    x[:, :, 16:48, 8:28] = 1.0
    y = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)], 1)
    xa, ya = train_segmenter.augment(x, y, torch.Generator().manual_seed(0))
    assert not torch.equal(ya, y)  # moved
    inside = xa[ya[:, :1] > 0].mean()
    outside = xa[(ya[:, :1] == 0)].mean()
    assert inside > outside + 0.5  # the bright block is still where its mask went


def test_segment_train_sources_are_checked_by_the_schema(tmp_path):
    (tmp_path / "MIMIC-CXR-JPG.csv.gz").write_bytes(b"")
    cfg = config.load(overrides={"segment": {"train": [{"format": "chexmask",
                                                        "path": str(tmp_path / "MIMIC-CXR-JPG.csv.gz")}]}})
    assert cfg["segment"]["train"][0]["format"] == "chexmask"
    with pytest.raises(config.ConfigError, match="segment.train.0"):
        config.load(overrides={"segment": {"train": [{"format": "chexmaks", "path": "x.csv"}]}})
    with pytest.raises(config.ConfigError, match="train_csv"):
        config.load(overrides={"segment": {"train_csv": "old.csv"}})


def test_real_examples_train_with_early_stopping_on_the_validate_lung_dice(seg_cfg):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (4, 64, 64)).astype(np.uint8)
    masks = np.zeros((4, 3, 64, 64), bool)
    masks[:, 0, 10:50, 8:28] = masks[:, 1, 10:50, 36:56] = True
    known, boxed = np.tile([True, True, False], (4, 1)), np.zeros(4, bool)  # lung masks only: no lesion labels
    cfg = {**seg_cfg, "epochs": 3, "batch_size": 2, "patience": 1}
    _, metrics = train_segmenter.train({"train": (images, masks, known, boxed),
                                        "validate": (images[:2], masks[:2], known[:2], boxed[:2])}, cfg)
    assert 1 <= metrics["best_epoch"] <= 3 and len(metrics["validate_lung_dice"]) >= 2
    assert np.isnan(metrics["validate"]["dice_lesion"])  # lesions unknown, not scored as absent


def test_a_small_mask_table_trains_at_least_min_steps(seg_cfg):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (4, 64, 64)).astype(np.uint8)
    masks = np.zeros((4, 3, 64, 64), bool)
    masks[:, 0, 10:50, 8:28] = masks[:, 1, 10:50, 36:56] = True
    cfg = {**seg_cfg, "epochs": 1, "batch_size": 2, "min_steps": 5}  # 2 steps an epoch: 3 epochs
    _, metrics = train_segmenter.train({"train": (images, masks)}, cfg)
    assert metrics["epochs"] == 3 and len(metrics["loss"]) == 3
    _, metrics = train_segmenter.train({"train": (images, masks)}, {**cfg, "epochs": 4})  # epochs already enough
    assert metrics["epochs"] == 4


def test_cross_validation_folds_score_every_patient_once():
    patients = [f"p{i}" for i in range(200)]
    folds = [[p for p in patients if train_segmenter._hash_split(p, {"folds": 5, "fold": k, "seed": 3}) == "test"]
             for k in range(5)]
    assert sorted(sum(folds, [])) == sorted(patients)  # disjoint and covering
    assert all(20 <= len(f) <= 60 for f in folds)
    assert folds[0] != [p for p in patients if train_segmenter._hash_split(p, {"folds": 5, "fold": 0, "seed": 4}) == "test"]


def test_qc_ranks_unflagged_images_by_distance_from_typical_lungs_and_captions_the_score():
    from pipeline import qc

    table = pd.DataFrame({  # every value inside the plausible ranges: no flag, yet not equally typical
        "image_id": ["a_typical", "b_small_fraction", "c_lopsided", "d_slightly_off"],
        "shard": "shard-00000.h5", "row": [0, 1, 2, 3],
        "lung_area_fraction": [0.235, 0.12, 0.235, 0.30],
        "left_right_ratio": [0.87, 0.87, 1.4, 0.87],
        "lesion_area": 0, "no_lungs": False})
    out = qc.ranked(table)
    assert (out["flags"] == "").all()
    assert out["image_id"].tolist() == ["c_lopsided", "b_small_fraction", "d_slightly_off", "a_typical"]
    assert out["score"].is_monotonic_decreasing and out["score"].iloc[-1] < 0.02 and out["score"].iloc[0] < 1
    text = qc.caption(1, next(out.itertuples()))
    assert text.startswith("#1 c_lopsided") and f"score {out['score'].iloc[0]:.2f}" in text and "L/R 1.40" in text
