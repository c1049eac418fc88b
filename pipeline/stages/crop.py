"""Crop: boxes from the segment masks and the resized ROI crops the regional losses train on.

Per image, in this order: the whole image (its content, without letterbox padding), each lung, the upper /
middle / lower zone of each lung (thirds of that lung's height), and each lesion connected component of at
least `min_lesion_area` pixels (its side from the lung it overlaps, its zone from its centre row). Boxes get
`pad` on every side, grow to `min_size`, and stay inside the image. When no lungs were found, `fallback`
decides: no lung ROIs, or lung and zone boxes from an anatomical prior; every ROI records its `roi_source`.

Stored as CSR (group `rois`): roi_image (M, R, R) uint8, roi_box (M, 4) x0, y0, x1, y1 in normalized pixels,
roi_box_original (M, 4) in original image pixels (through the normalize transform), roi_kind, roi_laterality,
roi_zone, roi_source, roi_area.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..geometry import mask_box
from ..io import sha256_file
from ..shards import Shard, ShardWriter, csr_offsets
from ..versions import STAGE_VERSIONS
from .normalize import as_uint8, to_original

log = logging.getLogger("pipeline.crop")
STAGE = "crop"
ZONES = ("upper", "middle", "lower")
# the anatomical prior: lung boxes as fractions of the image content (x0, y0, x1, y1), PA view
PRIOR = {"right": (0.08, 0.12, 0.48, 0.8), "left": (0.52, 0.12, 0.92, 0.8)}


@dataclass
class Roi:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, normalized pixels, exclusive end
    kind: str  # image | lung | zone | lesion
    laterality: str  # right | left | ""
    zone: str  # upper | middle | lower | ""
    source: str  # mask | prior | image
    area: int = 0  # mask pixels behind the ROI (0 for image / prior boxes)


def zone_edges(lung: np.ndarray) -> np.ndarray | None:
    """Row edges [top, t1, t2, bottom] splitting a lung into thirds of its height."""
    rows = np.nonzero(lung.any(axis=1))[0]
    if len(rows) == 0:
        return None
    return np.linspace(rows.min(), rows.max() + 1, 4)


def zone_boxes(lung: np.ndarray) -> list[tuple[str, tuple[int, int, int, int], int]]:
    """(zone, box, area) for each third of the lung's height that holds lung pixels."""
    edges = zone_edges(lung)
    out = []
    if edges is None:
        return out
    for z, (a, b) in zip(ZONES, zip(edges[:-1], edges[1:])):
        part = np.zeros_like(lung)
        part[int(round(a)) : int(round(b))] = lung[int(round(a)) : int(round(b))]
        box = mask_box(part)
        if box is not None:
            out.append((z, box, int(part.sum())))
    return out


def lesion_rois(lesion: np.ndarray, right: np.ndarray, left: np.ndarray, min_area: int) -> list[Roi]:
    labels, n = ndimage.label(lesion)
    out = []
    for k in range(1, n + 1):
        comp = labels == k
        area = int(comp.sum())
        if area < min_area:
            continue
        overlap = {"right": int((comp & right).sum()), "left": int((comp & left).sum())}
        if max(overlap.values()) > 0:
            side = max(overlap, key=overlap.get)
        else:  # outside both masks: the nearer half of the image (patient's right = image left)
            side = "right" if np.nonzero(comp)[1].mean() < comp.shape[1] / 2 else "left"
        lung = right if side == "right" else left
        edges = zone_edges(lung)
        centre = np.nonzero(comp)[0].mean()
        zone = ZONES[int(np.clip(np.searchsorted(edges, centre, side="right") - 1, 0, 2))] if edges is not None else ""
        out.append(Roi(mask_box(comp), "lesion", side, zone, "mask", area))
    return out


def content_box(transform: np.ndarray, original_size: np.ndarray) -> tuple[float, float, float, float]:
    """The letterboxed image's content in normalized pixels (padding excluded)."""
    sy, sx, oy, ox = transform
    h, w = original_size
    return ox, oy, ox + w * sx, oy + h * sy


def prior_rois(content: tuple[float, float, float, float]) -> list[Roi]:
    x0, y0, x1, y1 = content
    W, H = x1 - x0, y1 - y0
    out = []
    for side, (a, b, c, d) in PRIOR.items():
        box = (x0 + a * W, y0 + b * H, x0 + c * W, y0 + d * H)
        out.append(Roi(box, "lung", side, "", "prior"))
        for i, z in enumerate(ZONES):
            top = box[1] + i * (box[3] - box[1]) / 3
            out.append(Roi((box[0], top, box[2], top + (box[3] - box[1]) / 3), "zone", side, z, "prior"))
    return out


