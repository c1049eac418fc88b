"""visualize: phrase grounding pictures, the baseline beside the student, for the pinned grounding cases.

Each picture: the normalized radiograph, the image's ROI boxes (thin), the ground-truth box of the finding (green,
synthetic truth), and each model's heat map for the phrase (evaluate.heat_map), titled with the phrase and the
model's pointing-game hit and IoU; below each, the model's dense patch-level map (grounding.similarity_map) with its
pointing hit and CNR, so the ROI map's anatomy prior can be told from what the patches see. Each map has a colour
bar saying what its colour is (show.colour_bar, as `ground` draws them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import grounding
from ..io import atomic_path, usable_threads
from .evaluate import Embedder, grounding_figures, heat_map, load_test_set

log = logging.getLogger("pipeline.visualize")


def run(inputs: dict, checkpoints: dict[str, str], model_names: dict[str, str], out_dir: str | Path,
        truth_dir: str | Path | None, n: int = 6, threads: int = 1, split: str = "test") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(usable_threads(threads))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = load_test_set(inputs["normalized"], inputs["crops"], inputs["reports"], truth_dir, split=split)
    cases = [p for p in test.pairs if p["gt_box"] is not None][:n] or test.pairs[:n]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heats, dense = {}, {}
    size = test.images.shape[-1]
    for name, weights in checkpoints.items():
        emb = Embedder(weights, model_names[name], device)
        _, roi = emb.images_and_rois(test.images, test.roi_owner, test.roi_box)
        patches = grounding.patch_features(emb.model, test.images[[p["image"] for p in cases]]) if cases else []
        for k, p in enumerate(cases):
            rois = test.roi_of[p["image"]]
            text = emb.texts([p["text"]])[0]
            heats[name, k] = heat_map(roi[rois] @ text, test.roi_box[rois], size, emb.scale)
            dense[name, k] = grounding.similarity_map(patches[k], text, (size, size))
    written = []
    for k, p in enumerate(cases):
        fig = case_figure(test.images[p["image"]], test.roi_box[test.roi_of[p["image"]]], p["gt_box"], p["text"],
                          test.image_id[p["image"]], {name: heats[name, k] for name in checkpoints},
                          {name: dense[name, k] for name in checkpoints})
        path = out_dir / f"grounding-{k:02d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(path)
    log.info("%d grounding pictures in %s", len(written), out_dir)
    return written


def case_figure(image, roi_boxes, gt_box, text: str, image_id: str, heats: dict, dense: dict):
    """One picture: per model (columns) the ROI map over the image's ROI boxes (top) and the dense map (below),
    the truth box green, each map with a colour bar saying what its colour is (show.colour_bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..show import DENSE_LABEL, ROI_LABEL, colour_bar

    fig, axes = plt.subplots(2, len(heats), figsize=(4.2 * len(heats), 7.6), squeeze=False)
    for ax, name in zip(axes[1], dense):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        colour_bar(fig, ax.imshow(dense[name], cmap="jet", alpha=0.35), ax, DENSE_LABEL)
        title = f"{name} dense"
        if gt_box is not None:
            x0, y0, x1, y1 = gt_box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="lime"))
            f = grounding.phrase_figures(dense[name], [gt_box])
            title += f": pointing {'hit' if f['pointing_game'] == 1 else 'miss'}, CNR {f['cnr']:.2f}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax, name in zip(axes[0], heats):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        colour_bar(fig, ax.imshow(heats[name], cmap="jet", alpha=0.35, vmin=0, vmax=1), ax, ROI_LABEL)
        for x0, y0, x1, y1 in roi_boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.5, ec="white", alpha=0.6))
        title = name
        if gt_box is not None:
            x0, y0, x1, y1 = gt_box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="lime"))
            hit, iou, _ = grounding_figures(heats[name], gt_box)
            title += f": pointing {'hit' if hit else 'miss'}, IoU {iou:.2f}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f'"{text}"  ({image_id[:8]}...)', fontsize=9)
    fig.tight_layout()
    return fig
