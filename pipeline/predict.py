"""One radiograph from the command line: `python -m pipeline zeroshot` and `python -m pipeline ground`.

The file (DICOM, PNG or JPEG) goes through the workflow's own code with the workflow's config, nothing cached:
normalize (`normalize.normalize_file`: VOI LUT, MONOCHROME1, letterbox), the U-Net (`segment.segment`: an image without
lungs falls back to the prior boxes like the crop stage), the ROI
boxes (`crop.padded_rois`), and the model's ROI embeddings (`models.embed_images_and_rois`). Then

    zeroshot   the 14 observation probabilities: softmax over a positive and a negative prompt ensemble
               (the same prompts and rule as evaluate's zero-shot AUROC);
    ground     the phrase's heat map over the image's ROIs (evaluate.heat_map) beside the dense patch-level map
               (grounding.similarity_map) drawn on the radiograph; a negated or normal phrase the model finds
               nowhere ("no left pleural effusion" where no region prefers "left pleural effusion") prints
               "not present" and draws nothing.

A checkpoint is an open_clip state dict (`results/train/<run>/model.pt`, `results/teacher/model.pt`) or a
training checkpoint (`checkpoints/last.pt`, which names its own architecture). Nothing from the file's header
except pixels and the display tags is read; no identifier is printed or drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from .labels import OBSERVATIONS
from .stages.crop import padded_rois
from .stages.evaluate import NEGATIVE, POSITIVE, Embedder, heat_map, roi_weights
from .stages.normalize import as_uint8, normalize_file, to_original
from .stages.segment import load_unet, segment


@dataclass
class PreparedImage:
    image: np.ndarray  # (S, S) uint8, normalized and letterboxed
    boxes: np.ndarray  # (R, 4) padded ROI boxes in the normalized image's pixels
    labels: list[str]  # one per box: "image", "right lung", "left lower zone", "lesion (left)", ...
    transform: np.ndarray
    no_lungs: bool


def _label(kind: str, side: str, zone: str) -> str:
    if kind == "zone":
        return f"{side} {zone} zone"
    if kind == "lung":
        return f"{side} lung"
    return f"lesion ({side})" if kind == "lesion" and side else kind


def segmenter_path(cfg: dict) -> Path:
    """segment.weights when set, else the U-Net the workflow trained (rule train_segmenter)."""
    return Path(cfg["segment"]["weights"] or "results/segmenter/unet.pt")


def prepare(path: str | Path, cfg: dict, segmenter: str | Path) -> PreparedImage:
    """One file through normalize, segment and crop as the workflow does (stages.*). Raises normalize.Rejected."""
    image, transform, source = normalize_file(path, cfg["normalize"])
    image = as_uint8(image[None])[0]
    masks, q = segment(load_unet(segmenter, cfg["segment"]), image[None], cfg["segment"])
    no_lungs = bool(q["no_lungs"][0])
    rois = padded_rois(masks[0, 0], masks[0, 1], masks[0, 2], no_lungs, transform, np.array(source.pixels.shape),
                       image.shape[-1], cfg["crop"])
    boxes = np.array([r.box for r in rois], np.float64).reshape(-1, 4)
    return PreparedImage(image, boxes, [_label(r.kind, r.laterality, r.zone) for r in rois], transform, no_lungs)


def load_model(checkpoint: str | Path, name: str | None, cfg: dict, device: torch.device) -> Embedder:
    """An Embedder for a state dict or a training checkpoint; the architecture from the checkpoint's config,
    else `name`, else train.model."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors and plain values only
    if isinstance(blob, dict) and "config" in blob and "model" in blob.get("config", {}):
        name = name or blob["config"]["model"]
    return Embedder(checkpoint, name or cfg["train"]["model"], device)


def zeroshot(emb: Embedder, image: np.ndarray) -> dict[str, float]:
    """p(observation present) for the 14 CheXpert observations, as evaluate scores them."""
    img = emb.images(image[None])[0]
    out = {}
    for o in OBSERVATIONS:
        name = o.lower()
        logits = emb.scale * np.array([img @ emb.ensemble(POSITIVE, name), img @ emb.ensemble(NEGATIVE, name)])
        out[o] = float(1.0 / (1.0 + np.exp(logits[1] - logits[0])))
    return out


def ground(emb: Embedder, rad: PreparedImage, phrase: str) -> tuple[np.ndarray, np.ndarray]:
    """(heat map (S, S) in [0, 1], each ROI's softmax weight) for `phrase`; the whole-image box is left out
    (it contains every finding), unless no other ROI exists."""
    keep = np.array([lab != "image" for lab in rad.labels]) if len(rad.labels) > 1 else np.ones(1, bool)
    size = rad.image.shape[-1]
    _, rois = emb.images_and_rois(rad.image[None], np.zeros(int(keep.sum()), np.int64), rad.boxes[keep])
    scores = rois @ emb.texts([phrase])[0]
    weights = np.zeros(len(rad.labels))
    weights[keep] = roi_weights(scores, emb.scale)
    return heat_map(scores, rad.boxes[keep], size, emb.scale), weights


