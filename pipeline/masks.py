"""Mask sources that train the U-Net (`segment.train`): CheXmask, mask tables, both-lungs masks, lesion boxes.

Every source becomes `Annotation`s in the ORIGINAL pixel grid of an image, keyed by the image's id (or its
file); `train_segmenter` joins them to the ingested images and letterboxes them with the image's transform.
Formats (see ../shared/REAL-DATA.md):
- `chexmask`: a CheXmask CSV / .csv.gz of one source dataset, `OriginalResolution` or `Preprocessed` (1024 x 1024).
  `Left Lung` / `Right Lung` are the patient's sides, RLE `start length` pairs with 1-based absolute starts into
  the row-major (Height, Width) array. Rows below `min_dice` on `Dice RCA (Mean)` are dropped. The table is
  indexed once (byte offset of each row) and a row's RLE is read and decoded only when its image is loaded, so
  memory does not grow with the number of masks.
- `masks`: image_path (or image_id), right_lung, left_lung, optional lesion: mask files, non-zero = inside.
- `lungs`: image_path (or image_id), lung_mask (or lung_mask_path): ONE mask for both lungs (V7 Labs style),
  split at the gap between the lungs; the patient's right lung is on the image's left.
- `boxes`: lesion boxes, NIH `BBox_List_2017.csv`, RSNA `stage_2_train_labels.csv`, or image,label,x,y,w,h.
Tables may carry `patient_id` and `split`: an image outside the ingested set takes its patient's ingest split.
"""

from __future__ import annotations

import csv
import gzip
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger("pipeline.masks")

# CheXmask's image id column per source dataset (the file's stem names the dataset)
CHEXMASK_ID = {"MIMIC-CXR-JPG": "dicom_id", "CheXpert": "Path", "ChestX-Ray8": "Image Index",
               "Padchest": "ImageID", "VinDr-CXR": "image_id", "CANDID-PTX": "ImageID"}
CHEXMASK_QUALITY = "Dice RCA (Mean)"
CHEXMASK_SIDE = 1024  # the square grid of CheXmask's `Preprocessed` files


@dataclass
class Annotation:
    """What one source knows about one image, in the image's original pixels."""

    key: str  # the ingested image_id this belongs to, or the stem of its file
    lungs: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None  # -> (right, left) bool (H, W)
    lesion: Callable[[], np.ndarray] | None = None  # -> bool (H, W)
    boxes: np.ndarray | None = None  # (M, 4) x0, y0, x1, y1; empty = known to have no lesion
    image_path: str = ""  # a file to normalize when the image is not among the ingested ones
    patient_id: str = ""
    split: str = ""
    source: str = ""
    preprocessed: bool = False  # lungs / lesion in CheXmask's Preprocessed 1024 x 1024 grid, not the original one
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- CheXmask RLE
def rle_decode(rle, height: int, width: int) -> np.ndarray:
    """CheXmask RLE -> bool (height, width). 1-based absolute starts, row-major; NaN / empty = no mask."""
    flat = np.zeros(height * width, dtype=bool)
    if isinstance(rle, str) and rle.strip():
        nums = np.array(rle.split(), dtype=np.int64)
        if len(nums) % 2:
            raise ValueError("RLE has an odd number of values")
        for start, length in zip(nums[0::2] - 1, nums[1::2]):
            flat[start : start + length] = True
    return flat.reshape(height, width)


