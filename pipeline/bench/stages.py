"""`bench normalize`: images/s of the normalize stage beside a minimal baseline on the same files in the same
run (pydicom decode + resize + PNG write, nothing else). `bench synthesize`: studies/s on one core.
`bench pairing`: ROI <-> phrase pairs on the workflow's shards, scored on the synthetic truth.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from .. import config
from ..stages import ingest, normalize, synthesize


def _synthetic(tmp: Path, n_studies: int, size: int) -> pd.DataFrame:
    cfg = config.load()["data"]["synthetic"]
    cfg.update(n_studies=n_studies, image_size=size, lateral_fraction=0.0)
    synthesize.run(cfg, tmp / "data", workers=2)
    return ingest.read_mimic(tmp / "data")


def baseline_normalize(paths: list[str], size: int, png_dir: Path) -> None:
    """The least a DICOM -> PNG converter does: decode, scale to 8 bits, resize, write."""
    png_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        arr = pydicom.dcmread(p).pixel_array.astype(np.float32)
        h, w = arr.shape
        s = size / max(h, w)
        img = Image.fromarray(arr / max(float(arr.max()), 1.0)).resize((round(w * s), round(h * s)))
        Image.fromarray(np.uint8(np.asarray(img) * 255)).save(png_dir / f"{Path(p).stem}.png")


def bench_normalize(n: int, size: int) -> dict:
    cfg = config.load()["normalize"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        table = _synthetic(tmp, n_studies=n, size=size).head(n)
        table, _ = ingest.plan_shards(table.assign(split="train"), shard_size=len(table))
        studies = tmp / "studies.csv"
        table.to_csv(studies, index=False)
        paths = table["image_path"].tolist()
        for p in paths:  # warm the page cache for both contenders
            Path(p).read_bytes()
        t0 = time.perf_counter()
        baseline_normalize(paths, cfg["size"], tmp / "baseline")
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        normalize.run(studies, "00000", tmp / "shard.h5", tmp / "png", cfg)
        t_ours = time.perf_counter() - t0
    out = {"images": len(paths), "source_rows": size, "out_size": cfg["size"],
           "baseline_img_s": len(paths) / t_base, "normalize_img_s": len(paths) / t_ours}
    out["ratio"] = out["normalize_img_s"] / out["baseline_img_s"]
    return out


def bench_synthesize(n: int, size: int) -> dict:
    cfg = config.load()["data"]["synthetic"]
    cfg.update(n_studies=n, image_size=size)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        counts = synthesize.run(cfg, Path(d) / "data", workers=1)
        dt = time.perf_counter() - t0
    return {**counts, "image_rows": size, "seconds": dt, "studies_s_per_core": counts["studies"] / dt}


def bench_pairing(results: str = "results") -> dict:
    """ROI <-> phrase pairing on the workflow's crop and report shards, scored on the synthetic truth."""
    from ..pairing import accuracy_on_truth

    truth = Path(config.load()["data"]["synthetic"]["out_dir"]) / "ground_truth"
    crops = sorted(Path(results, "crop").glob("shard-*.h5"))
    return accuracy_on_truth(crops, [Path(results, "reports", c.name) for c in crops], truth)
