"""Synthesize: the embedded default source, written in the MIMIC-CXR 2.x layout.

    <out_dir>/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm     real DICOM (CR / DX, MONOCHROME1/2, ...)
    <out_dir>/files/pXX/pNNNNNNNN/sNNNNNNNN.txt                the report
    <out_dir>/mimic-cxr-2.0.0-{metadata,chexpert,split}.csv    the tables
    <out_dir>/ground_truth/masks/<dicom_id>.png                bit 1 right lung, bit 2 left lung, bit 4 lesion
    <out_dir>/ground_truth/findings.csv                        one row per drawn finding, box in pixels, its CNR
    <out_dir>/ground_truth/phrases.csv                         one row per report phrase with its attributes

The ground truth sits outside `files/` and the MIMIC tables, so the pipeline reads this tree exactly as it
reads MIMIC-CXR. Everything derives from `seed`: the same config gives byte-identical files. Each patient is
generated in a worker process with its own random stream, so the worker count does not change the output.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..dicom import DicomSpec, write_dicom
from ..labels import OBSERVATIONS
from ..synthetic.anatomy import LESION_FINDINGS, Thorax, expose, render_frontal, render_lateral
from ..synthetic.reports import derive_labels, phrase_rows, write_report

log = logging.getLogger("pipeline.synthesize")

KINDS = ["pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass", "atelectasis", "edema",
         "cardiomegaly", "support_devices"]
SPLITS = ("train", "validate", "test")
FIRST = ["JOHN", "MARY", "ROBERT", "PATRICIA", "JAMES", "LINDA", "DAVID", "SUSAN"]
LAST = ["SMITH", "JOHNSON", "BROWN", "GARCIA", "MILLER", "DAVIS", "WILSON", "MOORE"]


def _dicom_id(seed: int, *parts: int) -> str:
    h = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def _identifiers(rng: np.random.Generator) -> dict:
    """Invented identifying header values: they exist so the privacy tests have something to catch."""
    return {
        "PatientName": f"{rng.choice(LAST)}^{rng.choice(FIRST)}",
        "PatientID": f"MRN{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": f"19{int(rng.integers(30, 99))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": str(rng.choice(["F", "M"])),
        "InstitutionName": "Saint Example General Hospital",
        "ReferringPhysicianName": f"{rng.choice(LAST)}^{rng.choice(FIRST)}^MD",
        "AccessionNumber": f"A{int(rng.integers(10**7, 10**8))}",
        "StudyDate": f"21{int(rng.integers(10, 90))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
    }


def _storage(rng: np.random.Generator, stored_bits_choice: list[int], compressed_fraction: float) -> DicomSpec:
    """How one image is stored: the DICOM variety real archives show."""
    spec = DicomSpec(
        modality=str(rng.choice(["CR", "DX"])),
        photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        bits_stored=int(rng.choice(stored_bits_choice)),
        pixel_spacing=(round(float(rng.uniform(0.1, 0.2)), 4),) * 2,
    )
    if rng.random() < compressed_fraction:
        spec.compression = str(rng.choice(["jpeg2000", "jpegls"]))
    return spec


def clinical_window(stored: np.ndarray) -> tuple[float, float]:
    """The display range a clinical window gives a stored image: lungs grey, black left for the air outside."""
    lo, hi = np.percentile(stored, [2, 99.5])
    return float(lo - 0.15 * (hi - lo)), float(hi)


def draw_findings(rng: np.random.Generator, cfg: dict) -> list[str]:
    """The finding kinds of one study: none for a normal study, else each by its prevalence (at least one)."""
    if rng.random() < cfg["normal_fraction"]:
        return []
    kinds = [k for k in KINDS if rng.random() < cfg["prevalence"][k]]
    if not [k for k in kinds if k != "support_devices"]:
        kinds.append(str(rng.choice(KINDS[:-1])))
    if "mass" in kinds and "nodule" in kinds:
        kinds.remove("nodule")
    return kinds


def _add_voi(spec: DicomSpec, stored: np.ndarray, rng: np.random.Generator) -> None:
    """Window and, for some images, a VOI LUT sequence; sometimes a rescale (modality LUT)."""
    lo, hi = clinical_window(stored)
    if rng.random() < 0.3:
        spec.rescale = (1.0, -1024.0) if rng.random() < 0.5 else (1.0, 0.0)
    intercept = spec.rescale[1] if spec.rescale else 0.0
    spec.window = (float((lo + hi) / 2 + intercept), float(max(hi - lo, 2)))
    if not spec.rescale and rng.random() < 0.25:
        # a sigmoid VOI LUT over the whole stored range, 12-bit output
        n = 2**spec.bits_stored
        v = np.arange(n, dtype=np.float64)
        c, wdt = (lo + hi) / 2, max(hi - lo, 2)
        spec.voi_lut = np.rint(4095 / (1 + np.exp(-4 * (v - c) / wdt))).astype(np.uint16)
        spec.voi_lut_bits = 12


def plan_patients(cfg: dict) -> list[int]:
    """Studies per patient, drawn up front from the seed so the worker count cannot change them."""
    rng = np.random.default_rng([cfg["seed"], 2**31])
    lo, hi = cfg["studies_per_patient"]
    counts, total = [], 0
    while total < cfg["n_studies"]:
        counts.append(min(int(rng.integers(lo, hi + 1)), cfg["n_studies"] - total))
        total += counts[-1]
    return counts


def make_patient(args: tuple[dict, int, int]) -> dict:
    """Every study of patient `index`: files written, table rows returned."""
    cfg, index, n_studies = args
    out = Path(cfg["_out"])
    seed = cfg["seed"]
    rng = np.random.default_rng([seed, index])
    subject_id = str(10_000_000 + index * 1009 + 17)
    fr = np.array(cfg["split"], dtype=float)
    split = SPLITS[int(rng.choice(3, p=fr / fr.sum()))]
    thorax = Thorax(rng)
    sex = str(rng.choice(["F", "M"]))
    idents = _identifiers(rng)
    rows = {"metadata": [], "chexpert": [], "split": [], "findings": [], "phrases": []}
    for j in range(n_studies):
        study_id = str(50_000_000 + index * 10 + j)
        study_dir = out / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"
        kinds = draw_findings(rng, cfg)
        view = "PA" if rng.random() < 0.7 else "AP"
        rad = render_frontal(thorax, rng, cfg["image_size"], kinds, inspiration=rng.uniform(0.92, 1.04), view=view)
        layout = str(rng.choice(["full", "impression_only", "empty_findings"], p=[0.92, 0.05, 0.03]))
        report, phrases = write_report(rad.findings, rng, sex, view, layout)
        study_dir.parent.mkdir(parents=True, exist_ok=True)
        (study_dir.parent / f"s{study_id}.txt").write_text(report, encoding="utf-8")
        labels = derive_labels(phrases)
        rows["chexpert"].append({"subject_id": subject_id, "study_id": study_id, **labels})
        rows["phrases"] += phrase_rows(study_id, phrases)

        images = [(view, rad)]
        if rng.random() < cfg["lateral_fraction"]:
            images.append(("LATERAL", None))
        for v, (vp, r) in enumerate(images):
            dicom_id = _dicom_id(seed, index, j, v)
            density = r.density if r is not None else render_lateral(thorax, rng, cfg["image_size"])
            spec = _storage(rng, [12, 14, 16], cfg["compressed_fraction"])
            spec.view, spec.identifiers = vp, idents
            stored = expose(density, rng, spec.bits_stored, spec.photometric, r.noise if r is not None else None)
            _add_voi(spec, stored, rng)
            write_dicom(study_dir / f"{dicom_id}.dcm", stored, spec, uid_prefix=dicom_id)
            rows["metadata"].append({
                "dicom_id": dicom_id, "subject_id": subject_id, "study_id": study_id,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)",
                "ViewPosition": vp, "Rows": stored.shape[0], "Columns": stored.shape[1],
                "StudyDate": 2100_01_01 + index, "StudyTime": 120000.0,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": {"PA": "postero-anterior", "AP": "antero-posterior",
                                                 "LATERAL": "lateral"}[vp],
                "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
            rows["split"].append({"dicom_id": dicom_id, "study_id": study_id, "subject_id": subject_id,
                                  "split": split})
            if r is None:
                continue
            mask = (r.right_lung * 1 + r.left_lung * 2 + r.lesion * 4).astype(np.uint8)
            Image.fromarray(mask).save(out / "ground_truth" / "masks" / f"{dicom_id}.png")
            for k, f in enumerate(r.findings):
                x0, y0, x1, y1 = f.box or (0, 0, 0, 0)
                rows["findings"].append({"dicom_id": dicom_id, "study_id": study_id, "finding_index": k,
                                         "finding": f.kind, "laterality": f.laterality, "zone": f.zone,
                                         "size": f.size, "detail": f.detail,
                                         "area": int(f.mask.sum()) if f.kind in LESION_FINDINGS else 0,
                                         "x0": x0, "y0": y0, "x1": x1, "y1": y1, "cnr": f.cnr})
    return rows


def run(cfg: dict, out_dir: str | Path, workers: int = 1) -> dict:
    """Generate the whole tree into `out_dir` (built beside it, then renamed into place)."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "ground_truth" / "masks").mkdir(parents=True)
    job_cfg = {**cfg, "_out": str(tmp)}
    jobs = [(job_cfg, i, n) for i, n in enumerate(plan_patients(cfg))]
    try:
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.map(make_patient, jobs, chunksize=4)
        else:
            parts = [make_patient(j) for j in jobs]
        tables = {k: pd.DataFrame([r for p in parts for r in p[k]]) for k in parts[0]}
        tables["chexpert"] = tables["chexpert"][["subject_id", "study_id", *OBSERVATIONS]]
        for name in ("metadata", "chexpert", "split"):
            tables[name].to_csv(tmp / f"mimic-cxr-2.0.0-{name}.csv", index=False)
        tables["findings"].to_csv(tmp / "ground_truth" / "findings.csv", index=False)
        tables["phrases"].to_csv(tmp / "ground_truth" / "phrases.csv", index=False)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    counts = {"patients": len(jobs), "studies": len(tables["chexpert"]), "images": len(tables["metadata"]),
              "findings": len(tables["findings"]), "phrases": len(tables["phrases"])}
    log.info("synthetic tree %s: %s", out_dir, counts)
    return counts