def image_rois(right: np.ndarray, left: np.ndarray, lesion: np.ndarray, no_lungs: bool, transform: np.ndarray,
               original_size: np.ndarray, cfg: dict) -> list[Roi]:
    """All ROIs of one image, unpadded."""
    content = content_box(transform, original_size)
    rois = [Roi(content, "image", "", "", "image")]
    if no_lungs:
        return rois + (prior_rois(content) if cfg["fallback"] == "prior" else [])
    for side, lung in (("right", right), ("left", left)):
        rois.append(Roi(mask_box(lung), "lung", side, "", "mask", int(lung.sum())))
        rois += [Roi(box, "zone", side, z, "mask", area) for z, box, area in zone_boxes(lung)]
    return rois + lesion_rois(lesion, right, left, cfg["min_lesion_area"])


def pad_box(box, size: int, pad: float, min_size: int) -> tuple[float, float, float, float]:
    """Pad by a fraction of the box, grow to min_size about the centre, clip to the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    x0, x1, y0, y1 = x0 - pad * w, x1 + pad * w, y0 - pad * h, y1 + pad * h
    for lo, hi, axis in ((x0, x1, "x"), (y0, y1, "y")):
        if hi - lo < min_size:
            c = (lo + hi) / 2
            lo, hi = c - min_size / 2, c + min_size / 2
        lo, hi = max(0.0, lo), min(float(size), hi)
        if axis == "x":
            x0, x1 = lo, hi
        else:
            y0, y1 = lo, hi
    return x0, y0, x1, y1


def padded_rois(right: np.ndarray, left: np.ndarray, lesion: np.ndarray, no_lungs: bool, transform: np.ndarray,
                original_size: np.ndarray, size: int, cfg: dict) -> list[Roi]:
    """All ROIs of one image with the boxes the stage stores: padded, grown to min_size, inside the image (the
    whole-image ROI unpadded)."""
    rois = image_rois(right, left, lesion, no_lungs, transform, original_size, cfg)
    for r in rois:
        r.box = pad_box(r.box, size, 0.0 if r.kind == "image" else cfg["pad"], cfg["min_size"])
    return rois


def crop_resize(image: np.ndarray, boxes: np.ndarray, roi_size: int) -> np.ndarray:
    """Bilinear crops (M, R, R) uint8 of `image` (S, S) at float boxes (M, 4), via grid sampling."""
    if len(boxes) == 0:
        return np.zeros((0, roi_size, roi_size), np.uint8)
    size = image.shape[-1]
    img = torch.from_numpy(image.astype(np.float32)).view(1, 1, size, size).expand(len(boxes), 1, size, size)
    b = torch.from_numpy(boxes.astype(np.float32))
    t = (torch.arange(roi_size, dtype=torch.float32) + 0.5) / roi_size  # sample pixel centres
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (M, R) in pixels
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
    gx, gy = xs / size * 2 - 1, ys / size * 2 - 1  # align_corners=False convention
    grid = torch.stack([gx[:, None, :].expand(-1, roi_size, -1), gy[:, :, None].expand(-1, -1, roi_size)], dim=-1)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def run(normalized: str | Path, segmented: str | Path, out: str | Path, cfg: dict) -> dict:
    with Shard(normalized) as n, Shard(segmented) as s:
        if n.image_ids != s.image_ids:
            raise ValueError(f"{normalized} and {segmented} hold different images")
        ids = n.image_ids
        images, transforms, sizes = n.f["image"][()], n.f["transform"][()], n.f["original_size"][()]
        right, left, lesion = (s.f[k][()].astype(bool) for k in ("right_lung", "left_lung", "lesion"))
        no_lungs = s.f["no_lungs"][()]
    images = as_uint8(images)
    size = images.shape[-1] if len(images) else 0
    per_image, crops, boxes, original = [], [], [np.zeros((0, 4))], [np.zeros((0, 4))]
    for i in range(len(ids)):
        rois = padded_rois(right[i], left[i], lesion[i], bool(no_lungs[i]), transforms[i], sizes[i], size, cfg)
        b = np.array([r.box for r in rois], np.float64).reshape(-1, 4)
        per_image.append(rois)
        crops.append(crop_resize(images[i], b, cfg["roi_size"]))
        boxes.append(b)
        original.append(to_original(b, transforms[i]))
    flat = [r for rois in per_image for r in rois]
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg, image_id=ids,
                     upstream={"normalize": sha256_file(normalized), "segment": sha256_file(segmented)}) as w:
        w.rows("no_lungs", np.asarray(no_lungs, dtype=bool))
        w.ragged("rois", csr_offsets(len(r) for r in per_image),
                 roi_image=np.concatenate(crops) if crops else np.zeros((0, cfg["roi_size"], cfg["roi_size"]), np.uint8),
                 roi_box=np.concatenate(boxes).astype(np.float32),
                 roi_box_original=np.concatenate(original).astype(np.float32), roi_kind=[r.kind for r in flat],
                 roi_laterality=[r.laterality for r in flat], roi_zone=[r.zone for r in flat],
                 roi_source=[r.source for r in flat], roi_area=np.array([r.area for r in flat], np.int32))
    counts = {"images": len(ids), "rois": len(flat), "lesion_rois": sum(r.kind == "lesion" for r in flat),
              "prior_rois": sum(r.source == "prior" for r in flat)}
    log.info("%d images, %d ROIs (%d lesions, %d from the prior)", *counts.values())
    return counts
