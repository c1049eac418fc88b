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

Ids become file names downstream (normalize's PNGs): an id that is not a safe file name (a folder part, a
leading dot, odd characters) is replaced by `id-` + 16 hex digits of its SHA-256, the original kept in
`source_image_id`. A csv table without an `image_id` column gets `img-` + 16 hex digits of the SHA-256 of each
image's path relative to the table, never the file's stem (a file may be named after its patient).

One bad row never stops a table: a row with bytes that are not UTF-8, a blank id or path, an unknown split or
an image_id shared with another row is left out and listed in `rejected.csv` (table, row, image_id, reason;
rows numbered from 1 after the header); the rest goes on.

Report text is kept verbatim (MIMIC-CXR and CheXpert Plus are de-identified); `data.scrub_reports` names
regular expressions (and `builtin`: dates, "Dr. X", names after Patient / Name headers) whose matches become
"___", as in MIMIC-CXR, for a source that is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_text_atomic
from ..labels import OBSERVATIONS

log = logging.getLogger("pipeline.ingest")

COLUMNS = ["image_id", "source_image_id", "study_id", "patient_id", "split", "view", "image_path", "report", "sex",
           "age",
           *OBSERVATIONS]
SPLITS = ["train", "validate", "test"]
# Written views as sources spell them -> the view filter's names. Qualifiers of a frontal film (supine,
# erect, portable) keep its projection; "PA/AP" is frontal with the projection unstated.
VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LAT": "LATERAL", "LL": "LL", "RL": "LATERAL"}
FRONTAL_QUALIFIERS = {"SUPINE", "ERECT", "UPRIGHT", "SEMI", "SEMIERECT", "SEMI-ERECT", "PORTABLE", "SITTING", "PORT"}
UNKNOWN = "UNKNOWN"  # no view information: kept by the view filter (counted in the log)
FRONTAL = "FRONTAL"  # a frontal film of unstated projection: kept when the filter keeps PA or AP


