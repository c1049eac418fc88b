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

Streaming: an example is an index entry (a shard row or an image file, and its annotations); DataLoader
workers (on cores the training threads leave free, else the training process) read its pixels from the
normalize shard and decode its masks (a CheXmask row's RLE, a mask file) per batch, so memory does not grow
with the number of masks. The batch order, the augmentation and the losses are those of the in-memory path
(`real_examples`, arrays), which `train` still accepts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..io import atomic_path, spare_cores, usable_threads, write_text_atomic
from ..masks import Annotation, box_mask, preprocessed_to_original, read_sources
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


class SyntheticExamples(torch.utils.data.Dataset):
    """One split of the synthetic ground truth: (shard, row, image id) per image, read per item."""

    has_flags, lesion_labels = False, True

    def __init__(self, rows: list[tuple[Shard, int, str]], masks_dir: str | Path):
        self.rows, self.masks_dir = rows, masks_dir

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        shard, row, image_id = self.rows[i]
        image = norm.as_uint8(shard.f["image"][row])
        return image, truth_masks(self.masks_dir, image_id, image.shape[-1]), np.ones(3, bool), False


def synthetic_examples(shards: list[str | Path], masks_dir: str | Path) -> dict[str, SyntheticExamples]:
    """split -> the images of the normalize shards that have a synthetic mask (read when a batch needs them)."""
    by_split: dict[str, list] = {}
    for path in shards:
        shard = Shard(path)
        for row, (split, image_id) in enumerate(zip(decode(shard.f["split"][()]), shard.image_ids)):
            if (Path(masks_dir) / f"{image_id}.png").exists():
                by_split.setdefault(split, []).append((shard, row, image_id))
        shard.close()  # each DataLoader worker (or the training process) opens its own handle when it reads
    return {k: SyntheticExamples(v, masks_dir) for k, v in by_split.items()}


@dataclass
class Ingested:
    """The ingested, normalized images that mask sources join to."""

    # id -> image (pixels, or (Shard, row) read when needed), split, patient, transform, original (H, W)
    rows: dict[str, tuple[np.ndarray | tuple[Shard, int], str, str, np.ndarray, tuple[int, int]]]
    by_path: dict[str, str]  # resolved image_path -> image_id
    by_stem: dict[str, str]  # file stem -> image_id (unique stems only)
    patient_split: dict[str, str]


def ingested_images(shards: list[str | Path], studies: str | Path | None) -> Ingested:
    rows = {}
    for path in shards:
        shard = Shard(path)
        f = shard.f
        transforms, sizes = f["transform"][()], f["original_size"][()]
        for i, (image_id, split, patient) in enumerate(zip(shard.image_ids, decode(f["split"][()]),
                                                           decode(f["patient_id"][()]))):
            rows[image_id] = ((shard, i), split, patient, transforms[i], tuple(int(v) for v in sizes[i]))
        shard.close()
    by_path, stems = {}, {}
    if studies and Path(studies).exists():
        t = load_studies(studies)
        for image_id, image_path in zip(t["image_id"], t["image_path"]):
            by_path[str(Path(image_path).resolve())] = image_id
            stems.setdefault(Path(image_path).stem, []).append(image_id)
    by_stem = {k: v[0] for k, v in stems.items() if len(v) == 1}
    patient_split = {r[2]: r[1] for r in rows.values()}
    return Ingested(rows, by_path, by_stem, patient_split)


def _place(mask: np.ndarray, original: tuple[int, int], size: int, preprocessed: bool = False) -> np.ndarray | None:
    """A mask in an image's original grid (or CheXmask's Preprocessed one) -> the normalized grid; None when its
    grid is not the image's (a mask of another resolution is accepted when its aspect ratio matches to 1 %)."""
    if preprocessed:
        mask = preprocessed_to_original(mask, original)
    h, w = mask.shape
    if (h, w) != tuple(original) and abs(h / w - original[0] / original[1]) > 0.01 * original[0] / original[1]:
        return None
    return norm.letterbox_mask(mask.astype(np.uint8), size) > 0


@dataclass
class Example:
    """One image of a `segment.train` split, as an index entry: nothing decoded until it is loaded."""

    key: str
    image_id: str | None  # the ingested image, else
    image_path: str  # a file normalized when loaded
    anns: list[Annotation]


class MaskExamples(torch.utils.data.Dataset):
    """One split of `segment.train` examples; item i -> (image (S, S) uint8, masks (3, S, S) bool, known (3,),
    boxed), read from the normalize shard (or the image file) and the mask sources when asked for. An image
    whose file or masks turn out unusable yields known all False: it weighs nothing in the loss."""

    has_flags = True

    def __init__(self, examples: list[Example], ingested: Ingested, norm_cfg: dict):
        self.examples, self.ingested, self.norm_cfg = examples, ingested, norm_cfg
        # does any image of the split label lesions (masks or boxes)? (known before anything is decoded)
        self.lesion_labels = any(a.lesion is not None or a.boxes is not None for e in examples for a in e.anns)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return load_example(self.examples[i], self.ingested, self.norm_cfg)[:4]


def load_example(ex: Example, ingested: Ingested, norm_cfg: dict) -> tuple:
    """(image, masks, known, boxed, skipped): `skipped` names what was unusable (for the log)."""
    size = norm_cfg["size"]
    masks, known, boxed, skipped = np.zeros((3, size, size), bool), np.zeros(3, bool), False, []
    if ex.image_id is not None:
        image, _, _, transform, original = ingested.rows[ex.image_id]
        if not isinstance(image, np.ndarray):
            shard, row = image
            image = norm.as_uint8(shard.f["image"][row])
    else:
        try:
            image, transform, rad = norm.normalize_file(ex.image_path, {**norm_cfg, "bit_depth": 8})
        except norm.Rejected as e:
            log.warning("mask image %s not usable: %s", ex.image_path, e)
            return np.zeros((size, size), np.uint8), masks, known, boxed, ["unusable image"]
        original = rad.pixels.shape
    for a in ex.anns:
        layers = []
        if a.lungs is not None:
            layers += [(c, m) for c, m in zip((0, 1), a.lungs())]
        if a.lesion is not None:
            layers.append((2, a.lesion()))
        for c, m in layers:
            placed = _place(m, original, size, a.preprocessed)
            if placed is None:
                skipped.append("mask size differs from image")
                continue
            masks[c] |= placed
            known[c] = True
        if a.boxes is not None and not (known[2] and not boxed):  # a lesion mask beats boxes
            if len(a.boxes):
                masks[2] |= box_mask(norm.to_normalized(a.boxes, transform), (size, size))
                boxed = True
            known[2] = True
    return image, masks, known, boxed, skipped


def real_datasets(sources: list[dict], ingested: Ingested, norm_cfg: dict, fractions: dict,
                  cache_dir: str | Path | None = None) -> dict[str, MaskExamples]:
    """split -> the `segment.train` examples of that split, indexed (ids, offsets, paths), not decoded.

    An image takes the split of its ingested copy, else its patient's ingest split, else the table's `split`,
    else one by patient hash (`fractions`). Test-split images come back under "test" and never train.
    `cache_dir` receives gzipped CheXmask tables unpacked for random access."""
    by_key = read_sources(sources, cache_dir)
    out: dict[str, list[Example]] = {}
    not_ingested = 0
    for key, anns in sorted(by_key.items()):
        paths = [a.image_path for a in anns if a.image_path]
        image_id = key if key in ingested.rows else next(
            (ingested.by_path[p] for p in paths if p in ingested.by_path), ingested.by_stem.get(key))
        if image_id is not None:
            split = ingested.rows[image_id][1]
        elif paths:
            patient = next((a.patient_id for a in anns if a.patient_id), "") or key
            split = ingested.patient_split.get(patient) or next((a.split for a in anns if a.split), "") or \
                _hash_split(patient, fractions)
        else:
            not_ingested += 1
            continue
        out.setdefault(split, []).append(Example(key, image_id, "" if image_id is not None else paths[0], anns))
    if not_ingested:
        log.info("mask annotations skipped: %d images not ingested", not_ingested)
    return {k: MaskExamples(v, ingested, norm_cfg) for k, v in out.items()}


def real_examples(sources: list[dict], ingested: Ingested, norm_cfg: dict, fractions: dict,
                  cache_dir: str | Path | None = None) -> dict:
    """split -> (images (N, S, S) uint8, masks (N, 3, S, S) bool, known (N, 3) bool, boxed (N,) bool), every
    example of `real_datasets` decoded into memory (images with no usable mask left out). For small tables
    and scoring (`bench segment --table`); training streams."""
    out, skipped = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, data in real_datasets(sources, ingested, norm_cfg, fractions, cache_dir or tmp).items():
            items = []
            for ex in data.examples:
                *item, why = load_example(ex, ingested, norm_cfg)
                for w in why:
                    skipped[w] = skipped.get(w, 0) + 1
                if item[2].any():
                    items.append(item)
            if items:
                out[split] = tuple(np.stack([it[j] for it in items]) for j in range(4))
    if skipped:
        log.info("mask annotations skipped: %s", skipped)
    return out


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


class ArrayExamples(torch.utils.data.Dataset):
    """A split held in memory: (images, masks) or (images, masks, known, boxed) arrays."""

    def __init__(self, arrays: tuple):
        images, masks, *flags = arrays
        self.images, self.masks = images, masks
        self.has_flags = bool(flags)
        self.known, self.boxed = flags if flags else (np.ones((len(images), 3), bool), np.zeros(len(images), bool))
        self.lesion_labels = bool(self.known[:, 2].any())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i], self.known[i], self.boxed[i]


