"""The streaming loader: examples equal a reference join, exact mid-epoch resume, disjoint ranks, and a damaged
shard that fails the run with its name."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline import config, models
from pipeline.data import load_pairs
from pipeline.shards import ShardWriter
from pipeline.trainer import GlobalBatches, StepBatches, batch_indices, epoch_order, step_loader

SIZE = 96



def _add_shard(root: Path, paths: dict, k: int) -> None:
    """Append shard k's file path under each stage folder of `paths` (creating the folders)."""
    for stage in paths:
        (root / stage).mkdir(exist_ok=True)
        paths[stage].append(root / stage / f"shard-{k:05d}.h5")

def write_shards(root, n_shards: int = 3, per_shard: int = 10):
    """normalize (split), reports (text) and model_inputs (images) shards, the report shard in another row order."""
    rng = np.random.default_rng(0)
    paths = {"inputs": [], "normalized": [], "reports": []}
    truth = {}
    for k in range(n_shards):
        ids = [f"s{k}i{j}" for j in range(per_shard)]
        images = rng.integers(0, 255, (per_shard, SIZE, SIZE), dtype=np.uint8)
        split = ["train" if j % 5 else "test" for j in range(per_shard)]
        texts = [f"report of {i}" if j != 3 else "" for j, i in enumerate(ids)]  # one image has no report text
        for i, img, s, t in zip(ids, images, split, texts):
            truth[i] = (img, s, t)
        _add_shard(root, paths, k)
        with ShardWriter(paths["normalized"][k], stage="normalize", stage_version=1, config={}, image_id=ids) as w:
            w.rows("split", split)
            w.rows("patient_id", [f"p{k}{j // 2}" for j in range(per_shard)])
        order = list(reversed(range(per_shard)))
        with ShardWriter(paths["reports"][k], stage="parse_reports", stage_version=1, config={},
                         image_id=[ids[j] for j in order]) as w:
            w.rows("study_id", [f"{ids[j]}-study" for j in order])
            w.rows("findings_impression", [texts[j] for j in order])
            w.rows("report", [texts[j] for j in order])
        with ShardWriter(paths["inputs"][k], stage="model_inputs", stage_version=1, config={}, image_id=ids,
                         attrs={"size": SIZE, "scale": 1.0}) as w:
            w.rows("image", images, compress=False)
    return paths, truth


@pytest.fixture
def cfg():
    return {**config.load()["teacher"], "batch_size": 4, "steps": 12, "num_workers": 2, "shuffle_window": 6}


def test_streamed_examples_equal_a_reference_join(tmp_path, cfg):
    paths, truth = write_shards(tmp_path)
    pairs = load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE)
    expected_ids = sorted(i for i, (_, s, t) in truth.items() if s == "train" and t)
    assert sorted(pairs.image_id) == expected_ids
    batches = GlobalBatches(pairs, cfg["model"])
    tok = models.tokenizer(cfg["model"])
    loader = step_loader(batches, cfg, 0, 0, 1, pin=False)  # two worker processes read the shards
    for step, (micro,) in zip(range(cfg["steps"]), loader):
        idx = batch_indices(step, len(batches), cfg["batch_size"], cfg["seed"], pairs.shard, cfg["shuffle_window"])
        ids = [pairs.image_id[i] for i in idx]
        reference = np.stack([truth[i][0] for i in ids])
        torch.testing.assert_close(micro["image"], models.to_model_input(torch.from_numpy(reference), SIZE))
        text = tok([truth[i][2] for i in ids])
        assert torch.equal(micro["report"], text[:, : micro["report"].shape[1]])


def test_epoch_order_is_shard_aware_and_a_permutation():
    shard = np.repeat(np.arange(4), 50)
    order = epoch_order(200, seed=3, epoch=0, shard=shard, window=25)
    assert sorted(order) == list(range(200))
    # each window of 25 examples comes from at most two shards: reads stay near-sequential
    assert max(len(np.unique(shard[order[i : i + 25]])) for i in range(0, 200, 25)) <= 2
    assert not np.array_equal(order, epoch_order(200, seed=3, epoch=1, shard=shard, window=25))


def test_resuming_mid_epoch_continues_the_same_order(tmp_path, cfg):
    paths, _ = write_shards(tmp_path)
    batches = GlobalBatches(load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE),
                            cfg["model"])
    straight, resumed = StepBatches(batches, cfg, start=0), StepBatches(batches, cfg, start=7)
    assert len(resumed) == cfg["steps"] - 7
    for j in range(len(resumed)):
        assert np.array_equal(resumed.indices(7 + j), straight.indices(7 + j))
        torch.testing.assert_close(resumed[j][0]["image"], straight[7 + j][0]["image"])


