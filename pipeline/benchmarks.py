"""The benchmarks the field reports, read from each dataset's official files (formats: REAL-DATA.md sections 2-5).

    ms_cxr             MS-CXR phrase grounding: `MS_CXR_Local_Alignment_*.csv`, one row per box in original pixels,
                       rows grouped by (path, label_text) into multi-box phrases; images under the MIMIC-CXR-JPG
                       root (`path` = files/p10/p10233088/s5.../<dicom_id>.jpg). CNR, mIoU, pointing game per
                       category and overall (per phrase, mean per category, mean over categories).
    rsna_pneumonia     `stage_2_train_labels.csv` (patientId,x,y,width,height,Target), boxes aggregated per patient,
                       `stage_2_train_images/<patientId>.dcm`. GLoRIA's split by default: sklearn train_test_split of
                       the patients (first-appearance order) with test_size 0.30, random_state 0, then the held-out
                       30% split 50/50 (random_state 0), the first half being test. Zero-shot AUROC / accuracy of
                       "pneumonia", grounding on the boxed positives.
    nih_bbox           ChestX-ray8 `BBox_List_2017.csv` (header `Image Index,Finding Label,Bbox [x,y,w,h],,,`: nine
                       header fields over six per row, so columns are taken by position); "Infiltrate" is read as
                       Infiltration; images found by name under the root. Grounding of the 8 findings.
    siim_pneumothorax  `train-rle.csv` (`ImageId`, ` EncodedPixels` with its leading space; `-1` = none; several rows
                       per image): relative 0-based run starts, column-major 1024 x 1024; DICOMs found by name.
                       Zero-shot AUROC of pneumothorax and grounding against the masks.
    chexpert_5x200     GLoRIA's recipe on CheXpert `train.csv`: NaN -> 0, frontal only, for each of the five
                       competition tasks the rows with that label 1 and the other 13 observations 0 (No Finding not
                       checked), 200 drawn per class with a seed (the original has none) and pinned. 5-way accuracy.
    mimic_5x200        the same recipe on MIMIC-CXR-JPG (`mimic-cxr-2.0.0-chexpert.csv[.gz]` study labels,
                       `mimic-cxr-2.0.0-metadata.csv[.gz]` PA / AP views, the first frontal image of a study). No
                       canonical file exists: ours is seeded and pinned.

The first read of a benchmark writes its manifest (the cases, the seed, the SHA-256 of every source file read);
a later read uses the manifest's cases and stops when a source file changed. Evaluation runs every case through the
workflow's own normalize (and, given a segmenter, segment and crop for the ROI-level map) and reports each figure
with a patient-level bootstrap interval.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, sha256_file
from .labels import OBSERVATIONS

log = logging.getLogger("pipeline.benchmarks")
NAMES = ("ms_cxr", "rsna_pneumonia", "nih_bbox", "siim_pneumothorax", "chexpert_5x200", "mimic_5x200")
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
# NIH finding -> the phrase a model is asked to ground
NIH_PHRASES = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Effusion": "pleural effusion",
               "Infiltration": "infiltration", "Mass": "mass", "Nodule": "nodule", "Pneumonia": "pneumonia",
               "Pneumothorax": "pneumothorax"}
SIIM_SIZE = 1024


class BenchmarkError(ValueError):
    """A benchmark's files are missing, malformed, or no longer match the pinned manifest."""


# ------------------------------------------------------------------------------------------ formats
def decode_siim_rle(rle: str, height: int = SIIM_SIZE, width: int = SIIM_SIZE) -> np.ndarray:
    """SIIM-ACR `EncodedPixels` -> (H, W) bool. Pairs of (gap, length): each start is 0-based and relative to the end
    of the previous run; the flat array is column-major (reshape (W, H), transpose). "-1" or empty = no mask."""
    mask = np.zeros(height * width, bool)
    values = str(rle).split()
    if not values or values == ["-1"]:
        return mask.reshape(width, height).T
    if len(values) % 2:
        raise BenchmarkError(f"RLE with an odd number of values ({len(values)})")
    pos = 0
    for gap, length in zip(map(int, values[0::2]), map(int, values[1::2])):
        pos += gap
        mask[pos : pos + length] = True
        pos += length
    return mask.reshape(width, height).T


