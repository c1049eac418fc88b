"""Dense grounding maps, region prompts, groundability, and the phrase-grounding metrics of MS-CXR.

Dense map (as BioViL's inference engine builds it): every final patch token of the vision tower goes through the
projection (`visual.proj`, the one the pooled image and ROI embeddings use), its cosine similarity with the
phrase embedding gives a grid x grid map, the map is smoothed on the patch grid with a Gaussian (sigma 1.5 patches)
and upsampled to the image (nearest), NaN outside the image content (letterbox padding). The ROI-level map
(evaluate.heat_map) paints each ROI with its softmax weight; the dense map shows what the model sees without the
anatomy prior.

Region prompts: a box, a point or a mask is pooled from the same patch tokens exactly as training pools an ROI
(each patch weighted by its share of the region: models.box_weights for a box; a mask's share per patch for a mask).

Metrics (REAL-DATA.md section 2, the BioViL / BioViL-T protocol as third-party code implements it), NaN ignored:
    CNR       |mean inside - mean outside| / sqrt(var inside + var outside), per box, the map clamped at 0 first
              (the `signed` variant skips the clamp); mean over a phrase's boxes;
    mIoU      the map binarised at 0.1, 0.2, ..., 0.5 against the union of the boxes, IoU averaged over thresholds;
    pointing  1 when the map's maximum lies inside a box (a plateau's centre, as evaluate.grounding_figures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import models

SIGMA = 1.5  # patches, BioViL's inference engine
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


# ------------------------------------------------------------------------------------------ patch tokens
@torch.no_grad()
def patch_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, grid, grid, D) float32 projected patch tokens (not normalized) of `images` (N, S, S) uint8: the tokens
    models.encode_image_and_rois pools under a box, each put through the projection. Pooling then projecting equals
    projecting then pooling (the projection is linear), so a region pooled from these is the training ROI."""
    spec, device = models.spec_of(model), next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        pixels = models.to_model_input(images[start : start + batch_size], spec).to(device)
        _, tokens, project = models.vision_tokens(model.visual, pixels)  # open_clip ViT or a timm ViT trunk
        grid = int(round(tokens.shape[1] ** 0.5))
        out.append(project(tokens).float().cpu().reshape(len(pixels), grid, grid, -1))
    dim = models.embed_dim(model)
    return torch.cat(out).numpy() if out else np.zeros((0, 1, 1, dim), np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------ dense map
def upsample(grid_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a (g, g) map to (H, W): pixel (y, x) takes patch (y * g // H, x * g // W)."""
    g_y, g_x = grid_map.shape
    ys = np.minimum(np.arange(shape[0]) * g_y // shape[0], g_y - 1)
    xs = np.minimum(np.arange(shape[1]) * g_x // shape[1], g_x - 1)
    return grid_map[ys][:, xs]


def similarity_map(patches: np.ndarray, text: np.ndarray, shape: tuple[int, int], sigma: float = SIGMA,
                   content: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The dense map of one image for one phrase: cosine similarity of each patch (g, g, D) with the text (D,),
    Gaussian-smoothed on the patch grid, upsampled to `shape`; NaN outside `content` (x0, y0, x1, y1), the image
    without its letterbox padding."""
    from scipy.ndimage import gaussian_filter

    sim = _normalize(patches) @ (text / max(np.linalg.norm(text), 1e-12))
    if sigma > 0:
        sim = gaussian_filter(sim, sigma=sigma, order=0)
    heat = upsample(sim.astype(np.float32), shape)
    if content is not None:
        x0, y0, x1, y1 = content
        keep = np.zeros(shape, bool)
        keep[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = True
        heat = np.where(keep, heat, np.nan).astype(np.float32)
    return heat


# ------------------------------------------------------------------------------------------ region prompts
def _overlap(n: int, grid: int) -> np.ndarray:
    """(n, grid): how much of pixel k (the interval [k, k + 1)) lies in patch i, patches n / grid pixels wide."""
    edges = np.arange(grid + 1) * (n / grid)
    k = np.arange(n)[:, None]
    return np.clip(np.minimum(k + 1, edges[None, 1:]) - np.maximum(k, edges[None, :-1]), 0, None)


def mask_weights(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid,) each patch's share of a boolean (H, W) mask in the pixels of the square model input image:
    the mask area inside the patch / the mask area, pixels split exactly across patch edges (as models.box_weights
    splits a box), so a mask of a box pools exactly like the box."""
    m = np.asarray(mask, np.float64)
    if not m.any():
        raise ValueError("the mask is empty")
    area = _overlap(m.shape[0], grid).T @ m @ _overlap(m.shape[1], grid)
    return (area / area.sum()).reshape(-1).astype(np.float32)


def box_region_weights(box: tuple[float, float, float, float], grid: int, size: int) -> np.ndarray:
    """(grid * grid,) the weights training gives a box's patches (models.box_weights); box in pixels of a
    size x size image."""
    return models.box_weights(torch.tensor([box], dtype=torch.float32), grid, size)[0].numpy()


def point_box(x: float, y: float, grid: int, size: int) -> tuple[float, float, float, float]:
    """A point prompt as the box of the patch it falls in."""
    step = size / grid
    px, py = min(int(x // step), grid - 1), min(int(y // step), grid - 1)
    return px * step, py * step, (px + 1) * step, (py + 1) * step


def pool_region(patches: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The L2-normalised region embedding: the weighted mean of the projected patch tokens (g, g, D)."""
    return _normalize(weights @ patches.reshape(-1, patches.shape[-1]))


# ------------------------------------------------------------------------------------------ groundability
_NEGATION = re.compile(r"^\s*(?:there\s+is\s+no|there\s+are\s+no|no\s+evidence\s+of|negative\s+for|free\s+of|"
                       r"without|no)\s+", re.I)
_NORMAL = re.compile(r"\b(?:clear|normal|unremarkable|no\s+acute)\b", re.I)


def negation_parts(phrase: str) -> tuple[str, str] | None:
    """(affirmed, negated) forms of a negated phrase ("no left pleural effusion" -> ("left pleural effusion",
    "no left pleural effusion")); None for a phrase that negates nothing."""
    m = _NEGATION.match(phrase)
    if not m:
        return None
    rest = phrase[m.end():].strip()
    return (rest, phrase.strip()) if rest else None


def is_normal_statement(phrase: str) -> bool:
    """A statement of normality names nothing to point at ("clear lungs", "normal heart size")."""
    return negation_parts(phrase) is None and bool(_NORMAL.search(phrase))


def presence(region: np.ndarray, positive: np.ndarray, negative: np.ndarray, scale: float) -> np.ndarray:
    """p(finding present) per region (R, D): the softmax of the region's similarity to the affirmed statement
    against its negation."""
    logit = scale * (region @ positive - region @ negative)
    return 1.0 / (1.0 + np.exp(-logit))


PRESENT_AT = 0.5  # p(present) at or above this: the affirmed finding is there (a logit difference of 0)


@dataclass
class Call:
    """One "is the finding there" decision (`decide`): the one rule `ground` and `describe` share."""

    affirmed: str  # "left pleural effusion"
    negated: str  # "no left pleural effusion"
    p: float  # p(affirmed rather than negated), `presence`
    logit: float  # scale * (cos(region, affirmed) - cos(region, negated)); p = sigmoid(logit)
    index: int = 0  # which of the regions decided

    @property
    def present(self) -> bool:
        return self.p >= PRESENT_AT

    @property
    def margin(self) -> float:
        """p - PRESENT_AT: how far from the threshold the call was (sign: present > 0 > absent)."""
        return self.p - PRESENT_AT

    def line(self) -> str:
        """The call as both commands print it."""
        verdict = f'present ("{self.affirmed}" preferred)' if self.present else f'absent ("{self.negated}" preferred)'
        return (f'p("{self.affirmed}") {self.p:.3f} against "{self.negated}", margin {self.margin:+.3f} from the '
                f"threshold {PRESENT_AT:g} (logit {self.logit:+.3f}): {verdict}")


def contrast(phrase: str) -> tuple[str, str]:
    """(affirmed, negated) statements a phrase is decided by: its own parts when it negates something, else the
    phrase against "no <phrase>"."""
    parts = negation_parts(phrase)
    return parts if parts is not None else (phrase.strip(), f"no {phrase.strip()}")


def decide(regions: np.ndarray, positive: np.ndarray, negative: np.ndarray, scale: float,
           affirmed: str = "", negated: str = "") -> Call:
    """The call for the region (D,) or, for regions (R, D), the region most in favour of the affirmed statement
    (a finding is there when some region holds it)."""
    regions = np.atleast_2d(regions)
    logits = scale * (regions @ positive - regions @ negative)
    best = int(np.argmax(logits))
    p = float(presence(regions[best : best + 1], positive, negative, scale)[0])
    return Call(affirmed, negated, p, float(logits[best]), best)


def phrase_call(texts, regions: np.ndarray, scale: float, phrase: str) -> Call:
    """`decide` for a phrase: its (affirmed, negated) statements (`contrast`) embedded together by `texts` (a
    list of strings -> (n, D) normalised embeddings, as Embedder.texts) and the call at the region of `regions`
    (D,) or (R, D) most in favour. The one code path of `ground` and `describe --text`."""
    affirmed, negated = contrast(phrase)
    pos, neg = texts([affirmed, negated])
    return decide(regions, pos, neg, scale, affirmed, negated)


# ------------------------------------------------------------------------------------------ metrics
def box_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """The union of boxes (x0, y0, x1, y1 in pixels, edges) as a boolean (H, W) mask."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        mask[max(0, int(round(y0))) : max(0, int(round(y1))), max(0, int(round(x0))) : max(0, int(round(x1)))] = True
    return mask


def cnr(heat: np.ndarray, inside: np.ndarray, signed: bool = False) -> float:
    """Contrast-to-noise ratio of a map for one region: |mu_A - mu_notA| / sqrt(var_A + var_notA), NaN pixels left
    out; the map clamped at 0 unless `signed`. NaN when either side has no finite pixel."""
    h = np.asarray(heat, np.float64)
    if not signed:
        h = np.where(np.isnan(h), np.nan, np.maximum(h, 0.0))
    a, b = h[inside], h[~inside]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    denom = np.sqrt(a.var() + b.var())
    diff = abs(a.mean() - b.mean())
    return float(diff / denom) if denom > 0 else (0.0 if diff == 0 else float("inf"))


def phrase_cnr(heat: np.ndarray, boxes, signed: bool = False) -> float:
    """Mean CNR over a phrase's boxes (each box against everything outside it)."""
    values = [cnr(heat, box_mask([b], heat.shape), signed) for b in np.asarray(boxes, np.float64).reshape(-1, 4)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def miou(heat: np.ndarray, truth: np.ndarray, thresholds=THRESHOLDS) -> float:
    """Mean over thresholds of the IoU of (map >= t) with the ground-truth mask; NaN pixels count as below."""
    h = np.nan_to_num(np.asarray(heat, np.float64), nan=-np.inf)
    ious = []
    for t in thresholds:
        pred = h >= t
        union = (pred | truth).sum()
        ious.append((pred & truth).sum() / union if union else 0.0)
    return float(np.mean(ious))


def pointing_game(heat: np.ndarray, truth: np.ndarray) -> float:
    """1.0 when the map's maximum (the centre of its plateau) lies in the truth mask; NaN for an all-NaN map."""
    h = np.asarray(heat, np.float64)
    if not np.isfinite(h).any():
        return float("nan")
    peak = np.nanmax(h)
    plateau = np.argwhere(h >= peak - 1e-6 * max(1.0, abs(peak)))
    cy, cx = plateau.mean(0).round().astype(int)
    return float(truth[cy, cx])


def phrase_figures(heat: np.ndarray, boxes) -> dict[str, float]:
    """Every metric of one map against a phrase's boxes."""
    truth = box_mask(boxes, heat.shape)
    if not truth.any():
        return {k: float("nan") for k in ("cnr", "cnr_signed", "miou", "pointing_game")}
    return {"cnr": phrase_cnr(heat, boxes), "cnr_signed": phrase_cnr(heat, boxes, signed=True),
            "miou": miou(heat, truth), "pointing_game": pointing_game(heat, truth)}


def class_mean(values: list[float], classes: list[str]) -> tuple[float, dict[str, float]]:
    """The MS-CXR average: mean per class (NaN left out), then the mean over classes; and the per-class means."""
    per: dict[str, list[float]] = {}
    for v, c in zip(values, classes):
        if np.isfinite(v):
            per.setdefault(c, []).append(v)
    means = {c: float(np.mean(v)) for c, v in sorted(per.items())}
    return (float(np.mean(list(means.values()))) if means else float("nan")), means