def as_dataset(data) -> torch.utils.data.Dataset:
    return data if isinstance(data, torch.utils.data.Dataset) else ArrayExamples(data)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker decodes; the training process computes


def _loader(data, batch_size: int, workers: int, batch_sampler=None) -> torch.utils.data.DataLoader:
    # an own generator: creating an iterator must not draw from the global torch RNG the training uses
    kw = dict(batch_sampler=batch_sampler) if batch_sampler is not None else dict(batch_size=batch_size)
    return torch.utils.data.DataLoader(data, num_workers=workers, persistent_workers=workers > 0,
                                       worker_init_fn=_one_thread if workers else None,
                                       generator=torch.Generator().manual_seed(0), **kw)


def evaluate(model: torch.nn.Module, data, cfg: dict, workers: int = 0,
             loader: torch.utils.data.DataLoader | None = None) -> dict[str, float]:
    """Dice on a split (a dataset or arrays), one batch in memory at a time. Lungs: pixels pooled over the
    images with both lung masks; lesion: over the images whose lesion is a mask (not boxes) of at least
    `min_lesion_area` pixels. Arrays without known / boxed flags count every image for every class."""
    data = as_dataset(data)
    model.eval()
    inter, total = np.zeros(3, np.int64), np.zeros(3, np.int64)
    images = with_lesion = scored_lesion = 0
    with torch.no_grad():
        for image, truth, known, boxed in loader or _loader(data, 16, workers):
            size = image.shape[-1]
            logits = F.interpolate(model(to_input(image.numpy(), cfg["input_size"])), size=(size, size),
                                   mode="bilinear", align_corners=False)
            pred, truth = (torch.sigmoid(logits) > cfg["threshold"]).numpy(), truth.numpy()
            known, boxed = known.numpy(), boxed.numpy()
            lungs = known[:, 0] & known[:, 1]
            big = truth[:, 2].reshape(len(truth), -1).sum(1) >= cfg["min_lesion_area"]
            lesion = big & known[:, 2] & ~boxed
            for c, rows in ((0, lungs), (1, lungs), (2, lesion)):
                inter[c] += np.logical_and(pred[rows, c], truth[rows, c]).sum()
                total[c] += pred[rows, c].sum() + truth[rows, c].sum()
            images += int(lungs.sum())
            with_lesion += int((big & lungs).sum())
            scored_lesion += int(lesion.sum())
    out = {f"dice_{c}": float(2 * inter[i] / total[i]) if total[i] else float("nan")
           for i, c in enumerate(CLASSES[:2])}
    out["dice_lesion"] = float(2 * inter[2] / total[2]) if scored_lesion and total[2] else float("nan")
    out["images"], out["images_with_lesion"] = images, with_lesion
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


