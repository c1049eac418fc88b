"""The streaming loader: examples equal a reference join, exact mid-epoch resume, disjoint ranks, and a damaged
shard that fails the run with its name."""

import numpy as np
import pytest
import torch

from pipeline import config, models
from pipeline.data import load_pairs
from pipeline.shards import ShardWriter
from pipeline.trainer import GlobalBatches, StepBatches, batch_indices, epoch_order, step_loader

SIZE = 96


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
        name = f"shard-{k:05d}.h5"
        for stage in paths:
            (root / stage).mkdir(exist_ok=True)
            paths[stage].append(root / stage / name)
        with ShardWriter(paths["normalized"][k], stage="normalize", stage_version=1, config={}, image_id=ids) as w:
            w.rows("split", split)
        order = list(reversed(range(per_shard)))
        with ShardWriter(paths["reports"][k], stage="parse_reports", stage_version=1, config={},
                         image_id=[ids[j] for j in order]) as w:
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
