"""`python -m pipeline show`: one image with what every stage found for it, readable at a glance."""

import numpy as np
import pytest
from matplotlib.transforms import Bbox

from pipeline.shards import ShardWriter, csr_offsets
from pipeline.show import figure, phrase_items, show


@pytest.fixture
def shards(tmp_path):
    """normalize, crop and reports shards of one image: a lesion box sharing its lung's top-left corner (where
    the old labels were written on top of each other) and a phrase stated in findings and again in the impression."""
    ids = ["img0"]
    for stage in ("normalize", "crop", "reports"):
        (tmp_path / stage).mkdir()
    with ShardWriter(tmp_path / "normalize/shard-00000.h5", stage="normalize", stage_version=1, config={},
                     image_id=ids) as w:
        w.rows("image", np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8))
    rois = [("image", "", "", [0, 0, 64, 64]), ("lung", "right", "", [4, 6, 30, 58]),
            ("lung", "left", "", [34, 6, 60, 58]), ("zone", "left", "upper", [34, 6, 60, 23]),
            ("zone", "left", "middle", [34, 23, 60, 40]), ("lesion", "left", "lower", [34, 6, 50, 20]),
            ("lesion", "right", "", [5, 7, 12, 14])]
    with ShardWriter(tmp_path / "crop/shard-00000.h5", stage="crop", stage_version=1, config={}, image_id=ids) as w:
        w.ragged("rois", csr_offsets([len(rois)]), roi_kind=[r[0] for r in rois],
                 roi_laterality=[r[1] for r in rois], roi_zone=[r[2] for r in rois],
                 roi_box=np.array([r[3] for r in rois], np.float32))
    phrases = [("small left pleural effusion", False, False, "left", "lower", "small"),
               ("no pneumothorax", True, False, "", "", ""),
               ("Small left pleural effusion", False, False, "left", "lower", "small"),  # the impression again
               ("8 mm nodule", False, True, "right", "upper", "8 mm")]
    with ShardWriter(tmp_path / "reports/shard-00000.h5", stage="parse_reports", stage_version=1, config={},
                     image_id=ids) as w:
        w.ragged("phrases", csr_offsets([len(phrases)]), phrase=[p[0] for p in phrases],
                 phrase_negated=np.array([p[1] for p in phrases]), phrase_uncertain=np.array([p[2] for p in phrases]),
                 phrase_laterality=[p[3] for p in phrases], phrase_zone=[p[4] for p in phrases],
                 phrase_size=[p[5] for p in phrases])
    return tmp_path


def test_show_names_each_phrase_once(shards):
    fig = figure(shards / "crop/shard-00000.h5", 0)
    title = " ".join(fig.axes[0].get_title().casefold().split())
    assert title.count("small left pleural effusion") == 1
    assert "no pneumothorax (negated" in title and "8 mm nodule (uncertain, right/upper, 8 mm)" in title
    assert phrase_items({"phrase": ["a", "a "], "phrase_negated": [False, True], "phrase_uncertain": [False, False],
                         "phrase_laterality": ["", ""], "phrase_zone": ["", ""]}) == [
        "a (present, -/-)", "a  (negated, -/-)"]  # same words, other status: both kept


def test_show_roi_labels_do_not_overlap(shards, tmp_path):
    fig = figure(shards / "crop/shard-00000.h5", 0)
    ax = fig.axes[0]
    assert len(ax.texts) == 0  # no label written on the image, where boxes share corners
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["lung right", "lung left", "zones (upper / middle / lower)", "lesion left lower",
                      "lesion right"]
    colours = [p.get_edgecolor() for p in ax.patches if p.get_linestyle() != ":"]
    assert len(set(colours)) == len(colours) == 4  # each labelled box its own colour
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in [ax.title, *ax.get_legend().get_texts()]]
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                if Bbox.intersection(boxes[i], boxes[j]) is not None
                and Bbox.intersection(boxes[i], boxes[j]).width * Bbox.intersection(boxes[i], boxes[j]).height > 0]
    assert overlaps == []
    out = show(shards / "crop/shard-00000.h5", 0, tmp_path / "out" / "show.png")
    assert (tmp_path / "out" / "show.png").stat().st_size > 5_000 and out.endswith("show.png")


def test_visualize_grounding_pictures_have_a_labelled_colour_bar_per_map():
    """results/visualize/grounding-XX.png: every ROI map and dense map with its colour bar (show.colour_bar)."""
    import matplotlib.pyplot as plt

    from pipeline.stages.visualize import case_figure

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    runs = ["baseline", "student"]
    fig = case_figure(image, np.array([[0, 0, 16, 32], [16, 0, 32, 32.0]]), [18, 4, 30, 20],
                      "left pleural effusion", "0123456789", {r: rng.random((32, 32)) for r in runs},
                      {r: rng.random((32, 32)) for r in runs})
    try:
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert len(fig.axes) == 8, labels  # 2 runs x (ROI map, dense map), each with its colour bar's axes
        assert sum("ROI weight" in s for s in labels) == 2 and sum("cosine similarity" in s for s in labels) == 2
    finally:
        plt.close(fig)
