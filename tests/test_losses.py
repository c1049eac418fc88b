"""The four losses against their formulas on small tensors with numbers checked by hand, and the models."""

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from pipeline import models
from pipeline.losses import (RegionAwareLoss, distill_loss, global_loss, negative_caption_loss, polarity_loss,
                             roi_loss)

T = torch.tensor


def unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_global_loss_one_directional_matches_hand_numbers():
    img, txt = T([[1.0, 0.0], [0.0, 1.0]]), T([[1.0, 0.0], [0.6, 0.8]])
    # logits [[1, 0.6], [0, 0.8]]: row 0 gives log(1 + e^-0.4) = 0.513015, row 1 log(1 + e^-0.8) = 0.371101
    assert global_loss(img, txt, T(1.0), symmetric=False).item() == pytest.approx((0.513015 + 0.371101) / 2, abs=1e-6)
    assert global_loss(img, txt, T(1.0), symmetric=False, reduction="sum").item() == pytest.approx(0.884116, abs=1e-6)


def test_global_loss_equals_open_clip_cliploss():
    g = torch.Generator().manual_seed(0)
    img, txt = unit(torch.randn(6, 8, generator=g)), unit(torch.randn(6, 8, generator=g))
    scale = T(14.3)
    assert global_loss(img, txt, scale).item() == pytest.approx(open_clip.ClipLoss()(img, txt, scale).item(), rel=1e-6)


