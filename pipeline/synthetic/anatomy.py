"""Procedural frontal and lateral chest radiographs with ground-truth masks.

Images are built in attenuation space (0 = air, ~1 = bone), in a PA projection: the patient's right is on
the image's left. Coordinates are fractions of the image height (y) and width (x). The thorax fills the
frame as on a collimated clinical film. Each structure adds the attenuation of the path a ray takes through
it: soft tissue thickness falls off towards the body edge, the lungs remove tissue with a partial-volume
edge, and heart, diaphragm domes, breasts, scapulae, clavicles and ribs overlap the lung fields instead of
cutting holes in them. Vascular markings branch and taper from the hila.

A study's findings are drawn inside the anatomy (pleural fluid at the costophrenic angle or layering on a
supine film, a pneumothorax along the apex and the lateral wall, opacities in a lung zone), each with a
soft edge and a contrast set by a contrast-to-noise ratio (CNR) drawn from `CNR_RANGES`: the mean change
of attenuation over the finding's mask divided by the detector noise (`Film.noise`, the standard deviation
of the quantum noise `expose` adds). Each keeps the mask of the pixels it visibly changed.

Pixel sizes: noise, blur, CNR and thin structures (device lines, the pleural line, burnt-in text) are set per
pixel of a detector of `DETECTOR_ROWS` rows. A film drawn at fewer rows is that detector's image binned: its
pixel noise falls with the bin's side and a line thinner than a pixel adds its partial volume, so a film drawn
small and one drawn at full size and resampled down look alike (the pretraining cohort is drawn small). Rows that
divide DETECTOR_ROWS bin exactly; at other sizes grain and lines bin by the nearest whole factor, blur and the
pleural line scale by the exact ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..geometry import mask_box

SIDES = ("right", "left")  # patient's side; right lung is on the image's left
ZONES = ("upper", "middle", "lower")
DETECTOR_ROWS = 512  # native rows of the simulated detector: the pixel that noise and CNR refer to
LESION_FINDINGS = ("pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass", "atelectasis", "edema")

# CNR = mean attenuation change over the finding's mask / detector noise sigma. Ranges from the literature
# (see the README's "Synthetic radiographs" section): nodules sit near the Rose detection threshold, fluid
# and dense consolidation far above it, a pneumothorax is a subtle lucency with a thin pleural line.
CNR_RANGES = {
    "nodule": (1.5, 5.0),
    "mass": (4.0, 10.0),
    "consolidation": (3.0, 12.0),  # ground glass (low) to dense consolidation with air bronchograms (high)
    "atelectasis": (3.0, 8.0),
    "edema": (2.0, 6.0),
    "pleural_effusion": (6.0, 15.0),
    "pneumothorax": (1.0, 3.0),
}


@dataclass
class Finding:
    kind: str  # pleural_effusion, pneumothorax, consolidation, nodule, mass, atelectasis, edema, cardiomegaly, support_devices
    laterality: str  # right, left, bilateral, or "" (cardiomegaly, midline devices)
    zone: str  # upper, middle, lower, or ""
    size: str  # small, moderate, large
    mask: np.ndarray | None = None  # (H, W) bool: the pixels the finding changed (heart for cardiomegaly)
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in image pixels, exclusive end
    detail: str = ""  # device type and the like
    cnr: float = float("nan")  # |mean attenuation change over mask| / Film.noise; NaN for heart size, devices


@dataclass
class Film:
    """A drawn radiograph in attenuation units, with its ground-truth masks and findings."""
    density: np.ndarray  # (H, W) float32, 0 = air, higher = more attenuating
    right_lung: np.ndarray  # (H, W) bool (patient's right = image left)
    left_lung: np.ndarray
    findings: list[Finding] = field(default_factory=list)
    noise: float = 0.01  # detector (quantum) noise sigma in attenuation units, for `expose` and the CNR

    @property
    def lesion(self) -> np.ndarray:
        out = np.zeros_like(self.right_lung)
        for f in self.findings:
            if f.mask is not None and f.kind in LESION_FINDINGS:
                out |= f.mask
        return out


class Thorax:
    """One patient's anatomy: sizes drawn once, reused by every study of that patient."""

    def __init__(self, rng: np.random.Generator):
        self.aspect = rng.uniform(0.84, 1.0)  # columns / rows
        self.cx = 0.5 + rng.uniform(-0.02, 0.02)  # rotation shifts the midline
        self.mw = rng.uniform(0.045, 0.065)  # half width of the mediastinum
        # the lungs fill the collimated frame: their lateral walls sit a few percent inside its edges
        self.lung_w = self.aspect / 2 - self.mw - rng.uniform(0.05, 0.12)
        self.apex = rng.uniform(0.04, 0.12)
        self.base = rng.uniform(0.74, 0.88)  # costophrenic angles
        self.dome = rng.uniform(0.06, 0.11)
        self.body_hw = self.mw + self.lung_w + rng.uniform(0.03, 0.1)
        self.ctr = rng.uniform(0.38, 0.5)  # cardiothoracic ratio
        self.rib_phase = rng.uniform(0, 1)
        self.rib_gaps = rng.uniform(0.85, 1.15, 12)  # ribs are not evenly spaced
        self.rib_width = rng.uniform(0.016, 0.024)
        self.breasts = rng.random() < 0.4
        self.texture_seed = int(rng.integers(1 << 31))
        self.rotation = rng.uniform(-3.0, 3.0)  # degrees, in-plane: patients are rarely perfectly straight


