"""`python -m pipeline bench train`: what caching the teacher buys, on the workflow's own shards.

(a) cached: the student trains from the embed shards (the teacher's ROI embeddings and concept embeddings).
(b) online: the same student, batches and steps, with the frozen teacher loaded and run on each step's ROIs
    inside the step (its concept embeddings computed once up front, the most favourable online variant).
Each mode runs in a fresh process so its peak memory is its own: peak RSS (ru_maxrss) on CPU and
torch.cuda.max_memory_allocated on a GPU; "training memory" is the peak above the RSS after imports and data.

Loading: the student's images at the model's input size read from the model_inputs shards, against decoding
the normalize PNGs with the same resize; and the whole loader (pairing, captions, teacher embeddings) with either.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import config


def _inputs(results: str | Path, model: str) -> dict:
    from ..model_spec import input_spec

    results, key = Path(results), input_spec(model).key
    names = [p.name for p in sorted((results / "embed").glob("shard-*.h5"))]
    inputs = [results / "inputs" / key / n for n in names]
    if not names or not (results / "embed" / "concepts.h5").exists() or not all(p.exists() for p in inputs):
        raise SystemExit(f"no embed or {key} model_inputs shards under {results}: run `snakemake --cores 8 train` "
                         "first")
    return {"inputs": inputs, "normalized": [results / "normalize" / n for n in names],
            "crops": [results / "crop" / n for n in names], "reports": [results / "reports" / n for n in names],
            "embed": [results / "embed" / n for n in names], "concepts": results / "embed" / "concepts.h5"}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _load(cfg: dict, results: str | Path):
    from .. import models
    from ..data import load_region_data

    size = models.input_size(cfg["model"])
    return load_region_data(_inputs(results, cfg["model"]), {"train"}, size, cfg["uncertain"], cfg["negatives"],
                            cfg["max_pairs_per_image"], cfg["clear_pairs"])


def bench_loading(results: str | Path = "results", repeats: int = 5) -> dict:
    """Samples/s of the student's images at model size (a) read from the model_inputs shards and (b) decoded
    from the normalize PNGs with the same resize; and of the whole loader (pairing, captions and teacher
    embeddings included) with its images from (a) or from (b)."""
    from PIL import Image

    from .. import models  # noqa: F401  (imports torch and open_clip before the clock starts)
    from ..data import resize
    from ..shards import Shard

    cfg = config.load()
    data = _load(cfg["train"], results)
    size, n = data.images.shape[-1], len(data)
    pngs = {p.stem: p for p in (Path(results) / "normalize" / "png").rglob("*.png")}
    files = [pngs[image_id] for image_id in data.image_id]
    shards = _inputs(results, cfg["train"]["model"])["inputs"]
    wanted = set(data.image_id)

    def loader():
        _load(cfg["train"], results)

    def pixels_from_shards():
        for path in shards:
            with Shard(path) as m:
                rows = [i for i, image_id in enumerate(m.image_ids) if image_id in wanted]
                m.f["image"][()][rows]

    def pixels_from_pngs():  # decoding is per file; the resize is batched
        resize(np.stack([np.array(Image.open(p).convert("L")) for p in files]), size)

    best = {}
    for _ in range(repeats):  # interleaved; the best of each (timeit's rule: the rest is other processes' noise)
        for name, fn in (("loader", loader), ("shards", pixels_from_shards), ("png", pixels_from_pngs)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
    png_loader = best["loader"] - best["shards"] + best["png"]
    return {"samples": n, "shards_samples_s": n / best["shards"], "png_samples_s": n / best["png"],
            "ratio": best["png"] / best["shards"], "loader_samples_s": n / best["loader"],
            "png_loader_samples_s": n / png_loader, "loader_ratio": png_loader / best["loader"]}


def child(mode: str, steps: int, teacher_model: str, results: str | Path = "results") -> dict:
    """One mode in this process; prints nothing, returns the figures."""
    import torch
    import torch.nn.functional as F

    from .. import models
    from ..losses import RegionAwareLoss
    from ..trainer import CLIPTrainStep, RegionBatches, batch_indices, param_groups

    cfg = config.load()
    tcfg = cfg["train"]
    data = _load(tcfg, results)
    batches = RegionBatches(data, tcfg["model"], tcfg)
    torch.set_num_threads(2)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    rss0 = _rss_mb()
    weights = str(Path(results) / "teacher" / "model.pt")
    torch.manual_seed(0)
    student = models.create(tcfg["model"]).to(device)
    step_module = CLIPTrainStep(student, RegionAwareLoss(tcfg["alpha"], tcfg["beta"], tcfg["gamma"], tcfg["lambda"]))
    optimizer = torch.optim.AdamW(param_groups(student, 0.1), lr=1e-4)
    if mode == "online":
        same = teacher_model == cfg["teacher"]["model"]
        teacher = models.create(teacher_model, pretrained=weights if same else None).to(device).eval()
        teacher_size = models.input_size(teacher_model)
        with torch.no_grad():
            concepts = models.encode_text(teacher, models.tokenize(teacher_model, data.concepts).to(device))
            teacher_scale = teacher.logit_scale.exp().clamp(max=100)
    times = []
    for step in range(steps + 1):  # step 0 warms up and is not timed
        t0 = time.perf_counter()
        idx = batch_indices(step, len(batches), tcfg["batch_size"], tcfg["seed"])
        batch = {k: v.to(device) for k, v in batches(idx, step).items()}
        if mode == "online" and "roi_box" in batch:
            subset = np.sort(np.random.default_rng([tcfg["seed"], step, 2]).permutation(len(data.concepts))[
                : tcfg["concepts_per_step"] or len(data.concepts)])
            with torch.no_grad():  # the teacher's ROI embeddings of this step's (possibly flipped) images
                pixels = F.interpolate(batch["image"], size=(teacher_size, teacher_size), mode="bilinear")
                scale = teacher_size / batch["image"].shape[-1]
                _, emb = models.encode_image_and_rois(teacher, pixels, batch["roi_image"], batch["roi_box"] * scale)
                batch["teacher_logits"] = (teacher_scale * emb @ concepts[subset].T).float()
        optimizer.zero_grad(set_to_none=True)
        step_module(batch)["total_loss"].backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "step_s": float(np.mean(times[1:])), "peak_rss_mb": peak, "train_mb": peak - rss0,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "teacher": teacher_model if mode == "online" else "cached"}


def bench_train(steps: int = 10, teacher_model: str | None = None, results: str | Path = "results") -> dict:
    teacher_model = teacher_model or config.load()["teacher"]["model"]
    out = {}
    for mode in ("cached", "online"):
        code = (f"import json; from pipeline.bench.train import child; "
                f"print(json.dumps(child({mode!r}, {steps}, {teacher_model!r}, {str(results)!r})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = out["cached"], out["online"]
    out["step_ratio"] = a["step_s"] / b["step_s"]
    out["peak_ratio"] = a["peak_rss_mb"] / b["peak_rss_mb"]
    out["train_mem_ratio"] = a["train_mb"] / b["train_mb"]
    if a["cuda_peak_mb"]:
        out["cuda_ratio"] = a["cuda_peak_mb"] / b["cuda_peak_mb"]
    out["loading"] = bench_loading(results)
    return out
