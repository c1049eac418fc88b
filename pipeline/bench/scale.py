"""`python -m pipeline bench scale`: memory flat in dataset size.

Builds the synthetic set twice, at N and 10N studies (small images, so it runs in minutes on a laptop), through the
workflow itself (every shard a real stage wrote), then trains the same student steps on each in a fresh process:
peak RSS of the training process and of its DataLoader workers, and samples/s. The old in-memory path (every
training image and teacher ROI embedding read into RAM first, batches made in the training process) runs at N
for comparison.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..config import ROOT


def _config(n_studies: int) -> dict:
    return {"data": {"shard_size": 64, "synthetic": {"n_studies": n_studies, "image_size": 128, "split": [0.8, 0.1, 0.1]}},
            "normalize": {"size": 64}, "segment": {"input_size": 64, "epochs": 1},
            "crop": {"roi_size": 32, "min_size": 8, "min_lesion_area": 4},
            "teacher": {"steps": 2, "batch_size": 8, "warmup_steps": 1},
            "train": {"steps": 1, "batch_size": 8, "warmup_steps": 1}}


def build(workdir: Path, n_studies: int) -> None:
    """The shards of a synthetic set of `n_studies` studies, made by the workflow (target `train`, 1 step)."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bench.yaml").write_text(yaml.safe_dump(_config(n_studies)))
    cmd = [sys.executable, "-m", "snakemake", "train", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(workdir), "--cores", "2", "--quiet", "all", "--rerun-incomplete", "--configfile", str(workdir / "bench.yaml")]
    subprocess.run(cmd, check=True, cwd=workdir, capture_output=True)


def child(workdir: str, steps: int, batch_size: int, in_memory: bool) -> dict:
    """Train `steps` student steps on the shards under workdir; runs in its own process."""
    import numpy as np
    import torch

    from .. import config, models
    from ..data import load_region_data
    from ..model_spec import input_spec
    from ..losses import RegionAwareLoss
    from ..trainer import CLIPTrainStep, RegionBatches, param_groups, step_loader

    workdir = Path(workdir)
    cfg = config.load(workdir / "bench.yaml")["train"]
    cfg = {**cfg, "steps": steps + 1, "batch_size": batch_size, "num_workers": 0 if in_memory else 2}
    size = models.input_size(cfg["model"])
    names = [p.name for p in sorted((workdir / "results" / "embed").glob("shard-*.h5"))]
    res = workdir / "results"
    inputs = {"inputs": [res / "inputs" / input_spec(cfg["model"]).key / n for n in names], "normalized": [res / "normalize" / n for n in names],
              "crops": [res / "crop" / n for n in names], "reports": [res / "reports" / n for n in names],
              "embed": [res / "embed" / n for n in names], "concepts": res / "embed" / "concepts.h5"}
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
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _run_child(workdir: Path, steps: int, batch_size: int, in_memory: bool) -> dict:
    code = (f"import json; from pipeline.bench.scale import child; "
            f"print(json.dumps(child({str(workdir)!r}, {steps}, {batch_size}, {in_memory})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale(n: int = 48, steps: int = 20, batch_size: int = 16, workdir: str | Path = "benchmarks/scale") -> dict:
    workdir = Path(workdir)
    out = {}
    for name, studies in (("N", n), ("10N", 10 * n)):
        t0 = time.perf_counter()
        build(workdir / f"{studies}-studies", studies)
        out[f"build_{name}_s"] = time.perf_counter() - t0
        out[name] = _run_child(workdir / f"{studies}-studies", steps, batch_size, in_memory=False)
    out["in_memory_N"] = _run_child(workdir / f"{n}-studies", steps, batch_size, in_memory=True)
    out["rss_ratio"] = out["10N"]["peak_rss_mb"] / out["N"]["peak_rss_mb"]
    out["speed_ratio"] = out["N"]["samples_s"] / out["in_memory_N"]["samples_s"]
    return out