def _find(root: Path, patterns: list[str], what: str) -> Path:
    for pattern in patterns:
        hits = sorted(root.rglob(pattern))
        if hits:
            return hits[-1]  # the highest version of a versioned name
    raise BenchmarkError(f"{what}: none of {patterns} under {root}")


def _index_files(root: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """name -> path of every file under root with one of the suffixes (images found by name, not by layout)."""
    return {p.name: p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()}


def read_ms_cxr(root: Path, images: Path | None = None) -> tuple[list[dict], list[Path]]:
    table = _find(root, ["MS_CXR_Local_Alignment_*.csv"], "ms_cxr")
    df = pd.read_csv(table, dtype={"dicom_id": str, "path": str})
    need = {"category_name", "label_text", "path", "x", "y", "w", "h"}
    if need - set(df.columns):
        raise BenchmarkError(f"{table.name}: missing columns {sorted(need - set(df.columns))}")
    base = images or root
    cases = []
    for (path, text), g in df.groupby(["path", "label_text"], sort=True):
        parts = Path(path).parts
        patient = next((p for p in parts if p.startswith("p") and len(p) > 3), parts[0])
        cases.append({"image": str(base / path), "patient": patient, "text": str(text),
                      "category": str(g["category_name"].iloc[0]),
                      "boxes": [[float(r.x), float(r.y), float(r.x + r.w), float(r.y + r.h)] for r in g.itertuples()]})
    return cases, [table]


def gloria_split(ids: list[str], part: str = "test") -> list[str]:
    """GLoRIA's RSNA split: 70% train, then the rest halved (sklearn train_test_split, random_state 0 both times)."""
    from sklearn.model_selection import train_test_split

    train, rest = train_test_split(ids, test_size=0.30, random_state=0)
    test, valid = train_test_split(rest, test_size=0.50, random_state=0)
    return {"train": train, "valid": valid, "test": test}[part]


def read_rsna(root: Path, split: str = "gloria") -> tuple[list[dict], list[Path]]:
    table = _find(root, ["stage_2_train_labels.csv"], "rsna_pneumonia")
    df = pd.read_csv(table, dtype={"patientId": str})
    if list(df.columns[:6]) != ["patientId", "x", "y", "width", "height", "Target"]:
        raise BenchmarkError(f"{table.name}: header {list(df.columns)} is not patientId,x,y,width,height,Target")
    per = {}
    for r in df.itertuples(index=False):
        case = per.setdefault(r.patientId, {"boxes": [], "label": 0})
        if r.Target == 1 and np.isfinite(r.x):
            case["boxes"].append([float(r.x), float(r.y), float(r.x + r.width), float(r.y + r.height)])
            case["label"] = 1
    ids = list(per)
    if split == "gloria":
        ids = gloria_split(ids)
    folder = table.parent / "stage_2_train_images"
    cases = [{"image": str(folder / f"{p}.dcm"), "patient": p, "label": per[p]["label"], "text": "pneumonia",
              "category": "Pneumonia", "boxes": per[p]["boxes"]} for p in ids]
    return cases, [table]


def read_nih_bbox(root: Path) -> tuple[list[dict], list[Path]]:
    table = _find(root, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], "nih_bbox")
    df = pd.read_csv(table, dtype=str)
    if not str(df.columns[2]).startswith("Bbox") or len(df.columns) < 6:
        raise BenchmarkError(f"{table.name}: header {list(df.columns)} is not the BBox_List_2017 one")
    df = df.iloc[:, :6]  # nine header fields over six per row: take the columns by position
    df.columns = ["image", "finding", "x", "y", "w", "h"]
    df["finding"] = df["finding"].str.strip().replace({"Infiltrate": "Infiltration"})
    files = _index_files(root, (".png",))
    cases = []
    for (image, finding), g in df.groupby(["image", "finding"], sort=True):
        if finding not in NIH_PHRASES:
            log.warning("nih_bbox: unknown finding %r on %s, skipped", finding, image)
            continue
        boxes = [[float(r.x), float(r.y), float(r.x) + float(r.w), float(r.y) + float(r.h)] for r in g.itertuples()]
        cases.append({"image": str(files.get(image, root / "images" / image)), "patient": image.split("_")[0],
                      "text": NIH_PHRASES[finding], "category": finding, "boxes": boxes})
    return cases, [table]


