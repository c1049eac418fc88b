"""Normalize: DICOM / PNG / JPG -> display-ready greyscale, letterboxed to `size` x `size`.

Conventions, written once here (as torchxrayvision does):
1. stored values -> modality LUT (RescaleSlope / RescaleIntercept, or a Modality LUT Sequence);
2. -> VOI: the VOI LUT Sequence, else WindowCenter / WindowWidth (LINEAR, LINEAR_EXACT, SIGMOID as the
   header says), else percentiles; or by config percentiles, min/max, or 2^BitsStored scaling;
3. -> [0, 1] with 1 = bright (bone); MONOCHROME1 is inverted after the VOI step;
4. -> aspect-preserving resize (Pillow, antialiased) and centred zero padding to `size` x `size`;
5. -> uint8 (or uint16 when `bit_depth` is 16).
The transform of step 4 is stored per image: `normalized = original * scale + offset`, per axis, in pixel
edge coordinates, so any box found later maps back to the original pixels (`to_original`).

Only technical tags leave the header: size, spacing, view, photometric, modality, bits stored. Files that
cannot be used go to the shard's `rejected` table with a reason; the shard is written all the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from ..io import progress, sha256_file
from ..shards import ShardWriter
from ..versions import STAGE_VERSIONS
from .ingest import load_studies

log = logging.getLogger("pipeline.normalize")
STAGE = "normalize"


class Rejected(Exception):
    """This image cannot be used; the message is the reason recorded in the shard (no header values)."""


@dataclass
class Radiograph:
    """One image after steps 1-3: display values in [0, 1] (1 = bright) and the technical header facts."""

    pixels: np.ndarray  # (H, W) float32 in [0, 1]
    photometric: str
    modality: str
    bits_stored: int
    pixel_spacing: tuple[float, float]  # (row, col) mm; NaN when unknown
    voi: str  # which branch produced the display values
    conversion: str = ""  # how a PNG / JPEG became one grey channel (e.g. "RGB greyscale to L"); "" if none


# ------------------------------------------------------------------------------------------ reading
def read_dicom(path: str | Path, cfg: dict) -> Radiograph:
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise Rejected("file not found") from None
    except InvalidDicomError:
        raise Rejected("not a DICOM file (no DICM preamble)") from None
    except Exception as e:  # truncated headers surface as struct/EOF errors
        raise Rejected(f"unreadable DICOM header ({type(e).__name__})") from None
    modality = str(ds.get("Modality", ""))
    if modality not in cfg["modalities"]:
        raise Rejected(f"modality {modality or 'missing'} not in normalize.modalities {cfg['modalities']}")
    if "PixelData" not in ds:
        raise Rejected("no pixel data")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise Rejected("no transfer syntax in file meta")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejected(f"colour or unsupported photometric interpretation {photometric or 'missing'}; "
                       "expected a greyscale radiograph")
    try:
        stored = ds.pixel_array
    except Exception as e:
        raise Rejected(f"cannot decode pixel data ({type(e).__name__}: {str(e)[:120]})") from None
    if stored.ndim == 3:  # multi-frame: the first frame is the radiograph
        stored = stored[0]
    if stored.ndim != 2:
        raise Rejected(f"unexpected pixel array shape {stored.shape}")
    try:
        pixels, voi = to_display(stored, ds, cfg)
    except Rejected:
        raise
    except Exception as e:  # a malformed LUT or window in the header
        raise Rejected(f"cannot apply modality / VOI LUT ({type(e).__name__}: {str(e)[:120]})") from None
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else (np.nan, np.nan)
    return Radiograph(pixels.astype(np.float32), photometric, modality, int(ds.BitsStored), spacing, voi)


def to_display(stored: np.ndarray, ds: Dataset, cfg: dict) -> tuple[np.ndarray, str]:
    """Steps 1-2: stored values -> [0, 1] display values (before MONOCHROME1 inversion)."""
    mode = cfg["voi"]
    if mode == "bits":
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        bits = int(ds.BitsStored)
        shift = 2 ** (bits - 1) if signed else 0
        return (stored.astype(np.float32) + shift) / np.float32(2**bits - 1), "bits"
    values = modality_lut(stored, ds)
    if mode == "voi_lut" and ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # a LUT is indexed by integer modality values
        index = values if values.dtype.kind in "ui" else np.rint(values).astype(np.int64)
        return apply_voi(index, ds).astype(np.float32) / (2**bits - 1), "voi_lut"
    values = values.astype(np.float32, copy=False)
    if mode in ("voi_lut", "window") and "WindowCenter" in ds and "WindowWidth" in ds:
        return window(values, ds), "window"
    if mode == "minmax":
        return _scale(values, float(values.min()), float(values.max())), "minmax"
    lo, hi = np.percentile(values, cfg["percentile"])
    return _scale(values, lo, hi), "percentile"


def modality_lut(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Step 1. Rescale slope / intercept in float32 (one pass); a Modality LUT Sequence through pydicom."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(stored, ds)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return stored
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Step 2 by window center / width, the DICOM functions (PS3.3 C.11.2.1.2-3) mapped onto [0, 1]."""
    def first(key: str) -> float:
        v = ds[key].value
        return float(v[0] if ds[key].VM > 1 else v)

    c, w = first("WindowCenter"), first("WindowWidth")
    func = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if func == "SIGMOID":
        if w <= 0:
            raise Rejected(f"invalid window width {w:g} for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - np.float32(c)) / np.float32(w)))
    if func == "LINEAR_EXACT":
        if w <= 0:
            raise Rejected(f"invalid window width {w:g} for LINEAR_EXACT")
        lo, span = c - w / 2, w
    else:
        if w < 1:
            raise Rejected(f"invalid window width {w:g} for LINEAR (must be >= 1)")
        lo, span = c - 0.5 - (w - 1) / 2, w - 1 if w > 1 else 1.0
    return np.clip((values - np.float32(lo)) / np.float32(span), 0.0, 1.0)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


# Greyscale saved as RGB: JPEG's chroma subsampling and rounding leave channel differences of a few levels;
# a coloured film (or a colour photograph) differs by tens of levels over much of the image. Between the two:
# a greyscale film with coloured marks drawn on it (arrows, circles, outlines, labels), which published
# collections are full of. Such a film is kept when the coloured pixels are a small fraction of it: marks cover
# a few percent (the widest we met: 2.8%); a colour figure's colour (a heat map or a mask over a lung, about a
# fifth of the film and more; a tinted photograph, all of it) covers far more.
GREY_TOLERANCE = 10  # levels of 255 that a channel may differ from the others at a grey pixel
GREY_OUTLIERS = 0.10  # fraction of pixels that may be coloured (beyond the tolerance): drawn annotations


def greyscale(arr: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """An (H, W, C) RGB / RGBA / LA array that holds a greyscale film -> (H, W) and how it was converted.

    Every pixel becomes the mean of its channels. A film with coloured pixels (more than GREY_TOLERANCE levels
    between its channels) at up to GREY_OUTLIERS of its area is a greyscale film with coloured annotations:
    kept, its conversion says "annotated" and the coloured fraction (the marks stay, as grey). Raises Rejected
    for more colour than that (a colour figure or photograph) or a transparent alpha channel."""
    conversion = []
    if arr.shape[-1] in (2, 4):  # LA / RGBA: the alpha must be opaque everywhere
        alpha, arr = arr[..., -1], arr[..., :-1]
        peak = np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1.0
        if alpha.min() < peak:
            raise Rejected(f"transparent image ({mode}, {np.mean(alpha < peak):.1%} of pixels not opaque)")
        conversion.append("opaque alpha dropped")
    if arr.shape[-1] == 3:
        c = arr.astype(np.int32)
        spread = np.maximum(np.maximum(c[..., 0], c[..., 1]), c[..., 2]) - np.minimum(
            np.minimum(c[..., 0], c[..., 1]), c[..., 2])
        tol = GREY_TOLERANCE * (257 if arr.dtype == np.uint16 else 1)
        coloured = float(np.mean(spread > tol))
        if coloured > GREY_OUTLIERS:
            raise Rejected(f"colour image ({mode}, channels differ by more than {GREY_TOLERANCE} levels at "
                           f"{coloured:.1%} of pixels, more than the {GREY_OUTLIERS:.0%} that coloured annotations "
                           "on a greyscale film may cover); expected a greyscale radiograph")
        grey = c.sum(-1) / 3.0  # channels agree: their mean, rounded, is the grey value
        conversion.append(f"{mode} greyscale to L (max channel difference {int(spread.max())})")
        if coloured > 0:
            conversion.append(f"annotated: {coloured:.2%} of pixels coloured, kept as grey")
        arr = np.rint(grey).astype(arr.dtype)
    else:
        arr = arr[..., 0]
    return arr, "; ".join(conversion)


def read_raster(path: str | Path) -> Radiograph:
    """PNG / JPG input: greyscale kept (also when stored as RGB / RGBA / palette, the conversion recorded),
    true colour rejected, 16-bit PNG scaled by its bit depth, EXIF orientation applied."""
    conversion = []
    try:
        with Image.open(path) as im:
            im.load()
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation
            if orientation not in (1, None):
                im = ImageOps.exif_transpose(im)
                conversion.append(f"EXIF orientation {orientation} applied")
            mode = im.mode
            if mode == "P":  # palette: its colours decide grey or colour
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                conversion.append("palette expanded")
            elif mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise Rejected("file not found") from None
    except Exception as e:
        raise Rejected(f"unreadable image file ({type(e).__name__})") from None
    if arr.ndim == 3:
        arr, how = greyscale(arr, mode)
        conversion.append(how)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    bits = 16 if arr.dtype in (np.uint16, np.int32) or mode.startswith("I") else 8
    pixels = arr.astype(np.float64) / (2**bits - 1)
    rad = Radiograph(np.clip(pixels, 0, 1).astype(np.float32), "MONOCHROME2", "", bits, (np.nan, np.nan), "bits")
    rad.conversion = "; ".join(c for c in conversion if c)
    return rad


def read_image(path: str | Path, cfg: dict) -> Radiograph:
    suffix = Path(path).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        return read_raster(path)
    return read_dicom(path, cfg)


# ------------------------------------------------------------------------------------------ geometry
def fit(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Letterbox geometry: resized height and width, top and left padding."""
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return nh, nw, (size - nh) // 2, (size - nw) // 2


def letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A label or bit mask (H, W) uint8 through the same letterbox as its image (nearest neighbour)."""
    nh, nw, top, left = fit(*mask.shape, size)
    out = np.zeros((size, size), dtype=np.uint8)
    out[top : top + nh, left : left + nw] = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.Resampling.NEAREST))
    return out


def letterbox(pixels: np.ndarray, size: int, bit_depth: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Resize (H, W) [0, 1] pixels into a size x size canvas, aspect kept, centred.

    Returns the image (size, size) uint8/uint16 and the transform [scale_y, scale_x, offset_y, offset_x].
    """
    h, w = pixels.shape
    nh, nw, top, left = fit(h, w, size)
    # Pillow's float resize is antialiased (the filter widens with the reduction factor)
    resized = np.asarray(Image.fromarray(pixels.astype(np.float32)).resize((nw, nh), Image.Resampling.BILINEAR))
    peak = 2**bit_depth - 1
    out = np.zeros((size, size), dtype=np.uint8 if bit_depth == 8 else np.uint16)
    out[top : top + nh, left : left + nw] = np.clip(np.rint(resized * peak), 0, peak)
    return out, np.array([nh / h, nw / w, top, left], dtype=np.float64)


def as_uint8(images: np.ndarray) -> np.ndarray:
    """Normalized images as 8-bit, whatever `normalize.bit_depth` wrote (models and crops read 8-bit)."""
    return images if images.dtype == np.uint8 else (images // 257).astype(np.uint8)


def to_original(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Boxes (M, 4) as x0, y0, x1, y1 in normalized pixels -> original pixels (edge coordinates)."""
    sy, sx, oy, ox = transform
    b = np.asarray(boxes, dtype=np.float64)
    return np.stack([(b[:, 0] - ox) / sx, (b[:, 1] - oy) / sy, (b[:, 2] - ox) / sx, (b[:, 3] - oy) / sy], axis=1)


def to_normalized(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """The inverse of `to_original`."""
    sy, sx, oy, ox = transform
    b = np.asarray(boxes, dtype=np.float64)
    return np.stack([b[:, 0] * sx + ox, b[:, 1] * sy + oy, b[:, 2] * sx + ox, b[:, 3] * sy + oy], axis=1)


# ------------------------------------------------------------------------------------------ stage
def normalize_file(path: str | Path, cfg: dict) -> tuple[np.ndarray, np.ndarray, Radiograph]:
    """One file through steps 1-5: (image, transform, radiograph). Raises Rejected."""
    rad = read_image(path, cfg)
    if min(rad.pixels.shape) < 2:
        raise Rejected(f"image too small {rad.pixels.shape}")
    image, transform = letterbox(rad.pixels, cfg["size"], cfg["bit_depth"])
    return image, transform, rad


def png_path(png_dir: str | Path, image_id: str) -> Path:
    """`png_dir/<image_id>.png`; an id that would leave the folder (ingest maps such ids, this is the second
    guard) is Rejected."""
    folder = Path(png_dir).resolve()
    path = (folder / f"{image_id}.png").resolve()
    if path.parent != folder:
        raise Rejected(f"image_id is not a safe file name (its PNG would be written outside {png_dir})")
    return path


def run(studies: str | Path, shard: str, out: str | Path, png_dir: str | Path | None, cfg: dict) -> dict:
    """Normalize every image of one shard; write the shard (and PNGs). Returns counts."""
    table = load_studies(studies, shard)
    rows: dict[str, list] = {k: [] for k in ("image_id", "study_id", "patient_id", "split", "view", "image",
                                             "transform", "original_size", "pixel_spacing", "photometric",
                                             "modality", "bits_stored", "voi", "conversion")}
    rejected: dict[str, list] = {"image_id": [], "reason": []}
    if png_dir:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    for rec in progress(table.itertuples(index=False), len(table), f"normalize {shard}", log):
        try:
            png = png_path(png_dir, rec.image_id) if png_dir else None
            image, transform, rad = normalize_file(rec.image_path, cfg)
        except Rejected as e:
            rejected["image_id"].append(rec.image_id)
            rejected["reason"].append(str(e))
            path = Path(rec.image_path)  # named first: what the user looks for (the id may be a hash)
            log.warning("rejected %s: %s (image_id %s, in %s)", path.name, e, rec.image_id, path.parent)
            continue
        for key, value in (("image_id", rec.image_id), ("study_id", rec.study_id), ("patient_id", rec.patient_id),
                           ("split", rec.split), ("view", rec.view), ("image", image), ("transform", transform),
                           ("original_size", rad.pixels.shape), ("pixel_spacing", rad.pixel_spacing),
                           ("photometric", rad.photometric), ("modality", rad.modality),
                           ("bits_stored", rad.bits_stored), ("voi", rad.voi),
                           ("conversion", rad.conversion)):
            rows[key].append(value)
        if png:
            Image.fromarray(image).save(png)
    size = cfg["size"]
    dtype = np.uint8 if cfg["bit_depth"] == 8 else np.uint16
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg, image_id=rows["image_id"],
                     upstream={"studies.csv": sha256_file(studies)}, attrs={"shard": shard}) as w:
        w.rows("image", np.array(rows["image"], dtype=dtype).reshape(-1, size, size))
        w.rows("transform", np.array(rows["transform"], dtype=np.float64).reshape(-1, 4))
        w.rows("original_size", np.array(rows["original_size"], dtype=np.int32).reshape(-1, 2))
        w.rows("pixel_spacing", np.array(rows["pixel_spacing"], dtype=np.float32).reshape(-1, 2))
        w.rows("bits_stored", np.array(rows["bits_stored"], dtype=np.int16))
        for key in ("study_id", "patient_id", "split", "view", "photometric", "modality", "voi", "conversion"):
            w.rows(key, rows[key])
        w.table("rejected", **rejected)
    counts = {"images": len(table), "kept": len(rows["image_id"]), "rejected": len(rejected["image_id"])}
    converted = sum(bool(c) for c in rows["conversion"])
    log.info("shard %s: %d images, %d kept, %d rejected, %d converted to one grey channel", shard,
             *counts.values(), converted)
    return counts
