"""Region prompts: `python -m pipeline describe IMAGE --box x0,y0,x1,y1 | --point x,y | --mask MASK.png`.

The user's region (in the original file's pixels; a mask is a PNG of the image's size, non-zero inside) is pooled
from the model's final patch tokens exactly as training pools an ROI: a box (and a point, taken as the patch it
falls in) through models.embed_images_and_rois, a mask by each patch's share of it (grounding.mask_weights). The
region's embedding is then read against the concept pool of L_distill (concepts.py): per regional finding the
probability it is present rather than absent, and where the region is (side and zone: the pool's softmax mass on
each). `--text "..."` scores a phrase against the region: its similarity, and for a negated phrase whether the
model thinks it grounds to nothing: the call of grounding.decide, the rule `ground` uses, with its margin from the
threshold. For a box or a mask the call is at that region. For a point it is at the regions `ground` decides
among: the image's ROIs (the same normalize, U-Net and crop, segment.weights or results/segmenter/unet.pt) that
hold the point, at the one most in favour (predict.roi_call); so a point inside the ROI `ground` decided at gets
`ground`'s call and margin exactly. (A point's own patch is a far smaller region than any ROI the model was trained
on; deciding there is why the two commands used to disagree near p 0.5.) Without a segmenter, or for a point no
ROI holds, the call falls back to the patch, and says so. First the checkpoint's provenance
(predict.provenance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import grounding, models
from .concepts import concept_pool
from .vocab import REGIONAL


@dataclass
class Region:
    embedding: np.ndarray  # (D,) L2-normalised
    patches: int  # patches with weight
    grid: int
    where: str  # the prompt, in words


def parse_pair(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise SystemExit(f"error: {what} takes {n} comma-separated numbers, got {text!r}")
    return values


def region(emb, image: np.ndarray, transform: np.ndarray, box=None, point=None, mask=None) -> Region:
    """The pooled embedding of one region of a normalized image (S, S) uint8; box / point in the original
    pixels, mask a boolean array of the original image's size."""
    from .stages.normalize import letterbox_mask, to_normalized

    model, size = emb.model, image.shape[-1]
    grid = int(round(model.visual.grid_size[0])) if hasattr(model.visual, "grid_size") else None
    if grid is None:
        grid = grounding.patch_features(model, image[None]).shape[1]
    model_size = models.image_size(model)
    if mask is not None:
        m = letterbox_mask(np.asarray(mask, np.uint8), size) > 0
        if not m.any():
            raise SystemExit("error: the mask has no pixel inside the image")
        w = grounding.mask_weights(m, grid)
        patches = grounding.patch_features(model, image[None])[0]
        return Region(grounding.pool_region(patches, w), int((w > 0).sum()), grid, f"mask of {int(m.sum())} pixels")
    if point is not None:
        (px, py, _, _), = to_normalized(np.array([[point[0], point[1], point[0], point[1]]]), transform)
        b = np.array(grounding.point_box(px * model_size / size, py * model_size / size, grid, model_size))
        b = b * size / model_size
        where = f"point {point[0]:g},{point[1]:g}"
    else:
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise SystemExit(f"error: --box needs x0 < x1 and y0 < y1, got {box}")
        b = to_normalized(np.array([box], float), transform)[0]
        where = "box " + ",".join(f"{v:g}" for v in box)
    b = np.clip(b, 0, size)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise SystemExit(f"error: the {where} lies outside the image")
    _, roi = emb.images_and_rois(image[None], np.zeros(1, np.int64), b[None])
    w = grounding.box_region_weights(tuple(b * model_size / size), grid, model_size)
    return Region(roi[0], int((w > 1e-6).sum()), grid, where)