def rle_encode(mask: np.ndarray) -> str:
    """bool (H, W) -> CheXmask RLE (the inverse of `rle_decode`)."""
    flat = np.concatenate([[False], np.asarray(mask, bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # 0-based start of each run, then its end
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def image_key(value: str) -> str:
    """The ingest image_id an id or path names: CheXpert paths as ingest spells them, else the file's stem."""
    value = str(value).strip()
    parts = Path(value).with_suffix("").parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("patient") and parts[i + 1].startswith("study"):
            return "_".join(parts[i : i + 3])  # patientN/studyN/viewN_frontal -> patientN_studyN_viewN_frontal
    return Path(value).stem if "." in Path(value).name else Path(value).name


def csv_records(f) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of each record of a CSV file opened in binary: a record ends at a newline outside
    quotes (CheXmask's `Landmarks` may be a numpy array printed over several lines inside quotes)."""
    offset, parts, quotes = f.tell(), [], 0
    for line in f:
        parts.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            record = b"".join(parts)
            yield offset, record
            offset += len(record)
            parts, quotes = [], 0


def parse_record(record: bytes) -> list[str]:
    return next(csv.reader([record.decode("utf-8").rstrip("\r\n")]))


@dataclass(frozen=True)
class CheXmaskRows:
    """Random access to the lung RLEs of a CheXmask table: one row read and decoded per call (picklable, so
    DataLoader workers read rows themselves)."""

    path: str  # a plain CSV (a .csv.gz is unpacked once next to the index, `read_chexmask`)
    right: int  # column numbers
    left: int

    def lungs(self, offset: int, nbytes: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            fields = parse_record(f.read(nbytes))
        return rle_decode(fields[self.right], height, width), rle_decode(fields[self.left], height, width)


def preprocessed_to_original(mask: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """A mask in CheXmask's Preprocessed grid -> the image's original (H, W) grid (nearest neighbour).

    The geometry is CheXmask's preparation code (ngaggion/CheXmask-Database DataPreparation/chexpert.py,
    mimic.py; DataPostprocessing/ReversePreprocessing/back_*.py), not a documented contract: the image is
    padded with zeros to a square of side max(H, W), centred (top (side - H) // 2, left (side - W) // 2), and
    resized to 1024 x 1024. ../shared/REAL-DATA.md states only "Preprocessed (1024x1024)" and "1024 space";
    the centring is read from those scripts and UNVERIFIED on the released files. For MIMIC-CXR-JPG the
    preparation first cut black borders (pixels <= 1) off each film and recorded them only in a paddings file
    that is not released with the masks: those masks are off by the border where a film has one, so prefer
    `OriginalResolution` for MIMIC."""
    h, w = original
    side = max(h, w)
    top, left, k = (side - h) // 2, (side - w) // 2, mask.shape[0] / side
    box = (left * k, top * k, (left + w) * k, (top + h) * k)
    im = Image.fromarray(np.asarray(mask, np.uint8) * 255)
    return np.asarray(im.resize((w, h), Image.Resampling.NEAREST, box=box)) > 127


_UNPACKED: tempfile.TemporaryDirectory | None = None


def _plain_csv(path: Path, cache_dir: str | Path | None) -> Path:
    """A .csv.gz cannot be read at a byte offset: unpack it once into `cache_dir` (a temporary folder)."""
    if not path.name.endswith(".gz"):
        return path
    if cache_dir is None:  # a folder of this process, removed when it exits
        global _UNPACKED
        _UNPACKED = _UNPACKED or tempfile.TemporaryDirectory(prefix="chexmask-")
        cache_dir = _UNPACKED.name
    out = Path(cache_dir) / path.name.removesuffix(".gz")
    if not out.exists():
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "rb") as src, open(out.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        out.with_suffix(".part").rename(out)
    return out


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


def read_chexmask(path: str | Path, min_dice: float = 0.7, dataset: str = "", preprocessed: bool | None = None,
                  cache_dir: str | Path | None = None) -> list[Annotation]:
    """Index a CheXmask table in one streaming pass: per kept row its id and byte offset, never its RLE.
    `preprocessed` (default: the file lies in a `Preprocessed` folder) decodes into the 1024 x 1024 grid."""
    path = Path(path)
    name = dataset or path.name.split(".")[0]
    if preprocessed is None:
        preprocessed = "Preprocessed" in path.parts
    plain = _plain_csv(path, cache_dir)
    out, total = [], 0
    with open(plain, "rb") as f:
        records = csv_records(f)
        header = [h.strip() for h in parse_record(next(records)[1])]
        id_col = CHEXMASK_ID.get(name) if CHEXMASK_ID.get(name) in header else \
            next((c for c in CHEXMASK_ID.values() if c in header), None)
        missing = [c for c in (id_col, "Right Lung", "Left Lung", "Height", "Width") if c is None or c not in header]
        if missing:
            raise ValueError(f"{path.name}: not a CheXmask table (lacks {missing}; dataset {name!r})")
        col = {c: header.index(c) for c in (id_col, "Right Lung", "Left Lung", "Height", "Width")}
        quality = header.index(CHEXMASK_QUALITY) if CHEXMASK_QUALITY in header else None
        rows = CheXmaskRows(str(plain), col["Right Lung"], col["Left Lung"])
        for offset, record in records:
            if not record.strip():
                continue
            fields = parse_record(record)
            total += 1
            if quality is not None and not _number(fields[quality]) >= min_dice:
                continue
            if preprocessed:
                h = w = CHEXMASK_SIDE
            else:
                h, w = _number(fields[col["Height"]]), _number(fields[col["Width"]])
                if np.isnan(h) or np.isnan(w):
                    continue  # no size, no grid to decode into (the Padchest subset)
            out.append(Annotation(image_key(fields[col[id_col]]), source="chexmask", preprocessed=preprocessed,
                                  lungs=partial(rows.lungs, offset, len(record), int(h), int(w))))
    if quality is not None:
        log.info("%s: %d of %d masks with %s >= %g", path.name, len(out), total, CHEXMASK_QUALITY, min_dice)
    if preprocessed and name == "MIMIC-CXR-JPG":
        log.warning("%s: CheXmask's Preprocessed MIMIC masks are relative to films whose black borders were cut "
                    "first (not recorded in the table); OriginalResolution is exact", path.name)
    return out


# ----------------------------------------------------------------------------------------------- mask tables
def read_mask_file(path: str | Path) -> np.ndarray:
    """A mask image as bool (H, W): non-zero (of any channel) = inside."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    return (arr.max(-1) if arr.ndim == 3 else arr) > (127 if arr.dtype == np.uint8 and arr.max() > 1 else 0)


def read_mask_pair(right: str, left: str) -> tuple[np.ndarray, np.ndarray]:
    return read_mask_file(right), read_mask_file(left)


def read_both_lungs(path: str) -> tuple[np.ndarray, np.ndarray]:
    return split_lungs(read_mask_file(path))


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One both-lungs mask -> (right, left): cut at the emptiest column of the middle half of the mask's width
    (the mediastinum), the one nearest the middle among ties. The patient's right lung is on the image's left."""
    mask = np.asarray(mask, bool)
    cols = np.flatnonzero(mask.any(0))
    if len(cols) == 0:
        return mask.copy(), mask.copy()
    lo, hi = cols[0], cols[-1] + 1
    a, b = lo + (hi - lo) // 4, lo + 3 * (hi - lo) // 4 + 1
    occupancy = mask[:, a:b].sum(0)
    candidates = np.flatnonzero(occupancy == occupancy.min()) + a
    centre = (lo + hi) / 2
    cut = int(candidates[np.argmin(np.abs(candidates + 0.5 - centre))])
    right, left = mask.copy(), mask.copy()
    right[:, cut:] = False
    left[:, :cut] = False
    return right, left


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _resolve(base: Path, p: str) -> str:
    return str(Path(p) if Path(p).is_absolute() else (base / p).resolve()) if p else ""


def _row_identity(rec: dict, base: Path) -> dict:
    image_path = _resolve(base, rec.get("image_path", ""))
    key = rec.get("image_id") or image_key(image_path)
    return {"key": key, "image_path": image_path, "patient_id": rec.get("patient_id", ""),
            "split": rec.get("split", "")}


def read_masks_table(path: str | Path) -> list[Annotation]:
    """`masks` format: image_path / image_id, right_lung, left_lung, optional lesion."""
    path = Path(path)
    t = _table(path)
    for col in ("right_lung", "left_lung"):
        if col not in t:
            raise ValueError(f"{path.name}: a masks table needs columns right_lung, left_lung (lacks {col})")
    out = []
    for rec in t.to_dict("records"):
        right, left = _resolve(path.parent, rec["right_lung"]), _resolve(path.parent, rec["left_lung"])
        lesion = _resolve(path.parent, rec.get("lesion", ""))
        out.append(Annotation(**_row_identity(rec, path.parent), source="masks",
                              lungs=partial(read_mask_pair, right, left) if right and left else None,
                              lesion=partial(read_mask_file, lesion) if lesion else None))
    return out


def read_lungs_table(path: str | Path) -> list[Annotation]:
    """`lungs` format: image_path / image_id and one both-lungs mask (lung_mask or lung_mask_path)."""
    path = Path(path)
    t = _table(path)
    col = next((c for c in ("lung_mask", "lung_mask_path") if c in t), None)
    if col is None:
        raise ValueError(f"{path.name}: a lungs table needs a lung_mask (or lung_mask_path) column")
    out = []
    for rec in t.to_dict("records"):
        mask = _resolve(path.parent, rec[col])
        if mask:
            out.append(Annotation(**_row_identity(rec, path.parent), source="lungs",
                                  lungs=partial(read_both_lungs, mask)))
    return out


# ----------------------------------------------------------------------------------------------- boxes
def read_boxes(path: str | Path) -> list[Annotation]:
    """Lesion boxes per image from NIH BBox_List_2017.csv, RSNA stage_2_train_labels.csv or
    image,label,x,y,w,h (original pixels). An RSNA patient with Target 0 is known to have no lesion."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        header = [h.strip() for h in f.readline().split(",")]
    if header[:2] == ["Image Index", "Finding Label"]:  # NIH: 9 header fields ("Bbox [x", "y", "w", "h]"), 6 per row
        raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype={0: str})
        t = pd.DataFrame({"image": raw[0], "label": raw[1].replace({"Infiltrate": "Infiltration"}),
                          "x": raw[2], "y": raw[3], "w": raw[4], "h": raw[5]})
    elif "patientId" in header and "Target" in header:  # RSNA pneumonia
        raw = pd.read_csv(path, dtype={"patientId": str})
        t = pd.DataFrame({"image": raw["patientId"], "label": np.where(raw["Target"] == 1, "Lung Opacity", ""),
                          "x": raw["x"], "y": raw["y"], "w": raw["width"], "h": raw["height"]})
    elif {"image", "x", "y", "w", "h"} <= set(header):
        t = pd.read_csv(path, dtype={"image": str})
    else:
        raise ValueError(f"{path.name}: not an NIH, RSNA or image,label,x,y,w,h box table (header {header[:6]})")
    out = []
    for image, g in t.groupby("image", sort=True):
        g = g.dropna(subset=["x", "y", "w", "h"])
        xywh = g[["x", "y", "w", "h"]].to_numpy(float).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out.append(Annotation(image_key(image), boxes=boxes, source="boxes",
                              extra={"labels": sorted(set(g.get("label", pd.Series(dtype=str)).dropna()) - {""})}))
    log.info("%s: boxes for %d images (%d with a lesion box)", path.name, len(out),
             sum(len(a.boxes) > 0 for a in out))
    return out


def box_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (M, 4) x0, y0, x1, y1 (pixel edges) -> bool mask of their union."""
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
        m[max(0, int(np.floor(y0))) : max(0, int(np.ceil(y1))), max(0, int(np.floor(x0))) : max(0, int(np.ceil(x1)))] = True
    return m


# ----------------------------------------------------------------------------------------------- sources
READERS = {"masks": lambda s, cache: read_masks_table(s["path"]), "lungs": lambda s, cache: read_lungs_table(s["path"]),
           "boxes": lambda s, cache: read_boxes(s["path"]),
           "chexmask": lambda s, cache: read_chexmask(s["path"], s.get("min_dice", 0.7), s.get("dataset", ""),
                                                      s.get("preprocessed"), cache)}


def detect_format(path: str | Path) -> str:
    """The format of a mask table from its header (for commands given a bare table)."""
    header = set(pd.read_csv(path, nrows=0).columns.str.strip())
    if {"Right Lung", "Left Lung"} <= header:
        return "chexmask"
    if {"right_lung", "left_lung"} <= header:
        return "masks"
    if header & {"lung_mask", "lung_mask_path"}:
        return "lungs"
    return "boxes"


def read_sources(sources: list[dict], cache_dir: str | Path | None = None) -> dict[str, list[Annotation]]:
    """Every source of `segment.train` -> key -> its annotations (several sources may annotate one image).
    Nothing is decoded here: an annotation reads its masks when called. `cache_dir` receives unpacked .csv.gz."""
    by_key: dict[str, list[Annotation]] = {}
    for src in sources:
        anns = READERS[src["format"]](src, cache_dir)
        log.info("segment.train %s %s: %d images", src["format"], src["path"], len(anns))
        for a in anns:
            by_key.setdefault(a.key, []).append(a)
    return by_key
