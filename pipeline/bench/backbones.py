"""bench backbones: the cost of a BiomedCLIP-sized student (timm ViT-B/16 at 224 px + a BERT-base text tower,
context 256, randomly initialised: the same architecture as BiomedCLIP) against medclip-tiny, on the same batch.

Each model runs in its own process (peak RSS is per process): one region-aware training step (all four losses,
AdamW) on 8 radiographs with 2 ROIs each, their reports, phrases, 4 hard negatives each and 48 concept prompts,
every text through the model's own tokenizer and every image at the model's own size and statistics. Step 0 warms
up and is not timed. No weights are read: the BiomedCLIP-sized folder is written with layouts.write_biomedclip.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPORT = ("Small left pleural effusion with adjacent atelectasis in the left lower zone. No pneumothorax. "
          "Heart size is normal. Possible right upper zone consolidation; no pulmonary edema.")
PHRASES = ["small left pleural effusion", "possible right upper zone consolidation"]


def child(name: str, steps: int, batch_size: int = 8, threads: int = 2) -> dict:
    import torch

    from .. import models
    from ..concepts import concept_pool
    from ..losses import RegionAwareLoss
    from ..trainer import CLIPTrainStep, param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = models.create(name)
    step = CLIPTrainStep(model, RegionAwareLoss(1.0, 1.0, 1.0, 0.4))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-5)
    spec, k = models.input_spec(name), 4
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, 256, 256), dtype=np.uint8)
    pixels = models.to_model_input(images, spec)
    roi_box = torch.tensor([[0, 0, 128, 256], [128, 0, 256, 256]] * batch_size, dtype=torch.float32) * spec.size / 256
    phrases = PHRASES * batch_size
    negatives = [p.replace("left", "right") if "left" in p else "no " + p for p in phrases for _ in range(k)]
    concepts = concept_pool().prompt[:48]
    short = models.tokenize(name, phrases + negatives + concepts, context_length=32)
    batch = {"image": pixels, "report": models.tokenize(name, [REPORT] * batch_size),
             "roi_image": torch.arange(batch_size).repeat_interleave(2), "roi_box": roi_box, "short": short,
             "negative_mask": torch.ones(len(phrases), k, dtype=torch.bool),
             "teacher_logits": torch.randn(len(phrases), len(concepts))}
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(batch)["total_loss"].backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "size": spec.size,
            "step_s": float(np.mean(times[1:])), "peak_rss_mb": peak, "train_mb": peak - rss0,
            "report_tokens": batch["report"].shape[1], "short_tokens": short.shape[1]}


def bench_backbones(steps: int = 3) -> dict:
    from ..models.layouts import BIOMEDCLIP, write_biomedclip

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_biomedclip(f"{tmp}/biomedclip-sized", BIOMEDCLIP, weights=False)
        for key, name in (("medclip-tiny", "medclip-tiny"), ("biomedclip-sized", f"local-dir:{tmp}/biomedclip-sized")):
            code = (f"import json; from pipeline.bench.backbones import child; "
                    f"print(json.dumps(child({name!r}, {steps})))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[key] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["step_ratio"] = out["biomedclip-sized"]["step_s"] / out["medclip-tiny"]["step_s"]
    out["peak_ratio"] = out["biomedclip-sized"]["peak_rss_mb"] / out["medclip-tiny"]["peak_rss_mb"]
    return out
