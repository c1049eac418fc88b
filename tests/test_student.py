"""The student's pieces: short-context text encoding, the concept pool, negative captions, side-aware batches,
distillation from precomputed teacher logits, and DistributedDataParallel on two CPU processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import config, models
from pipeline.concepts import concept_pool
from pipeline.data import RegionData
from pipeline.losses import distill_loss
from pipeline.pairing import negative_captions, pair_caption
from pipeline.trainer import CLIPTrainStep, RegionBatches, fit
from pipeline.losses import RegionAwareLoss


def test_short_token_rows_give_the_full_context_features():
    torch.manual_seed(0)
    model = models.create("medclip-tiny").eval()
    texts = ["small left pleural effusion", "no pneumothorax", "possible right lower lobe opacity"]
    full = models.tokenizer("medclip-tiny")(texts)
    short = models.tokenize("medclip-tiny", texts)
    assert short.shape[1] < full.shape[1] // 4
    with torch.no_grad():
        torch.testing.assert_close(models.encode_text(model, short), model.encode_text(full, normalize=True),
                                   atol=1e-5, rtol=1e-5)


def test_concept_pool_mirrors_every_prompt():
    pool = concept_pool()
    assert len(pool) == 146 and len(set(pool.prompt)) == len(pool)
    assert np.array_equal(pool.swap[pool.swap], np.arange(len(pool)))  # an involution
    i = pool.prompt.index("pleural effusion in the left lower zone")
    assert pool.prompt[pool.swap[i]] == "pleural effusion in the right lower zone"
    assert "no pneumothorax in the right lung" in pool.prompt and pool.negated[pool.prompt.index(
        "no pneumothorax in the right lung")]


def test_negative_captions_keep_uncertainty_its_own_state():
    assert negative_captions("small left pleural effusion", "Pleural Effusion", "left", "lower", False, "own") == [
        "no small left pleural effusion", "small right pleural effusion", "possible small left pleural effusion",
        "pleural thickening in the left lower zone"]
    # a hedged phrase keeps its hedge, and the certain form becomes one of its negatives
    assert pair_caption("right lower lobe opacity", "right", True, "own") == "possible right lower lobe opacity"
    assert negative_captions("right lower lobe opacity", "Lung Opacity", "right", "lower", True, "own")[:3] == [
        "no right lower lobe opacity", "possible left lower lobe opacity", "right lower lobe opacity"]
    # drop / positive: no uncertainty negatives
    assert "possible small left pleural effusion" not in negative_captions(
        "small left pleural effusion", "Pleural Effusion", "left", "lower", False, "drop")


def test_distill_from_teacher_logits_equals_distill_from_embeddings():
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    s_roi, s_con, t_roi, t_con = unit(5, 8), unit(7, 8), unit(5, 6), unit(7, 6)
    a = distill_loss(s_roi, s_con, torch.tensor(20.0), t_roi, t_con, 30.0)
    b = distill_loss(s_roi, s_con, torch.tensor(20.0), teacher_logits=30.0 * t_roi @ t_con.T)
    torch.testing.assert_close(a, b)


def region_data(n: int = 6, size: int = 96) -> RegionData:
    """Images whose right half is bright, each with one ROI box on the image's right side (the patient's left)."""
    pool = concept_pool()
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size), np.uint8)
    images[:, :, size // 2 :] = 200
    boxes = np.tile(np.array([size / 2, 0, size, size], np.float32), (n, 1))
    return RegionData(
        [f"i{k}" for k in range(n)], images, [f"small left pleural effusion {k}" for k in range(n)],
        np.zeros(n, np.int64), np.arange(n), boxes, ["small left pleural effusion"] * n,
        [negative_captions("small left pleural effusion", "Pleural Effusion", "left", "lower", False, "own")] * n,
        ["left"] * n, ["lesion"] * n, rng.standard_normal((n, 8)).astype(np.float16), pool.prompt, pool.swap,
        rng.standard_normal((len(pool), 8)).astype(np.float32), 10.0, "0" * 64)


@pytest.fixture
def train_cfg():
    return {**config.load()["train"], "steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
            "init": "scratch", "concepts_per_step": 0}


def test_a_flipped_sample_says_left_where_its_left_lung_now_is(train_cfg):
    data = region_data()
    tok = models.tokenizer("medclip-tiny")
    batches = RegionBatches(data, "medclip-tiny", {**train_cfg, "hflip": 1.0})  # every image flipped
    b = batches(np.array([0, 1]), step=0)
    # pixels mirrored: the bright half moved from the right to the left of the image, the ROI box with it
    assert b["image"][0, 0, :, :10].mean() > b["image"][0, 0, :, -10:].mean()
    torch.testing.assert_close(b["roi_box"], torch.tensor([[0.0, 0.0, 48.0, 96.0]] * 2))
    unflipped = RegionBatches(data, "medclip-tiny", {**train_cfg, "hflip": 0.0})(np.array([0, 1]), step=0)
    torch.testing.assert_close(unflipped["roi_box"], torch.tensor([[48.0, 0.0, 96.0, 96.0]] * 2))
    assert b["roi_image"].tolist() == [0, 1]
    # the ROI of the patient's left lung now lies where a right lung lies, and its phrase says "right"
    phrase = b["short"][0]
    expect = tok(["small right pleural effusion"], context_length=32)[0, : len(phrase)]
    assert torch.equal(phrase, expect)
    assert torch.equal(b["report"][0], tok(["small right pleural effusion 0"])[0, : b["report"].shape[1]])
    # the teacher's concept distribution is mirrored with it
    swap = torch.from_numpy(data.concept_swap)
    torch.testing.assert_close(b["teacher_logits"], unflipped["teacher_logits"][:, swap])


def test_region_step_gives_all_four_terms_and_grads_to_both_towers(train_cfg):
    torch.manual_seed(0)
    clip = models.create("medclip-tiny")
    step = CLIPTrainStep(clip, RegionAwareLoss())
    terms = step(RegionBatches(region_data(), "medclip-tiny", train_cfg)(np.arange(4), step=0))
    assert all(terms[k].item() > 0 for k in ("global_loss", "roi_loss", "neg_loss", "distill_loss"))
    terms["total_loss"].backward()
    assert clip.visual.conv1.weight.grad.abs().sum() > 0 and clip.token_embedding.weight.grad.abs().sum() > 0


def test_student_resumes_after_a_kill_with_the_same_weights(tmp_path, train_cfg):
    batches = RegionBatches(region_data(), "medclip-tiny", train_cfg)
    fit(batches, train_cfg, tmp_path / "straight")
    assert fit(batches, train_cfg, tmp_path / "killed", stop_after=3) == {"stopped_at": 3}
    fit(batches, train_cfg, tmp_path / "killed")
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["neg_loss"] > 0 and last["distill_loss"] > 0


def test_the_resume_key_holds_trains_stage_version_and_the_input_files(tmp_path, train_cfg, monkeypatch):
    from pipeline import versions
    from pipeline.stages.train import resume_key
    from pipeline.trainer import config_sha256

    shard = tmp_path / "shard.h5"
    shard.write_bytes(b"rows")
    key = resume_key(train_cfg, [shard])
    assert key["stage_version"] == versions.STAGE_VERSIONS["train"]
    monkeypatch.setitem(versions.STAGE_VERSIONS, "train", versions.STAGE_VERSIONS["train"] + 1)
    assert config_sha256(resume_key(train_cfg, [shard])) != config_sha256(key)  # a version bump: not resumed
    monkeypatch.undo()
    shard.write_bytes(b"other rows")
    assert config_sha256(resume_key(train_cfg, [shard])) != config_sha256(key)  # new shards: not resumed


def test_a_checkpoint_of_another_stage_version_is_not_resumed(tmp_path, train_cfg, caplog):
    # a final checkpoint left by older code (train's STAGE_VERSION bumped, e.g. for a pairing change) would
    # otherwise be resumed at its last step and its old weights written as the new run's model
    batches = RegionBatches(region_data(), "medclip-tiny", train_cfg)
    fit(batches, {**train_cfg, "stage_version": 1}, tmp_path / "run")
    with caplog.at_level("INFO", logger="pipeline.trainer"):
        fit(batches, {**train_cfg, "stage_version": 2}, tmp_path / "run")
    assert "made under another config" in caplog.text
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(train_cfg["steps"]))  # trained afresh, every step logged once


DDP_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_student import region_data
from pipeline.trainer import RegionBatches, fit
cfg = json.loads({cfg!r})
print(json.dumps(fit(RegionBatches(region_data(8), "medclip-tiny", cfg), cfg, {out!r})))
"""


