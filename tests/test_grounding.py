"""Dense grounding maps and the MS-CXR metrics against values worked out by hand."""

import numpy as np
import pytest

from pipeline import grounding


def test_cnr_by_hand_clamped_signed_and_nan_ignoring():
    heat = np.zeros((4, 4))
    heat[:2, :2] = [[1.0, 3.0], [1.0, 3.0]]  # inside: mean 2, var 1
    heat[2:, 2:] = -2.0  # outside: twelve values, four -2 and eight 0
    inside = grounding.box_mask([[0, 0, 2, 2]], heat.shape)
    # clamped: outside all 0 -> var 0; |2 - 0| / sqrt(1 + 0) = 2
    assert grounding.cnr(heat, inside) == pytest.approx(2.0)
    # signed: outside mean -8/12 = -2/3, var = E[x^2] - mean^2 = 16/12 - 4/9 = 8/9
    assert grounding.cnr(heat, inside, signed=True) == pytest.approx((2 + 2 / 3) / np.sqrt(1 + 8 / 9))
    nan = heat.copy()
    nan[2:, 2:] = np.nan  # NaN pixels are left out, as outside the centre crop
    assert grounding.cnr(nan, inside, signed=True) == pytest.approx(2.0)
    assert np.isnan(grounding.cnr(np.full((4, 4), np.nan), inside))


def test_phrase_cnr_is_the_mean_over_its_boxes():
    heat = np.zeros((4, 4))
    heat[0, 0] = 4.0
    b = [3, 3, 4, 4]
    heat[0, 1] = 2.0  # box (0,0)-(2,1): inside [4, 2] mean 3 var 1; outside 14 zeros
    ab = grounding.cnr(heat, grounding.box_mask([[0, 0, 2, 1]], heat.shape))
    assert ab == pytest.approx(3.0)
    far = grounding.cnr(heat, grounding.box_mask([b], heat.shape))  # inside [0]; outside mean 6/15
    out = np.array([4.0, 2.0] + [0.0] * 13)
    assert far == pytest.approx(out.mean() / out.std())
    assert grounding.phrase_cnr(heat, [[0, 0, 2, 1], b]) == pytest.approx((3.0 + far) / 2)


def test_miou_over_thresholds_against_the_union_of_boxes():
    heat = np.array([[0.45, 0.25, 0.05, 0.05],
                     [0.25, 0.15, 0.05, 0.05],
                     [0.05, 0.05, 0.05, 0.05],
                     [0.05, 0.05, 0.05, np.nan]])
    truth = grounding.box_mask([[0, 0, 2, 1], [0, 1, 1, 2]], heat.shape)  # three pixels: (0,0) (0,1) (1,0)
    assert truth.sum() == 3
    # t=0.1: 4 predicted, 3 hit -> 3/4; t=0.2: 3 predicted, all hit -> 1; t=0.3, 0.4: only (0,0) -> 1/3; t=0.5: 0
    assert grounding.miou(heat, truth) == pytest.approx((0.75 + 1 + 1 / 3 + 1 / 3 + 0) / 5)


def test_pointing_game_and_plateau_centre():
    heat = np.zeros((5, 5))
    heat[3, 4] = 1.0
    assert grounding.pointing_game(heat, grounding.box_mask([[3, 2, 5, 5]], heat.shape)) == 1.0
    assert grounding.pointing_game(heat, grounding.box_mask([[0, 0, 2, 2]], heat.shape)) == 0.0
    plateau = np.zeros((5, 5))
    plateau[0:5, 0:3] = 1.0  # centre (2, 1)
    assert grounding.pointing_game(plateau, grounding.box_mask([[1, 2, 2, 3]], heat.shape)) == 1.0
    heat[3, 4] = np.nan  # NaN is never the peak
    heat[0, 0] = 0.5
    assert grounding.pointing_game(heat, grounding.box_mask([[0, 0, 1, 1]], heat.shape)) == 1.0