REJECTED_COLUMNS = ["table", "row", "image_id", "reason"]
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain file name: no folder part, no leading dot
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
SCRUBBED = "___"  # MIMIC-CXR's mark for removed protected health information
# data.scrub_reports `builtin`: dates, a doctor's name, the value of a name header
BUILTIN_SCRUB = [
    (r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b", SCRUBBED),
    (r"(?i)\b\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?,?\s+\d{2,4}\b",
     SCRUBBED),
    (r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{2,4}\b",
     SCRUBBED),
    (r"\b(Dr\.?|Doctor)[ \t]+(?:[A-Z]\.[ \t]*)?[A-Z][A-Za-z'-]+(?:[ \t]+[A-Z][A-Za-z'-]+)?", rf"\1 {SCRUBBED}"),
    (r"(?im)^(\s*(?:patient(?:\s+name)?|name|referring(?:\s+physician)?|physician|attending|radiologist|"
     r"signed\s+by|dictated\s+by)\s*:[ \t]*)\S[^\n]*", rf"\1{SCRUBBED}"),
]


class IngestError(ValueError):
    """The source is missing a table or column the layout requires."""


def read_csv(path: Path, rejected: list[dict], **kwargs) -> pd.DataFrame:
    """A source table with its rows numbered (`_row`, from 1 after the header); a row holding bytes that are
    not UTF-8 is left out and added to `rejected` with its column and byte, the rest is read."""
    t = pd.read_csv(path, encoding="utf-8", encoding_errors="surrogateescape", **kwargs)
    t["_row"] = np.arange(1, len(t) + 1)
    bad = pd.Series(False, index=t.index)
    for col in t.columns[[not pd.api.types.is_numeric_dtype(d) for d in t.dtypes]]:
        hit = t[col].map(lambda v: isinstance(v, str) and NOT_UTF8.search(v) is not None)
        for i in t.index[hit & ~bad]:
            byte = ord(NOT_UTF8.search(t.at[i, col])[0]) - 0xDC00
            rejected.append({"table": path.name, "row": i + 1, "image_id": "",
                             "reason": f"column {_printable(col)}: byte 0x{byte:02x} is not UTF-8"})
        bad |= hit
    return t[~bad].reset_index(drop=True)


def _printable(text: str) -> str:
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def reject_rows(df: pd.DataFrame, bad: pd.Series, reasons, rejected: list[dict]) -> pd.DataFrame:
    """Drop the rows where `bad` holds, recording each with its table, row, image_id and reason."""
    reasons = reasons if isinstance(reasons, pd.Series) else pd.Series(reasons, index=df.index)
    for i in df.index[bad]:
        rejected.append({"table": df.at[i, "_table"], "row": int(df.at[i, "_row"]),
                         "image_id": df.at[i, "image_id"], "reason": reasons[i]})
    return df[~bad]


def safe_image_id(image_id: str) -> str:
    """The id itself when it is a safe file name, else `id-` + 16 hex digits of its SHA-256 (stable)."""
    if SAFE_ID.fullmatch(image_id):
        return image_id
    return "id-" + hashlib.sha256(image_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def path_image_id(path: Path, table_dir: Path) -> str:
    """A pseudonymous id from an image's path relative to its table (stable, and no file name in it)."""
    rel = Path(os.path.relpath(path, table_dir)).as_posix()
    return "img-" + hashlib.sha256(rel.encode()).hexdigest()[:16]


def scrub_reports(reports: pd.Series, patterns: list[str]) -> pd.Series:
    """Matches of `patterns` (regular expressions; `builtin` = BUILTIN_SCRUB) replaced by "___" in every report."""
    rules = [(p, SCRUBBED) for p in patterns if p != "builtin"] + (BUILTIN_SCRUB if "builtin" in patterns else [])
    compiled = [(re.compile(p), repl) for p, repl in rules]

    def scrub(text: str) -> str:
        for rx, repl in compiled:
            text = rx.sub(repl, text)
        return text

    return reports.map(scrub) if compiled else reports


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
def _integer_ids(t: pd.DataFrame, cols: tuple[str, ...], table: str, rejected: list[dict]) -> pd.DataFrame:
    """MIMIC's numeric ids as text; a row whose id is blank or not an integer is rejected."""
    bad = pd.Series(False, index=t.index)
    for col in cols:
        values = pd.to_numeric(t[col], errors="coerce")
        hit = (values.isna() | (values != values.round())) & ~bad
        for i in t.index[hit]:
            image_id = str(t.at[i, "dicom_id"]) if "dicom_id" in t else ""
            rejected.append({"table": table, "row": int(t.at[i, "_row"]), "image_id": image_id,
                             "reason": f"{col} {t.at[i, col]!r} is not an integer id"})
        bad |= hit
        t[col] = values.fillna(0).astype("int64").astype(str)
    return t[~bad]


def read_mimic(root: str | Path, rejected: list[dict] | None = None) -> pd.DataFrame:
    """Rows for every image listed in the MIMIC-CXR metadata table (bad rows of any table go to `rejected`)."""
    root = Path(root)
    rejected = [] if rejected is None else rejected
    meta_path = _find_table(root, "mimic-cxr-2.0.0-metadata")
    meta = read_csv(meta_path, rejected, dtype={"dicom_id": str})
    for col in ("dicom_id", "subject_id", "study_id"):
        if col not in meta:
            raise IngestError(f"metadata table lacks column {col}")
    meta = _integer_ids(meta, ("subject_id", "study_id"), meta_path.name, rejected)

    split_path = _find_table(root, "mimic-cxr-2.0.0-split", required=False)
    if split_path is not None:
        split = read_csv(split_path, rejected, dtype={"dicom_id": str})[["dicom_id", "split"]]
        meta = meta.merge(split, on="dicom_id", how="left")
    else:
        meta["split"] = ""

    labels_path = _find_table(root, "mimic-cxr-2.0.0-chexpert", required=False)
    if labels_path is not None:
        lab = _integer_ids(read_csv(labels_path, rejected), ("study_id",), labels_path.name, rejected)
        lab = lab.drop(columns=[c for c in ("subject_id", "_row") if c in lab])
        meta = meta.merge(lab, on="study_id", how="left")

    files = root / "files"
    patient_dir = files / meta["subject_id"].str[:2].radd("p") / meta["subject_id"].radd("p")
    study_dir = [str(p / f"s{s}") for p, s in zip(patient_dir, meta["study_id"])]
    reports = {d: _read_report(Path(f"{d}.txt")) for d in dict.fromkeys(study_dir)}  # once per study, not per image
    out = pd.DataFrame({
        "_table": meta_path.name,
        "_row": meta["_row"],
        "image_id": meta["dicom_id"].fillna("").astype(str),
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


def read_chexpert(root: str | Path, reports: str = "", rejected: list[dict] | None = None) -> pd.DataFrame:
    root = Path(root)
    rejected = [] if rejected is None else rejected
    frames = []
    for name, official in (("train.csv", ""), ("valid.csv", "validate")):
        if not (root / name).exists():
            if name == "train.csv":
                raise IngestError(f"{name} not found in {root}")
            continue
        t = read_csv(root / name, rejected)
        if "Path" not in t:
            raise IngestError(f"{name} lacks column Path")
        t["split"] = official  # train.csv patients are split into train / test by hash below
        t["_table"] = name
        m = t["Path"].astype(str).str.extract(_CHEXPERT_PATH)
        for i in t.index[m[0].isna()]:
            rejected.append({"table": name, "row": int(t.at[i, "_row"]), "image_id": "",
                             "reason": f"Path {t.at[i, 'Path']!r} not in patientN/studyN/view form"})
        frames.append(t[m[0].notna()])
    t = pd.concat(frames, ignore_index=True)
    m = t["Path"].str.extract(_CHEXPERT_PATH)
    frontal = t.get("Frontal/Lateral", pd.Series("Frontal", index=t.index)).fillna("")
    appa = t.get("AP/PA", pd.Series("", index=t.index))
    view = np.where(frontal.str.lower() == "lateral", "LATERAL", appa.map(normalize_view))
    out = pd.DataFrame({
        "_table": t["_table"],
        "_row": t["_row"],
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
        plus = read_csv(Path(reports), rejected)
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


def read_table(path: str | Path, rejected: list[dict] | None = None) -> pd.DataFrame:
    path = Path(path)
    rejected = [] if rejected is None else rejected
    t = read_csv(path, rejected, dtype={"patient_id": str, "study_id": str, "image_id": str, "image_path": str})
    missing = [c for c in ("image_path", "patient_id", "study_id") if c not in t]
    if missing:
        raise IngestError(f"{path.name} lacks required column(s) {', '.join(missing)}")
    t["image_path"] = t["image_path"].fillna("")
    paths = [p if not p or Path(p).is_absolute() else (path.parent / p) for p in t["image_path"]]
    if "image_id" in t:
        image_id = t["image_id"].fillna("")
    else:
        log.info("%s has no image_id column: each image's id is a hash of its path relative to the table (file "
                 "names are not used as ids: a file may be named after its patient)", path.name)
        image_id = pd.Series([path_image_id(p, path.parent) if p else "" for p in paths], index=t.index)
    out = pd.DataFrame({
        "_table": path.name,
        "_row": t["_row"],
        "image_id": image_id,
        "study_id": t["study_id"].fillna(""),
        "patient_id": t["patient_id"].fillna(""),
        "split": t["split"].fillna("").astype(str) if "split" in t else "",
        "view": t["view"].map(normalize_view) if "view" in t else UNKNOWN,
        "image_path": [str(Path(p).resolve()) if p else "" for p in paths],
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


def read_source(data_cfg: dict, rejected: list[dict]) -> pd.DataFrame:
    source = data_cfg["source"]
    if source == "synthetic":
        return read_mimic(data_cfg["synthetic"]["out_dir"], rejected)
    if not data_cfg["root"]:
        raise IngestError(f"data.root must name the {source} location")
    if source == "mimic-cxr":
        return read_mimic(data_cfg["root"], rejected)
    if source == "chexpert":
        return read_chexpert(data_cfg["root"], data_cfg["chexpert"]["reports"], rejected)
    return read_table(data_cfg["root"], rejected)


def check_rows(df: pd.DataFrame, rejected: list[dict]) -> pd.DataFrame:
    """Leave out rows that cannot be used (blank ids or path, an unknown split, an image_id that other rows
    share: all of them, as which one is right cannot be told); map ids that are not safe file names."""
    for col in ("image_id", "patient_id", "study_id", "image_path"):
        df = reject_rows(df, df[col].str.strip() == "", f"no {col}", rejected)
    split = df["split"].replace({"valid": "validate", "val": "validate"})
    df = reject_rows(df, ~split.isin(SPLITS + [""]), "unknown split " + df["split"].map(repr) + f"; expected {SPLITS}",
                     rejected)
    rows_of = df.groupby("image_id")["_row"].agg(lambda r: ", ".join(map(str, r)))
    dup = df["image_id"].duplicated(keep=False)
    df = reject_rows(df, dup, "image_id shared by rows " + df["image_id"].map(rows_of), rejected)
    safe = df["image_id"].map(safe_image_id)
    mapped = safe != df["image_id"]
    if mapped.any():
        log.warning("%d image_id(s) are not safe file names, e.g. %r: replaced by id-<hash> (the original kept in "
                    "source_image_id)", mapped.sum(), df.loc[mapped, "image_id"].iloc[0])
    df = df.assign(source_image_id=df["image_id"].where(mapped, ""), image_id=safe)
    dup = df["image_id"].duplicated(keep=False)  # a mapped id that equals another row's id
    return reject_rows(df, dup, "image_id (after mapping to a safe name) shared with another row", rejected)


def view_kept(views: pd.Series, wanted: list[str]) -> pd.Series:
    """The view filter: views in `wanted`, unknown views, and unstated frontal ones when PA or AP is wanted."""
    frontal_wanted = bool({"PA", "AP"} & set(wanted))
    return views.isin(wanted) | (views == UNKNOWN) | ((views == FRONTAL) & frontal_wanted)


def ingest(data_cfg: dict, rejected: list[dict] | None = None) -> tuple[pd.DataFrame, dict]:
    """The table and its shard plan; rows left out are appended to `rejected` (see REJECTED_COLUMNS)."""
    rejected = [] if rejected is None else rejected
    df = check_rows(read_source(data_cfg, rejected), rejected)
    for r in rejected:
        log.warning("rejected %s row %d%s: %s", r["table"], r["row"], f" ({r['image_id']})" if r["image_id"] else "",
                    r["reason"])
    if data_cfg["scrub_reports"]:
        log.info("report text scrubbed with data.scrub_reports %s", data_cfg["scrub_reports"])
        df = df.assign(report=scrub_reports(df["report"], data_cfg["scrub_reports"]))
    n_all = len(df)
    df = df[view_kept(df["view"], data_cfg["views"])]
    log.info("%d images listed (%d rows rejected), %d kept by the view filter %s (%d of unknown view, %d frontal of "
             "unstated projection, kept)", n_all, len(rejected), len(df), data_cfg["views"],
             (df["view"] == UNKNOWN).sum(), (df["view"] == FRONTAL).sum())
    df = assign_splits(df, data_cfg["split"])
    df, plan = plan_shards(df[COLUMNS], data_cfg["shard_size"])
    for split, n in df["split"].value_counts().sort_index().items():
        log.info("split %s: %d images, %d patients", split, n, df.loc[df["split"] == split, "patient_id"].nunique())
    log.info("%d shards of up to %d images", len(plan["shards"]), data_cfg["shard_size"])
    return df, plan


def run(data_cfg: dict, studies_out: str | Path, plan_out: str | Path, rejected_out: str | Path | None = None) -> None:
    """Write studies.csv, shards.json and rejected.csv (default: beside studies.csv)."""
    rejected: list[dict] = []
    df, plan = ingest(data_cfg, rejected)
    write_text_atomic(studies_out, df.to_csv(index=False))
    write_text_atomic(plan_out, json.dumps(plan, indent=1, sort_keys=True) + "\n")
    rejected_out = rejected_out or Path(studies_out).parent / "rejected.csv"
    write_text_atomic(rejected_out, pd.DataFrame(rejected, columns=REJECTED_COLUMNS).to_csv(index=False))


def load_studies(path: str | Path, shard: str | None = None) -> pd.DataFrame:
    """Read `studies.csv` (optionally one shard's rows) with ids as text and labels as float."""
    text = ("image_id", "source_image_id", "study_id", "patient_id", "shard", "sex")
    df = pd.read_csv(path, dtype={c: str for c in text},
                     keep_default_na=False, na_values={o: [""] for o in OBSERVATIONS + ["age"]})
    return df[df["shard"] == shard].reset_index(drop=True) if shard is not None else df
