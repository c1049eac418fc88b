"""Segment: right lung, left lung and lesion masks per image with a U-Net, plus per-image quality flags.

The model is a segmentation-models-pytorch U-Net (one input channel, three sigmoid outputs: right lung,
left lung, lesion; "right" is the patient's right, the image's left). It runs at `segment.input_size` and its
logits are upsampled to the normalized size, so masks line up with the normalize shard pixel for pixel.
"No lungs found" is a flag in the shard, never an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..io import progress, sha256_file, usable_threads
from ..shards import Shard, ShardWriter
from ..versions import STAGE_VERSIONS
from .normalize import as_uint8

log = logging.getLogger("pipeline.segment")
STAGE = "segment"
CLASSES = ("right_lung", "left_lung", "lesion")


def build_unet(cfg: dict) -> torch.nn.Module:
    """The U-Net of `segment.encoder`; never downloads encoder weights (encoder_weights=None)."""
    return smp.Unet(encoder_name=cfg["encoder"], encoder_weights=None, in_channels=1, classes=len(CLASSES),
                    decoder_channels=tuple(cfg["decoder_channels"]))


def load_unet(path: str | Path, cfg: dict) -> torch.nn.Module:
    """Load weights from a local file: our checkpoint ({"state_dict", "config", ...}) or a bare state dict.

    A checkpoint's own encoder and decoder settings win over `cfg`, so a model trained elsewhere loads as built.
    The weights are laid out channels-last, as `predict` feeds its batches: oneDNN's convolutions run about 1.6x
    faster that way on CPU (measured on the U-Net's forward at 64 and 128 px; figures in the README).
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    arch = {**cfg, **{k: blob["config"][k] for k in ("encoder", "decoder_channels")
                      if isinstance(blob, dict) and k in blob.get("config", {})}}
    model = build_unet(arch)
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).eval()


def to_input(images: np.ndarray, input_size: int) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, 1, s, s) float in [0, 1], area-downsampled to the model's input size."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="area")
    return x


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, input_size: int, threshold: float = 0.5,
            batch_size: int = 16) -> np.ndarray:
    """Masks (N, 3, S, S) bool at the images' own size S."""
    size = images.shape[-1]
    out = np.zeros((len(images), len(CLASSES), size, size), dtype=bool)
    for i in progress(range(0, len(images), batch_size), desc="segment", log=log, unit="batches"):
        x = to_input(images[i : i + batch_size], input_size).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        out[i : i + batch_size] = (torch.sigmoid(logits) > threshold).numpy()
    return out


def clean_lungs(masks: np.ndarray) -> np.ndarray:
    """Each lung is one piece: keep its largest connected component and fill its holes (in place)."""
    for m in masks:
        for c in (0, 1):
            labels, n = ndimage.label(m[c])
            if n > 1:
                sizes = ndimage.sum(m[c], labels, index=range(1, n + 1))
                m[c] = labels == (1 + int(np.argmax(sizes)))
            m[c] = ndimage.binary_fill_holes(m[c])
    return masks


def quality(masks: np.ndarray, min_lung_fraction: float) -> dict[str, np.ndarray]:
    """Per image: lung area fraction, left/right lung area ratio, lesion area (pixels), no_lungs flag."""
    n, _, h, w = masks.shape
    right = masks[:, 0].reshape(n, -1).sum(1).astype(np.float64)
    left = masks[:, 1].reshape(n, -1).sum(1).astype(np.float64)
    lung_fraction = (right + left) / (h * w)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(right > 0, left / np.maximum(right, 1), np.nan)
    no_lungs = (lung_fraction < min_lung_fraction) | (left == 0) | (right == 0)
    return {"lung_area_fraction": lung_fraction.astype(np.float32), "left_right_ratio": ratio.astype(np.float32),
            "lesion_area": masks[:, 2].reshape(n, -1).sum(1).astype(np.int32), "no_lungs": no_lungs}


def segment(model: torch.nn.Module, images: np.ndarray, cfg: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 images (N, S, S) -> cleaned masks (N, 3, S, S) bool and their quality columns (the stage's work,
    also what `python -m pipeline ground` runs on one file)."""
    masks = predict(model, images, cfg["input_size"], cfg["threshold"]) if len(images) else \
        np.zeros((0, len(CLASSES), *images.shape[1:]), bool)
    return masks, quality(clean_lungs(masks), cfg["min_lung_fraction"])


def run(normalized: str | Path, weights: str | Path, out: str | Path, cfg: dict, threads: int = 1) -> dict:
    torch.set_num_threads(usable_threads(threads))
    model = load_unet(weights, cfg)
    with Shard(normalized) as s:
        images = s.f["image"][()]
        ids = s.image_ids
    masks, q = segment(model, as_uint8(images), cfg)
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg, image_id=ids,
                     upstream={"normalize": sha256_file(normalized)},
                     attrs={"weights_sha256": sha256_file(weights), "classes": list(CLASSES)}) as w:
        for c, name in enumerate(CLASSES):
            w.rows(name, masks[:, c].astype(np.uint8))
        for key, value in q.items():
            w.rows(key, value)
    counts = {"images": len(ids), "no_lungs": int(q["no_lungs"].sum()),
              "mean_lung_fraction": float(q["lung_area_fraction"].mean()) if len(ids) else 0.0}
    log.info("%d images segmented, %d without lungs found, mean lung area fraction %.3f", *counts.values())
    return counts
