"""Fixtures the tests make themselves: tiny DICOMs, tiny source trees, a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import config
from pipeline.dicom import DicomSpec, write_dicom
from pipeline.labels import OBSERVATIONS

# an accidental model-hub download must fail at once, in this process and in Snakemake's
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
# marker strings written into identifying DICOM tags; none may reach results/ or logs/
MARKERS = {"PatientName": "ZZMARKNAME^ZZMARKGIVEN", "PatientBirthDate": "19010203", "PatientID": "ZZMARKMRN77",
           "InstitutionName": "ZZMARK INSTITUTION", "ReferringPhysicianName": "ZZMARKDOCTOR",
           "AccessionNumber": "ZZMARKACC99", "PatientAddress": "ZZMARK STREET 1"}


@pytest.fixture
def norm_cfg() -> dict:
    cfg = config.load()["normalize"]
    cfg["size"] = 64
    return cfg


def radiograph(rows: int = 96, cols: int = 80, bits: int = 12, seed: int = 0) -> np.ndarray:
    """Stored values with structure (a bright 'mediastinum', darker 'lungs') plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    img = 0.5 + 0.3 * np.exp(-((x - 0.4) ** 2) / 0.01) - 0.2 * ((y - 0.5) ** 2 < 0.05) + 0.02 * rng.standard_normal((rows, cols))
    return np.clip(np.rint(np.clip(img, 0, 1) * (2**bits - 1)), 0, 2**bits - 1).astype(np.uint16)


@pytest.fixture
def make_dicom(tmp_path):
    def make(name: str = "img.dcm", pixels: np.ndarray | None = None, **spec) -> Path:
        path = tmp_path / name
        bits = spec.get("bits_stored", 12)
        write_dicom(path, radiograph(bits=bits) if pixels is None else pixels, DicomSpec(**spec))
        return path

    return make


def write_mimic_tree(root: Path, n_patients: int = 4, identifiers: dict | None = None, gz: bool = True) -> pd.DataFrame:
    """A MIMIC-CXR 2.x layout with small DICOMs, reports and the three tables (gzipped like the release)."""
    meta, labels, split = [], [], []
    for p in range(n_patients):
        subject = str(10_000_000 + p * 101)
        for s in range(2):
            study = str(50_000_000 + p * 10 + s)
            sdir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            views = ["PA", "LATERAL"] if s == 0 else ["AP"]
            for v, view in enumerate(views):
                dicom_id = f"{p:02d}{s}{v}aaaa-bbbbbbbb"
                write_dicom(sdir / f"{dicom_id}.dcm", radiograph(seed=p * 10 + s),
                            DicomSpec(view=view, window=(2000, 3000), identifiers=identifiers or {}))
                meta.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study, "ViewPosition": view,
                             "Rows": 96, "Columns": 80, "StudyDate": 21500101})
                split.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject,
                              "split": ["train", "validate", "test", "train"][p % 4]})
            if not (p == 0 and s == 1):  # one study without a report file
                (sdir.parent / f"s{study}.txt").write_text(f" FINDINGS: Study {s}. No pneumothorax.\n")
            labels.append({"subject_id": subject, "study_id": study, **{o: "" for o in OBSERVATIONS},
                           "Pneumothorax": 0.0, "Edema": 1.0 if s else ""})
    suffix = ".csv.gz" if gz else ".csv"
    for name, rows in (("metadata", meta), ("chexpert", labels), ("split", split)):
        text = pd.DataFrame(rows).to_csv(index=False)
        target = root / f"mimic-cxr-2.0.0-{name}{suffix}"
        target.write_bytes(gzip.compress(text.encode(), mtime=0) if gz else text.encode())
    return pd.DataFrame(meta)


def write_chexpert_tree(parent: Path, n_patients: int = 5) -> Path:
    """CheXpert-v1.0-small with train.csv / valid.csv and greyscale JPGs."""
    root = parent / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    for p in range(1, n_patients + 1):
        part = "valid" if p == n_patients else "train"
        for view, fl in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
            rel = f"CheXpert-v1.0-small/{part}/patient{p:05d}/study1/{view}.jpg"
            (parent / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((radiograph(bits=8, seed=p)).astype(np.uint8)).save(parent / rel)
            rows[part].append({"Path": rel, "Sex": "Female", "Age": 60 + p, "Frontal/Lateral": fl,
                               "AP/PA": "PA" if fl == "Frontal" else "", **{o: "" for o in OBSERVATIONS},
                               "Cardiomegaly": 1.0, "Pleural Effusion": -1.0})
    for part, r in rows.items():
        pd.DataFrame(r).to_csv(root / f"{part}.csv", index=False)
    return root


def run_snakemake(workdir: Path, *args: str, configfile: Path | None = TINY, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    if configfile:
        cmd += ["--configfile", str(configfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@contextlib.contextmanager
def removed_unless_failed(request: pytest.FixtureRequest, folder: Path):
    """For a module-scoped workflow run: its folder (up to 1.6 GB of checkpoints) goes when the module's tests
    pass, so the suite fits a small disk, and stays to debug a failure (pytest keeps only failed tests' tmp_path)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        shutil.rmtree(folder, ignore_errors=True)