def test_two_ranks_see_disjoint_rows_that_cover_the_epoch(tmp_path, cfg):
    paths, _ = write_shards(tmp_path)
    batches = GlobalBatches(load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE),
                            cfg["model"])
    ranks = [StepBatches(batches, cfg, 0, rank=r, world=2) for r in (0, 1)]
    per_epoch = len(batches) // cfg["batch_size"]
    seen = [np.concatenate([rk.indices(s) for s in range(per_epoch)]) for rk in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == sorted(epoch_order(len(batches), cfg["seed"], 0, batches.shard,
                                                              cfg["shuffle_window"])[: per_epoch * cfg["batch_size"]])


def test_a_worker_that_hits_a_damaged_shard_fails_the_run_with_its_name(tmp_path, cfg):
    paths, _ = write_shards(tmp_path)
    pairs = load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE)
    damaged = paths["inputs"][1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # truncated after the join was made
    loader = step_loader(GlobalBatches(pairs, cfg["model"]), cfg, 0, 0, 1, pin=False)
    with pytest.raises(Exception, match=str(damaged)):
        for _ in loader:
            pass


def write_split_shards(root, n_shards: int = 2, per_shard: int = 8, roi_size: int = 16):
    """Every stage's shards of a small split, as the student and the evaluation read them: normalize (16-bit
    images), model_inputs, crop (ROIs with their images), reports (another row order, one image without report
    text, one without a report row), embed and concepts. Returns the paths and the images by id."""
    rng = np.random.default_rng(1)
    paths = {k: [] for k in ("normalized", "inputs", "crops", "reports", "embed")}
    sha, truth = "ab" * 32, {}
    rois = {"roi_kind": ["lung", "lung", "lesion"], "roi_laterality": ["right", "left", "left"],
            "roi_zone": ["", "", "lower"], "roi_area": [900.0, 900.0, 40.0]}
    phrases = {"phrase": ["small left pleural effusion", "no pneumothorax"],
               "phrase_observation": ["Pleural Effusion", "Pneumothorax"], "phrase_negated": [False, True],
               "phrase_uncertain": [False, False], "phrase_laterality": ["left", ""], "phrase_zone": ["", ""],
               "phrase_sentence": ["Small left pleural effusion.", "No pneumothorax."]}
    for k in range(n_shards):
        ids = [f"s{k}i{j}" for j in range(per_shard)]
        full = rng.integers(0, 65535, (per_shard, SIZE, SIZE), dtype=np.uint16)
        n_rois = [3 if j % 3 else 2 for j in range(per_shard)]  # some images without the lesion
        crops = rng.integers(0, 255, (sum(n_rois), roi_size, roi_size), dtype=np.uint8)
        texts = [f"report of {i}" if j != 2 else "" for j, i in enumerate(ids)]
        with_report = [j for j in range(per_shard) if j != 5][::-1]  # image 5 has no report row
        _add_shard(root, paths, k)
        with ShardWriter(paths["normalized"][k], stage="normalize", stage_version=1, config={}, image_id=ids) as w:
            w.rows("image", full)
            w.rows("split", ["test" if j % 2 else "train" for j in range(per_shard)])
            w.rows("patient_id", [f"p{k}{j // 2}" for j in range(per_shard)])
            w.rows("transform", np.tile([1.0, 1.0, 0.0, 0.0], (per_shard, 1)))
        with ShardWriter(paths["inputs"][k], stage="model_inputs", stage_version=1, config={}, image_id=ids,
                         attrs={"size": SIZE, "scale": 1.0}) as w:
            w.rows("image", (full // 257).astype(np.uint8), compress=False)
        offsets = np.concatenate([[0], np.cumsum(n_rois)])
        flat = {key: [v for n in n_rois for v in values[:n]] for key, values in rois.items()}
        with ShardWriter(paths["crops"][k], stage="crop", stage_version=1, config={}, image_id=ids) as w:
            w.ragged("rois", offsets, roi_image=crops, roi_box=np.tile([4.0, 4.0, 40.0, 60.0], (len(crops), 1)).astype(
                np.float32), **flat)
        with ShardWriter(paths["reports"][k], stage="parse_reports", stage_version=1, config={},
                         image_id=[ids[j] for j in with_report]) as w:
            w.rows("study_id", [f"{ids[j]}-study" for j in with_report])
            w.rows("findings_impression", [texts[j] for j in with_report])
            w.rows("report", [texts[j] for j in with_report])
            w.rows("labels_source", rng.choice([-1.0, 0.0, 1.0], (len(with_report), 14)).astype(np.float32))
            w.ragged("phrases", np.arange(len(with_report) + 1) * 2,
                     **{key: np.array(v * len(with_report)) for key, v in phrases.items()})
        with ShardWriter(paths["embed"][k], stage="embed_teacher", stage_version=1, config={}, image_id=ids,
                         attrs={"teacher_sha256": sha}) as w:
            w.ragged("rois", offsets, roi_embedding=rng.normal(size=(len(crops), 8)).astype(np.float16))
        for j, i in enumerate(ids):
            truth[i] = ((full[j] // 257).astype(np.uint8), crops[offsets[j] : offsets[j + 1]])
    paths["concepts"] = root / "concepts.h5"
    with ShardWriter(paths["concepts"], stage="embed_teacher", stage_version=1, config={}, image_id=[],
                     attrs={"teacher_sha256": sha, "logit_scale": 10.0}) as w:
        w.table("concepts", prompt=["a", "b"], swap=[1, 0], embedding=np.ones((2, 8), np.float16))
    return paths, truth


def test_student_and_evaluation_join_the_same_images_and_pairs(tmp_path):
    from pipeline.data import load_region_data
    from pipeline.stages.evaluate import load_test_set

    paths, _ = write_split_shards(tmp_path)
    student = load_region_data(paths, {"test"}, SIZE, uncertain="drop", max_pairs_per_image=8)
    test = load_test_set(paths["normalized"], paths["crops"], paths["reports"])
    pairs = load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"test"}, SIZE)
    # odd rows are test images; image 2 has no report text (and is even), image 5 no report row
    expected = [f"s{k}i{j}" for k in range(2) for j in (1, 3, 7)]
    assert student.image_id == test.image_id == pairs.image_id == expected
    assert student.reports == test.reports == pairs.reports
    assert test.study_id == [f"{i}-study" for i in expected] and test.patient_id[0] == "p00"
    # the same ROI <-> phrase pairs (one per image: the left effusion), on the same crop-shard rows
    assert len(test.pairs) == len(expected)
    assert [p["image"] for p in test.pairs] == student.pair_image.tolist()
    assert [p["text"] for p in test.pairs] == student.pair_text
    rois = [p["roi"] for p in test.pairs]
    assert np.array_equal(test.roi_crop.shard[rois], student.teacher_roi.shard)
    assert np.array_equal(test.roi_crop.row[rois], student.teacher_roi.row)
    kept = load_test_set(paths["normalized"], paths["crops"], paths["reports"], keep_ids=["s1i7", "s0i3", "s0i2"])
    assert kept.image_id == ["s0i3", "s1i7"]  # data order; s0i2 has no report text


def test_the_lazy_test_set_equals_the_eager_arrays(tmp_path):
    from pipeline.stages.evaluate import load_test_set

    paths, truth = write_split_shards(tmp_path)
    test = load_test_set(paths["normalized"], paths["crops"], paths["reports"])
    images = np.stack([truth[i][0] for i in test.image_id])
    crops = np.concatenate([truth[i][1] for i in test.image_id])
    assert test.images.shape == images.shape and test.images.dtype == np.uint8  # 16-bit normalize shards
    assert np.array_equal(test.images[np.arange(len(images))], images)
    assert np.array_equal(test.images[1:4], images[1:4]) and np.array_equal(test.images[2], images[2])
    assert np.array_equal(test.images[[4, 0, 4]], images[[4, 0, 4]])
    assert test.roi_crop.shape == crops.shape and np.array_equal(test.roi_crop[:], crops)
    assert np.array_equal(test.roi_crop[test.roi_of[3]], np.asarray(truth[test.image_id[3]][1]))


def test_pairs_carry_the_parsed_study_labels_of_their_report_rows(tmp_path):
    paths, _ = write_shards(tmp_path)
    assert load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE).labels is None
    # each report row gets labels of its own; the report shard's rows are in another order than the images'
    for k, path in enumerate(paths["reports"]):
        with h5py.File(path, "a") as f:
            ids = [i.decode() for i in f["image_id"][()]]
            f["labels"] = np.array([[k, int(i.split("i")[1]), *[np.nan] * 12] for i in ids], np.float32)
    pairs = load_pairs(paths["inputs"], paths["normalized"], paths["reports"], {"train"}, SIZE)
    assert pairs.labels.shape == (len(pairs.image_id), 14)
    for image_id, row in zip(pairs.image_id, pairs.labels):
        k, j = image_id[1:].split("i")
        assert row[:2].tolist() == [int(k), int(j)] and np.isnan(row[2:]).all()
