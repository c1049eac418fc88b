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
