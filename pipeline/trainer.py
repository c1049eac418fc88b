"""A flat CLIP training loop over cached shards (nanoGPT-style: read it top to bottom).

Used today by `fit_teacher` (the global-only CLIP, also the global baseline). AdamW with linear warmup and cosine
decay, gradient accumulation, gradient clipping, CLIP's logit scale clamped to 100, bf16 autocast on CUDA, one
`metrics.jsonl` line per step, atomic checkpoints every `checkpoint_every` steps.

Resuming: batch order is a pure function of (seed, step), so a run killed after a checkpoint and started again
ends with the same weights as one that was never stopped. A checkpoint made under another config is not resumed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import models
from .config import config_sha256
from .data import ImageReportPairs
from .io import atomic_path, usable_threads
from .losses import RegionAwareLoss

log = logging.getLogger("pipeline.trainer")


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup to `lr`, then cosine decay to 0 at `steps`."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The examples of `step`: epoch e is a permutation drawn from (seed, e); no state to save."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size : (k + 1) * batch_size]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings and the logit scale (open_clip's choice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"step": step, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "config": cfg, "config_sha256": config_sha256(cfg)}, tmp)


def fit_global(pairs: ImageReportPairs, cfg: dict, out_dir: str | Path, threads: int = 1,
               stop_after: int | None = None) -> dict:
    """Train an image <-> report CLIP; writes out_dir/model.pt (open_clip state dict), metrics.jsonl and
    checkpoints/last.pt. `stop_after` ends the run early after that step's checkpoint (to test resuming)."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(usable_threads(threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.create(cfg["model"]).to(device)
    size = models.image_size(model)
    images = models.to_model_input(pairs.images, size)  # (N, 3, s, s), prepared once
    tokens = models.tokenizer(cfg["model"])(pairs.reports)  # (N, context)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], betas=(0.9, 0.98),
                                  eps=1e-6)
    loss_fn = RegionAwareLoss(beta=0.0, gamma=0.0, lam=0.0, symmetric=cfg["symmetric"])

    ckpt_path, metrics_path = out_dir / "checkpoints" / "last.pt", out_dir / "metrics.jsonl"
    start = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config_sha256") == config_sha256(cfg):
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start = ckpt["step"]
            log.info("resuming from step %d", start)
        else:
            log.info("checkpoint %s was made under another config; starting afresh", ckpt_path)
    lines = metrics_path.read_text().splitlines() if start and metrics_path.exists() else []
    lines = [ln for ln in lines if json.loads(ln)["step"] < start]  # drop steps after the checkpoint
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text("".join(ln + "\n" for ln in lines))

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    t0 = time.perf_counter()
    model.train()
    with open(metrics_path, "a") as metrics:
        for step in range(start, cfg["steps"]):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = batch_indices(step, len(images), cfg["batch_size"], cfg["seed"])
            optimizer.zero_grad(set_to_none=True)
            terms_sum: dict[str, float] = {}
            for micro in np.array_split(idx, cfg["accumulate"]):
                with autocast:
                    img, txt, scale = model(images[micro].to(device), tokens[micro].to(device))
                    terms = loss_fn(img, txt, scale)
                (terms["total_loss"] / cfg["accumulate"]).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v.item() / cfg["accumulate"]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            with torch.no_grad():  # CLIP's rule: 1/tau at most 100
                model.logit_scale.clamp_(0, math.log(100))
            record = {"step": step, "lr": lr_at(step, cfg), "grad_norm": float(grad_norm),
                      "logit_scale": model.logit_scale.exp().item(), **terms_sum}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            done = step + 1
            if done % cfg["checkpoint_every"] == 0 or done == cfg["steps"]:
                save_checkpoint(ckpt_path, model, optimizer, done, cfg)
            if step % 20 == 0 or done == cfg["steps"]:
                log.info("step %d/%d loss %.4f lr %.2e (%.0f s)", done, cfg["steps"], terms_sum["total_loss"],
                         record["lr"], time.perf_counter() - t0)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    with atomic_path(out_dir / "model.pt") as tmp:  # loads with open_clip.create_model(name, pretrained=...)
        torch.save(model.state_dict(), tmp)
    return {"steps": cfg["steps"], "seconds": time.perf_counter() - t0, "images": len(images),
            "final_loss": terms_sum.get("total_loss") if cfg["steps"] > start else None}
