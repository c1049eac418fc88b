"""Region prompts (`python -m pipeline describe`): a box, a point and a mask pooled as training pools ROIs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from pipeline import describe, grounding, models
from pipeline.concepts import concept_pool
from pipeline.stages.evaluate import Embedder
from pipeline.vocab import REGIONAL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import open_clip

    work = tmp_path_factory.mktemp("describe")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("medclip-tiny").state_dict(), work / "model.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 96), dtype=np.uint8)).save(work / "image.png")
    mask = np.zeros((120, 96), np.uint8)
    mask[60:100, 50:90] = 255
    Image.fromarray(mask).save(work / "mask.png")
    return work


def test_a_box_is_pooled_like_a_training_roi_and_a_mask_of_it_alike(tiny):
    emb = Embedder(tiny / "model.pt", "medclip-tiny", torch.device("cpu"))
    image = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    transform = np.array([1.0, 1.0, 0.0, 0.0])  # a square image: normalized pixels are the file's
    box = describe.region(emb, image, transform, box=[0, 0, 32, 32])
    _, roi = models.embed_images_and_rois(emb.model, image[None], np.zeros(1, np.int64), np.array([[0, 0, 32, 32.0]]))
    assert box.embedding == pytest.approx(roi[0], abs=1e-5)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True  # the same top-left quarter, on patch edges
    pooled = describe.region(emb, image, transform, mask=mask)
    assert pooled.embedding == pytest.approx(roi[0], abs=1e-4) and pooled.patches == box.patches
    point = describe.region(emb, image, transform, point=[3, 3])
    assert point.patches == 1
    findings, side, zone = describe.concepts(emb, box)
    assert set(findings) == set(REGIONAL) and all(0 <= p <= 1 for p in findings.values())
    assert 0.99 < sum(side.values()) <= 1.0 + 1e-6  # every prompt names a side
    assert 0.99 < sum(zone.values()) <= 1.0 + 1e-6  # every prompt names a zone or the whole lung


def _cli(tiny, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", "describe", str(tiny / "image.png"), "--checkpoint",
                           str(tiny / "model.pt"), "--model", "medclip-tiny", *args], cwd=tiny, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_describe_command_box_point_mask(tiny):
    out = _cli(tiny, "--box", "10,20,60,80", "--text", "no left pleural effusion")
    assert out.returncode == 0, out.stderr
    assert "region: box 10,20,60,80" in out.stdout and "pleural effusion" in out.stdout
    assert "side: right" in out.stdout and "zone: whole lung" in out.stdout
    assert 'text "no left pleural effusion"' in out.stdout and "p(\"left pleural effusion\")" in out.stdout
    out = _cli(tiny, "--point", "30,40")
    assert out.returncode == 0 and "(1 of" in out.stdout, out.stderr
    out = _cli(tiny, "--mask", str(tiny / "mask.png"))
    assert out.returncode == 0 and "region: mask of" in out.stdout, out.stderr
    bad = _cli(tiny, "--box", "60,20,10,80")
    assert bad.returncode != 0 and "x0 < x1" in bad.stderr
    wrong = tiny / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(wrong)
    bad = _cli(tiny, "--mask", str(wrong))
    assert bad.returncode != 0 and "the mask is 10x10" in bad.stderr


def test_concept_pool_is_what_describe_reads():
    pool = concept_pool()
    assert grounding.negation_parts(pool.prompt[1]) == (pool.prompt[0], pool.prompt[1])


def _prepared(tiny):
    """The tiny image through normalize, with one ROI (the lower right quarter of the file) standing in for the
    U-Net's: what predict.prepare returns."""
    from pipeline import config
    from pipeline.predict import PreparedImage
    from pipeline.stages.normalize import as_uint8, normalize_file, to_normalized

    cfg = config.load(None, {})
    image, transform, _ = normalize_file(tiny / "image.png", cfg["normalize"])
    size = image.shape[-1]
    boxes = np.vstack([[0, 0, size, size], to_normalized(np.array([[48.0, 60, 96, 120]]), transform)])
    return PreparedImage(as_uint8(image[None])[0], boxes, ["image", "left lower zone"], transform, False)