def lung_masks(t: Thorax, X: np.ndarray, Y: np.ndarray, inspiration: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Masks of the two lung fields before the heart is cut out, and the geometry they came from."""
    base = t.apex + (t.base - t.apex) * inspiration
    geo = {"base": base}
    masks = []
    for side, s in (("right", -1), ("left", 1)):
        xi, xo = t.cx + s * t.mw, t.cx + s * (t.mw + t.lung_w)
        u = np.clip((X - xo) / (xi - xo), 0, 1)  # 0 at the lateral wall, 1 medially
        # the right hemidiaphragm sits higher than the left; the dome peaks near mid-lung, the lateral
        # costophrenic angle is the deepest point
        cp = base - (0.025 if side == "right" else 0.0)
        y_floor = cp - t.dome * np.clip(1 - ((u - 0.55) / 0.55) ** 2, 0, 1)
        tt = np.clip((Y - t.apex) / (cp - t.apex), 0, 1)
        # convex lateral wall from a rounded apex; the medial border hugs the mediastinum
        lateral = xi + s * t.lung_w * (0.28 + 0.72 * np.sin(np.pi / 2 * np.minimum(1.0, tt / 0.7)) ** 0.7)
        medial = xi + s * t.lung_w * 0.22 * (1 - tt) ** 4
        inside_x = (X - medial) * s >= 0
        inside_x &= (lateral - X) * s >= 0
        masks.append(inside_x & (Y >= t.apex) & (Y <= y_floor))
        geo[side] = {"xi": xi, "xo": xo, "cp": cp, "s": s, "floor": y_floor}
    return masks[0], masks[1], geo


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a.astype(np.float32), sigma)


def _band(dist: np.ndarray, half: float, cortex: float = 0.35) -> np.ndarray:
    """A bone seen edge-on: path length through a tube (brighter cortical rims), 0 outside."""
    r = np.clip(1 - (dist / half) ** 2, 0, 1)
    return np.sqrt(r) * (1 - cortex) + cortex * (r > 0) * (1 - np.sqrt(r)) * 2


def _vessels(rng: np.random.Generator, shape: tuple[int, int], px: float, hila: list[tuple[float, float, int]],
             reach: float) -> np.ndarray:
    """Branching vascular trees from the hila, thick and dense centrally, tapering towards the periphery.

    Each vessel is a random walk of `steps` steps; the walk runs on Python floats with each stretch's jitter drawn in
    one call (the generator gives the same numbers as one draw per step): about 40% of a pretraining film's drawing
    time saved, with the same pixels as the one-draw-per-step walk (tests/test_synthesize.py)."""
    canvas = np.zeros(shape, np.float32)
    steps, branch_after = 60, (20, 38)  # side branches may leave after these steps
    for hx, hy, s in hila:
        for _ in range(14):
            angle = rng.uniform(-0.45, 1.0) * np.pi * 0.5 + (np.pi / 2 if rng.random() < 0.5 else 0)
            dx, dy = float(s * abs(np.cos(angle))), float(np.sin(angle) * (1 if rng.random() < 0.6 else -1))
            x, y = float(hx), float(hy)
            length = float(reach * rng.uniform(0.5, 1.0))
            start = 0
            for end in (*[b + 1 for b in branch_after], steps):
                for k, (jx, jy) in zip(range(start, end), rng.normal(0, 0.12, (end - start, 2)).tolist()):
                    dx, dy = dx + jx, dy + jy
                    norm = math.sqrt(dx * dx + dy * dy) + 1e-9
                    dx, dy = dx / norm, dy / norm
                    x, y = x + dx * length / steps, y + dy * length / steps
                    r, c = int(y / px), int(x / px)
                    if 0 <= r < shape[0] and 0 <= c < shape[1]:
                        canvas[r, c] += (1 - k / steps) ** 1.5
                start = end
                if end < steps and rng.random() < 0.7:  # a side branch
                    jx, jy = rng.normal(0, 0.6, 2)
                    dx, dy = dx + jx, dy + jy
    return _blur(canvas, max(0.8, 0.0025 / px)) * 3.0


def render_frontal(t: Thorax, rng: np.random.Generator, rows: int, finding_kinds: list[str],
                   inspiration: float = 1.0, view: str = "PA") -> Film:
    """A PA/AP radiograph of thorax `t` with the listed findings placed in its anatomy.

    `view` AP is a supine portable film: magnified heart, higher clavicles, layering effusions. Every
    random draw of the anatomy comes before the findings', so adding a finding changes nothing else.
    """
    cols = int(round(rows * t.aspect))
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    Y, X = y / rows, x / rows  # both in units of image height
    cx = t.cx * cols / rows
    tt = Thorax.__new__(Thorax)
    tt.__dict__.update(t.__dict__)
    tt.cx = cx
    px = 1.0 / rows
    ap = view == "AP"
    cardiomegaly = "cardiomegaly" in finding_kinds
    big_ctr = rng.uniform(0.58, 0.68)  # drawn always, so the stream is the same with or without cardiomegaly
    noise = float(rng.uniform(0.006, 0.014))
    tex_rng = np.random.default_rng([tt.texture_seed, int(inspiration * 1e6)])

    right, left, geo = lung_masks(tt, X, Y, inspiration)
    diaphragm = np.where(X < cx, geo["right"]["floor"], geo["left"]["floor"])
    # heart: an ellipse sitting on the diaphragm, reaching further to the patient's left; AP magnifies it
    thoracic_w = 2 * (tt.mw + tt.lung_w)
    ctr = (big_ctr if cardiomegaly else tt.ctr) * (1.08 if ap else 1.0)
    hw = 1.1 * ctr * thoracic_w / 2  # the ellipse is clipped by the diaphragm: its widest part shows
    hcx, hcy = cx + 0.3 * hw, geo["base"] - 0.15
    heart = (((X - hcx) / hw) ** 2 + ((Y - hcy) / 0.2) ** 2 <= 1) & (Y < diaphragm + 0.03)
    # the ground-truth lungs run behind the heart to the domes, as expert lung masks of real films (V7) draw
    # them; findings are placed in the lung the heart does not cover
    whole = (right.copy(), left.copy())
    right &= ~heart
    left &= ~heart
    lungs = right | left

    # soft tissue: path length through an elliptic body, so it thins towards the edges
    body_u = np.clip(1 - ((X - cx) / tt.body_hw) ** 2, 0, 1)
    body = np.sqrt(body_u) * (Y > 0.0)
    texture = _blur(tex_rng.standard_normal((rows, cols)), 0.02 / px)
    texture /= texture.std() + 1e-6
    density = 0.03 + 0.46 * body * (1 + 0.02 * texture)
    # neck and shoulders above the apices: more tissue and the humeral heads at the upper corners
    for s in (-1, 1):
        sx = cx + s * (tt.body_hw - 0.02)
        d = np.hypot(X - sx, (Y - tt.apex - 0.02) * 1.1)
        shoulder = (np.abs(X - sx) < 0.12) & (Y < tt.apex + 0.08)
        density += 0.14 * _band(d, 0.075, 0.25) + 0.08 * _blur(shoulder, 0.02 / px)
    # lungs: air replaces tissue, with a partial-volume edge (the lung thins towards its outline)
    lung_depth = _blur(lungs, 0.008 / px) ** 0.7
    # the lung is thinner (more chest wall and breast in the beam) laterally and towards the bases, so its
    # periphery reads greyer than its centre; a mask, not a brightness step, marks where it ends
    reach = np.clip(np.abs(X - cx) / (tt.mw + tt.lung_w), 0, 1)
    low = np.clip((Y - geo["base"] + 0.25) / 0.25, 0, 1)
    lung_depth = lung_depth * (1 - rng.uniform(0.2, 0.5) * reach ** 3 - rng.uniform(0.1, 0.35) * low ** 2)
    density -= 0.12 * lung_depth
    # abdomen below the domes (liver on the right), stomach bubble under the left dome, bowel gas
    abdomen = _blur((Y > diaphragm) & (np.abs(X - cx) < tt.body_hw), 0.004 / px)
    # below the domes: liver and bowel, as dense as the heart on some films and greyer (more gas) on others
    density += rng.uniform(-0.03, 0.05) * abdomen
    lf = geo["left"]
    gx, gy = cx + 0.45 * (lf["xo"] - lf["xi"]) + tt.mw, float(geo["base"]) - tt.dome * 0.6 + 0.05
    bubble = _blur(((X - gx) / 0.06) ** 2 + ((Y - gy) / 0.035) ** 2 < 1, 0.005 / px) * (Y > diaphragm)
    density -= 0.08 * bubble
    for _ in range(int(rng.integers(4, 16))):
        bx, by = cx + rng.uniform(-0.3, 0.3), geo["base"] + rng.uniform(0.05, 0.25)
        gas = ((X - bx) / rng.uniform(0.02, 0.05)) ** 2 + ((Y - by) / rng.uniform(0.015, 0.03)) ** 2 < 1
        density -= 0.04 * _blur(gas, 0.004 / px) * (Y > diaphragm + 0.02)
    # breasts: soft-tissue shadows over the lower lung fields with a curved lower edge
    if tt.breasts:
        for s in (-1, 1):
            bx, by = cx + s * (tt.mw + 0.6 * tt.lung_w), geo["base"] - 0.02
            shadow = ((X - bx) / (0.55 * tt.lung_w)) ** 2 + ((Y - by) / 0.16) ** 2 < 1
            density += 0.07 * _blur(shadow & (Y > by - 0.12), 0.01 / px)
    # mediastinum and heart overlap the lungs' medial parts; trachea is a dark midline column
    mediastinum = (np.abs(X - cx) < tt.mw * (0.75 + 0.25 * (Y > 0.3))) & (Y < diaphragm)
    # the heart is soft tissue like the mediastinum: its outline, not its brightness, stands out
    density += 0.07 * _blur(mediastinum, 0.006 / px) + 0.025 * _blur(heart, 0.006 / px)
    density -= 0.05 * _blur((np.abs(X - cx) < 0.014) & (Y < 0.36), 0.003 / px)
    # hila and vascular markings, dense centrally and fading out
    hila = [(cx - tt.mw - 0.02, 0.42, -1), (cx + tt.mw + 0.02, 0.4, 1)]
    vessels = _vessels(tex_rng, (rows, cols), px, hila, 0.9 * tt.lung_w)
    hilum = sum(np.exp(-(((X - hx) / 0.035) ** 2 + ((Y - hy) / 0.06) ** 2)) for hx, hy, _ in hila)
    markings = np.clip(vessels, 0, 1.5) * 0.08 + 0.06 * hilum
    density += markings * lung_depth
    # spine: vertebral bodies behind the mediastinum
    spine = _band(np.abs(X - cx), 0.035, 0.4) * (0.7 + 0.3 * (np.cos(2 * np.pi * Y / 0.05) > -0.6))
    density += 0.025 * _blur(spine, 1.0)
    # ribs: posterior arcs from the spine (dense, with cortical rims), anterior arcs fainter and lower
    ribs = np.zeros_like(density)
    span = geo["base"] - tt.apex + 0.06
    gaps = np.cumsum(tt.rib_gaps[:10]) / tt.rib_gaps[:10].sum()
    for s in (-1, 1):
        dx = (X - cx) * s
        side = (dx > 0.03) & (dx < tt.mw + tt.lung_w + 0.04)
        for k in range(10):
            y0 = tt.apex - 0.04 + (gaps[k] - gaps[0] + tt.rib_phase * 0.03) * span
            centre = y0 - 0.06 * dx + 1.9 * dx ** 2
            width = tt.rib_width * (0.8 + 0.05 * k)
            ribs += _band(np.abs(Y - centre), width / 2) * side
            ant = y0 + 0.12 + 0.5 * np.clip(tt.mw + tt.lung_w - dx, 0, None) - 0.02 * k
            ribs += 0.45 * _band(np.abs(Y - ant), width * 0.45) * side * (dx > tt.mw + 0.05)
    density += 0.045 * _blur(np.clip(ribs, 0, 1.3), 0.7) * (Y < diaphragm + 0.05)
    # clavicles (higher on an AP film) and scapulae over the upper lateral lung fields
    cl_y = 0.1 + (tt.apex - 0.08) - (0.03 if ap else 0.0)
    for s in (-1, 1):
        xs = (X - cx) * s
        clav = _band(np.abs(Y - (cl_y + 0.35 * (xs - 0.15) ** 2 - 0.06 * xs)), 0.011) * (xs > 0.025) * (xs < 0.33)
        density += 0.11 * clav
        scap = ((xs - (tt.mw + tt.lung_w)) / 0.07) ** 2 + ((Y - (tt.apex + 0.17)) / 0.16) ** 2 < 1
        density += 0.05 * _blur(scap, 0.006 / px)
    # ECG electrodes on monitored patients: small bright rings
    if rng.random() < (0.5 if ap else 0.15):
        for _ in range(int(rng.integers(2, 5))):
            ex, ey = cx + rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.8)
            d = np.hypot(X - ex, Y - ey)
            density += 0.35 * ((d < 0.012) & (d > 0.008)) + 0.5 * (d < 0.003)

    rad = Film(density=density.astype(np.float32), right_lung=whole[0], left_lung=whole[1], noise=noise)
    zone_bounds = {}
    for side, mask in (("right", right), ("left", left)):
        ys = np.nonzero(mask.any(axis=1))[0]
        top, bottom = (ys.min(), ys.max() + 1) if len(ys) else (0, rows)
        zone_bounds[side] = np.linspace(top, bottom, 4)
    ctx = dict(rng=rng, X=X, Y=Y, px=px, cx=cx, t=tt, geo=geo, zones=zone_bounds, masks={"right": right, "left": left},
               heart=heart, markings=markings * lung_depth, texture=texture, supine=ap, noise=noise)
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


def _soft(core: np.ndarray, edge_px: float, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged opacity profile from a hard core, and its mask (where it is at least a quarter strong).
    The profile is cut off a few pixels beyond the mask, so the finding changes nothing far from its box."""
    profile = _blur(core, edge_px)
    mask = profile > 0.25
    if within is not None:
        mask &= within
        profile = profile * _blur(within, 0.7)
    return profile * ndimage.binary_dilation(mask, iterations=3), mask


def _apply(rad: Film, delta: np.ndarray, mask: np.ndarray, cnr: float, noise: float) -> float:
    """Scale `delta` so its mean over `mask` is cnr * noise (sign kept), add it; returns the CNR drawn."""
    mean = float(delta[mask].mean()) if mask.any() else 0.0
    if abs(mean) < 1e-9:
        return float("nan")
    rad.density = rad.density + (delta * (cnr * noise / abs(mean))).astype(np.float32)
    return cnr


def _draw_finding(rad: Film, kind: str, ctx: dict) -> Finding | None:
    rng, X, Y, px, noise = ctx["rng"], ctx["X"], ctx["Y"], ctx["px"], ctx["noise"]
    size = str(rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15]))
    scale = {"small": 0.0, "moderate": 0.5, "large": 1.0}[size]
    side = str(rng.choice(SIDES))
    lung = ctx["masks"][side]
    cnr = float(rng.uniform(*CNR_RANGES[kind])) if kind in CNR_RANGES else float("nan")

    if kind == "pleural_effusion":
        g = ctx["geo"][side]
        lung_rows = np.nonzero(lung.any(axis=1))[0]
        height = (lung_rows.max() - lung_rows.min()) * px if len(lung_rows) else 0.5
        h = height * (0.12 + 0.22 * scale)
        u = np.clip((X - g["xo"]) / (g["xi"] - g["xo"]), 0, 1)
        if ctx["supine"]:
            # layering posteriorly: a veil over the hemithorax that thickens towards the base, no meniscus
            level = g["cp"] - 2.2 * h
            core = np.clip((Y - level) / (g["cp"] - level), 0, 1) ** 1.5 * lung
            profile = core * _blur(lung, 0.7)
            mask = lung & (core > 0.25)
            profile = profile * ndimage.binary_dilation(mask, iterations=3)
        else:
            # meniscus: the fluid climbs the lateral chest wall; denser with depth
            level = g["cp"] - h - 0.06 * (1 - u) ** 2
            depth = np.clip((Y - level) / max(h, 1e-3), 0, None)
            profile, mask = _soft(Y > level, 0.006 / px, lung)
            profile = profile * (0.7 + 0.3 * np.clip(depth, 0, 1))
        cnr = _apply(rad, profile, mask, cnr, noise)
        zone = "lower"
    elif kind == "pneumothorax":
        # a rim along the apex and lateral wall: air without lung markings, and a thin visceral pleural line
        depth = int((0.02 + 0.035 * scale) / px)
        inner = ndimage.binary_erosion(lung, iterations=depth)
        g = ctx["geo"][side]
        lateral_half = (X - (g["xi"] + g["xo"]) / 2) * g["s"] > 0
        upper = Y < ctx["zones"][side][2] * px
        mask = lung & ~inner & (lateral_half | (Y < ctx["zones"][side][1] * px)) & upper
        line = (mask & ndimage.binary_dilation(inner, iterations=1)).astype(np.float32)
        gone = -ctx["markings"] * mask  # no lung, no vessels beyond the pleural line
        rim = mask & (line == 0)
        line_amp = 3.0 * noise * min(1.0, X.shape[0] / DETECTOR_ROWS)  # a line one detector pixel thick
        # extra lucency (less lung tissue overlapping) so the mean change over the mask is -cnr * noise
        need = cnr * noise + float((gone + line_amp * line)[mask].mean())
        lucency = max(0.0, need / max(float(rim[mask].mean()), 1e-6))
        rad.density = rad.density + (gone + line_amp * line - lucency * rim).astype(np.float32)
        cnr = abs(float((gone + line_amp * line - lucency * rim)[mask].mean())) / noise
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
            patch = _blur(rng.standard_normal(X.shape), 0.012 / px)
            patch = (patch - patch.mean()) / (patch.std() + 1e-6)
            blob = ((X - cx0) ** 2 + (Y - cy0) ** 2) / r**2 + patch * 0.35
            profile, mask = _soft(blob < 1, 0.01 / px, lung)
            profile = profile * (0.8 + 0.2 * np.clip(patch, -1, 1))  # graded, patchy density
            if cnr > 7:  # dense consolidation: air bronchograms, dark branching tubes inside it
                tubes = _vessels(rng, X.shape, px, [(cx0 - 0.02, cy0, 1 if side == "left" else -1)], r)
                profile = profile * (1 - 0.6 * np.clip(tubes, 0, 1))
        elif kind in ("nodule", "mass"):
            r = (0.014 + 0.01 * scale) if kind == "nodule" else (0.045 + 0.025 * scale)
            lobes = np.sin(5 * np.arctan2(Y - cy0, X - cx0) + rng.uniform(0, 6))
            wobble = 1 + (0.15 if kind == "mass" else 0.03) * lobes
            # a sphere's projected thickness, with a soft rim
            rr = np.hypot(X - cx0, Y - cy0) / (r * wobble)
            core = np.sqrt(np.clip(1 - rr**2, 0, 1))
            profile, mask = _soft(core, 0.003 / px)
            mask = mask | (rr < 1)
            profile = profile * ndimage.binary_dilation(mask, iterations=3)
        else:  # plate-like atelectasis: a thin tilted band
            theta = rng.uniform(-0.35, 0.35)
            along = (X - cx0) * np.cos(theta) + (Y - cy0) * np.sin(theta)
            across = -(X - cx0) * np.sin(theta) + (Y - cy0) * np.cos(theta)
            profile, mask = _soft((along / (0.06 + 0.04 * scale)) ** 2 + (across / 0.012) ** 2 < 1, 0.003 / px, lung)
        cnr = _apply(rad, profile, mask, cnr, noise)
        zone = _zone_of(mask, side, ctx["zones"]) or zone
    elif kind == "edema":
        t = ctx["t"]
        haze = np.zeros_like(X)
        for s in (-1, 1):
            haze = np.maximum(haze, np.exp(-(((X - (ctx["cx"] + s * (t.mw + 0.05))) / 0.09) ** 2
                                             + ((Y - 0.47) / 0.13) ** 2)))
        lungs = ctx["masks"]["right"] | ctx["masks"]["left"]
        mask = lungs & (haze > 0.45)
        profile = haze * lungs * (1 + 0.3 * np.clip(ctx["texture"], -2, 2))
        cnr = _apply(rad, profile, mask, cnr, noise)
        side, zone = "bilateral", "middle"
    elif kind == "support_devices":
        # a right internal jugular central venous catheter, tip at the cavoatrial junction
        detail = str(rng.choice(["central venous catheter", "endotracheal tube"]))
        if detail == "endotracheal tube":
            xs0, ys0, xs1, ys1 = ctx["cx"], 0.0, ctx["cx"], 0.2 + rng.uniform(0, 0.04)
        else:
            xs0, ys0, xs1, ys1 = ctx["cx"] - 0.12, 0.02, ctx["cx"] - 0.015, 0.34 + rng.uniform(0, 0.05)
        # three detector pixels wide: drawn on the detector's grid, then binned to the film's (partial volume)
        k = max(1, round(DETECTOR_ROWS / X.shape[0]))
        ts = np.linspace(0, 1, 200 * k)
        line = np.zeros((X.shape[0] * k, X.shape[1] * k), bool)
        rr = np.clip(((ys0 + (ys1 - ys0) * ts) / px * k).astype(int), 0, line.shape[0] - 1)
        cc = np.clip(((xs0 + (xs1 - xs0) * ts ** 0.7) / px * k).astype(int), 0, line.shape[1] - 1)
        line[rr, cc] = True
        cover = ndimage.binary_dilation(line, iterations=1).reshape(X.shape[0], k, X.shape[1], k).mean((1, 3))
        rad.density = rad.density + np.float32(0.3) * cover.astype(np.float32)
        return Finding(kind, "right" if detail != "endotracheal tube" else "", "", "", mask=cover > 0, detail=detail)
    else:
        raise ValueError(f"unknown finding {kind}")
    if not mask.any():
        return None
    return Finding(kind, side, zone, size, mask=mask, cnr=round(float(cnr), 3))


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