def read_siim(root: Path) -> tuple[list[dict], list[Path]]:
    table = _find(root, ["train-rle.csv", "train-rle.csv.gz", "stage_2_train.csv"], "siim_pneumothorax")
    df = pd.read_csv(table, dtype=str)
    df.columns = [c.strip() for c in df.columns]  # " EncodedPixels" has a leading space
    if not {"ImageId", "EncodedPixels"} <= set(df.columns):
        raise BenchmarkError(f"{table.name}: header {list(df.columns)} lacks ImageId, EncodedPixels")
    files = _index_files(root, (".dcm",))
    cases = []
    for image, g in df.groupby("ImageId", sort=True):
        runs = [str(v).strip() for v in g["EncodedPixels"] if str(v).strip() not in ("-1", "", "nan")]
        cases.append({"image": str(files.get(f"{image}.dcm", root / f"{image}.dcm")), "patient": image,
                      "label": int(bool(runs)), "text": "pneumothorax", "category": "Pneumothorax", "rle": runs})
    return cases, [table]


def five_by_200(labels: pd.DataFrame, seed: int, per_class: int = 200) -> list[tuple[int, str]]:
    """GLoRIA's 5x200 selection on a label table (the 14 observation columns, NaN as 0): for each competition task,
    rows with it 1 and every other observation but No Finding 0; `per_class` drawn with `seed`."""
    values = labels[OBSERVATIONS].fillna(0)
    others = [o for o in OBSERVATIONS if o != "No Finding"]
    rng = np.random.default_rng(seed)
    out = []
    for task in FIVE:
        keep = (values[task] == 1) & (values[[o for o in others if o != task]] == 0).all(axis=1)
        rows = np.flatnonzero(keep.to_numpy())
        out += [(int(i), task) for i in np.sort(rng.permutation(rows)[:per_class])]
    return out


def _chexpert_image(root: Path, path: str) -> Path:
    """CheXpert's `Path` starts with its own folder (CheXpert-v1.0-small/train/...): resolve against the root,
    its parent, or without that first part."""
    for candidate in (root / path, root.parent / path, root / Path(*Path(path).parts[1:])):
        if candidate.exists():
            return candidate
    return root.parent / path


