"""Train the lung / lesion U-Net on ground-truth masks.

Training data, in the normalized pixel grid:
- the synthetic ground truth (default): `<out_dir>/ground_truth/masks/<image_id>.png` with bit 1 right lung,
  bit 2 left lung, bit 4 lesion, letterboxed exactly like its image;
- for real data, `segment.train_csv`: columns `image_path`, `right_lung`, `left_lung` and optional `lesion`
  (mask image paths, non-zero = inside, same pixel grid as the image). JSRT/SCR, Montgomery, Shenzhen and
  CheXmask convert to this table by listing each image with its per-lung masks (split a two-lung mask into
  right and left by the image midline, the patient's right being the image's left).
Train-split images train, validate-split images give the Dice figures in `metrics.json`. No horizontal
flips: they would turn a right lung into a left one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ..io import atomic_path, usable_threads, write_text_atomic
from ..shards import Shard, decode
from . import normalize as norm
from .segment import CLASSES, build_unet, predict, to_input

log = logging.getLogger("pipeline.train_segmenter")


def bits_to_masks(bits: np.ndarray) -> np.ndarray:
    """(.., H, W) uint8 with bits 1/2/4 -> (.., 3, H, W) bool (right lung, left lung, lesion)."""
    return np.stack([(bits & b) > 0 for b in (1, 2, 4)], axis=-3)


def truth_masks(masks_dir: str | Path, image_id: str, size: int) -> np.ndarray | None:
    """The synthetic ground truth of one image as (3, size, size) bool in the normalized grid; None if absent."""
    path = Path(masks_dir) / f"{image_id}.png"
    if not path.exists():
        return None
    return bits_to_masks(norm.letterbox_mask(np.asarray(Image.open(path)), size))


def synthetic_examples(shards: list[str | Path], masks_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images (N, S, S) uint8, masks (N, 3, S, S) bool) from normalize shards + synthetic masks."""
    by_split: dict[str, tuple[list, list]] = {}
    for path in shards:
        with Shard(path) as s:
            images, splits = s.f["image"][()], decode(s.f["split"][()])
            for image, split, image_id in zip(images, splits, s.image_ids):
                truth = truth_masks(masks_dir, image_id, image.shape[-1])
                if truth is None:
                    continue
                imgs, masks = by_split.setdefault(split, ([], []))
                imgs.append(image)
                masks.append(truth)
    return {k: (np.stack(v[0]), np.stack(v[1])) for k, v in by_split.items()}


