"""The CLIP training loop: resume after a kill, schedule, batches, and weights open_clip can load."""

import json
import os
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from pipeline import config
from pipeline.data import ImageReportPairs
from pipeline.labels import SAID, said
from pipeline.trainer import GlobalBatches, batch_indices, fit, fit_global, lr_at


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    texts = ["small left pleural effusion", "no pneumothorax", "right lower lobe opacity", "mild edema",
             "cardiomegaly", "normal chest", "left apical pneumothorax", "bibasilar atelectasis"]
    labels = np.full((8, 14), np.nan, np.float32)  # what a labeler reads in these texts
    for row, stated in enumerate([{9: 1}, {12: 0}, {7: 1}, {3: 1}, {1: 1}, {8: 1}, {12: 1}, {0: 1}]):
        for k, v in stated.items():
            labels[row, k] = v
    return ImageReportPairs([f"i{k}" for k in range(8)], rng.integers(0, 255, (8, 96, 96), dtype=np.uint8), texts,
                            np.zeros(8, np.int64), labels)


@pytest.fixture
def cfg():
    c = config.load()["teacher"]
    c.update(steps=6, batch_size=4, warmup_steps=2, checkpoint_every=3, text_steps=0)  # the fit alone
    return c


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, pairs, cfg):
    fit_global(pairs, cfg, tmp_path / "straight")
    assert fit_global(pairs, cfg, tmp_path / "killed", stop_after=4) == {"stopped_at": 4}  # dies after step 4
    assert not (tmp_path / "killed" / "model.pt").exists()
    fit_global(pairs, cfg, tmp_path / "killed")  # resumes from the step-3 checkpoint
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "killed" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))  # step 3 (logged before the kill) is not duplicated
    last = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) >= {"global_loss", "roi_loss", "total_loss", "lr", "logit_scale", "grad_norm"}


def test_early_stopping_keeps_the_best_validated_step_and_resumes_exactly(tmp_path, pairs, cfg):
    cfg = {**cfg, "validate_every": 2, "lr": 0.05, "select": "val_global_loss"}  # this high a rate overshoots
    val = ImageReportPairs(pairs.image_id[:4], pairs.images[:4], pairs.reports[:4], pairs.shard[:4])
    result = fit_global(pairs, cfg, tmp_path / "straight", val_pairs=val)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    validated = {r["step"] + 1: r["val_global_loss"] for r in records if "val_global_loss" in r}
    assert sorted(validated) == [2, 4, 6] and all("val_loss" in r for r in records if "val_global_loss" in r)
    candidates = {0: result["validate_at_init"]["val_global_loss"], **validated}  # the initial weights too
    assert result["best_step"] == min(candidates, key=candidates.get)
    assert fit_global(pairs, cfg, tmp_path / "killed", stop_after=4, val_pairs=val) == {"stopped_at": 4}
    assert fit_global(pairs, cfg, tmp_path / "killed", val_pairs=val)["best_step"] == result["best_step"]
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_selection_rule_considers_the_initial_weights_and_repeats(tmp_path, pairs, cfg):
    batches = GlobalBatches(pairs, cfg["model"])
    # weights that know these pairs by heart (validated on the same pairs), then a rate that ruins them at once:
    # the initial weights are the best candidate
    fit(batches, {**cfg, "alpha": 1.0, "steps": 30, "lr": 0.002, "select": "final"}, tmp_path / "learnt")
    ruin = {**cfg, "alpha": 1.0, "validate_every": 1, "lr": 5.0, "warmup_steps": 0, "select": "val_global_loss"}
    start = str(tmp_path / "learnt" / "model.pt")
    result = fit(batches, ruin, tmp_path / "ruined", init=start, val_batches=batches)
    assert result["best_step"] == 0
    kept, learnt = (torch.load(p, weights_only=True) for p in (tmp_path / "ruined" / "model.pt", start))
    assert all(torch.equal(kept[k], learnt[k]) for k in learnt)
    assert fit(batches, ruin, tmp_path / "again", init=start, val_batches=batches)["best_step"] == 0  # same pick
    # select: final keeps the last step; the validate figures are logged all the same
    last = fit(batches, {**cfg, "alpha": 1.0, "validate_every": 2, "select": "final"}, tmp_path / "final",
               val_batches=batches)
    assert last["best_step"] is None
    records = [json.loads(x) for x in (tmp_path / "final" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_global_loss" in r] == [1, 3, 5]


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, pairs, cfg):
    fit_global(pairs, cfg, tmp_path / "run", stop_after=3)
    fit_global(pairs, {**cfg, "lr": cfg["lr"] * 2}, tmp_path / "run")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))