@pytest.mark.parametrize("phrase", ["no left pleural effusion", "small left pleural effusion"])
def test_ground_and_describe_make_the_same_call_with_the_same_margin(tiny, monkeypatch, capsys, phrase):
    from pipeline import predict

    rad = _prepared(tiny)
    monkeypatch.setattr(predict, "prepare", lambda *a: rad)
    monkeypatch.chdir(tiny)
    predict.main("ground", str(tiny / "model.pt"), str(tiny / "image.png"), phrase, str(tiny / "g.png"), None,
                 "medclip-tiny", str(tiny / "model.pt"))  # any file stands for the U-Net: prepare is replaced
    said = capsys.readouterr().out
    grounded = next(line for line in said.splitlines() if line.startswith("call at left lower zone"))
    describe.main(str(tiny / "image.png"), str(tiny / "model.pt"), "48,60,96,120", None, None, phrase, None,
                  "medclip-tiny")
    described = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("text "))
    call = grounded.split(": ", 1)[1]
    assert "margin " in call and "threshold 0.5" in call and described.endswith(call), (grounded, described)


def test_ground_prints_provenance_and_draws_colour_bars(tiny, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    from pipeline import predict

    rad = _prepared(tiny)
    monkeypatch.setattr(predict, "prepare", lambda *a: rad)
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    predict.main("ground", str(tiny / "model.pt"), str(tiny / "image.png"), "left pleural effusion",
                 str(tiny / "bars.png"), None, "medclip-tiny", str(tiny / "model.pt"))
    said = capsys.readouterr().out
    assert "unknown provenance: no summary.json beside the checkpoint" in said and (tiny / "bars.png").is_file()
    labels = [ax.get_ylabel() for ax in figures[-1].axes]
    assert any("ROI weight" in s for s in labels) and any("cosine similarity" in s for s in labels), labels


def _run_folder(root, source_dir, figures, band=True):
    import json

    run = root / "results/train/student"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "summary.json").write_text(json.dumps({"images": 173, "steps": 150, "select": "final", "seed": 0,
                                                  "best_step": None, "init": "teacher"}))
    (run / "spec.json").write_text(json.dumps({"cfg": {"steps": 150}}))
    (root / "results/ingest").mkdir(parents=True)
    (root / "results/ingest/studies.csv").write_text(
        "image_id,split,image_path,report\n"
        + "".join(f"i{k},{split},{source_dir}/files/p1/s{k}.dcm,\"a report, with a comma\"\n"
                  for k, split in enumerate(["train", "train", "test"])))
    (root / "results/evaluate").mkdir(parents=True)
    metrics = {"runs": {"student": {k: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 51}
                                    for k, v in figures.items()}}}
    if band:
        metrics["null_band"] = {"figures": {"auroc/mean": {"low": 0.42, "high": 0.6},
                                            "i2r/R@10": {"low": 0.17, "high": 0.23},
                                            "presence/auroc": {"low": 0.44, "high": 0.57}}}
    (root / "results/evaluate/metrics.json").write_text(json.dumps(metrics))
    return run


def test_provenance_names_the_source_the_figures_and_warns_at_chance(tmp_path):
    from pipeline import config
    from pipeline.predict import provenance

    cfg = config.load(None, {})
    chance = _run_folder(tmp_path / "a", cfg["data"]["synthetic"]["out_dir"],
                         {"auroc/mean": 0.435, "i2r/R@10": 0.157, "presence/auroc": 0.501})
    lines = "\n".join(provenance(chance / "model.pt", cfg))
    assert "run student" in lines and "173 synthetic images, 150 steps, selection final" in lines
    assert "auroc/mean 0.435 (0.335-0.535) [chance 0.420-0.600]" in lines and "presence/auroc 0.501" in lines
    assert "warning: this checkpoint was trained on synthetic films only" in lines
    assert "warning: this checkpoint was at chance on its own test split (auroc/mean, i2r/R@10, presence/auroc" in lines
    assert lines == "\n".join(provenance(chance / "checkpoints/last.pt", cfg))  # a training checkpoint: its run
    real = _run_folder(tmp_path / "b", "/data/mimic", {"auroc/mean": 0.81, "i2r/R@10": 0.4}, band=False)
    lines = "\n".join(provenance(real / "model.pt", cfg))
    assert "173 real images" in lines and "auroc/mean 0.810 (0.710-0.910)" in lines and "warning" not in lines
    lines = "\n".join(provenance(tmp_path / "model.pt", cfg))
    assert "unknown provenance: no summary.json beside the checkpoint" in lines and "test figures: none" in lines