def downsample_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    """(..., S, S) bool -> (..., size, size) float 0 / 1: area-downsampled and thresholded at 0.5, smoother targets
    than nearest neighbour. A whole factor f sums f x f uint8 pixels (exactly the area mean > 0.5; about a third
    of F.interpolate's time, which was a third of reading a training row)."""
    f, rest = divmod(masks.shape[-1], size)
    if rest or masks.shape[-2] != masks.shape[-1] or f * f > 255:
        m = torch.from_numpy(masks).float()
        return (F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=(size, size), mode="area") > 0.5
                ).float().reshape(*masks.shape[:-2], size, size)
    u = np.asarray(masks, bool).view(np.uint8)
    total = sum(u[..., i::f, j::f] for i in range(f) for j in range(f))
    return torch.from_numpy(2 * total.astype(np.uint16) > f * f).float()


class TrainInputs(torch.utils.data.Dataset):
    """Items at the U-Net's input size, made where they are read (a worker or the training process):
    (x (1, s, s), y (3, s, s) float, known (3,), boxed); masks as `downsample_masks`."""

    def __init__(self, data: torch.utils.data.Dataset, input_size: int):
        self.data, self.input_size = data, input_size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image, masks, known, boxed = self.data[i]
        x = to_input(image[None], self.input_size)
        y = downsample_masks(masks[None], x.shape[-1])
        return x[0], y[0], torch.from_numpy(np.asarray(known, bool)), torch.tensor(bool(boxed))