def test_class_mean_is_per_class_then_across_classes():
    total, per = grounding.class_mean([1.0, 3.0, 10.0, np.nan], ["a", "a", "b", "b"])
    assert per == {"a": 2.0, "b": 10.0} and total == 6.0


def test_similarity_map_smooths_on_the_grid_and_upsamples_nearest():
    patches = np.zeros((4, 4, 2), np.float32)
    patches[..., 1] = 1.0
    patches[1, 2] = [1.0, 0.0]  # one patch points at the phrase
    flat = grounding.similarity_map(patches, np.array([1.0, 0.0]), (8, 12), sigma=0)
    assert flat.shape == (8, 12) and flat[2:4, 6:9].min() == pytest.approx(1.0) and flat[0, 0] == pytest.approx(0.0)
    big = np.zeros((8, 8, 2), np.float32)
    big[..., 1] = 1.0
    big[3, 5] = [1.0, 0.0]
    smooth = grounding.similarity_map(big, np.array([1.0, 0.0]), (16, 16), sigma=1.5)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert (peak[0] // 2, peak[1] // 2) == (3, 5) and 0 < smooth.max() < 1 and smooth[peak] > smooth[6, 8] > smooth[0, 0]
    padded = grounding.similarity_map(patches, np.array([1.0, 0.0]), (8, 8), content=(0, 2, 8, 6))
    assert np.isnan(padded[:2]).all() and np.isfinite(padded[2:6]).all()


def test_region_weights_box_point_mask():
    w = grounding.box_region_weights((0, 0, 16, 8), grid=4, size=32)  # two patches of the first row, half each
    assert w.reshape(4, 4)[0, :2] == pytest.approx([0.5, 0.5]) and w.sum() == pytest.approx(1)
    assert grounding.point_box(17, 3, grid=4, size=32) == (16, 0, 24, 8)
    mask = np.zeros((32, 32), bool)
    mask[0:8, 0:16] = True
    assert grounding.mask_weights(mask, 4) == pytest.approx(w)
    with pytest.raises(ValueError, match="empty"):
        grounding.mask_weights(np.zeros((8, 8), bool), 4)


def test_negation_parts_and_normal_statements():
    assert grounding.negation_parts("no left pleural effusion") == ("left pleural effusion", "no left pleural effusion")
    assert grounding.negation_parts("There is no pneumothorax")[0] == "pneumothorax"
    assert grounding.negation_parts("small left pleural effusion") is None
    assert grounding.is_normal_statement("the lungs are clear") and not grounding.is_normal_statement("no effusion")
    p = grounding.presence(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0]), np.array([0.0, 1.0]), 10.0)
    assert p[0] > 0.99 and p[1] < 0.01


def test_one_presence_rule_with_its_margin():
    pos, neg = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    regions = np.array([[0.6, 0.8], [0.8, 0.6]])  # the second prefers the affirmed statement by 0.2
    call = grounding.decide(regions, pos, neg, 10.0, "left pleural effusion", "no left pleural effusion")
    assert call.index == 1 and call.logit == pytest.approx(2.0) and call.p == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert call.present and call.margin == pytest.approx(call.p - grounding.PRESENT_AT)
    assert "margin +0.381 from the threshold 0.5 (logit +2.000): present" in call.line()
    alone = grounding.decide(regions[0], pos, neg, 10.0, "a", "no a")  # one region (D,)
    assert not alone.present and alone.margin < 0 and "absent" in alone.line()
    tie = grounding.decide(np.array([0.7, 0.7]), pos, neg, 10.0)  # exactly on the threshold: present
    assert tie.present and tie.margin == 0.0
    assert grounding.contrast("no left pleural effusion") == ("left pleural effusion", "no left pleural effusion")
    assert grounding.contrast("small left pleural effusion") == ("small left pleural effusion",
                                                                  "no small left pleural effusion")