def test_final_weights_load_with_open_clip(tmp_path, pairs, cfg):
    fit_global(pairs, {**cfg, "steps": 2, "checkpoint_every": 10}, tmp_path)
    model = open_clip.create_model(cfg["model"], pretrained=str(tmp_path / "model.pt"))
    assert model.logit_scale.exp().item() <= 100.0 + 1e-4


def test_weights_are_also_an_open_clip_folder_that_loads_back_offline(tmp_path, pairs, cfg, monkeypatch):
    import socket

    from pipeline import model_spec, models

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    fit_global(pairs, {**cfg, "steps": 2, "checkpoint_every": 10}, tmp_path)
    fit_global(pairs, {**cfg, "steps": 3, "checkpoint_every": 10}, tmp_path / "again")
    # loading is offline; blocked only now, as the loader's workers talk over local sockets
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    folder = tmp_path / "open_clip"
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert not list(tmp_path.glob(".open_clip.*"))  # the temporary folder was renamed, nothing left over
    saved = json.loads((folder / "open_clip_config.json").read_text())
    assert saved["preprocess_cfg"]["mean"] == [0.45] * 3 and saved["preprocess_cfg"]["interpolation"] == "bilinear"

    name = f"local-dir:{folder}"
    reference = models.create(cfg["model"], str(tmp_path / "model.pt")).eval()
    ours = models.create(name, model_spec.folder_weights(name)).eval()
    theirs, _, preprocess = open_clip.create_model_and_transforms(name)
    theirs.eval()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    for model in (ours, theirs):
        assert model.state_dict().keys() == state.keys()
        assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert ours.input_spec == reference.input_spec  # local-dir:FOLDER reads our preprocessing back
    resize = next(t for t in preprocess.transforms if "Resize" in type(t).__name__)
    assert "bilinear" in str(resize).lower()

    images = pairs.images[:3]
    texts = ["small left pleural effusion", "no pneumothorax"]
    want = models.embed_images(reference, images), models.embed_texts(reference, cfg["model"], texts)
    for model, tok_name in ((ours, name), (theirs, name)):
        np.testing.assert_array_equal(models.embed_images(model, images), want[0])
        np.testing.assert_array_equal(models.embed_texts(model, tok_name, texts), want[1])

    again = torch.load(tmp_path / "again" / "model.pt", weights_only=True)
    models.save_open_clip_folder(again, cfg["model"], folder)  # a rewrite replaces the folder
    assert not list(tmp_path.glob(".open_clip.*"))
    assert torch.equal(models.create(name, model_spec.folder_weights(name)).state_dict()["text_projection"],
                       again["text_projection"])


def test_schedule_and_batches():
    c = {"lr": 1.0, "warmup_steps": 4, "steps": 14}
    assert [lr_at(s, c) for s in (0, 3)] == [0.25, 1.0]
    assert lr_at(9, c) == pytest.approx(0.5) and lr_at(14, c) == pytest.approx(0.0, abs=1e-12)
    first, second = batch_indices(0, 10, 4, 0), batch_indices(1, 10, 4, 0)
    assert len(set(first) | set(second)) == 8  # one epoch draws without repeats
    assert np.array_equal(batch_indices(5, 10, 4, 0), batch_indices(5, 10, 4, 0))


