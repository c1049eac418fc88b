"""Procedural frontal and lateral chest radiographs with ground-truth masks.

Images are built in attenuation space (0 = air, ~1 = bone), in a PA projection: the patient's right is on
the image's left. Coordinates are fractions of the image height (y) and width (x). A study's findings are
drawn inside the anatomy (pleural fluid at the costophrenic angle, a pneumothorax along the apex and the
lateral wall, opacities in a lung zone), and each keeps the mask of the pixels it changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..geometry import mask_box

SIDES = ("right", "left")  # patient's side; right lung is on the image's left
ZONES = ("upper", "middle", "lower")
LESION_FINDINGS = ("pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass", "atelectasis", "edema")


@dataclass
class Finding:
    kind: str  # pleural_effusion, pneumothorax, consolidation, nodule, mass, atelectasis, edema, cardiomegaly, support_devices
    laterality: str  # right, left, bilateral, or "" (cardiomegaly, midline devices)
    zone: str  # upper, middle, lower, or ""
    size: str  # small, moderate, large
    mask: np.ndarray | None = None  # (H, W) bool: the pixels the finding changed (heart for cardiomegaly)
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in image pixels, exclusive end
    detail: str = ""  # device type and the like


@dataclass
class Film:
    """A drawn radiograph in attenuation units, with its ground-truth masks and findings."""
    density: np.ndarray  # (H, W) float32, 0 = air, higher = more attenuating
    right_lung: np.ndarray  # (H, W) bool (patient's right = image left)
    left_lung: np.ndarray
    findings: list[Finding] = field(default_factory=list)

    @property
    def lesion(self) -> np.ndarray:
        out = np.zeros_like(self.right_lung)
        for f in self.findings:
            if f.mask is not None and f.kind in LESION_FINDINGS:
                out |= f.mask
        return out


def _smooth_step(d: np.ndarray, width: float) -> np.ndarray:
    """0 outside, 1 inside, with a soft edge of `width` (d = signed distance, positive inside)."""
    return np.clip(d / width + 0.5, 0.0, 1.0)


class Thorax:
    """One patient's anatomy: sizes drawn once, reused by every study of that patient."""

    def __init__(self, rng: np.random.Generator):
        self.aspect = rng.uniform(0.86, 1.0)  # columns / rows
        self.cx = 0.5 + rng.uniform(-0.02, 0.02)  # rotation shifts the midline
        self.mw = rng.uniform(0.045, 0.06)  # half width of the mediastinum
        self.lung_w = rng.uniform(0.25, 0.29) / self.aspect * 0.9
        self.apex = rng.uniform(0.1, 0.15)
        self.base = rng.uniform(0.7, 0.78)  # costophrenic angles
        self.dome = rng.uniform(0.07, 0.1)
        self.body_hw = self.mw + self.lung_w + rng.uniform(0.05, 0.08)
        self.ctr = rng.uniform(0.38, 0.48)  # cardiothoracic ratio
        self.rib_phase = rng.uniform(0, 1)
        self.texture_seed = int(rng.integers(1 << 31))
        self.rotation = rng.uniform(-4.0, 4.0)  # degrees, in-plane: patients are rarely perfectly straight