def test_torchrun_trains_with_distributed_data_parallel_on_two_cpu_processes(tmp_path, train_cfg):
    cfg = {**train_cfg, "steps": 2, "batch_size": 8}
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__), cfg=json.dumps(cfg), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["world"] for r in results) == [2, 2]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]  # one metrics line per step, written by rank 0 only
    import open_clip

    open_clip.create_model("medclip-tiny", pretrained=str(tmp_path / "model.pt"))


def test_run_overrides_are_validated_like_the_train_section():
    cfg = config.load()
    assert config.run_config(cfg, "no_roi")["beta"] == 0.0 and config.run_config(cfg, "student")["beta"] == 1.0
    with pytest.raises(config.ConfigError, match="evaluate.runs.x"):
        config.load(overrides={"evaluate": {"runs": {"x": {"betta": 1.0}}}})
    with pytest.raises(config.ConfigError, match="train.model == teacher.model"):
        config.load(overrides={"train": {"model": "medclip-vit-b-16"}})


def test_model_inputs_hold_the_images_resized_as_the_model_resizes_them(tmp_path):
    from pipeline.data import resize
    from pipeline.shards import Shard, ShardWriter, check
    from pipeline.stages import model_inputs

    full = np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    with ShardWriter(tmp_path / "norm.h5", stage="normalize", stage_version=1, config={},
                     image_id=["a", "b", "c"]) as w:
        w.rows("image", full)
    model_inputs.run(tmp_path / "norm.h5", tmp_path / "in.h5", 48)
    assert check(tmp_path / "in.h5") == []
    with Shard(tmp_path / "in.h5") as m:
        assert m.image_ids == ["a", "b", "c"] and m.f["image"].compression is None and m.attrs["scale"] == 48 / 128
        np.testing.assert_array_equal(m.f["image"][()], resize(full, 48))
    # the model sees the same input from these pixels as from the normalized image
    torch.testing.assert_close(models.to_model_input(resize(full, 48), 48), models.to_model_input(full, 48),
                               rtol=0, atol=1 / 255 / models.CXR_STD)  # within one grey level (uint8 rounding)