def read_chexpert_5x200(root: Path, seed: int = 0) -> tuple[list[dict], list[Path]]:
    table = _find(root, ["train.csv"], "chexpert_5x200")
    df = pd.read_csv(table)
    if "Frontal/Lateral" not in df.columns or "Path" not in df.columns:
        raise BenchmarkError(f"{table.name}: not CheXpert's train.csv (no Path / Frontal/Lateral column)")
    df = df[df["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    cases = []
    for i, task in five_by_200(df, seed):
        path = df.loc[i, "Path"]
        patient = next((p for p in Path(path).parts if p.startswith("patient")), path)
        cases.append({"image": str(_chexpert_image(root, path)), "patient": patient, "label": task})
    return cases, [table]


def read_mimic_5x200(root: Path, seed: int = 0) -> tuple[list[dict], list[Path]]:
    labels_path = _find(root, ["mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-chexpert.csv.gz"], "mimic_5x200")
    meta_path = _find(root, ["mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz"], "mimic_5x200")
    labels, meta = pd.read_csv(labels_path), pd.read_csv(meta_path, dtype={"dicom_id": str})
    frontal = meta[meta["ViewPosition"].isin(["PA", "AP"])].sort_values(["study_id", "dicom_id"])
    first = frontal.drop_duplicates("study_id")[["dicom_id", "subject_id", "study_id"]]
    df = labels.merge(first, on=["subject_id", "study_id"]).sort_values("study_id").reset_index(drop=True)
    cases = []
    for i, task in five_by_200(df, seed):
        r = df.loc[i]
        subject, study = f"p{int(r.subject_id)}", f"s{int(r.study_id)}"
        path = Path("files", subject[:3], subject, study, f"{r.dicom_id}.jpg")
        cases.append({"image": str(root / path), "patient": subject, "label": task})
    return cases, [labels_path, meta_path]


def read(name: str, root: str | Path, seed: int = 0, split: str = "gloria", images: str | Path | None = None
         ) -> tuple[list[dict], list[Path]]:
    """The cases of a benchmark from its official files under `root`, and the files read."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{name}: root {root} is not a folder")
    if name == "ms_cxr":
        return read_ms_cxr(root, Path(images) if images else None)
    if name == "rsna_pneumonia":
        return read_rsna(root, split)
    if name == "nih_bbox":
        return read_nih_bbox(root)
    if name == "siim_pneumothorax":
        return read_siim(root)
    if name == "chexpert_5x200":
        return read_chexpert_5x200(root, seed)
    if name == "mimic_5x200":
        return read_mimic_5x200(root, seed)
    raise BenchmarkError(f"unknown benchmark {name}; known: {', '.join(NAMES)}")


# ------------------------------------------------------------------------------------------ manifests
def manifest(name: str, root: str | Path, path: str | Path, seed: int = 0, split: str = "gloria",
             images: str | Path | None = None) -> dict:
    """The pinned cases of a benchmark: written at `path` the first time, read from it afterwards (stopping when a
    source file's SHA-256 changed). Returns the manifest with its own sha256."""
    path = Path(path)
    if path.exists():
        body = path.read_text()
        pinned = json.loads(body)
        for file, digest in pinned["sources"].items():
            if not Path(file).exists() or sha256_file(file) != digest:
                raise BenchmarkError(f"{name}: the source {file} changed since {path} was pinned (sha256 "
                                     f"{digest[:12]}); remove the manifest to pin the new files on purpose")
        return {**pinned, "sha256": hashlib.sha256(body.encode()).hexdigest(), "path": str(path)}
    cases, files = read(name, root, seed, split, images)
    if not cases:
        raise BenchmarkError(f"{name}: no cases under {root}")
    pinned = {"benchmark": name, "seed": seed, "split": split if name == "rsna_pneumonia" else None,
              "sources": {str(f): sha256_file(f) for f in files}, "n": len(cases), "cases": cases}
    body = json.dumps(pinned, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(body)
    log.info("%s: pinned %d cases in %s", name, len(cases), path)
    return {**pinned, "sha256": hashlib.sha256(body.encode()).hexdigest(), "path": str(path)}


# ------------------------------------------------------------------------------------------ prompts
def gloria_prompts(vocabulary: dict, n: int | None, seed: int) -> dict[str, list[str]]:
    """The GLoRIA / MedCLIP prompt grammar from its vocabulary (a JSON of CHEXPERT_CLASS_PROMPTS' form: class ->
    {severity, subtype, location} lists): every combination joined in the dict's key order with single spaces as
    f"{a} {b} {c}" (so empty parts leave extra spaces, as the original), `n` drawn per class with `seed`."""
    import itertools

    rng = np.random.default_rng(seed)
    out = {}
    for cls, parts in vocabulary.items():
        combos = [" ".join(c) for c in itertools.product(*parts.values())]
        if n and n < len(combos):
            combos = [combos[i] for i in np.sort(rng.choice(len(combos), n, replace=False))]
        out[cls] = combos
    return out


# ------------------------------------------------------------------------------------------ evaluation
def _load(case: dict, cfg: dict, segmenter: Path | None):
    """The case's image through normalize (and segment + crop given a segmenter): (image, transform, original
    shape, ROI boxes or None, conversion). Read by normalize's own reader, so its rules hold here too: a
    greyscale film with coloured annotations is kept (its conversion says "annotated"), a colour figure is
    Rejected."""
    from .stages.normalize import as_uint8, normalize_file

    if segmenter is not None:
        from .predict import prepare

        rad = prepare(case["image"], cfg, segmenter)
        keep = [k for k, lab in enumerate(rad.labels) if lab != "image"] or [0]  # the whole image contains all
        source = _source(case["image"], cfg)
        return rad.image, rad.transform, source.pixels.shape, rad.boxes[keep], source.conversion
    image, transform, source = normalize_file(case["image"], cfg["normalize"])
    return as_uint8(image[None])[0], transform, source.pixels.shape, None, source.conversion


def _source(path: str, cfg: dict):
    from .stages.normalize import read_image

    return read_image(path, cfg["normalize"])


def evaluate(emb, pinned: dict, cfg: dict, segmenter: str | Path | None = None, bootstrap: int = 1000,
             seed: int = 0, prompts: dict[str, list[str]] | None = None, sample: int = 0) -> tuple[dict, list]:
    """Every figure of one model on one benchmark, {metric: figure with a patient-level 95% interval}, and up to
    `sample` drawn cases (image, maps, truth) for pictures. Unreadable images are skipped with their reason."""
    from . import grounding, stats
    from .stages.crop import content_box
    from .evaluation.grounding import heat_map
    from .evaluation.zeroshot import NEGATIVE, POSITIVE
    from .stages.normalize import Rejected, letterbox_mask, to_normalized

    segmenter = Path(segmenter) if segmenter else None
    name, cases = pinned["benchmark"], pinned["cases"]
    rows, skipped, pictures = [], [], []
    annotated = 0  # greyscale films with coloured marks, kept as grey (normalize.greyscale)
    for case in cases:
        try:
            image, transform, original, rois, conversion = _load(case, cfg, segmenter)
        except (Rejected, OSError, ValueError) as e:
            skipped.append(f"{case['image']}: {e}")
            continue
        annotated += "annotated" in conversion
        rows.append((case, image, transform, original, rois))
    if skipped:
        log.warning("%s: %d of %d images unreadable, skipped; first: %s", name, len(skipped), len(cases), skipped[0])
    if not rows:
        raise BenchmarkError(f"{name}: none of the {len(cases)} images could be read (first: {skipped[:1]})")
    images = np.stack([r[1] for r in rows])
    units = [r[0]["patient"] for r in rows]
    img = emb.images(images)
    figures: dict = {}
    if "label" in rows[0][0] and name.endswith("5x200"):
        classes = FIVE
        if prompts:
            cls_emb = np.stack([emb.texts(prompts[c]).mean(0) for c in classes])
            cls_emb /= np.linalg.norm(cls_emb, axis=1, keepdims=True)
        else:
            cls_emb = np.stack([emb.ensemble(POSITIVE, c.lower()) for c in classes])
        truth = np.array([classes.index(r[0]["label"]) for r in rows])
        right = ((img @ cls_emb.T).argmax(1) == truth).astype(float)
        figures["accuracy"] = (units, lambda i: right[i].mean())
        for c, cls in enumerate(classes):
            sel = truth == c
            figures[f"accuracy/{cls}"] = (units, lambda i, sel=sel: right[i][sel[i]].mean() if sel[i].any() else np.nan)
    elif "label" in rows[0][0]:  # rsna, siim: zero-shot present vs absent
        finding = rows[0][0]["text"]
        logits = emb.scale * np.stack([img @ emb.ensemble(POSITIVE, finding), img @ emb.ensemble(NEGATIVE, finding)])
        prob = 1.0 / (1.0 + np.exp(logits[1] - logits[0]))
        y = np.array([r[0]["label"] for r in rows])
        figures["auroc"] = (units, lambda i: stats.auroc(y[i], prob[i]))
        figures["accuracy"] = (units, lambda i: float(((prob[i] >= 0.5) == y[i]).mean()))
    # grounding: every case with boxes or a mask
    has_truth = [k for k, r in enumerate(rows) if r[0].get("boxes") or r[0].get("rle")]
    if has_truth:
        patches = grounding.patch_features(emb.model, images[has_truth])
        texts = emb.texts([rows[k][0]["text"] for k in has_truth])
        if rows[0][4] is not None:
            _, roi = emb.images_and_rois(images, np.concatenate([np.full(len(r[4]), k) for k, r in enumerate(rows)]),
                                         np.concatenate([r[4] for r in rows]))
            starts = np.cumsum([0] + [len(r[4]) for r in rows])
        keys = ("cnr", "cnr_signed", "miou", "pointing_game")
        g = {m: np.full((len(rows), len(keys)), np.nan) for m in ("dense", "roi")}
        category = np.array([r[0].get("category", "") for r in rows])
        size = images.shape[-1]
        for j, k in enumerate(has_truth):
            case, _, transform, original, rois = rows[k]
            content = content_box(transform, np.array(original))
            if case.get("boxes"):
                boxes = to_normalized(np.array(case["boxes"]), transform)
                truth = grounding.box_mask(boxes, (size, size))
            else:
                full = np.zeros((SIIM_SIZE, SIIM_SIZE), bool)
                for rle in case["rle"]:
                    full |= decode_siim_rle(rle)
                truth, boxes = letterbox_mask(full.astype(np.uint8), size).astype(bool), None
            maps = {"dense": grounding.similarity_map(patches[j], texts[j], (size, size), content=content)}
            if rois is not None:
                maps["roi"] = heat_map(roi[starts[k] : starts[k + 1]] @ texts[j], rois, size, emb.scale)
            for m, heat in maps.items():
                f = grounding.phrase_figures(heat, boxes) if boxes is not None else mask_figures(heat, truth)
                g[m][k] = [f[x] for x in keys]
            if len(pictures) < sample:
                pictures.append({"image": rows[k][1], "text": case["text"], "truth": truth, "maps": maps,
                                 "figures": {m: dict(zip(keys, g[m][k])) for m in maps}})
        for m in ("dense", "roi"):
            if not np.isfinite(g[m]).any():
                continue
            for c, key in enumerate(keys):
                col = g[m][:, c]
                # MS-CXR's average: per category, then across categories
                figures[f"{m}/{key}"] = (units, lambda i, col=col: grounding.class_mean(list(col[i]), list(category[i]))[0])
                for cat in sorted(set(category[has_truth])):
                    sel = category == cat
                    figures[f"{m}/{key}/{cat}"] = (units, lambda i, col=col, sel=sel: float(np.nanmean(col[i][sel[i]]))
                                                   if np.isfinite(col[i][sel[i]]).any() else np.nan)
    boot = stats.PatientBootstrap(units, bootstrap, seed)
    out = {}
    for metric, (u, stat) in figures.items():
        out[metric] = stats.figure(stat(np.arange(len(u))), boot.replicate(stat, u), len(u))
    out["_cases"] = {"read": len(rows), "skipped": len(skipped), "annotated": annotated,
                     "manifest_sha256": pinned.get("sha256", "")}
    return out, pictures


def mask_figures(heat: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The metrics against a mask (SIIM) instead of boxes: one region."""
    from . import grounding

    if not truth.any():
        return {k: float("nan") for k in ("cnr", "cnr_signed", "miou", "pointing_game")}
    return {"cnr": grounding.cnr(heat, truth), "cnr_signed": grounding.cnr(heat, truth, signed=True),
            "miou": grounding.miou(heat, truth), "pointing_game": grounding.pointing_game(heat, truth)}


def draw(pictures: list, name: str, run: str, out_dir: str | Path) -> list[Path]:
    """One picture per sampled case: the radiograph with the ground truth outlined, the dense map and (given
    ROIs) the ROI-level map, each titled with its pointing hit and CNR, with a colour bar saying what its colour
    is (show.colour_bar, as `ground` draws them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .show import DENSE_LABEL, ROI_LABEL, colour_bar

    MAP_LABELS = {"dense": DENSE_LABEL, "roi": ROI_LABEL}

    written = []
    for k, p in enumerate(pictures):
        fig, axes = plt.subplots(1, len(p["maps"]), figsize=(3.4 * len(p["maps"]), 3.7), squeeze=False)
        for ax, (m, heat) in zip(axes[0], p["maps"].items()):
            ax.imshow(p["image"], cmap="gray", vmin=0, vmax=255)
            colour_bar(fig, ax.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.35), ax,
                       MAP_LABELS.get(m, f"{m} map value"))
            ax.contour(p["truth"], levels=[0.5], colors="lime", linewidths=1.0)
            f = p["figures"][m]
            ax.set_title(f"{run} {m}: pointing {'hit' if f['pointing_game'] == 1 else 'miss'}, CNR {f['cnr']:.2f}",
                         fontsize=7)
            ax.axis("off")
        fig.suptitle(f'{name}: "{p["text"]}"', fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"{name}-{run.replace('/', '_').replace('@', '_')}-{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(path)
    return written


def markdown(results: dict) -> str:
    """report.md's section: {benchmark: {run: figures}} as one table per benchmark (headline figures)."""
    lines = []
    for name, runs in results.items():
        keys = sorted({k for f in runs.values() for k in f if k != "_cases" and k.count("/") <= 1})
        lines += [f"## Benchmark {name}", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for run, f in runs.items():
            cells = ["-" if k not in f or not np.isfinite(f[k]["value"]) else
                     f"{f[k]['value']:.3f}" + (f" ({f[k]['ci_low']:.3f}-{f[k]['ci_high']:.3f})"
                                               if np.isfinite(f[k]["ci_low"]) else "") for k in keys]
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
        first = next(iter(runs.values()))["_cases"]
        lines += ["", f"{first['read']} cases read ({first.get('annotated', 0)} greyscale films with coloured "
                  f"annotations, read as grey), {first['skipped']} skipped; manifest sha256 "
                  f"`{first['manifest_sha256'][:16]}`.", ""]
    return "\n".join(lines) + ("\n" if lines else "")


def main(name: str, checkpoint: str, root: str | None, config: str | None, model: str | None,
         segmenter: str | None, manifest_path: str | None, images: str | None, prompts: str | None,
         bootstrap: int, out: str | None) -> int:
    """`python -m pipeline benchmark NAME --checkpoint CKPT [--root DIR]`."""
    import torch

    from . import config as config_mod
    from .predict import load_model, segmenter_path

    overrides = {}
    if config:
        import yaml

        overrides = yaml.safe_load(Path(config).read_text()) or {}
    cfg = config_mod.load(None, overrides)
    bcfg = cfg["evaluate"].get("benchmarks", {}).get(name, {})
    root = root or bcfg.get("root")
    if not root:
        raise SystemExit(f"error: no root for {name}: pass --root or set evaluate.benchmarks.{name}.root")
    if not Path(checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {checkpoint} is not a file")
    seg = Path(segmenter) if segmenter else segmenter_path(cfg)
    if not seg.is_file():
        print(f"note: no segmenter at {seg}: dense maps only (pass --segmenter for the ROI-level map)")
        seg = None
    try:
        pinned = manifest(name, root, manifest_path or Path("results/benchmarks") / name / "manifest.json",
                          bcfg.get("seed", 0), bcfg.get("split", "gloria"), images or bcfg.get("images"))
    except BenchmarkError as e:
        raise SystemExit(f"error: {e}")
    grammar, prompts = None, prompts or bcfg.get("prompts")
    if prompts:
        grammar = gloria_prompts(json.loads(Path(prompts).read_text()), bcfg.get("prompts_per_class", 10),
                                 bcfg.get("seed", 0))
    emb = load_model(checkpoint, model, cfg, torch.device("cpu"))
    figures, pictures = evaluate(emb, pinned, cfg, seg, bootstrap, prompts=grammar, sample=3 if out else 0)
    print(f"{name}: {pinned['n']} cases pinned in {pinned['path']} (sha256 {pinned['sha256'][:16]}); "
          f"{figures['_cases']['read']} read ({figures['_cases']['annotated']} with coloured annotations, read as "
          f"grey), {figures['_cases']['skipped']} skipped")
    for k, f in figures.items():
        if k != "_cases":
            print(f"{k:40s} {f['value']:.4f}  ({f['ci_low']:.4f}-{f['ci_high']:.4f}, n={f['n']})")
    if out:
        for p in draw(pictures, name, "model", out):
            print(p)
    return 0
