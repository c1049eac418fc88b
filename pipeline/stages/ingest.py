"""Ingest: one row per image from any source, a patient-level split, and a stable shard plan.

Sources (config `data.source`):
- `mimic-cxr` (and `synthetic`, which writes the same layout): `files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm`,
  reports `files/pXX/pNNNNNNNN/sNNNNNNNN.txt`, tables `mimic-cxr-2.0.0-{metadata,chexpert,split}.csv[.gz]`;
- `chexpert`: `CheXpert-v1.0(-small)/{train,valid}.csv` with `Path` and the 14 observations, JPG images,
  optionally a CheXpert Plus report table joined by image path;
- `csv`: a table with `image_path`, `patient_id`, `study_id` and optional `image_id`, `report`, `split`,
  `view` and observation columns; relative paths resolve against the table's folder.

Output `studies.csv` keeps only the dataset's own pseudonymous ids, paths, report text, view, sex/age where
the dataset ships them, the 14 labels (1 / 0 / -1 / NaN) and the split and shard of each image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_text_atomic
from ..labels import OBSERVATIONS

log = logging.getLogger("pipeline.ingest")

COLUMNS = ["image_id", "study_id", "patient_id", "split", "view", "image_path", "report", "sex", "age",
           *OBSERVATIONS]
SPLITS = ["train", "validate", "test"]
# Written views as sources spell them -> the view filter's names. Qualifiers of a frontal film (supine,
# erect, portable) keep its projection; "PA/AP" is frontal with the projection unstated.
VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LAT": "LATERAL", "LL": "LL", "RL": "LATERAL"}
FRONTAL_QUALIFIERS = {"SUPINE", "ERECT", "UPRIGHT", "SEMI", "SEMIERECT", "SEMI-ERECT", "PORTABLE", "SITTING", "PORT"}
UNKNOWN = "UNKNOWN"  # no view information: kept by the view filter (counted in the log)
FRONTAL = "FRONTAL"  # a frontal film of unstated projection: kept when the filter keeps PA or AP


class IngestError(ValueError):
    """The source is missing a table or column the layout requires."""


def _find_table(root: Path, stem: str, required: bool = True) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).exists():
            return root / name
    if required:
        raise IngestError(f"{stem}.csv(.gz) not found in {root}")
    return None


def normalize_view(value) -> str:
    """"AP Supine", "AP_SUPINE", "ap" -> AP; "PA/AP" -> FRONTAL; blank or missing -> UNKNOWN; else OTHER."""
    if not isinstance(value, str) or not value.strip():
        return UNKNOWN
    words = re.split(r"[\s_]+", value.strip().upper())
    if len(words) == 1 and "/" in words[0] and set(words[0].split("/")) == {"PA", "AP"}:
        return FRONTAL
    if words[0] in VIEWS and (len(words) == 1 or (words[0] in ("PA", "AP") and set(words[1:]) <= FRONTAL_QUALIFIERS)):
        return VIEWS[words[0]]
    return "OTHER"


def _labels(df: pd.DataFrame) -> pd.DataFrame:
    """The 14 observation columns as float: 1, 0, -1 or NaN (blank means not mentioned)."""
    out = pd.DataFrame(index=df.index)
    for obs in OBSERVATIONS:
        out[obs] = pd.to_numeric(df[obs], errors="coerce") if obs in df else np.nan
    return out


# --------------------------------------------------------------------------------------------- sources
def read_mimic(root: str | Path) -> pd.DataFrame:
    """Rows for every image listed in the MIMIC-CXR metadata table."""
    root = Path(root)
    meta = pd.read_csv(_find_table(root, "mimic-cxr-2.0.0-metadata"), dtype={"dicom_id": str})
    for col in ("dicom_id", "subject_id", "study_id"):
        if col not in meta:
            raise IngestError(f"metadata table lacks column {col}")
    meta["subject_id"] = meta["subject_id"].astype("int64").astype(str)
    meta["study_id"] = meta["study_id"].astype("int64").astype(str)

    split_path = _find_table(root, "mimic-cxr-2.0.0-split", required=False)
    if split_path is not None:
        split = pd.read_csv(split_path, dtype={"dicom_id": str})[["dicom_id", "split"]]
        meta = meta.merge(split, on="dicom_id", how="left")
    else:
        meta["split"] = ""

    labels_path = _find_table(root, "mimic-cxr-2.0.0-chexpert", required=False)
    if labels_path is not None:
        lab = pd.read_csv(labels_path)
        lab["study_id"] = lab["study_id"].astype("int64").astype(str)
        lab = lab.drop(columns=[c for c in ("subject_id",) if c in lab])
        meta = meta.merge(lab, on="study_id", how="left")

    files = root / "files"
    patient_dir = files / meta["subject_id"].str[:2].radd("p") / meta["subject_id"].radd("p")
    study_dir = [str(p / f"s{s}") for p, s in zip(patient_dir, meta["study_id"])]
    reports = {d: _read_report(Path(f"{d}.txt")) for d in dict.fromkeys(study_dir)}  # once per study, not per image
    out = pd.DataFrame({
        "image_id": meta["dicom_id"],
        "study_id": meta["study_id"],
        "patient_id": meta["subject_id"],
        "split": meta["split"].fillna("").astype(str),
        "view": meta["ViewPosition"].map(normalize_view) if "ViewPosition" in meta else UNKNOWN,
        "image_path": [f"{d}/{i}.dcm" for d, i in zip(study_dir, meta["dicom_id"])],
        "report": [reports[d] for d in study_dir],
        "sex": "",
        "age": np.nan,
    })
    return pd.concat([out, _labels(meta)], axis=1)


def _read_report(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


_CHEXPERT_PATH = re.compile(r"(patient\d+)/(study\d+)/([^/]+?)(\.\w+)?$")


def _chexpert_key(path: str) -> str:
    """`train/patient00001/study1/view1_frontal`: the join key between CheXpert and CheXpert Plus tables."""
    parts = Path(str(path)).with_suffix("").parts
    for i, part in enumerate(parts):
        if part in ("train", "valid", "test"):
            return "/".join(parts[i:])
    return "/".join(parts[-4:])


def read_chexpert(root: str | Path, reports: str = "") -> pd.DataFrame:
    root = Path(root)
    frames = []
    for name, official in (("train.csv", ""), ("valid.csv", "validate")):
        if not (root / name).exists():
            if name == "train.csv":
                raise IngestError(f"{name} not found in {root}")
            continue
        t = pd.read_csv(root / name)
        if "Path" not in t:
            raise IngestError(f"{name} lacks column Path")
        t["split"] = official  # train.csv patients are split into train / test by hash below
        frames.append(t)
    t = pd.concat(frames, ignore_index=True)
    m = t["Path"].str.extract(_CHEXPERT_PATH)
    if m[0].isna().any():
        bad = t.loc[m[0].isna(), "Path"].iloc[0]
        raise IngestError(f"CheXpert Path not in patientN/studyN/view form: {bad}")
    frontal = t.get("Frontal/Lateral", pd.Series("Frontal", index=t.index)).fillna("")
    appa = t.get("AP/PA", pd.Series("", index=t.index))
    view = np.where(frontal.str.lower() == "lateral", "LATERAL", appa.map(normalize_view))
    out = pd.DataFrame({
        "image_id": m[0] + "_" + m[1] + "_" + m[2],
        "study_id": m[0] + "_" + m[1],
        "patient_id": m[0],
        "split": t["split"],
        "view": view,
        "image_path": [str(_resolve_chexpert(root, p)) for p in t["Path"]],
        "report": "",
        "sex": t.get("Sex", pd.Series("", index=t.index)).fillna("").astype(str),
        "age": pd.to_numeric(t.get("Age", pd.Series(np.nan, index=t.index)), errors="coerce"),
    })
    if reports:
        plus = pd.read_csv(reports)
        if "path_to_image" not in plus:
            raise IngestError("CheXpert Plus table lacks column path_to_image")
        text = plus["report"] if "report" in plus else (
            plus.get("section_findings", "").fillna("") + "\n" + plus.get("section_impression", "").fillna(""))
        by_key = dict(zip(plus["path_to_image"].map(_chexpert_key), text.fillna("").astype(str)))
        out["report"] = [by_key.get(_chexpert_key(p), "") for p in t["Path"]]
        log.info("CheXpert Plus reports joined for %d of %d images", (out["report"] != "").sum(), len(out))
    return pd.concat([out, _labels(t)], axis=1)


def _resolve_chexpert(root: Path, rel: str) -> Path:
    """`Path` starts with the dataset folder's own name; accept the folder under any name."""
    direct = root.parent / rel
    if direct.exists():
        return direct.resolve()
    return (root / Path(*Path(rel).parts[1:])).resolve()


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    t = pd.read_csv(path, dtype={"patient_id": str, "study_id": str, "image_id": str})
    missing = [c for c in ("image_path", "patient_id", "study_id") if c not in t]
    if missing:
        raise IngestError(f"{path.name} lacks required column(s) {', '.join(missing)}")
    paths = [p if Path(p).is_absolute() else (path.parent / p) for p in t["image_path"].astype(str)]
    image_id = t["image_id"] if "image_id" in t else pd.Series([Path(p).stem for p in paths], index=t.index)
    out = pd.DataFrame({
        "image_id": image_id.astype(str),
        "study_id": t["study_id"].astype(str),
        "patient_id": t["patient_id"].astype(str),
        "split": t["split"].fillna("").astype(str) if "split" in t else "",
        "view": t["view"].map(normalize_view) if "view" in t else UNKNOWN,
        "image_path": [str(Path(p).resolve()) for p in paths],
        "report": t["report"].fillna("").astype(str) if "report" in t else "",
        "sex": t["sex"].fillna("").astype(str) if "sex" in t else "",
        "age": pd.to_numeric(t["age"], errors="coerce") if "age" in t else np.nan,
    })
    return pd.concat([out, _labels(t)], axis=1)