class InMemoryInputs(torch.utils.data.Dataset):
    """The in-memory path: every example converted to input size at once, before training."""

    def __init__(self, data: ArrayExamples, input_size: int):
        self.x = to_input(data.images, input_size)  # (N, 1, s, s)
        self.y = downsample_masks(data.masks, self.x.shape[-1])
        self.known, self.boxed = torch.from_numpy(data.known), torch.from_numpy(data.boxed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.known[i], self.boxed[i]


class EpochBatches(torch.utils.data.Sampler):
    """One epoch of batches per pass, in a fresh permutation drawn from `rng` (drawn in the training process,
    so the order does not depend on the number of workers)."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng

    def __len__(self) -> int:
        return max(1, int(np.ceil(self.n / self.batch_size)))

    def __iter__(self):
        order = self.rng.permutation(self.n)
        for i in range(0, self.n, self.batch_size):
            yield order[i : i + self.batch_size].tolist()


def train(examples: dict, cfg: dict, threads: int = 1, max_steps: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Train on examples["train"]; examples["validate"] gives the Dice figures and, with `patience` > 0, early
    stopping (the best epoch's weights are kept). A split is a dataset read per batch (`real_datasets`,
    `synthetic_examples`; up to `segment.num_workers` DataLoader workers read it, as many as there are cores
    the training threads leave free, else this process) or arrays held in memory:
    (images, masks) or (images, masks, known, boxed) (`real_examples`). `max_steps` stops early (benches)."""
    torch.manual_seed(cfg["seed"])
    threads = usable_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(cfg["seed"])
    data = as_dataset(examples["train"])
    streaming = not isinstance(data, ArrayExamples)
    # workers only on cores the training's threads leave free: a worker on a busy core preempts a thread that every
    # step then waits for (2 cores, 2 threads: with 2 workers 0.84-0.88x the in-memory path's samples/s, without
    # 0.90-0.94x)
    workers = min(cfg.get("num_workers", 2), spare_cores(threads)) if streaming else 0
    inputs = TrainInputs(data, cfg["input_size"]) if streaming else InMemoryInputs(data, cfg["input_size"])
    flags = data.has_flags
    if flags and not data.lesion_labels:
        # no source labels lesions: an untrained lesion channel would fire at random and make lesion ROIs
        # from noise, so it learns to stay empty (segment.train with a boxes or lesion-mask source trains it)
        log.info("no training image has lesion labels: the lesion channel is trained to stay empty")
    model = build_unet(cfg)
    if cfg.get("encoder_weights"):
        load_encoder_weights(model, cfg["encoder_weights"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    batches = EpochBatches(len(data), cfg["batch_size"], rng)
    steps_per_epoch = len(batches)
    # a small mask table (a few dozen films) needs more passes than a large one: train at least min_steps
    epochs = max(cfg["epochs"], int(np.ceil(cfg.get("min_steps", 0) / steps_per_epoch)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=epochs * steps_per_epoch)
    # lesions are small: weight their positive pixels up so the loss does not ignore them
    pos_weight = torch.tensor([1.0, 1.0, cfg["lesion_pos_weight"]]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(cfg["seed"])
    validate = examples.get("validate")
    validate = as_dataset(validate) if validate is not None else None
    patience = cfg.get("patience", 0) if validate is not None else 0
    loader = _loader(inputs, cfg["batch_size"], workers, batches)
    val_loader = _loader(validate, 16, workers) if validate is not None else None
    best = (-1.0, 0, None)  # validate lung Dice, epoch, weights
    t0, history, scores = time.perf_counter(), [], []
    steps, first_step_end, samples = 0, None, 0
    for epoch in range(epochs):
        model.train()
        total = seen = 0.0
        for xb, yb, kb, bb in loader:
            if flags and not data.lesion_labels:
                kb[:, 2] = True
            if cfg.get("augment"):
                xb, yb = augment(xb, yb, g, ~bb if flags else None)
            else:  # brightness / contrast jitter; geometry stays, so sides stay
                xb = (xb * (1 + 0.2 * (torch.rand(len(xb), 1, 1, 1) - 0.5)) + 0.1 * (torch.rand(len(xb), 1, 1, 1) - 0.5))
            logits = model(xb.clamp(0, 1))
            loss = loss_fn(logits, yb, pos_weight, *((kb, bb) if flags else ()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xb)
            seen += len(xb)
            steps += 1
            if first_step_end is None:  # worker start-up and the first batch are not timed
                first_step_end = time.perf_counter()
            else:
                samples += len(xb)
            if max_steps and steps >= max_steps:
                break
        history.append(total / seen)
        line = f"epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}"
        if patience:
            v = evaluate(model, validate, cfg, loader=val_loader)
            scores.append((v["dice_right_lung"] + v["dice_left_lung"]) / 2)
            line += f", validate lung Dice {scores[-1]:.4f}"
            if scores[-1] > best[0]:
                best = (scores[-1], epoch, copy.deepcopy(model.state_dict()))
        log.info("%s (%.0f s)", line, time.perf_counter() - t0)
        if patience and epoch - best[1] >= patience:
            log.info("early stop: validate lung Dice best %.4f at epoch %d", best[0], best[1] + 1)
            break
        if max_steps and steps >= max_steps:
            break
    if best[2] is not None:
        model.load_state_dict(best[2])
    elapsed = time.perf_counter() - (first_step_end or t0)
    metrics = {"train_seconds": time.perf_counter() - t0, "loss": history, "train_images": int(len(data)),
               "epochs": epochs, "steps": steps, "samples_s": samples / elapsed if samples else float("nan"),
               "num_workers": workers}
    if scores:
        metrics.update(validate_lung_dice=scores, best_epoch=best[1] + 1)
    if validate is not None:
        metrics["validate"] = evaluate(model, validate, cfg, loader=val_loader)
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
    # a gzipped CheXmask table is unpacked here for random access, and removed after training
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".unpacked-") as cache:
        if cfg["train"]:
            examples = real_datasets(cfg["train"], ingested_images(shards, studies), norm_cfg,
                                     fractions or {"train": 0.9, "validate": 0.1, "test": 0.0}, cache)
            held = examples.pop("test", None)
            if held is not None:
                log.info("%d mask images of test-split patients left out of training", len(held))
        else:
            examples = synthetic_examples(shards, masks_dir)
            cfg = {**cfg, "patience": 0}
        if "train" not in examples:
            raise ValueError("no training images with ground-truth masks found")
        log.info("training on %d images, validating on %d", len(examples["train"]),
                 len(examples["validate"]) if "validate" in examples else 0)
        model, metrics = train(examples, cfg, threads)
    save(model, metrics, cfg, out, metrics_out)
    log.info("validation: %s", metrics.get("validate"))
    return metrics