def lung_masks(t: Thorax, X: np.ndarray, Y: np.ndarray, inspiration: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Masks of the two lung fields before the heart is cut out, and the geometry they came from."""
    base = t.apex + (t.base - t.apex) * inspiration
    geo = {"base": base}
    masks = []
    for side, s in (("right", -1), ("left", 1)):
        xi, xo = t.cx + s * t.mw, t.cx + s * (t.mw + t.lung_w)
        u = np.clip((X - xo) / (xi - xo), 0, 1)  # 0 at the lateral wall, 1 medially
        # the right hemidiaphragm sits higher than the left
        cp = base - (0.02 if side == "right" else 0.0)
        y_floor = cp - t.dome * (1 - (1 - u) ** 2)
        tt = np.clip((Y - t.apex) / (cp - t.apex), 0, 1)
        lateral = xi + s * t.lung_w * np.minimum(1.0, 0.3 + 0.85 * np.sqrt(tt))
        medial = xi + s * t.lung_w * 0.3 * (1 - tt) ** 3
        inside_x = (X - medial) * s >= 0
        inside_x &= (lateral - X) * s >= 0
        masks.append(inside_x & (Y >= t.apex) & (Y <= y_floor))
        geo[side] = {"xi": xi, "xo": xo, "cp": cp, "s": s, "floor": y_floor}
    return masks[0], masks[1], geo


def render_frontal(t: Thorax, rng: np.random.Generator, rows: int, finding_kinds: list[str],
                   inspiration: float = 1.0) -> Film:
    """A PA/AP radiograph of thorax `t` with the listed findings placed in its anatomy."""
    cols = int(round(rows * t.aspect))
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    Y, X = y / rows, x / rows  # both in units of image height
    cx = t.cx * cols / rows
    tt = Thorax.__new__(Thorax)
    tt.__dict__.update(t.__dict__)
    tt.cx = cx
    px = 1.0 / rows
    cardiomegaly = "cardiomegaly" in finding_kinds

    right, left, geo = lung_masks(tt, X, Y, inspiration)
    # heart: an ellipse over the lower mediastinum, reaching further to the patient's left
    thoracic_w = 2 * (tt.mw + tt.lung_w)
    ctr = rng.uniform(0.58, 0.68) if cardiomegaly else tt.ctr
    hw = ctr * thoracic_w / 2
    hcx, hcy = cx + 0.3 * hw, geo["base"] - 0.12
    heart = ((X - hcx) / hw) ** 2 + ((Y - hcy) / 0.13) ** 2 <= 1
    right &= ~heart
    left &= ~heart
    lungs = right | left

    # body and soft tissue
    body_d = 1 - ((X - cx) / tt.body_hw) ** 2 - ((Y - 0.55) / 0.62) ** 4
    density = 0.04 + 0.42 * _smooth_step(body_d, 0.06) * (0.85 + 0.15 * np.clip(body_d, 0, 1))
    # below the diaphragm: liver and abdomen
    diaphragm = np.where(X < cx, geo["right"]["floor"], geo["left"]["floor"])
    abdomen = (Y > diaphragm) & (np.abs(X - cx) < tt.body_hw)
    density = np.where(abdomen, np.maximum(density, 0.5), density)
    # lungs: air, with vascular markings that fade towards the periphery
    tex_rng = np.random.default_rng(tt.texture_seed)
    markings = ndimage.gaussian_filter(tex_rng.standard_normal((rows, cols)).astype(np.float32), 2.5)
    markings = 0.5 + 0.5 * markings / (np.abs(markings).max() + 1e-6)
    hilum_dist = np.minimum(np.hypot(X - (cx - tt.mw - 0.04), Y - 0.45), np.hypot(X - (cx + tt.mw + 0.04), Y - 0.45))
    vascular = np.clip(1 - hilum_dist / 0.4, 0.15, 1) * 0.14 * markings
    lung_soft = ndimage.gaussian_filter(lungs.astype(np.float32), 2.0)
    density = density - 0.3 * lung_soft + vascular * lung_soft
    # mediastinum, heart, spine
    mediastinum = (np.abs(X - cx) < tt.mw * 0.9) & (Y > 0.05) & (Y < geo["base"])
    density = np.where(mediastinum | heart, np.maximum(density, 0.58), density)
    spine = np.abs(X - cx) < 0.035
    vertebrae = 0.04 * (0.5 + 0.5 * np.cos(2 * np.pi * Y / 0.045))
    density = density + ndimage.gaussian_filter(spine * (0.08 + vertebrae) * (Y > 0.02), 1.5)
    # ribs: posterior arcs running down and out from the spine, one set per side
    ribs = np.zeros_like(density)
    for side_sign in (-1, 1):
        dx = np.abs(X - cx) * (np.sign(X - cx) == side_sign)
        for k in range(10):
            y0 = tt.apex - 0.03 + (k + tt.rib_phase * 0.3) * (geo["base"] - tt.apex + 0.05) / 10
            centre = y0 + 0.9 * dx**2 * 2.2 - 0.05 * dx
            band = np.abs(Y - centre) < 0.011
            ribs += band * (dx > 0.03) * (dx < tt.mw + tt.lung_w + 0.02) * (Y < diaphragm + 0.04)
    density += 0.1 * np.clip(ribs, 0, 1)
    # clavicles
    for side_sign in (-1, 1):
        xs = X - cx
        clav = (np.abs(Y - (0.12 + 0.12 * (xs * side_sign) ** 2 * 3)) < 0.012) & (xs * side_sign > 0.03)
        clav &= xs * side_sign < 0.28
        density += 0.14 * clav

    rad = Film(density=density, right_lung=right, left_lung=left)
    zone_bounds = {}
    for side, mask in (("right", right), ("left", left)):
        ys = np.nonzero(mask.any(axis=1))[0]
        top, bottom = (ys.min(), ys.max() + 1) if len(ys) else (0, rows)
        edges = np.linspace(top, bottom, 4)
        zone_bounds[side] = edges
    ctx = dict(rng=rng, X=X, Y=Y, px=px, cx=cx, t=tt, geo=geo, zones=zone_bounds, masks={"right": right, "left": left},
               heart=heart, markings=markings)
    for kind in finding_kinds:
        if kind == "cardiomegaly":  # drawn above, as the heart's size
            continue
        f = _draw_finding(rad, kind, ctx)
        if f is not None:
            rad.findings.append(f)
    if cardiomegaly:
        rad.findings.append(Finding("cardiomegaly", "", "", "moderate" if ctr < 0.63 else "large", mask=heart))
    return _rotate(rad, tt.rotation)


def _rotate(rad: Film, degrees: float) -> Film:
    """Turn image and every mask together about the image centre; boxes follow the turned masks."""
    turn = lambda a, order: ndimage.rotate(a, degrees, reshape=False, order=order, mode="nearest")  # noqa: E731
    rad.density = turn(rad.density, 1).astype(np.float32)
    rad.right_lung = turn(rad.right_lung, 0)
    rad.left_lung = turn(rad.left_lung, 0)
    for f in rad.findings:
        f.mask = turn(f.mask, 0)
        f.box = mask_box(f.mask)
    rad.findings = [f for f in rad.findings if f.box is not None]
    return rad


def _zone_of(mask: np.ndarray, side: str, zones: dict) -> str:
    ys = np.nonzero(mask)[0]
    if len(ys) == 0:
        return ""
    return ZONES[int(np.clip(np.searchsorted(zones[side], ys.mean(), side="right") - 1, 0, 2))]


def _point_in_zone(ctx: dict, side: str, zone: str) -> tuple[float, float] | None:
    """A random lung pixel of `side` in `zone`, at least a few pixels from the lung edge."""
    mask = ctx["masks"][side]
    edges = ctx["zones"][side]
    zi = ZONES.index(zone)
    band = np.zeros_like(mask)
    band[int(edges[zi]) : int(edges[zi + 1])] = True
    core = ndimage.binary_erosion(mask, iterations=max(2, int(0.025 / ctx["px"]))) & band
    ys, xs = np.nonzero(core)
    if len(ys) == 0:
        return None
    i = ctx["rng"].integers(len(ys))
    return xs[i] * ctx["px"], ys[i] * ctx["px"]


def _draw_finding(rad: Film, kind: str, ctx: dict) -> Finding | None:
    rng, X, Y, px = ctx["rng"], ctx["X"], ctx["Y"], ctx["px"]
    size = str(rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15]))
    scale = {"small": 0.0, "moderate": 0.5, "large": 1.0}[size]
    side = str(rng.choice(SIDES))
    lung = ctx["masks"][side]

    if kind == "pleural_effusion":
        g = ctx["geo"][side]
        lung_rows = np.nonzero(lung.any(axis=1))[0]
        height = (lung_rows.max() - lung_rows.min()) * px if len(lung_rows) else 0.5
        h = height * (0.12 + 0.22 * scale)
        u = np.clip((X - g["xo"]) / (g["xi"] - g["xo"]), 0, 1)
        # meniscus: the fluid climbs the lateral chest wall
        level = g["cp"] - h - 0.05 * (1 - u) ** 2
        mask = lung & (Y > level)
        rad.density = np.where(mask, np.maximum(rad.density, 0.5 + 0.05 * (Y - level) / max(h, 1e-3)), rad.density)
        zone = "lower"
    elif kind == "pneumothorax":
        # a rim along the apex and lateral wall: air without lung markings, and a thin visceral pleural line
        depth = int((0.02 + 0.035 * scale) / px)
        inner = ndimage.binary_erosion(lung, iterations=depth)
        g = ctx["geo"][side]
        lateral_half = (X - (g["xi"] + g["xo"]) / 2) * g["s"] > 0
        upper = Y < ctx["zones"][side][2] * px
        mask = lung & ~inner & (lateral_half | (Y < ctx["zones"][side][1] * px)) & upper
        line = mask & ndimage.binary_dilation(inner, iterations=1)
        rad.density = np.where(mask, 0.1, rad.density)
        rad.density = np.where(line, 0.35, rad.density)
        zone = "upper"
    elif kind in ("consolidation", "nodule", "mass", "atelectasis"):
        zone = str(rng.choice(ZONES, p=[0.25, 0.3, 0.45] if kind in ("consolidation", "atelectasis") else None))
        if kind == "atelectasis" and zone == "upper":
            zone = "lower"
        centre = _point_in_zone(ctx, side, zone)
        if centre is None:
            return None
        cx0, cy0 = centre
        if kind == "consolidation":
            r = 0.045 + 0.035 * scale
            patch = ndimage.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32), 0.012 / px)
            blob = ((X - cx0) ** 2 + (Y - cy0) ** 2) / r**2 + (patch - patch.mean()) / (patch.std() + 1e-6) * 0.35
            mask = lung & (blob < 1)
            add = 0.24
        elif kind in ("nodule", "mass"):
            r = (0.014 + 0.01 * scale) if kind == "nodule" else (0.045 + 0.025 * scale)
            wobble = 1 + (0.15 if kind == "mass" else 0.03) * np.sin(5 * np.arctan2(Y - cy0, X - cx0) + rng.uniform(0, 6))
            mask = np.hypot(X - cx0, Y - cy0) < r * wobble
            add = 0.3
        else:  # plate-like atelectasis: a thin tilted band
            theta = rng.uniform(-0.35, 0.35)
            along = (X - cx0) * np.cos(theta) + (Y - cy0) * np.sin(theta)
            across = -(X - cx0) * np.sin(theta) + (Y - cy0) * np.cos(theta)
            mask = lung & ((along / (0.06 + 0.04 * scale)) ** 2 + (across / 0.012) ** 2 < 1)
            add = 0.26
        soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.2)
        rad.density = rad.density + add * soft
        zone = _zone_of(mask, side, ctx["zones"]) or zone
    elif kind == "edema":
        t = ctx["t"]
        haze = np.zeros_like(X)
        for s in (-1, 1):
            haze = np.maximum(haze, np.exp(-(((X - (ctx["cx"] + s * (t.mw + 0.05))) / 0.09) ** 2
                                             + ((Y - 0.47) / 0.13) ** 2)))
        lungs = ctx["masks"]["right"] | ctx["masks"]["left"]
        strength = 0.12 + 0.1 * scale
        rad.density = rad.density + strength * haze * lungs * (0.7 + 0.6 * ctx["markings"])
        mask = lungs & (haze > 0.45)
        side, zone = "bilateral", "middle"
    elif kind == "support_devices":
        # a right internal jugular central venous catheter, tip at the cavoatrial junction
        detail = str(rng.choice(["central venous catheter", "endotracheal tube"]))
        if detail == "endotracheal tube":
            xs0, ys0, xs1, ys1 = ctx["cx"], 0.0, ctx["cx"], 0.2 + rng.uniform(0, 0.04)
        else:
            xs0, ys0, xs1, ys1 = ctx["cx"] - 0.12, 0.02, ctx["cx"] - 0.015, 0.34 + rng.uniform(0, 0.05)
        n = 200
        ts = np.linspace(0, 1, n)
        line = np.zeros(X.shape, bool)
        rr = np.clip(((ys0 + (ys1 - ys0) * ts) / px).astype(int), 0, X.shape[0] - 1)
        cc = np.clip(((xs0 + (xs1 - xs0) * ts ** 0.7) / px).astype(int), 0, X.shape[1] - 1)
        line[rr, cc] = True
        line = ndimage.binary_dilation(line, iterations=1)
        rad.density = np.where(line, rad.density + 0.35, rad.density)
        return Finding(kind, "right" if detail != "endotracheal tube" else "", "", "", mask=line, detail=detail)
    else:
        raise ValueError(f"unknown finding {kind}")
    if not mask.any():
        return None
    return Finding(kind, side, zone, size, mask=mask)


def render_lateral(t: Thorax, rng: np.random.Generator, rows: int) -> np.ndarray:
    """A lateral view (left out by the default view filter): one lung field, spine behind, heart in front."""
    cols = int(round(rows * t.aspect))
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    Y, X = y / rows, x / rows
    w = cols / rows
    body = ((X - w / 2) / (0.36 * w)) ** 2 + ((Y - 0.55) / 0.6) ** 4 < 1
    density = 0.04 + 0.44 * body
    lung = ((X - w / 2) / (0.25 * w)) ** 2 + ((Y - 0.45) / 0.33) ** 2 < 1
    density -= 0.28 * ndimage.gaussian_filter(lung.astype(np.float32), 2)
    heart = ((X - w * 0.38) / (0.13 * w)) ** 2 + ((Y - 0.62) / 0.13) ** 2 < 1
    density = np.where(heart, 0.55, density)
    spine = np.abs(X - w * 0.78) < 0.045
    density += spine * (0.2 + 0.06 * np.cos(2 * np.pi * Y / 0.045))
    return density.astype(np.float32)


def expose(density: np.ndarray, rng: np.random.Generator, bits: int, photometric: str) -> np.ndarray:
    """Detector image: blur, quantum noise and gain; stored values in [0, 2^bits - 1] (MONOCHROME1 inverted)."""
    img = ndimage.gaussian_filter(density, rng.uniform(0.6, 1.5))
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.03, 0.03)
    img = img + rng.normal(0, rng.uniform(0.006, 0.02), img.shape)
    peak = 2**bits - 1
    # leave head-room so the window / VOI LUT, not clipping, decides the display range
    stored = np.clip(0.05 + 0.85 * np.clip(img, 0, 1.1) / 1.1, 0, 1) * peak
    if photometric == "MONOCHROME1":
        stored = peak - stored
    return np.rint(stored).astype(np.uint16)
