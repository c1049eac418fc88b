"""`python -m pipeline bench scale`: the workflow's per-stage throughput and memory at N and 10N films.

A few synthetic films are rendered once (`bench.unet.render_films`); each size is then a MIMIC-CXR-layout folder
(`files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm`, the reports, the metadata / chexpert / split tables) of N films
under new pseudonymous ids, every DICOM and report a hard link to one of the rendered ones, and a CheXmask-format
table of the same N rows (`bench.unet.write_chexmask_set`) that trains the U-Net (`segment.train`). The real
workflow runs on it (`snakemake --cores 2 train`: ingest, normalize, train_segmenter, segment, crop,
parse_reports, model_inputs, the teacher for 2 steps, embed_teacher, a few steps of the student).

Every figure comes from the `benchmark:` files the rules write (`benchmarks/<rule>/*.tsv`: wall seconds `s`,
`max_rss` in MB of the job's process tree): per stage, images per job-second (images / the jobs' summed seconds;
a job of `t` threads counts `t` cores) and peak RSS (the largest job). From the per-core rates of the per-image
stages, MIMIC-CXR's 377,110 images are projected onto an 8-core workstation. The student's training memory is
measured as before in a fresh process on the workflow's shards: streaming at N and 10N, the old in-memory path at N.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from .. import config
from ..labels import OBSERVATIONS
from ..shards import Shard
from ..stages import ingest
from .child import peak_rss, run_child
from .unet import render_films, write_chexmask_set

MIMIC_IMAGES = 377_110  # MIMIC-CXR 2.0, every view (Johnson et al., Sci Data 2019)
WORKSTATION_CORES = 8
PER_IMAGE = ("normalize", "segment", "crop", "model_inputs")  # one job per shard, cost in proportion to images
# the rules whose benchmark files are read, in workflow order; `train` is the student's rule train_run
STAGES = ("normalize", "train_segmenter", "segment", "crop", "parse_reports", "model_inputs",
          "embed_teacher", "train")
RULE = {"train": "train_run"}  # a benchmark folder -> its rule's name, where they differ
FIRST_SUBJECT, FIRST_STUDY = 10_000_000, 50_000_000  # MIMIC's id ranges (8 digits)
STUDIES_PER_PATIENT = 2
SHARD_SIZES = (64, 250, 500, 1000, 2000)  # data.shard_size values the MIMIC-CXR projection is given for


# ------------------------------------------------------------------------------------------------ the source
def write_source(out: Path, n_films: int, films_dir: Path, films_shard: Path, masks_dir: Path) -> Path:
    """A MIMIC-CXR-layout folder of `n_films` films under `out`: film r is `f{r:06d}` (the CheXmask table's id),
    one film per study, STUDIES_PER_PATIENT studies per patient, patients split 90 / 5 / 5 by number; its DICOM
    and report are hard links to one of the rendered films (row r of the CheXmask table is that film's masks).
    Returns the CheXmask table (`out/chexmask/MIMIC-CXR-JPG.csv`)."""
    out.mkdir(parents=True, exist_ok=True)
    table = write_chexmask_set(out / "chexmask", n_films, films_shard, masks_dir)
    # write_chexmask_set also writes normalize-format shards (bench unet trains from them); here the workflow
    # normalizes the films itself, so they go
    for shard in (out / "chexmask").glob("shard-*.h5"):
        shard.unlink()
    with Shard(films_shard) as s:
        order = s.image_ids  # the table's row r is film order[r % len(order)]
    films = ingest.read_mimic(films_dir).set_index("image_id").loc[order]
    mimic = out / "mimic"
    if (mimic / "mimic-cxr-2.0.0-split.csv").exists():
        return table
    meta, labels, splits = [], [], []
    for r in range(n_films):
        film = films.iloc[r % len(films)]
        patient, study = FIRST_SUBJECT + r // STUDIES_PER_PATIENT, FIRST_STUDY + r
        dicom_id = f"f{r:06d}"
        study_dir = mimic / "files" / f"p{str(patient)[:2]}" / f"p{patient}" / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        _link(Path(film["image_path"]), study_dir / f"{dicom_id}.dcm")
        _link(Path(film["image_path"]).parent.with_suffix(".txt"), study_dir.with_suffix(".txt"))
        meta.append({"dicom_id": dicom_id, "subject_id": patient, "study_id": study, "ViewPosition": film["view"]})
        labels.append({"subject_id": patient, "study_id": study, **{o: film[o] for o in OBSERVATIONS}})
        turn = (r // STUDIES_PER_PATIENT) % 20
        splits.append({"dicom_id": dicom_id, "study_id": study, "subject_id": patient,
                       "split": "validate" if turn == 0 else "test" if turn == 1 else "train"})
    pd.DataFrame(meta).to_csv(mimic / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(labels).to_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    pd.DataFrame(splits).to_csv(mimic / "mimic-cxr-2.0.0-split.part", index=False)
    (mimic / "mimic-cxr-2.0.0-split.part").rename(mimic / "mimic-cxr-2.0.0-split.csv")  # written last: the mark
    return table


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:  # another filesystem
            shutil.copyfile(src, dst)


# ------------------------------------------------------------------------------------------------ the workflow
def workflow_config(source: Path, chexmask: Path, shard_size: int, size: int, unet_size: int,
                    student_steps: int) -> dict:
    """The bench's config, merged over config.yaml: the film folder as MIMIC-CXR, the U-Net from the CheXmask
    table (one epoch), the teacher fitted 2 steps on the target (no pretraining cohort), a few student steps."""
    return {"data": {"source": "mimic-cxr", "root": str(source), "shard_size": shard_size},
            "normalize": {"size": size},
            "segment": {"train": [{"format": "chexmask", "path": str(chexmask)}], "input_size": unet_size,
                        "epochs": 1, "min_steps": 0, "patience": 0},
            "teacher": {"fit_on": "target", "steps": 2, "batch_size": 8, "warmup_steps": 1, "validate_every": 0},
            "train": {"steps": student_steps, "batch_size": 16, "warmup_steps": 1, "validate_every": 0,
                      "checkpoint_every": student_steps},
            "evaluate": {"manifests": ""}}


def run_workflow(workdir: Path, cfg: dict, cores: int = 2) -> float:
    """Run `snakemake train` from scratch in `workdir` (old results and benchmark files removed); seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("results", "benchmarks", "logs", ".snakemake"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    (workdir / "bench.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "train", "--snakefile", str(config.ROOT / "Snakefile"),
           "--directory", str(workdir), "--cores", str(cores), "--quiet", "all",
           "--configfile", str(workdir / "bench.yaml")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench scale: the workflow failed in {workdir}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _benchmark_rows(folder: Path) -> list[dict]:
    rows = []
    for tsv in sorted(folder.rglob("*.tsv")):
        if tsv.name == "concepts.tsv":  # embed_concepts shares embed_teacher's folder; not per image
            continue
        with open(tsv) as f:
            rows += [{"file": tsv, **{k: float(v) for k, v in r.items() if k in ("s", "max_rss", "max_pss")}}
                     for r in csv.DictReader(f, delimiter="\t")]
    return rows


def stage_figures(workdir: Path, cfg: dict, cores: int = 2) -> dict:
    """stage -> jobs, images, seconds (summed), threads, images_s (images per job-second), core_images_s (per
    core-second: threads x seconds), peak_rss_mb and peak_pss_mb (the largest job's), read from the workflow's
    benchmark files. Images: a per-shard job counts its shard's images (the ingest plan); train_segmenter the
    images it trained on times its epochs; the student its steps x batch size."""
    res = workdir / "results"
    plan = json.loads((res / "ingest" / "shards.json").read_text())
    merged = config.load(overrides=cfg)
    threads = {s: min(cores, {**merged["resources"]["default"], **merged["resources"].get(RULE.get(s, s), {})}
                      ["threads"]) for s in STAGES}
    seg = json.loads((res / "segmenter" / "metrics.json").read_text())
    student = json.loads((res / "train" / "student" / "summary.json").read_text())
    whole = {"train_segmenter": seg["train_images"] * seg["epochs"],
             "train": student["steps"] * merged["train"]["batch_size"]}
    out = {}
    for stage in STAGES:
        rows = _benchmark_rows(workdir / "benchmarks" / stage)
        if not rows:
            raise RuntimeError(f"bench scale: no benchmark files for {stage} in {workdir / 'benchmarks'}")
        if stage in whole:
            images = whole[stage]
        else:  # shard-XXXXX.tsv: that shard's images
            images = sum(plan["shards"][r["file"].stem.removeprefix("shard-")]["n_images"] for r in rows)
        seconds = sum(r["s"] for r in rows)
        out[stage] = {"jobs": len(rows), "images": images, "seconds": seconds, "threads": threads[stage],
                      "images_s": images / seconds, "core_images_s": images / (seconds * threads[stage]),
                      "peak_rss_mb": max(r["max_rss"] for r in rows),
                      "peak_pss_mb": max(r["max_pss"] for r in rows)}
    return out


def project(core_rates: dict[str, float], images: int = MIMIC_IMAGES, cores: int = WORKSTATION_CORES) -> dict:
    """Hours each per-image stage takes for `images` on `cores` cores at its measured per-core rate (images per
    core-second; the per-shard jobs keep every core busy), their total and the stage that dominates."""
    hours = {s: images / (rate * cores) / 3600 for s, rate in core_rates.items()}
    return {"images": images, "cores": cores, "hours": hours, "total_hours": sum(hours.values()),
            "dominant": max(hours, key=hours.get)}


def startup_seconds(stage: str, repeats: int = 3) -> float:
    """What a job of `stage` pays before its first image: a fresh interpreter importing what its script imports
    (Snakemake's script module, the stage's module). The median of `repeats`, each in its own process."""
    code = f"import snakemake.script, pipeline.io, pipeline.stages.{stage}"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def split_startup(figures: dict, startup: float) -> dict:
    """One stage's figures (`stage_figures`) less its jobs' start-up: `work_core_images_s`, images per core-second
    of the seconds left after `startup` per job (at least a tenth of each job's seconds, so that a start-up
    measured on a busier moment cannot leave nothing)."""
    work = max(figures["seconds"] - figures["jobs"] * startup, 0.1 * figures["seconds"])
    return {**figures, "startup_s": startup, "work_core_images_s": figures["images"] / (work * figures["threads"])}


def project_sharded(stages: dict, shard_size: int, images: int = MIMIC_IMAGES,
                    cores: int = WORKSTATION_CORES) -> dict:
    """`project` with shards of `shard_size`: each stage (`split_startup`'s figures) costs its jobs' start-up
    (ceil(images / shard_size) jobs, each holding its threads) plus its images at the rate without start-up."""
    hours = {}
    for s, f in stages.items():
        jobs = -(-images // shard_size)
        core_s = jobs * f["startup_s"] * f["threads"] + images / f["work_core_images_s"]
        hours[s] = core_s / cores / 3600
    return {"images": images, "cores": cores, "shard_size": shard_size, "hours": hours,
            "total_hours": sum(hours.values()), "dominant": max(hours, key=hours.get)}


# ------------------------------------------------------------------------------------------------ the student
def child(workdir: str, steps: int, batch_size: int, in_memory: bool) -> dict:
    """Train `steps` student steps on the workflow's shards under workdir; runs in its own process."""
    import numpy as np
    import torch

    from .. import models
    from ..data import load_region_data
    from ..losses import RegionAwareLoss
    from ..model_spec import input_spec
    from ..trainer import CLIPTrainStep, RegionBatches, param_groups, step_loader

    workdir = Path(workdir)
    cfg = config.load(overrides=yaml.safe_load((workdir / "bench.yaml").read_text()))["train"]
    cfg = {**cfg, "steps": steps + 1, "batch_size": batch_size, "num_workers": 0 if in_memory else 2}
    size = models.input_size(cfg["model"])
    res = workdir / "results"
    names = [p.name for p in sorted((res / "embed").glob("shard-*.h5"))]
    inputs = {"inputs": [res / "inputs" / input_spec(cfg["model"]).key / n for n in names],
              "normalized": [res / "normalize" / n for n in names], "crops": [res / "crop" / n for n in names],
              "reports": [res / "reports" / n for n in names], "embed": [res / "embed" / n for n in names],
              "concepts": res / "embed" / "concepts.h5"}
    t0 = time.perf_counter()
    data = load_region_data(inputs, {"train"}, size, cfg["uncertain"], cfg["negatives"], cfg["max_pairs_per_image"],
                            cfg["clear_pairs"])
    if in_memory:  # the old path: everything in RAM before training
        data.images = data.images[np.arange(len(data))]
        data.teacher_roi = data.teacher_roi[np.arange(len(data.pair_text))]
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    torch.set_num_threads(1)
    clip = models.create(cfg["model"])
    step = CLIPTrainStep(clip, RegionAwareLoss(cfg["alpha"], cfg["beta"], cfg["gamma"], cfg["lambda"]))
    optimizer = torch.optim.AdamW(param_groups(clip, 0.1), lr=1e-4)
    times = []
    for micros in step_loader(RegionBatches(data, cfg["model"], cfg), cfg, 0, 0, 1, pin=False):
        t = time.perf_counter()
        for micro in micros:
            optimizer.zero_grad(set_to_none=True)
            step(micro)["total_loss"].backward()
            optimizer.step()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0 - load_s
    return {"images": len(data), "pairs": len(data.pair_text), "load_s": load_s,
            "samples_s": steps * batch_size / (total - times[0]),  # the first step (worker start-up) is not timed
            **peak_rss()}


def _run_child(workdir: Path, steps: int, batch_size: int, in_memory: bool) -> dict:
    return run_child(f"pipeline.bench.scale.child({str(workdir)!r}, {steps}, {batch_size}, {in_memory})",
                     "bench scale")


# ------------------------------------------------------------------------------------------------ the bench
def bench_scale(n: int = 500, films: int = 16, shard_size: int | None = None, size: int = 128, unet_size: int = 64,
                student_steps: int = 5, memory_steps: int = 20, batch_size: int = 16,
                workdir: str | Path = "benchmarks/scale", cores: int = 2) -> dict:
    """The workflow at N and 10N films: per-stage figures, their 10N / N peak RSS ratios, the MIMIC-CXR
    projection from the 10N rates, and the student's memory (streaming at N and 10N, in memory at N). Shards hold
    N films unless `shard_size` says otherwise: N is one full shard and 10N ten, so a per-shard job's memory is
    compared at the same shard size."""
    shard_size = shard_size or n
    workdir = Path(workdir).resolve()
    t_start = time.perf_counter()
    films_dir = workdir / f"films-{films}"
    # the films are rendered at 512 rows (render_films); the 32 px shard only orders them for the CheXmask table
    films_shard, masks_dir = render_films(films_dir, films, 32)
    out = {"films": films, "shard_size": shard_size, "size": size, "unet_size": unet_size, "cores": cores,
           "student_steps": student_steps, "memory_steps": memory_steps, "load_before": os.getloadavg()[0]}
    for name in ("N", "10N"):
        n_films = n * (10 if name == "10N" else 1)
        folder = workdir / f"{n_films}-films"
        t0 = time.perf_counter()
        table = write_source(folder / "source", n_films, films_dir / "data", films_shard, masks_dir)
        cfg = workflow_config(folder / "source" / "mimic", table, shard_size, size, unet_size, student_steps)
        source_s = time.perf_counter() - t0
        workflow_s = run_workflow(folder / "run", cfg, cores)
        out[name] = {"films": n_films, "source_s": source_s, "workflow_s": workflow_s,
                     "stages": stage_figures(folder / "run", cfg, cores)}
        if memory_steps:
            out[name]["student_memory"] = _run_child(folder / "run", memory_steps, batch_size, in_memory=False)
    if memory_steps:
        out["in_memory_N"] = _run_child(workdir / f"{n}-films" / "run", memory_steps, batch_size, in_memory=True)
        out["student_memory_ratio"] = (out["10N"]["student_memory"]["peak_rss_mb"]
                                       / out["N"]["student_memory"]["peak_rss_mb"])
        out["speed_ratio"] = out["N"]["student_memory"]["samples_s"] / out["in_memory_N"]["samples_s"]
    out["rss_ratio"] = {s: out["10N"]["stages"][s]["peak_rss_mb"] / out["N"]["stages"][s]["peak_rss_mb"]
                        for s in STAGES}
    big = out["10N"]["stages"]  # the larger set: more jobs per stage behind each rate
    out["projection"] = project({s: big[s]["core_images_s"] for s in PER_IMAGE})
    # the same rates less each job's start-up, measured here after the runs: MIMIC-CXR at other shard sizes
    out["startup"] = {s: split_startup(big[s], startup_seconds(s)) for s in PER_IMAGE}
    out["by_shard_size"] = {k: project_sharded(out["startup"], k) for k in SHARD_SIZES}
    # parse_reports and embed_teacher run per shard too (on reports, and on ROIs with the teacher): beside it
    for s in ("parse_reports", "embed_teacher"):
        out[f"{s}_hours"] = project({s: big[s]["core_images_s"]})["total_hours"]
    out["load_after"] = os.getloadavg()[0]
    out["seconds"] = time.perf_counter() - t_start
    (workdir / "result.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    return out
