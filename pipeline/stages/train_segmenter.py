"""Train the lung / lesion U-Net on ground-truth masks.

Training data, in the normalized pixel grid:
- the synthetic ground truth (default): `<out_dir>/ground_truth/masks/<image_id>.png` with bit 1 right lung,
  bit 2 left lung, bit 4 lesion, letterboxed exactly like its image;
- for real data, `segment.train`: a list of mask sources (CheXmask, mask tables, both-lungs masks, lesion
  boxes; `pipeline/masks.py`) joined to the ingested images by id or path. An image keeps its ingest split
  (by patient where only the patient is ingested); a test-split patient's mask never trains. Real sources
  train with joint image + mask augmentation and early stopping on the validate lung Dice.
Train-split images train, validate-split images give the Dice figures in `metrics.json`. No horizontal
flips: they would turn a right lung into a left one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io import atomic_path, usable_threads, write_text_atomic
from ..masks import box_mask, read_sources
from ..shards import Shard, decode
from . import normalize as norm
from .ingest import hash_fraction, load_studies
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


@dataclass
class Ingested:
    """The ingested, normalized images that mask sources join to."""

    rows: dict[str, tuple[np.ndarray, str, str, np.ndarray, tuple[int, int]]]  # id -> image, split, patient,
    by_path: dict[str, str]  # resolved image_path -> image_id           # transform, original (H, W)
    by_stem: dict[str, str]  # file stem -> image_id (unique stems only)
    patient_split: dict[str, str]


def ingested_images(shards: list[str | Path], studies: str | Path | None) -> Ingested:
    rows = {}
    for path in shards:
        with Shard(path) as s:
            f = s.f
            for i, (image_id, split, patient) in enumerate(zip(s.image_ids, decode(f["split"][()]),
                                                               decode(f["patient_id"][()]))):
                rows[image_id] = (norm.as_uint8(f["image"][i]), split, patient, f["transform"][i],
                                  tuple(int(v) for v in f["original_size"][i]))
    by_path, stems = {}, {}
    if studies and Path(studies).exists():
        t = load_studies(studies)
        for image_id, image_path in zip(t["image_id"], t["image_path"]):
            by_path[str(Path(image_path).resolve())] = image_id
            stems.setdefault(Path(image_path).stem, []).append(image_id)
    by_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}
    patient_split = {r[2]: r[1] for r in rows.values()}
    return Ingested(rows, by_path, by_stem, patient_split)


def _place(mask: np.ndarray, original: tuple[int, int], size: int) -> np.ndarray | None:
    """A mask in an image's original grid -> the normalized grid; None when its grid is not the image's
    (a mask of another resolution is accepted when its aspect ratio matches to 1 %)."""
    h, w = mask.shape
    if (h, w) != tuple(original) and abs(h / w - original[0] / original[1]) > 0.01 * original[0] / original[1]:
        return None
    return norm.letterbox_mask(mask.astype(np.uint8), size) > 0


def real_examples(sources: list[dict], ingested: Ingested, norm_cfg: dict, fractions: dict) -> dict:
    """split -> (images (N, S, S) uint8, masks (N, 3, S, S) bool, known (N, 3) bool, boxed (N,) bool).

    `known[i, c]`: image i has supervision for class c (a lung-only source says nothing about lesions);
    `boxed[i]`: its lesion channel holds boxes, not a mask. An image takes the split of its ingested copy, else
    its patient's ingest split, else the table's `split`, else one by patient hash (`fractions`). Test-split
    images are returned under "test" and never train."""
    size = norm_cfg["size"]
    by_key = read_sources(sources)
    out: dict[str, tuple[list, list, list, list]] = {}
    skipped: dict[str, int] = {}
    for key, anns in sorted(by_key.items()):
        paths = [a.image_path for a in anns if a.image_path]
        image_id = key if key in ingested.rows else next(
            (ingested.by_path[p] for p in paths if p in ingested.by_path), ingested.by_stem.get(key))
        if image_id is not None:
            image, split, _, transform, original = ingested.rows[image_id]
        elif paths:
            try:
                image, transform, rad = norm.normalize_file(paths[0], {**norm_cfg, "bit_depth": 8})
            except norm.Rejected as e:
                log.warning("mask image %s not usable: %s", paths[0], e)
                skipped["unusable image"] = skipped.get("unusable image", 0) + 1
                continue
            original = rad.pixels.shape
            patient = next((a.patient_id for a in anns if a.patient_id), "") or key
            split = ingested.patient_split.get(patient) or next((a.split for a in anns if a.split), "") or \
                _hash_split(patient, fractions)
        else:
            skipped["image not ingested"] = skipped.get("image not ingested", 0) + 1
            continue
        masks, known, boxed = np.zeros((3, size, size), bool), np.zeros(3, bool), False
        for a in anns:
            layers = []
            if a.lungs is not None:
                layers += [(c, m) for c, m in zip((0, 1), a.lungs())]
            if a.lesion is not None:
                layers.append((2, a.lesion()))
            for c, m in layers:
                placed = _place(m, original, size)
                if placed is None:
                    skipped["mask size differs from image"] = skipped.get("mask size differs from image", 0) + 1
                    continue
                masks[c] |= placed
                known[c] = True
            if a.boxes is not None and not (known[2] and not boxed):  # a lesion mask beats boxes
                if len(a.boxes):
                    masks[2] |= box_mask(norm.to_normalized(a.boxes, transform), (size, size))
                    boxed = True
                known[2] = True
        if not known.any():
            continue
        lists = out.setdefault(split, ([], [], [], []))
        for lst, v in zip(lists, (image, masks, known, boxed)):
            lst.append(v)
    if skipped:
        log.info("mask annotations skipped: %s", skipped)
    return {k: tuple(np.stack(v) for v in vals) for k, vals in out.items()}


def _hash_split(patient: str, fractions: dict) -> str:
    if "folds" in fractions:  # cross-validation: one fold of the patients is scored, the rest train
        fold = int(hash_fraction(patient, fractions.get("seed", 0)) * fractions["folds"])
        return "test" if fold == fractions["fold"] else "train"
    names = ["train", "validate", "test"]
    edges = np.cumsum([fractions[n] for n in names]) / sum(fractions[n] for n in names)
    return names[min(2, int(np.searchsorted(edges, hash_fraction(patient, fractions.get("seed", 0)), side="right")))]


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


def evaluate(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, cfg: dict,
             known: np.ndarray | None = None, boxed: np.ndarray | None = None) -> dict[str, float]:
    """Dice on a split; with `known`, lungs over images that have lung masks, lesions over lesion masks."""
    pred = predict(model.eval(), images, cfg["input_size"], cfg["threshold"])
    if known is None:
        return dice_figures(pred, masks, cfg["min_lesion_area"])
    lungs = known[:, 0] & known[:, 1]
    out = dice_figures(pred[lungs], masks[lungs], cfg["min_lesion_area"])
    lesion = known[:, 2] & ~boxed
    out["dice_lesion"] = dice_figures(pred[lesion], masks[lesion], cfg["min_lesion_area"])["dice_lesion"] \
        if lesion.any() else float("nan")
    return out


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


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, opacities: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint image + mask augmentation: one affine per image (rotation, scale, shift, shear) applied to both,
    airspace opacities, then intensity (gamma, contrast, brightness, noise) to the image. No flips: they swap
    right and left. `opacities` (n,) bool: the images that may take opacities (default all; not those whose
    lesion channel holds boxes, where an opacity outside the box would be labelled background)."""
    n = len(x)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    angle, shear = u(-10, 10) * math.pi / 180, u(-0.05, 0.05)
    sy, sx = u(0.85, 1.15), u(0.85, 1.15)
    shift = u(-0.16, 0.16, 2)  # of the half-width: +-8 % of the image
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx, -sin / sx + shear, shift[:, 0]], 1),
                         torch.stack([sin / sy, cos / sy, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    # airspace opacities on half the images: smooth patches that whiten the lung but leave its outline (anatomy)
    # where it was, so a consolidated or oedematous lung is still segmented as lung; strong ones are lesions
    side = x.shape[-1]
    field = F.interpolate(torch.randn(n, 1, 6, 6, generator=g), size=(side, side), mode="bicubic", align_corners=False)
    lungs = F.avg_pool2d(y[:, :2].amax(1, keepdim=True), 5, 1, 2)
    strength = u(0, 0.5).view(n, 1, 1, 1) * (torch.rand(n, 1, 1, 1, generator=g) < 0.5)
    if opacities is not None:
        strength = strength * opacities.view(n, 1, 1, 1)
    opacity = (field - 0.5).clamp(min=0) * strength * lungs
    x = x.clamp(0, 1) + opacity * (1 - x.clamp(0, 1))
    y = torch.cat([y[:, :2], torch.maximum(y[:, 2:], (opacity > 0.15).float())], 1)
    x = x.clamp(0, 1) ** torch.exp(u(-0.4, 0.4)).view(n, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.75, 1.3).view(n, 1, 1, 1) + mean + u(-0.1, 0.1).view(n, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=g) * u(0, 0.04).view(n, 1, 1, 1)
    return x.clamp(0, 1), y


def _soft_dice(prob: torch.Tensor, y: torch.Tensor, dims) -> torch.Tensor:
    inter = (prob * y).sum(dims)
    return 1 - (2 * inter + 1) / (prob.sum(dims) + y.sum(dims) + 1)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor, known: torch.Tensor | None = None,
            boxed: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice per class. With `known` (B, 3): classes an image has no labels for add nothing. With
    `boxed` (B,): a box is not a mask, so inside a lesion box no pixel is labelled; outside every box all pixels
    are negatives, and the box constrains the mask by its projections (BoxInst): the mask's column-wise and
    row-wise maxima should fill the box's x- and y-extent."""
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
    if known is None:
        return bce.mean() + _soft_dice(prob, y, (0, 2, 3)).mean()
    weight = known[:, :, None, None].float().expand_as(bce).clone()
    weight[:, 2] *= torch.where(boxed[:, None, None], 1 - y[:, 2], torch.ones_like(y[:, 2]))
    loss = (bce * weight).sum() / weight.sum().clamp(min=1)
    as_mask = known.clone()
    as_mask[:, 2] &= ~boxed
    dices = [_soft_dice(prob[as_mask[:, c], c], y[as_mask[:, c], c], (0, 1, 2)) for c in range(3) if as_mask[:, c].any()]
    if boxed.any():
        pb, yb = prob[boxed, 2], y[boxed, 2]
        dices.append((_soft_dice(pb.amax(1), yb.amax(1), (0, 1)) + _soft_dice(pb.amax(2), yb.amax(2), (0, 1))) / 2)
    return loss + (torch.stack(dices).mean() if dices else 0.0)


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initialise the U-Net's encoder from a local state dict (e.g. torchvision / timm ImageNet weights for
    the same encoder; a `state_dict` key or an `encoder.` prefix is unwrapped; RGB first convolutions are
    summed over their channels for the one grey input channel, as segmentation-models-pytorch does)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    own = model.encoder.state_dict()
    loaded = {}
    for k, v in state.items():
        if k in own and v.ndim == 4 and own[k].ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1:
            v = v.sum(1, keepdim=True)
        if k in own and own[k].shape == v.shape:
            loaded[k] = v
    if not loaded:
        raise ValueError(f"segment.encoder_weights {path}: no tensor matches encoder {type(model.encoder).__name__}")
    model.encoder.load_state_dict(loaded, strict=False)
    log.info("encoder weights from %s: %d of %d tensors", path, len(loaded), len(own))


def train(examples: dict, cfg: dict, threads: int = 1) -> tuple[torch.nn.Module, dict]:
    """Train on examples["train"]; examples["validate"] gives the Dice figures and, with `patience` > 0, early
    stopping (the best epoch's weights are kept). An example set is (images, masks) or, from real sources,
    (images, masks, known, boxed) (see `real_examples`)."""
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(usable_threads(threads))
    rng = np.random.default_rng(cfg["seed"])
    images, masks, *flags = examples["train"]
    x = to_input(images, cfg["input_size"])  # (N, 1, s, s)
    # area-downsampled masks, thresholded: smoother targets than nearest neighbour
    y = (F.interpolate(torch.from_numpy(masks).float(), size=x.shape[-2:], mode="area") > 0.5).float()
    known, boxed = (torch.from_numpy(flags[0]).clone(), torch.from_numpy(flags[1])) if flags else (None, None)
    if known is not None and not known[:, 2].any():
        # no source labels lesions: an untrained lesion channel would fire at random and make lesion ROIs
        # from noise, so it learns to stay empty (segment.train with a boxes or lesion-mask source trains it)
        log.info("no training image has lesion labels: the lesion channel is trained to stay empty")
        known[:, 2] = True
    model = build_unet(cfg)
    if cfg.get("encoder_weights"):
        load_encoder_weights(model, cfg["encoder_weights"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps_per_epoch = max(1, int(np.ceil(len(x) / cfg["batch_size"])))
    # a small mask table (a few dozen films) needs more passes than a large one: train at least min_steps
    epochs = max(cfg["epochs"], int(np.ceil(cfg.get("min_steps", 0) / steps_per_epoch)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=epochs * steps_per_epoch)
    # lesions are small: weight their positive pixels up so the loss does not ignore them
    pos_weight = torch.tensor([1.0, 1.0, cfg["lesion_pos_weight"]]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(cfg["seed"])
    validate = examples.get("validate")
    patience = cfg.get("patience", 0) if validate is not None else 0
    best = (-1.0, 0, None)  # validate lung Dice, epoch, weights
    t0, history, scores = time.perf_counter(), [], []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), cfg["batch_size"]):
            idx = torch.from_numpy(order[i : i + cfg["batch_size"]])
            xb, yb = x[idx], y[idx]
            if cfg.get("augment"):
                xb, yb = augment(xb, yb, g, None if boxed is None else ~boxed[idx])
            else:  # brightness / contrast jitter; geometry stays, so sides stay
                xb = (xb * (1 + 0.2 * (torch.rand(len(xb), 1, 1, 1) - 0.5)) + 0.1 * (torch.rand(len(xb), 1, 1, 1) - 0.5))
            logits = model(xb.clamp(0, 1))
            loss = loss_fn(logits, yb, pos_weight, *((known[idx], boxed[idx]) if known is not None else ()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
        line = f"epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}"
        if patience:
            v = evaluate(model, *validate[:2], cfg, *validate[2:])
            scores.append((v["dice_right_lung"] + v["dice_left_lung"]) / 2)
            line += f", validate lung Dice {scores[-1]:.4f}"
            if scores[-1] > best[0]:
                best = (scores[-1], epoch, copy.deepcopy(model.state_dict()))
        log.info("%s (%.0f s)", line, time.perf_counter() - t0)
        if patience and epoch - best[1] >= patience:
            log.info("early stop: validate lung Dice best %.4f at epoch %d", best[0], best[1] + 1)
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    metrics = {"train_seconds": time.perf_counter() - t0, "loss": history, "train_images": int(len(x)), "epochs": epochs}
    if scores:
        metrics.update(validate_lung_dice=scores, best_epoch=best[1] + 1)
    if validate is not None:
        metrics["validate"] = evaluate(model, *validate[:2], cfg, *validate[2:])
    return model.eval(), metrics


def save(model: torch.nn.Module, metrics: dict, cfg: dict, out: str | Path, metrics_out: str | Path) -> None:
    with atomic_path(out) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": cfg, "classes": list(CLASSES), "metrics": metrics},
                   tmp)
    write_text_atomic(metrics_out, json.dumps(metrics, indent=1, sort_keys=True) + "\n")


def run(shards: list[str], masks_dir: str, out: str | Path, metrics_out: str | Path, cfg: dict,
        norm_cfg: dict, threads: int = 1, studies: str | Path | None = None, fractions: dict | None = None) -> dict:
    """Train on `segment.train` sources joined to the ingested images, else on the synthetic ground truth
    (with the same augmentation, without early stopping: its validate split is a few dozen images)."""
    if cfg["train"]:
        examples = real_examples(cfg["train"], ingested_images(shards, studies), norm_cfg,
                                 fractions or {"train": 0.9, "validate": 0.1, "test": 0.0})
        held = examples.pop("test", None)
        if held is not None:
            log.info("%d mask images of test-split patients left out of training", len(held[0]))
    else:
        examples = synthetic_examples(shards, masks_dir)
        cfg = {**cfg, "patience": 0}
    if "train" not in examples:
        raise ValueError("no training images with ground-truth masks found")
    log.info("training on %d images, validating on %d", len(examples["train"][0]),
             len(examples.get("validate", ([],))[0]))
    model, metrics = train(examples, cfg, threads)
    save(model, metrics, cfg, out, metrics_out)
    log.info("validation: %s", metrics.get("validate"))
    return metrics