class _Planted:
    """A pickle that runs code when unpickled (what a planted checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_pickle_planted_as_the_checkpoint_is_refused_not_run(tmp_path, pairs, cfg, caplog):
    marker = tmp_path / "code-ran"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"step": 3, "payload": _Planted(str(marker))}, tmp_path / "run" / "checkpoints" / "last.pt")
    with caplog.at_level("WARNING", logger="pipeline.trainer"):
        fit_global(pairs, cfg, tmp_path / "run")
    assert not marker.exists()
    assert "not resumed" in caplog.text
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))  # trained afresh
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)  # tensors and plain values
    assert ckpt["step"] == 6 and isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_every_torch_load_in_the_package_is_weights_only():
    import re
    from pathlib import Path

    import pipeline

    for path in Path(pipeline.__file__).parent.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: {call}"


def test_metrics_history_before_the_checkpoint_survives_a_rerun_that_deleted_it(tmp_path, pairs, cfg):
    fit_global(pairs, cfg, tmp_path / "straight")
    fit_global(pairs, cfg, tmp_path / "killed", stop_after=4)
    (tmp_path / "killed" / "metrics.jsonl").unlink()  # Snakemake removes an incomplete job's outputs
    fit_global(pairs, cfg, tmp_path / "killed")
    straight, resumed = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                         for run in ("straight", "killed"))
    assert [r["step"] for r in resumed] == list(range(6))
    assert resumed[:3] == straight[:3]


def test_resume_restores_torch_rng_for_dropout(tmp_path, pairs, cfg, monkeypatch):
    from pipeline import trainer

    forward = trainer.CLIPTrainStep.forward

    def noisy(self, batch):  # like dropout: the update depends on torch's global RNG
        terms = forward(self, batch)
        return {**terms, "total_loss": terms["total_loss"] * (1 + torch.rand(()))}

    monkeypatch.setattr(trainer.CLIPTrainStep, "forward", noisy)
    fit_global(pairs, cfg, tmp_path / "straight")
    fit_global(pairs, cfg, tmp_path / "killed", stop_after=4)
    fit_global(pairs, cfg, tmp_path / "killed")
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to run two torch threads")
def test_resume_under_another_thread_count_keeps_the_checkpoints(tmp_path, pairs, cfg):
    # 1 and 2 threads round some float sums differently: the weights differed by 1.2e-7 from the first resumed step
    fit_global(pairs, cfg, tmp_path / "straight", threads=2)
    fit_global(pairs, cfg, tmp_path / "killed", threads=2, stop_after=4)
    fit_global(pairs, cfg, tmp_path / "killed", threads=1)
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_teacher_with_label_negatives_trains_on_labelled_pairs_only(tmp_path, pairs, cfg):
    cfg = {**cfg, "steps": 2, "batch_size": 8, "checkpoint_every": 10}
    with pytest.raises(ValueError, match="study labels"):
        fit_global(replace(pairs, labels=None), {**cfg, "negatives": "labels"}, tmp_path / "unlabelled")
    labels = np.full((8, 14), np.nan, np.float32)
    labels[[0, 1, 2], 0] = 1.0  # three reports state the same finding: not each other's negatives
    fit_global(replace(pairs, labels=labels), {**cfg, "negatives": "labels"}, tmp_path / "labels")
    fit_global(pairs, cfg, tmp_path / "captions")
    first = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])["global_loss"]
             for run in ("labels", "captions")]
    assert first[0] < first[1]  # the same weights and batch, fewer negatives


def test_polarity_statements_say_a_stated_finding_and_its_opposite(pairs):
    labels = np.full((3, 14), np.nan, np.float32)
    labels[0, [1, 9, 12]] = [1.0, 0.0, -1.0]  # cardiomegaly; no effusion; uncertain pneumothorax (never drawn)
    labels[1, 8] = 1.0  # No Finding alone: states no finding
    labels[2, 12] = -1.0  # uncertain only
    three = replace(pairs, image_id=pairs.image_id[:3], images=pairs.images[:3], reports=pairs.reports[:3],
                    shard=pairs.shard[:3], labels=labels)
    batches = GlobalBatches(three, "medclip-tiny", seed=5, polarity=True)
    drawn = {batches.statement(0, step) for step in range(200)}
    # cardiomegaly (column 1, class 3) said as present, pleural effusion (column 9, class 18) as absent, in each of
    # the wordings, the opposite always in the same wording
    assert drawn == ({(said("Cardiomegaly", 1.0, f), said("Cardiomegaly", 0.0, f), 3) for f in range(len(SAID))}
                     | {(said("Pleural Effusion", 0.0, f), said("Pleural Effusion", 1.0, f), 18) for f in range(len(SAID))})
    assert ("cardiomegaly seen", "cardiomegaly not seen", 3) in drawn and ("without pleural effusion", "with pleural "
                                                                          "effusion", 18) in drawn
    assert batches.statement(0, 7) == batches.statement(0, 7)  # a pure function of (seed, step, example)
    assert batches.statement(1, 0) is None and batches.statement(2, 0) is None
    batch = batches(np.arange(3), 0)
    assert batch["statement_mask"].tolist() == [True, False, False]
    assert batch["statement_classes"].tolist() == [batches.statement(0, 0)[2], -1, -1]
    assert batch["statements"].shape[0] == 6  # the stated findings, then their opposites
    with pytest.raises(ValueError, match="polarity needs the pairs' study labels"):
        GlobalBatches(replace(pairs, labels=None), "medclip-tiny", polarity=True)


def test_the_polarity_wordings_are_none_of_the_evaluation_prompts():
    from pipeline.evaluation.zeroshot import NEGATIVE, POSITIVE
    from pipeline.vocab import statement
    trained = {said("Edema", v, f) for v in (0.0, 1.0) for f in range(len(SAID))}
    assert len(trained) == 2 * len(SAID)
    assert not trained & {t.format("edema") for t in POSITIVE + NEGATIVE}  # zero-shot prompts stay unseen
    assert not trained & {statement("Edema", "", "", negated=n) for n in (False, True)}  # and the regional grammar
    assert not any(t.startswith("there is") for t in trained)


def test_the_text_phase_moves_the_text_tower_alone_and_trains_polarity(tmp_path, pairs, cfg):
    cfg = {**cfg, "steps": 2, "batch_size": 8, "checkpoint_every": 10, "text_lr": 1e-3}
    plain = fit_global(pairs, cfg, tmp_path / "plain")
    result = fit_global(pairs, {**cfg, "text_steps": 3}, tmp_path / "text")
    assert result["image_text"]["best_step"] == plain["best_step"]
    first, before = (torch.load(tmp_path / run / "model.pt") for run in ("plain", "text/image_text"))
    assert all(torch.equal(first[k], before[k]) for k in first)  # the first phase is the plain fit
    after = torch.load(tmp_path / "text" / "model.pt")
    image = [k for k in after if k.startswith("visual.")]
    assert image and all(torch.equal(after[k], before[k]) for k in image)  # the image tower is locked
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("transformer."))
    records = [json.loads(line) for line in (tmp_path / "text" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["polarity_loss"] > 0 for r in records)
    assert all(r["total_loss"] == pytest.approx(cfg["text_alpha"] * r["global_loss"] + r["polarity_loss"])
               for r in records)
    plain_records = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["polarity_loss"] == 0 for line in plain_records)


def test_a_run_killed_in_the_text_phase_resumes_to_the_same_weights(tmp_path, pairs, cfg):
    cfg = {**cfg, "steps": 2, "batch_size": 8, "checkpoint_every": 1, "text_steps": 3, "validate_every": 3}
    val = ImageReportPairs(pairs.image_id[:4], pairs.images[:4], pairs.reports[:4], pairs.shard[:4], pairs.labels[:4])
    fit_global(pairs, cfg, tmp_path / "straight", val_pairs=val)
    # stop_after counts both phases: step 4 is the text phase's second
    assert fit_global(pairs, cfg, tmp_path / "killed", stop_after=4, val_pairs=val) == {"stopped_at": 4}
    assert (tmp_path / "killed" / "image_text" / "model.pt").exists() and not (tmp_path / "killed" / "model.pt").exists()
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)["step"] == 2  # resumes there
    fit_global(pairs, cfg, tmp_path / "killed", val_pairs=val)
    a, b = (torch.load(tmp_path / run / "model.pt") for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the text phase validates its own objective: the validate images' statements count in val_loss
    last = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] > cfg["text_alpha"] * last["val_global_loss"] + 0.1


def test_a_wholly_locked_image_tower_stays_in_eval_mode(tmp_path, pairs, cfg, monkeypatch):
    from pipeline import trainer
    from pipeline.losses import RegionAwareLoss
    from pipeline.trainer import CLIPTrainStep

    seen = []  # (the loss weights' polarity, the image tower in train mode) at every training forward

    class Spy(CLIPTrainStep):
        def forward(self, batch):
            if self.training:
                seen.append((self.loss.weights["polarity_loss"], self.clip.visual.training))
            return super().forward(batch)

    monkeypatch.setattr(trainer, "CLIPTrainStep", Spy)
    fit_global(pairs, {**cfg, "steps": 2, "batch_size": 8, "text_steps": 2}, tmp_path / "run")
    assert seen == [(0.0, True)] * 2 + [(1.0, False)] * 2  # the fit trains it; the text phase holds it

    clip = torch.nn.Module()
    clip.visual, clip.text = torch.nn.BatchNorm2d(3), torch.nn.Linear(2, 2)
    step = CLIPTrainStep(clip, RegionAwareLoss(), image_locked=True).train()
    assert step.training and clip.text.training and not clip.visual.training  # its running statistics hold
    step.eval().train()  # as validation leaves it
    assert not clip.visual.training
    assert CLIPTrainStep(clip, RegionAwareLoss()).train().clip.visual.training  # an unlocked tower trains


def test_a_partly_locked_resnet_tower_keeps_the_locked_groups_batchnorm_statistics():
    import open_clip
    from pipeline.losses import RegionAwareLoss
    from pipeline.trainer import CLIPTrainStep, configure_memory

    torch.manual_seed(0)
    vision = open_clip.CLIPVisionCfg(timm_model_name="resnet18", timm_model_pretrained=False, timm_pool="avg",
                                     timm_proj="linear", image_size=64)
    text = open_clip.CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=2, layers=1)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    configure_memory(clip, {"lock_image_groups": 1}, torch.device("cpu"))  # the last block trains
    trunk = clip.visual.trunk
    locked, free = trunk.layer4[0].bn1, trunk.layer4[1].bn1
    assert not locked.weight.requires_grad and free.weight.requires_grad
    before = (locked.running_mean.clone(), free.running_mean.clone())
    step = CLIPTrainStep(clip, RegionAwareLoss()).train()
    assert step.training and clip.visual.training and free.training
    assert not locked.training and not trunk.bn1.training  # the locked stem and blocks hold their statistics
    clip.encode_image(torch.randn(4, 3, 64, 64))
    assert torch.equal(locked.running_mean, before[0]) and not torch.equal(free.running_mean, before[1])
