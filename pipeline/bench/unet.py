"""`python -m pipeline bench unet`: U-Net training memory and speed against the number of masks.

A CheXmask-format table (MIMIC-CXR-JPG columns, original-resolution RLE) of N and 10N rows joined to normalize
shards of as many images. Rows repeat a few rendered films under new ids, so building 20,000 rows takes a minute.
Each size trains the same U-Net for the same steps in a fresh process, streaming (`real_datasets`: a row's pixels
read from the shard and its RLE decoded per batch, in DataLoader workers where cores are spare); the old in-memory
path (every image and mask decoded and stacked first, `real_examples`) trains at N for comparison, in turns with
the streaming path. Printed: peak RSS of the training process, and where it had workers that of its largest child
process (a forked worker counts the pages it shares with the training process; `import torch` also runs a child,
ldconfig, of about 500 MB), and samples/s (the first step, worker start-up, not timed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import config
from ..masks import rle_encode
from ..shards import Shard, ShardWriter
from ..stages import ingest, normalize
from .child import peak_rss, run_child

SHARD_ROWS = 1000


def render_films(folder: Path, films: int, size: int) -> tuple[Path, Path]:
    """`films` synthetic studies, normalized into one shard; their ground-truth masks. Built once per folder."""
    from .stages import _synthetic

    shard, masks = folder / "films.h5", folder / "data" / "ground_truth" / "masks"
    if not shard.exists():
        table = _synthetic(folder, n_studies=films, size=512)
        table, _ = ingest.plan_shards(table.assign(split="train"), shard_size=len(table))
        table.to_csv(folder / "studies.csv", index=False)
        normalize.run(folder / "studies.csv", "00000", shard, None, {**config.load()["normalize"], "size": size})
    return shard, masks


def write_chexmask_set(out: Path, rows: int, films_shard: Path, masks_dir: Path, validate_every: int = 10) -> Path:
    """`rows` images under new ids (`f000000`...), each a copy of one rendered film, in normalize-format shards
    of SHARD_ROWS (images uncompressed: quick to write; the workflow's are gzipped, about 1 ms more a read), and
    their CheXmask table `MIMIC-CXR-JPG.csv` (lungs as RLE in the film's original grid).
    Every `validate_every`-th image is in the validate split."""
    out.mkdir(parents=True, exist_ok=True)
    table = out / "MIMIC-CXR-JPG.csv"
    if table.exists():
        return table
    with Shard(films_shard) as s:
        images, transforms, sizes, ids = (s.f["image"][()], s.f["transform"][()], s.f["original_size"][()],
                                          s.image_ids)
    rle = []
    for image_id in ids:
        bits = np.asarray(Image.open(masks_dir / f"{image_id}.png"))
        rle.append((rle_encode(bits & 1 > 0), rle_encode(bits & 2 > 0), *bits.shape))
    pick = np.arange(rows) % len(ids)
    names = [f"f{r:06d}" for r in range(rows)]
    for start in range(0, rows, SHARD_ROWS):
        part = slice(start, min(rows, start + SHARD_ROWS))
        with ShardWriter(out / f"shard-{start // SHARD_ROWS:05d}.h5", stage="normalize", stage_version=0,
                         config={}, image_id=names[part]) as w:
            w.rows("image", images[pick[part]], compress=False)  # gzip of 20,000 images would take minutes
            w.rows("transform", transforms[pick[part]])
            w.rows("original_size", sizes[pick[part]])
            w.rows("patient_id", [f"p{r:06d}" for r in range(part.start, part.stop)])
            w.rows("split", ["validate" if r % validate_every == 0 else "train" for r in range(part.start, part.stop)])
    frame = pd.DataFrame({"dicom_id": names, "Dice RCA (Mean)": 0.9, "Dice RCA (Max)": 0.95, "Landmarks": "[]",
                          "Left Lung": [rle[i][1] for i in pick], "Right Lung": [rle[i][0] for i in pick], "Heart": "",
                          "Height": [rle[i][2] for i in pick], "Width": [rle[i][3] for i in pick]})
    frame.to_csv(table.with_suffix(".part"), index=False)
    table.with_suffix(".part").rename(table)
    return table


def child(folder: str, steps: int, in_memory: bool, size: int) -> dict:
    """Train `steps` U-Net steps on the set in `folder` (runs in its own process)."""
    from ..stages import train_segmenter as ts

    folder = Path(folder)
    cfg = config.load()
    seg = {**cfg["segment"], "patience": 0}
    norm_cfg = {**cfg["normalize"], "size": size}
    source = [{"format": "chexmask", "path": str(folder / "MIMIC-CXR-JPG.csv")}]
    t0 = time.perf_counter()
    ingested = ts.ingested_images(sorted(folder.glob("shard-*.h5")), None)
    fractions = {"train": 0.9, "validate": 0.1, "test": 0.0}
    make = ts.real_examples if in_memory else ts.real_datasets
    train = make(source, ingested, norm_cfg, fractions, folder / "unpacked")["train"]
    prepare_s = time.perf_counter() - t0
    _, metrics = ts.train({"train": train}, seg, threads=2, max_steps=steps)
    return {"rows": len(ingested.rows), "train_images": metrics["train_images"], "prepare_s": prepare_s,
            "samples_s": metrics["samples_s"], "steps": metrics["steps"], "workers": metrics["num_workers"],
            **peak_rss()}


def _run_child(folder: Path, steps: int, in_memory: bool, size: int) -> dict:
    return run_child(f"pipeline.bench.unet.child({str(folder)!r}, {steps}, {in_memory}, {size})", "bench unet")


def bench_unet(rows: int = 2000, steps: int = 150, repeats: int = 3, films: int = 8, size: int | None = None,
               workdir: str | Path = "benchmarks/unet") -> dict:
    """Peak RSS at N and 10N rows (streaming) and at N in memory; samples/s streaming / in-memory at N as the ratio
    of the means of `repeats` runs each, taken in turns (run-to-run spread on 2 shared cores is about 10 %)."""
    size = size or config.load()["normalize"]["size"]
    workdir = Path(workdir).resolve()
    films_shard, masks_dir = render_films(workdir / f"films-{films}-{size}", films, size)
    out = {"size": size, "input_size": config.load()["segment"]["input_size"], "steps": steps, "repeats": repeats}
    for name, n in (("N", rows), ("10N", 10 * rows)):
        t0 = time.perf_counter()
        write_chexmask_set(workdir / f"{n}-rows-{size}", n, films_shard, masks_dir)
        out[f"build_{name}_s"] = time.perf_counter() - t0
    small = workdir / f"{rows}-rows-{size}"
    out["10N"] = _run_child(workdir / f"{10 * rows}-rows-{size}", steps, False, size)
    runs = {False: [], True: []}
    for _ in range(repeats):
        for in_memory in (False, True):
            runs[in_memory].append(_run_child(small, steps, in_memory, size))
    out["N"], out["in_memory_N"] = runs[False][0], runs[True][0]
    out["samples_s"] = {"streaming": [r["samples_s"] for r in runs[False]],
                        "in_memory": [r["samples_s"] for r in runs[True]]}
    out["rss_ratio"] = out["10N"]["peak_rss_mb"] / out["N"]["peak_rss_mb"]
    if out["N"]["workers"] and out["10N"]["workers"]:
        out["worker_rss_ratio"] = out["10N"]["worker_peak_rss_mb"] / out["N"]["worker_peak_rss_mb"]
    out["speed_ratio"] = float(np.mean(out["samples_s"]["streaming"]) / np.mean(out["samples_s"]["in_memory"]))
    return out