def dense_map(emb: Embedder, rad: PreparedImage, phrase: str) -> np.ndarray:
    """The phrase's patch-level similarity map over the image (grounding.similarity_map)."""
    from . import grounding

    patches = grounding.patch_features(emb.model, rad.image[None])[0]
    return grounding.similarity_map(patches, emb.texts([phrase])[0], rad.image.shape)


def groundable(emb: Embedder, rad: PreparedImage, phrase: str) -> tuple[bool, float, str] | None:
    """For a negated phrase: (whether some ROI prefers the affirmed finding over the phrase, the best ROI's
    p(present), the affirmed phrase); for a normal statement (False, NaN, ""); None for any other phrase."""
    from . import grounding

    parts = grounding.negation_parts(phrase)
    if parts is None:
        return (False, float("nan"), "") if grounding.is_normal_statement(phrase) else None
    keep = np.array([lab != "image" for lab in rad.labels]) if len(rad.labels) > 1 else np.ones(1, bool)
    _, rois = emb.images_and_rois(rad.image[None], np.zeros(int(keep.sum()), np.int64), rad.boxes[keep])
    pos, neg = emb.texts(list(parts))
    p = float(grounding.presence(rois, pos, neg, emb.scale).max())
    return p >= 0.5, p, parts[0]


def draw(rad: PreparedImage, heat: np.ndarray, weights: np.ndarray, phrase: str, out: str | Path,
         dense: np.ndarray | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .io import atomic_path

    fig, axes = plt.subplots(1, 1 if dense is None else 2, figsize=(4.5 if dense is None else 8.6, 4.8), squeeze=False)
    ax = axes[0, 0]
    if dense is not None:
        d = axes[0, 1]
        d.imshow(rad.image, cmap="gray", vmin=0, vmax=255)
        d.imshow(np.ma.masked_invalid(dense), cmap="jet", alpha=0.35)
        d.set_title("dense map: each patch vs the phrase", fontsize=9)
        d.axis("off")
    ax.imshow(rad.image, cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    best = int(np.argmax(weights))
    for k, (x0, y0, x1, y1) in enumerate(rad.boxes):
        if rad.labels[k] != "image":
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5 if k == best else 0.5,
                                   ec="yellow" if k == best else "white", alpha=0.9 if k == best else 0.5))
    ax.set_title(f'"{phrase}"\nbest ROI: {rad.labels[best]} ({weights[best]:.2f})', fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


def main(command: str, checkpoint: str, image: str, phrase: str | None, out: str | None, config: str | None,
         model: str | None, segmenter: str | None) -> int:
    overrides = {}
    if config:  # merged over the repository's config.yaml, like snakemake --configfile
        import yaml

        overrides = yaml.safe_load(Path(config).read_text()) or {}
    cfg = config_mod.load(None, overrides)
    seg = Path(segmenter) if segmenter else segmenter_path(cfg)
    for what, p in (("checkpoint", Path(checkpoint)), ("segmenter", seg), ("image", Path(image))):
        if not p.is_file():
            raise SystemExit(f"error: {what} {p} is not a file"
                             + (" (run the workflow first, or pass --segmenter)" if what == "segmenter" else ""))
    rad = prepare(image, cfg, seg)
    emb = load_model(checkpoint, model, cfg, torch.device("cpu"))
    if rad.no_lungs:
        print("note: no lungs found; the ROIs are the prior boxes")
    if command == "zeroshot":
        for o, p in zeroshot(emb, rad.image).items():
            print(f"{o:28s} {p:.3f}")
        return 0
    verdict = groundable(emb, rad, phrase)
    if verdict is not None and not verdict[0]:
        why = (f'no region prefers "{verdict[2]}" (best p {verdict[1]:.3f})' if verdict[2]
               else "a normal statement names nothing to point at")
        print(f'not present: "{phrase}" grounds to nothing ({why}); no map drawn')
        return 0
    if verdict is not None:
        print(f'note: the model finds "{verdict[2]}" (p {verdict[1]:.3f}), against "{phrase}"; its map follows')
        phrase = verdict[2]
    heat, weights = ground(emb, rad, phrase)
    for k in np.argsort(-weights):
        if weights[k] > 0:
            box = to_original(rad.boxes[k : k + 1], rad.transform)[0]
            print(f"{rad.labels[k]:20s} {weights[k]:.3f}  box in the original image (x0 y0 x1 y1): "
                  + " ".join(f"{v:.0f}" for v in box))
    print(draw(rad, heat, weights, phrase, out or "ground.png", dense_map(emb, rad, phrase)))
    return 0