def test_roi_embeddings_pool_the_patch_tokens_under_the_box():
    torch.manual_seed(0)
    clip = models.create("medclip-tiny").eval()
    pixels = models.to_model_input(np.random.default_rng(0).integers(0, 256, (2, 96, 96), dtype=np.uint8), 96)
    boxes = torch.tensor([[16.0, 32.0, 32.0, 48.0], [0.0, 0.0, 96.0, 96.0], [10.0, 10.0, 12.0, 12.0]])
    w = models.box_weights(boxes, 6, 96)  # 96 px, 16 px patches: a 6 x 6 grid
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert w[0].nonzero().flatten().tolist() == [2 * 6 + 1]  # exactly the patch in row 2, column 1
    assert w[2].nonzero().flatten().tolist() == [0]  # smaller than a patch: the patch it lies in
    with torch.no_grad():
        image, roi = models.encode_image_and_rois(clip, pixels, torch.tensor([0, 1, 0]), boxes, normalize=False)
        clip.visual.output_tokens = True
        _, tokens = clip.visual(pixels)
        clip.visual.output_tokens = False
        torch.testing.assert_close(roi[0], tokens[0, 13] @ clip.visual.proj)
        torch.testing.assert_close(roi[1], tokens[1].mean(0) @ clip.visual.proj)
        torch.testing.assert_close(image, clip.encode_image(pixels))


def test_memory_knobs_keep_the_step_and_freeze_what_they_lock(train_cfg):
    from pipeline.trainer import configure_memory, param_groups

    batch = RegionBatches(region_data(), "medclip-tiny", train_cfg)(np.arange(4), step=0)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        clip = models.create("medclip-tiny")
        configure_memory(clip, {"grad_checkpointing": checkpointing}, torch.device("cpu"))
        clip.train()
        CLIPTrainStep(clip, RegionAwareLoss())(batch)["total_loss"].backward()
        grads.append(clip.visual.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])  # activation checkpointing recomputes, it does not change
    clip = models.create("medclip-tiny")
    configure_memory(clip, {"lock_image_groups": 0, "lock_text_layers": 2}, torch.device("cpu"))
    assert not any(p.requires_grad for p in clip.visual.parameters())
    assert clip.transformer.resblocks[-1].mlp.c_fc.weight.requires_grad
    assert not clip.transformer.resblocks[0].mlp.c_fc.weight.requires_grad
    trainable = sum(len(g["params"]) for g in param_groups(clip, 0.1))
    assert trainable == sum(p.requires_grad for p in clip.parameters())