MARKERS = ("L", "R", "PORTABLE", "AP", "UPRIGHT", "SUPINE")


def _burn_in(img: np.ndarray, rng: np.random.Generator, value: float) -> np.ndarray:
    """Burnt-in annotations: a side marker in an upper corner and sometimes a line of text."""
    rows, cols = img.shape
    # drawn at half the detector's size, so markers are a few percent of the film at any size, as on real ones
    canvas = Image.new("L", (round(cols * DETECTOR_ROWS / rows) // 2, DETECTOR_ROWS // 2), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    letter = "L" if rng.random() < 0.85 else "R"
    # the marker names the side it is on: L on the image's right (the patient's left)
    xy = (canvas.width - 14 - int(rng.integers(0, 8)), int(rng.integers(2, 10))) if letter == "L" else \
        (int(rng.integers(2, 10)), int(rng.integers(2, 10)))
    draw.text(xy, letter, fill=255, font=font)
    if rng.random() < 0.4:
        draw.text((int(rng.integers(2, 20)), canvas.height - 14), str(rng.choice(MARKERS[2:])), fill=255, font=font)
    ink = np.asarray(canvas.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    return img * (1 - ink) + value * ink


def expose(density: np.ndarray, rng: np.random.Generator, bits: int, photometric: str,
           noise: float | None = None) -> np.ndarray:
    """Detector image: scatter, heel effect, blur, spatially correlated quantum noise of sigma `noise` per
    detector pixel (drawn when None), sometimes grid lines and burnt-in text; stored values in [0, 2^bits - 1]
    (MONOCHROME1 inverted). A film of fewer rows than the detector's is its binned image."""
    rows, cols = density.shape
    img = ndimage.gaussian_filter(density, rng.uniform(0.5, 1.2) * rows / DETECTOR_ROWS)  # in detector pixels
    # scatter: a broad haze that lowers contrast; heel effect: exposure falls off along the tube axis
    wide = ndimage.uniform_filter(ndimage.uniform_filter(img, rows // 8), rows // 8)
    img = img * (1 - (s := rng.uniform(0.05, 0.25))) + s * wide
    img = img * (1 + rng.uniform(-0.05, 0.05) * np.linspace(-1, 1, rows, dtype=np.float32)[:, None])
    # the detector's image processing compresses large-scale contrast (unsharp masking with a wide kernel, as
    # multi-scale processing does), so lungs read grey, not black, and mediastinum and abdomen do not glare
    img = img - rng.uniform(0.3, 0.6) * (ndimage.gaussian_filter(img, rows / 16) - img.mean())
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.03, 0.03)
    sigma = float(rng.uniform(0.006, 0.02)) if noise is None else noise
    # the grain is the detector's: drawn on its grid and binned to the film's, so a small film has the noise of
    # a big one resampled (correlated grain falls by less than the bin's side)
    k = max(1, round(DETECTOR_ROWS / rows))
    grain = ndimage.gaussian_filter(rng.standard_normal((rows * k, cols * k)).astype(np.float32), 0.6)
    grain = (grain * (sigma / (grain.std() + 1e-9))).reshape(rows, k, cols, k).mean((1, 3))
    img = img + grain
    if rng.random() < 0.2:  # an anti-scatter grid's lines
        img = img + 0.004 * np.sin(np.arange(cols, dtype=np.float32) * rng.uniform(1.5, 2.8))[None, :]
    img = _burn_in(img, rng, float(np.percentile(img, 99.9)) + 0.1)
    peak = 2**bits - 1
    # leave head-room so the window / VOI LUT, not clipping, decides the display range
    stored = np.clip(0.05 + 0.85 * np.clip(img, 0, 1.1) / 1.1, 0, 1) * peak
    if photometric == "MONOCHROME1":
        stored = peak - stored
    return np.rint(stored).astype(np.uint16)