# --------------------------------------------------------------------------------------------- splits
def hash_fraction(patient_id: str, seed: int) -> float:
    """A patient's fixed position in [0, 1): the same on every machine and in every run."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def assign_splits(df: pd.DataFrame, fractions: dict) -> pd.DataFrame:
    """Fill empty `split` values by patient hash; a patient with an official split keeps it everywhere."""
    df = df.copy()
    df["split"] = df["split"].replace({"valid": "validate", "val": "validate"})
    official = df.loc[df["split"] != ""].groupby("patient_id")["split"].first()
    missing = df["split"] == ""
    if missing.any():
        # where the source has an official validate split only (CheXpert), the rest goes to train / test
        has_validate = (official == "validate").any() and not (official == "train").any()
        names = ["train", "test"] if has_validate else SPLITS
        weights = np.array([fractions[n] for n in names], dtype=float)
        edges = np.cumsum(weights / weights.sum())
        seed = fractions.get("seed", 0)

        def pick(pid: str) -> str:
            if pid in official.index:
                return official[pid]
            return names[int(np.searchsorted(edges, hash_fraction(pid, seed), side="right"))]

        df.loc[missing, "split"] = df.loc[missing, "patient_id"].map(pick)
    bad = set(df["split"]) - set(SPLITS)
    if bad:
        raise IngestError(f"unknown split value(s) {sorted(bad)}; expected {SPLITS}")
    check_patient_splits(df)
    return df


def check_patient_splits(df: pd.DataFrame) -> None:
    per_patient = df.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise IngestError(f"{len(leaking)} patient(s) appear in more than one split, e.g. {leaking.index[0]}")


# --------------------------------------------------------------------------------------------- plan
def plan_shards(df: pd.DataFrame, shard_size: int) -> tuple[pd.DataFrame, dict]:
    """Order images by split then image_id and cut every `shard_size`: a pure function of table and size."""
    df = df.assign(_rank=df["split"].map({s: i for i, s in enumerate(SPLITS)}))
    df = df.sort_values(["_rank", "image_id"], kind="stable").drop(columns="_rank").reset_index(drop=True)
    df["shard"] = [f"{i // shard_size:05d}" for i in range(len(df))]
    shards = {}
    for shard, g in df.groupby("shard", sort=True):
        shards[shard] = {
            "n_images": len(g),
            "splits": {s: int((g["split"] == s).sum()) for s in SPLITS if (g["split"] == s).any()},
            "image_ids_sha256": hashlib.sha256("\n".join(g["image_id"]).encode()).hexdigest(),
        }
    plan = {"shard_size": shard_size, "n_images": len(df), "shards": shards}
    return df, plan


def read_source(data_cfg: dict) -> pd.DataFrame:
    source = data_cfg["source"]
    if source == "synthetic":
        return read_mimic(data_cfg["synthetic"]["out_dir"])
    if not data_cfg["root"]:
        raise IngestError(f"data.root must name the {source} location")
    if source == "mimic-cxr":
        return read_mimic(data_cfg["root"])
    if source == "chexpert":
        return read_chexpert(data_cfg["root"], data_cfg["chexpert"]["reports"])
    return read_table(data_cfg["root"])


def view_kept(views: pd.Series, wanted: list[str]) -> pd.Series:
    """The view filter: views in `wanted`, unknown views, and unstated frontal ones when PA or AP is wanted."""
    frontal_wanted = bool({"PA", "AP"} & set(wanted))
    return views.isin(wanted) | (views == UNKNOWN) | ((views == FRONTAL) & frontal_wanted)


def ingest(data_cfg: dict) -> tuple[pd.DataFrame, dict]:
    df = read_source(data_cfg)
    n_all = len(df)
    dup = df["image_id"].duplicated()
    if dup.any():
        raise IngestError(f"image_id not unique, e.g. {df.loc[dup, 'image_id'].iloc[0]}")
    df = df[view_kept(df["view"], data_cfg["views"])]
    log.info("%d images listed, %d kept by the view filter %s (%d of unknown view, %d frontal of unstated "
             "projection, kept)", n_all, len(df), data_cfg["views"], (df["view"] == UNKNOWN).sum(),
             (df["view"] == FRONTAL).sum())
    df = assign_splits(df, data_cfg["split"])
    df, plan = plan_shards(df[COLUMNS], data_cfg["shard_size"])
    for split, n in df["split"].value_counts().sort_index().items():
        log.info("split %s: %d images, %d patients", split, n, df.loc[df["split"] == split, "patient_id"].nunique())
    log.info("%d shards of up to %d images", len(plan["shards"]), data_cfg["shard_size"])
    return df, plan


def run(data_cfg: dict, studies_out: str | Path, plan_out: str | Path) -> None:
    df, plan = ingest(data_cfg)
    write_text_atomic(studies_out, df.to_csv(index=False))
    write_text_atomic(plan_out, json.dumps(plan, indent=1, sort_keys=True) + "\n")


def load_studies(path: str | Path, shard: str | None = None) -> pd.DataFrame:
    """Read `studies.csv` (optionally one shard's rows) with ids as text and labels as float."""
    df = pd.read_csv(path, dtype={c: str for c in ("image_id", "study_id", "patient_id", "shard", "sex")},
                     keep_default_na=False, na_values={o: [""] for o in OBSERVATIONS + ["age"]})
    return df[df["shard"] == shard].reset_index(drop=True) if shard is not None else df