def test_roi_loss_matches_the_formula():
    roi, phrase = T([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), T([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    s = roi @ phrase.T * 2.0
    by_hand = [-(s[i, i] - torch.logsumexp(s[i], 0)).item() for i in range(3)]
    assert roi_loss(roi, phrase, T(2.0)).item() == pytest.approx(np.mean(by_hand), abs=1e-6)
    assert roi_loss(roi[:0], phrase[:0], T(2.0)).item() == 0.0


def test_duplicate_aware_losses_equal_the_slides_without_duplicates():
    g = torch.Generator().manual_seed(3)
    img, txt = unit(torch.randn(5, 8, generator=g)), unit(torch.randn(5, 8, generator=g))
    distinct = torch.arange(5)
    for symmetric in (True, False):
        assert global_loss(img, txt, T(7.0), symmetric, groups=distinct).item() == pytest.approx(
            global_loss(img, txt, T(7.0), symmetric).item(), abs=1e-7)
    assert roi_loss(img, txt, T(7.0), groups=distinct).item() == pytest.approx(roi_loss(img, txt, T(7.0)).item(), abs=1e-7)


def test_duplicate_aware_losses_mask_exactly_the_duplicates():
    g = torch.Generator().manual_seed(4)
    img, txt = unit(torch.randn(4, 8, generator=g)), unit(torch.randn(4, 8, generator=g))
    groups = T([0, 1, 0, 2])  # texts 0 and 2 are the same caption
    s = 3.0 * img @ txt.T
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[0, 2] = keep[2, 0] = False  # each duplicate is out of the other's denominator, nothing else
    rows = [-(s[i, i] - torch.logsumexp(s[i][keep[i]], 0)).item() for i in range(4)]
    cols = [-(s[i, i] - torch.logsumexp(s[:, i][keep[:, i]], 0)).item() for i in range(4)]
    assert roi_loss(img, txt, T(3.0), groups=groups).item() == pytest.approx(np.mean(rows), abs=1e-6)
    assert global_loss(img, txt, T(3.0), symmetric=False, groups=groups).item() == pytest.approx(np.mean(rows), abs=1e-6)
    assert global_loss(img, txt, T(3.0), groups=groups).item() == pytest.approx(np.mean(rows + cols) , abs=1e-6)
    # the literal loss counts the duplicate as a negative: larger here
    assert roi_loss(img, txt, T(3.0)).item() > roi_loss(img, txt, T(3.0), groups=groups).item()


def test_negative_caption_loss_matches_hand_numbers():
    roi, phrase = T([[1.0, 0.0]]), T([[1.0, 0.0]])  # s = 1
    negatives = T([[[0.0, 1.0], [-1.0, 0.0]]])  # s = 0 and s = -1
    # -log(e / (e + e^0 + e^-1)) = log(1 + e^-1 + e^-2) = log(1.503214) = 0.407606
    both = negative_caption_loss(roi, phrase, negatives, T([[True, True]]), T(1.0))
    assert both.item() == pytest.approx(0.407606, abs=1e-6)
    # a padding slot does not count: log(1 + e^-1) = 0.313262
    one = negative_caption_loss(roi, phrase, negatives, T([[True, False]]), T(1.0))
    assert one.item() == pytest.approx(0.313262, abs=1e-6)


def test_distill_is_zero_when_student_equals_teacher_and_kl_otherwise():
    g = torch.Generator().manual_seed(1)
    roi, concepts = unit(torch.randn(4, 8, generator=g)), unit(torch.randn(5, 8, generator=g))
    assert distill_loss(roi, concepts, T(10.0), roi, concepts, 10.0).item() == pytest.approx(0.0, abs=1e-6)
    student = unit(torch.randn(4, 8, generator=g))
    p_t = torch.softmax(10 * roi @ concepts.T, -1)
    p_s = torch.softmax(10 * student @ concepts.T, -1)
    by_hand = (p_t * (p_t / p_s).log()).sum(-1).mean()
    got = distill_loss(student, concepts, T(10.0), roi, concepts, 10.0)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5) and got.item() > 0


def test_total_is_the_weighted_sum_of_the_terms():
    g = torch.Generator().manual_seed(2)
    f = lambda *s: unit(torch.randn(*s, generator=g))  # noqa: E731
    img, txt, roi, phrase = f(4, 8), f(4, 8), f(6, 8), f(6, 8)
    neg, mask = f(6, 3, 8), torch.ones(6, 3, dtype=torch.bool)
    concepts, t_roi, t_concepts = f(5, 8), f(6, 8), f(5, 8)
    out = RegionAwareLoss(alpha=1, beta=0.5, gamma=2, lam=0.4)(
        img, txt, T(10.0), roi, phrase, neg, mask, concepts, t_roi, t_concepts, T(12.0))
    expected = (out["global_loss"] + 0.5 * out["roi_loss"] + 2 * out["neg_loss"] + 0.4 * out["distill_loss"])
    assert out["total_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(out[k].item() > 0 for k in ("global_loss", "roi_loss", "neg_loss", "distill_loss"))
    only_global = RegionAwareLoss()(img, txt, T(10.0))
    assert only_global["roi_loss"].item() == 0 and only_global["total_loss"] == only_global["global_loss"]


def test_the_polarity_term_is_l_neg_of_each_image_and_its_stated_finding():
    g = torch.Generator().manual_seed(3)
    f = lambda *s: unit(torch.randn(*s, generator=g))  # noqa: E731
    img, txt, said, opposite = f(4, 8), f(4, 8), f(3, 8), f(3, 8)
    classes = torch.tensor([3, 2, 2])  # image 0's statement says cardiomegaly, 1 and 2 "no cardiomegaly"
    out = RegionAwareLoss(polarity=0.5)(img, txt, T(10.0), statement_image=img[:3], statement_features=said,
                                        opposite_features=opposite, statement_classes=classes)
    # -log softmax over (the stated finding, its opposite), per image; the two classes weigh half each
    s_true, s_opp = 10 * (img[:3] * said).sum(-1), 10 * (img[:3] * opposite).sum(-1)
    per = [-torch.log_softmax(torch.stack([s_true[i], s_opp[i]]), 0)[0].item() for i in range(3)]
    by_hand = (per[0] + (per[1] + per[2]) / 2) / 2
    assert out["polarity_loss"].item() == pytest.approx(by_hand, rel=1e-6)
    assert out["total_loss"].item() == pytest.approx(out["global_loss"].item() + 0.5 * by_hand, rel=1e-6)
    assert RegionAwareLoss()(img, txt, T(10.0))["polarity_loss"].item() == 0  # no statements, no term
    summed = RegionAwareLoss(polarity=0.5, reduction="sum")(img, txt, T(10.0), statement_image=img[:3],
                                                           statement_features=said, opposite_features=opposite,
                                                           statement_classes=classes)
    assert summed["polarity_loss"].item() == pytest.approx(3 * by_hand, rel=1e-6)  # the balanced mean x 3 images
    # a bias towards "no" gains nothing: every image nearer "no X" than "X" beats ln 2 on these two negations and
    # one finding only unbalanced, never balanced
    x, no = T([1.0, 0.0]), T([0.0, 1.0])
    for lean in (0.02, 0.05, 0.1):  # a margin of 10 x 0.7 x lean, below the unbalanced optimum ln 2
        same = unit(T([[1.0, 1.0 + lean]] * 3))
        stated, opp = torch.stack([x, no, no]), torch.stack([no, x, x])
        balanced = polarity_loss(same, stated, opp, classes, T(10.0)).item()
        unbalanced = negative_caption_loss(same, stated, opp[:, None], torch.ones(3, 1, dtype=torch.bool), T(10.0))
        assert unbalanced.item() < np.log(2) <= balanced
    # it trains the text side only: no gradient reaches the image or the scale through it
    image, scale, said = img[:3].clone().requires_grad_(), T(10.0).requires_grad_(), said.clone().requires_grad_()
    RegionAwareLoss(alpha=0.0, polarity=1.0)(img, txt, scale, statement_image=image, statement_features=said,
                                             opposite_features=opposite, statement_classes=classes
                                             )["total_loss"].backward()
    assert image.grad is None and said.grad.abs().sum() > 0


def test_gradients_reach_both_towers_of_the_tiny_model():
    torch.manual_seed(0)
    model = models.create("medclip-tiny")
    tok = models.tokenizer("medclip-tiny")
    images = models.to_model_input(np.random.default_rng(0).integers(0, 255, (4, 128, 128), dtype=np.uint8), 96)
    texts = tok(["small left pleural effusion", "no pneumothorax", "right lower lobe opacity", "normal chest"])
    img, txt, scale = model(images, texts)
    roi, _, _ = model(images, None)  # stand-in ROI crops
    out = RegionAwareLoss()(img, txt, scale, roi_features=roi, phrase_features=txt)
    out["total_loss"].backward()
    vis = [p.grad for n, p in model.named_parameters() if n.startswith("visual.") and p.grad is not None]
    text = [p.grad for n, p in model.named_parameters() if n.startswith("transformer.") and p.grad is not None]
    assert vis and text and any(g.abs().sum() > 0 for g in vis) and any(g.abs().sum() > 0 for g in text)
    assert model.logit_scale.grad is not None


def test_models_register_load_local_weights_and_take_one_channel(tmp_path):
    model = models.create("medclip-tiny")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    again = open_clip.create_model("medclip-tiny", pretrained=str(tmp_path / "tiny.pt"))
    tokens = models.tokenizer("medclip-tiny")(["bilateral effusions"])
    assert torch.allclose(again.encode_text(tokens), model.encode_text(tokens))
    x = models.to_model_input(np.full((2, 50, 40), 255, np.uint8), 96)
    assert x.shape == (2, 3, 96, 96) and torch.equal(x[:, 0], x[:, 2])
    assert x.max().item() == pytest.approx((1 - models.CXR_MEAN) / models.CXR_STD, rel=1e-5)
    with pytest.raises(ValueError, match="unknown model"):
        models.create("ViT-nonexistent")
    assert "medclip-vit-b-16" in open_clip.list_models()
    assert math.isclose(models.image_size(model), 96)