def concepts(emb, r: Region) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(p(present) per regional finding, side mass, zone mass) of a region against the concept pool."""
    pool = concept_pool()
    logits = emb.scale * (emb.texts(pool.prompt) @ r.embedding)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    obs, neg = np.array(pool.observation), pool.negated
    findings = {}
    for o in REGIONAL:
        pos_l, neg_l = logits[(obs == o) & ~neg], logits[(obs == o) & neg]
        lse = lambda x: x.max() + np.log(np.exp(x - x.max()).sum())  # noqa: E731
        findings[o] = float(1.0 / (1.0 + np.exp(lse(neg_l) - lse(pos_l))))
    side = {s: float(p[np.array(pool.laterality) == s].sum()) for s in ("right", "left")}
    zone = {("whole lung" if z == "" else z): float(p[np.array(pool.zone) == z].sum())
            for z in ("", "upper", "middle", "lower")}
    return findings, side, zone


def score_text(emb, r: Region, text: str, at=None, transform: np.ndarray | None = None) -> str:
    """One line about a phrase: its similarity with the region and the presence call (grounding.phrase_call, the
    rule `ground` uses) with its margin from the threshold. `at`, a predict.RoiCall, is the call made at the ROIs
    holding a point (the regions `ground` decides among); else the call is at the region itself."""
    sim = float(emb.texts([text])[0] @ r.embedding)
    if grounding.is_normal_statement(text):
        return f'text "{text}": similarity {sim:.3f}; a normal statement names nothing to point at'
    if at is not None:
        return (f'text "{text}": similarity {sim:.3f}; call at {at.where(transform)}, the ROI holding the point '
                f"most in favour: {at.call.line()}")
    call = grounding.phrase_call(emb.texts, r.embedding, emb.scale, text)
    return f'text "{text}": similarity {sim:.3f}; {call.line()}'


def point_call(emb, image: str, cfg: dict, point: list[float], text: str, segmenter: str | None):
    """(the call for `text` at the ROIs holding `point` (original pixels), the prepared image) as `ground` makes
    it (predict.roi_call: the same normalize, U-Net and ROIs, the same rule), or (None, why not) when no segmenter
    is at hand or no ROI holds the point."""
    from .predict import prepare, roi_call, segmenter_path
    from .stages.normalize import to_normalized

    seg = Path(segmenter) if segmenter else segmenter_path(cfg)
    if not seg.is_file():
        return None, f"no segmenter at {seg}, so not at the ROIs `ground` decides among"
    rad = prepare(image, cfg, seg)
    x, y = to_normalized(np.array([[point[0], point[1], point[0], point[1]]], float), rad.transform)[0, :2]
    at = roi_call(emb, rad, text, (float(x), float(y)))
    return (at, rad) if at is not None else (None, "no ROI of the image holds the point")


def main(image: str, checkpoint: str, box: str | None, point: str | None, mask: str | None, text: str | None,
         config: str | None, model: str | None, segmenter: str | None = None) -> int:
    import torch
    from PIL import Image

    from . import config as config_mod
    from .predict import load_model, provenance
    from .stages.normalize import Rejected, as_uint8, normalize_file

    overrides = {}
    if config:
        import yaml

        overrides = yaml.safe_load(Path(config).read_text()) or {}
    cfg = config_mod.load(None, overrides)
    for what, p in (("checkpoint", checkpoint), ("image", image), ("mask", mask)):
        if p and not Path(p).is_file():
            raise SystemExit(f"error: {what} {p} is not a file")
    try:
        normalized, transform, source = normalize_file(image, cfg["normalize"])
    except Rejected as e:
        raise SystemExit(f"error: {image}: {e}")
    normalized = as_uint8(normalized[None])[0]
    m = None
    if mask:
        m = np.asarray(Image.open(mask).convert("L")) > 0
        if m.shape != source.pixels.shape:
            raise SystemExit(f"error: the mask is {m.shape[1]}x{m.shape[0]}, the image "
                             f"{source.pixels.shape[1]}x{source.pixels.shape[0]}")
    emb = load_model(checkpoint, model, cfg, torch.device("cpu"))
    r = region(emb, normalized, transform, box=parse_pair(box, 4, "--box") if box else None,
               point=parse_pair(point, 2, "--point") if point else None, mask=m)
    findings, side, zone = concepts(emb, r)
    for line in provenance(checkpoint, cfg):
        print(line)
    print(f"region: {r.where} ({r.patches} of {r.grid * r.grid} patches)")
    print(f"{'finding':22s} present  absent")
    for o, p in sorted(findings.items(), key=lambda t: -t[1]):
        print(f"{REGIONAL[o]:22s} {p:.3f}    {1 - p:.3f}")
    print("side: " + "  ".join(f"{k} {v:.3f}" for k, v in side.items()))
    print("zone: " + "  ".join(f"{k} {v:.3f}" for k, v in zone.items()))
    if text and point and not grounding.is_normal_statement(text):
        at, rad = point_call(emb, image, cfg, parse_pair(point, 2, "--point"), text, segmenter)
        if at is None:
            print(f"note: the call is at the point's own patch ({rad})")
            print(score_text(emb, r, text))
        else:
            print(score_text(emb, r, text, at, rad.transform))
    elif text:
        print(score_text(emb, r, text))
    return 0