def _prepared_zones(tiny):
    """The tiny image with the ROIs a U-Net would give (in the file's pixels: the right lung the left half, the
    left lung the right half, the left lower zone its lower half), normalized as predict.prepare does."""
    from pipeline import config
    from pipeline.predict import PreparedImage
    from pipeline.stages.normalize import as_uint8, normalize_file, to_normalized

    cfg = config.load(None, {})
    image, transform, _ = normalize_file(tiny / "image.png", cfg["normalize"])
    size = image.shape[-1]
    boxes = np.vstack([[0, 0, size, size], to_normalized(np.array([[0, 0, 48, 120], [48, 0, 96, 120],
                                                                   [48, 60, 96, 120.0]]), transform)])
    return PreparedImage(as_uint8(image[None])[0], boxes, ["image", "right lung", "left lung", "left lower zone"],
                         transform, False)


@pytest.mark.parametrize("phrase", ["no left pleural effusion", "small left pleural effusion", "no pneumothorax"])
def test_describe_point_decides_where_ground_decides(tiny, monkeypatch, capsys, phrase):
    """`describe --point` inside the ROI `ground` decided at: the same region, the same call and margin. The point's
    own patch (what describe --point used to decide at) gives another p: the cause of the old disagreement."""
    import re

    from pipeline import predict

    rad = _prepared_zones(tiny)
    monkeypatch.setattr(predict, "prepare", lambda *a: rad)
    monkeypatch.chdir(tiny)
    predict.main("ground", str(tiny / "model.pt"), str(tiny / "image.png"), phrase, str(tiny / "g.png"), None,
                 "medclip-tiny", str(tiny / "model.pt"))  # any file stands for the U-Net: prepare is replaced
    grounded = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("call at "))
    x0, y0, x1, y1 = map(float, re.search(r"\(box ([\d.,-]+) in the file's pixels\)", grounded)[1].split(","))
    point = f"{(x0 + x1) / 2:g},{(y0 + y1) / 2:g}"
    describe.main(str(tiny / "image.png"), str(tiny / "model.pt"), None, point, None, phrase, None, "medclip-tiny",
                  str(tiny / "model.pt"))
    described = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("text "))
    call = grounded.split(", the ROI most in favour: ", 1)
    assert len(call) == 2 and "margin " in call[1], grounded
    assert described.endswith(f"call at {call[0].removeprefix('call at ')}, the ROI holding the point most in "
                              f"favour: {call[1]}"), (grounded, described)
    emb = Embedder(tiny / "model.pt", "medclip-tiny", torch.device("cpu"))
    from pipeline.stages.normalize import to_normalized

    patch = describe.region(emb, rad.image, rad.transform, point=[(x0 + x1) / 2, (y0 + y1) / 2])
    own = grounding.phrase_call(emb.texts, patch.embedding, emb.scale, phrase)
    at = predict.roi_call(emb, rad, phrase, tuple(to_normalized(np.array([[x0, y0, x1, y1]]), rad.transform)[0, :2]
                                                  + 1e-3))
    assert at.label in grounded and abs(own.p - at.call.p) > 1e-4  # one patch is another region


def test_describe_point_without_a_segmenter_says_it_decides_at_the_patch(tiny, capsys, monkeypatch):
    monkeypatch.chdir(tiny)  # no results/segmenter/unet.pt here
    describe.main(str(tiny / "image.png"), str(tiny / "model.pt"), None, "30,40", None, "no left pleural effusion",
                  None, "medclip-tiny")
    said = capsys.readouterr().out
    assert "note: the call is at the point's own patch (no segmenter at" in said and "margin " in said