def csv_examples(table: str | Path, size: int, norm_cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Examples from a table of image + mask paths (real data); `split` column optional (else 90/10)."""
    t = pd.read_csv(table)
    base = Path(table).parent
    by_split: dict[str, tuple[list, list]] = {}
    for i, rec in enumerate(t.itertuples()):
        image, _, _ = norm.normalize_file(base / rec.image_path, {**norm_cfg, "size": size, "bit_depth": 8})
        layers = []
        for col in ("right_lung", "left_lung", "lesion"):
            p = getattr(rec, col, None)
            m = np.asarray(Image.open(base / p).convert("L")) > 0 if isinstance(p, str) and p else None
            layers.append(m)
        shape = next(m.shape for m in layers if m is not None)
        masks = [norm.letterbox_mask((m if m is not None else np.zeros(shape, bool)).astype(np.uint8), size) > 0
                 for m in layers]
        split = getattr(rec, "split", None) or ("validate" if i % 10 == 9 else "train")
        imgs, ms = by_split.setdefault(split, ([], []))
        imgs.append(image)
        ms.append(np.stack(masks))
    return {k: (np.stack(v[0]), np.stack(v[1])) for k, v in by_split.items()}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice over all pixels of the set (NaN when both are empty)."""
    inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
    return float(2 * inter / total) if total else float("nan")


def dice_figures(pred: np.ndarray, truth: np.ndarray, min_lesion_area: int) -> dict[str, float]:
    """Masks (N, 3, H, W): Dice per lung over all images; lesion Dice over images whose true lesion
    covers at least `min_lesion_area` pixels."""
    out = {f"dice_{c}": dice(pred[:, i], truth[:, i]) for i, c in enumerate(CLASSES[:2])}
    big = truth[:, 2].reshape(len(truth), -1).sum(1) >= min_lesion_area
    out["dice_lesion"] = dice(pred[big, 2], truth[big, 2]) if big.any() else float("nan")
    out["images"], out["images_with_lesion"] = int(len(truth)), int(big.sum())
    return out


def evaluate(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, cfg: dict) -> dict[str, float]:
    pred = predict(model.eval(), images, cfg["input_size"], cfg["threshold"])
    return dice_figures(pred, masks, cfg["min_lesion_area"])


def evaluate_shards(segment_shards: list, masks_dir: str | Path, split: str, min_lesion_area: int) -> dict:
    """Dice of the workflow's segment shards against the synthetic ground truth, on one split."""
    pred, truth = [], []
    for path in segment_shards:
        norm_path = Path(path).parent.parent / "normalize" / Path(path).name
        with Shard(path) as s, Shard(norm_path) as n:
            size = n.f["image"].shape[-1]
            for i, sp in enumerate(decode(n.f["split"][()])):
                t = truth_masks(masks_dir, s.image_ids[i], size) if sp == split else None
                if t is not None:
                    truth.append(t)
                    pred.append(np.stack([s.f[c][i] > 0 for c in CLASSES]))
    return dice_figures(np.stack(pred), np.stack(truth), min_lesion_area)


def train(examples: dict, cfg: dict, threads: int = 1) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(usable_threads(threads))
    rng = np.random.default_rng(cfg["seed"])
    images, masks = examples["train"]
    x = to_input(images, cfg["input_size"])  # (N, 1, s, s)
    # area-downsampled masks, thresholded: smoother targets than nearest neighbour
    y = (F.interpolate(torch.from_numpy(masks).float(), size=x.shape[-2:], mode="area") > 0.5).float()
    model = build_unet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps_per_epoch = max(1, int(np.ceil(len(x) / cfg["batch_size"])))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
    # lesions are small: weight their positive pixels up so the loss does not ignore them
    pos_weight = torch.tensor([1.0, 1.0, cfg["lesion_pos_weight"]]).view(1, 3, 1, 1)
    t0, history = time.perf_counter(), []
    for epoch in range(cfg["epochs"]):
        model.train()
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), cfg["batch_size"]):
            idx = torch.from_numpy(order[i : i + cfg["batch_size"]])
            xb, yb = x[idx], y[idx]
            # brightness / contrast jitter; geometry stays, so sides stay
            xb = (xb * (1 + 0.2 * (torch.rand(len(xb), 1, 1, 1) - 0.5)) + 0.1 * (torch.rand(len(xb), 1, 1, 1) - 0.5))
            logits = model(xb.clamp(0, 1))
            prob = torch.sigmoid(logits)
            bce = F.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos_weight)
            inter = (prob * yb).sum((0, 2, 3))
            soft_dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + yb.sum((0, 2, 3)) + 1)
            loss = bce + soft_dice.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, cfg["epochs"], history[-1], time.perf_counter() - t0)
    metrics = {"train_seconds": time.perf_counter() - t0, "loss": history, "train_images": int(len(x))}
    if "validate" in examples:
        metrics["validate"] = evaluate(model, *examples["validate"], cfg)
    return model.eval(), metrics


def save(model: torch.nn.Module, metrics: dict, cfg: dict, out: str | Path, metrics_out: str | Path) -> None:
    with atomic_path(out) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": cfg, "classes": list(CLASSES), "metrics": metrics},
                   tmp)
    write_text_atomic(metrics_out, json.dumps(metrics, indent=1, sort_keys=True) + "\n")


def run(shards: list[str], masks_dir: str, out: str | Path, metrics_out: str | Path, cfg: dict,
        norm_cfg: dict, threads: int = 1) -> dict:
    if cfg["train_csv"]:
        examples = csv_examples(cfg["train_csv"], norm_cfg["size"], norm_cfg)
    else:
        examples = synthetic_examples(shards, masks_dir)
    if "train" not in examples:
        raise ValueError("no training images with ground-truth masks found")
    log.info("training on %d images, validating on %d", len(examples["train"][0]),
             len(examples.get("validate", ([],))[0]))
    model, metrics = train(examples, cfg, threads)
    save(model, metrics, cfg, out, metrics_out)
    log.info("validation: %s", metrics.get("validate"))
    return metrics
