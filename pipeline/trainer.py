"""One flat CLIP training loop over cached shards (nanoGPT-style: read it top to bottom).

It trains the teacher (`fit_teacher`: global loss only, the global baseline) and the region-aware student
(`train`: the four losses). AdamW with linear warmup and cosine decay, gradient accumulation, gradient clipping,
CLIP's logit scale clamped to 100, bf16 autocast on CUDA, one `metrics.jsonl` line per step with every loss
term, atomic checkpoints every `checkpoint_every` steps holding model, optimizer, step and config.

Resuming: batch order, flips and concept subsets are pure functions of (seed, step), so a run killed after a
checkpoint and started again ends with the same weights as one that was never stopped. A checkpoint made under
another config is not resumed.

Several processes: started by `torchrun`, each process takes every world_size-th example of the step's batch and
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPUs). Contrastive losses see the process's
own examples as negatives (open_clip's `local_loss` without feature gathering).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from . import models
from .config import config_sha256
from .data import ImageReportPairs, RegionData
from .io import atomic_path, usable_threads
from .losses import RegionAwareLoss
from .vocab import mirror_text, normalize_text

log = logging.getLogger("pipeline.trainer")
SHORT_CONTEXT = 32  # finding phrases, hard negatives and concept prompts are far shorter than a report


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


def _trim(tokens: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Drop the padding columns every row has (exact for a causal text tower and for a masked HF one, see models)."""
    return models.trim(tokens, pad)


def _pixels(images: np.ndarray, flip: np.ndarray, spec: models.InputSpec) -> torch.Tensor:
    """uint8 (B, s, s) at model size -> model input (the model's mean / std); flip[i] mirrors image i left <-> right."""
    x = torch.from_numpy(np.where(flip[:, None, None], images[:, :, ::-1], images))
    return models.to_model_input(x, spec)


def caption_groups(*variants: list[str]) -> list[torch.Tensor]:
    """One int64 id per text of each list, equal for texts that are the same caption (vocab.normalize_text), the
    same ids across the lists: what the duplicate-aware losses mask."""
    ids: dict[str, int] = {}
    return [torch.tensor([ids.setdefault(normalize_text(t), len(ids)) for t in texts], dtype=torch.long)
            for texts in variants]


class GlobalBatches:
    """Image <-> report batches (the teacher, the global baseline)."""

    def __init__(self, pairs: ImageReportPairs, model_name: str, size: int, dedupe: bool = True):
        self.spec, self.pad = models.input_spec(model_name), models.pad_id(model_name)
        self.images = models.resize(pairs.images, size, self.spec.interpolation)
        self.reports = models.tokenizer(model_name)(pairs.reports)
        self.report_groups = caption_groups(pairs.reports)[0] if dedupe else None

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, idx: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        batch = {"image": _pixels(self.images[idx], np.zeros(len(idx), bool), self.spec),
                 "report": _trim(self.reports[idx], self.pad)}
        if self.report_groups is not None:
            batch["report_groups"] = self.report_groups[idx]
        return batch


class RegionBatches:
    """Images, reports, and every paired ROI (its image in the batch and its box) of the batch's images with its
    phrase, hard negatives and the teacher's concept distribution. Side-aware flips: a flipped image's ROI boxes
    are mirrored with it, its texts have left and right swapped, and the teacher's concept distribution is
    permuted by the concepts' mirror map. With cfg["dedupe"], each report and phrase carries the id of its caption
    (mirrored texts have their own), for the duplicate-aware L_global and L_ROI."""

    def __init__(self, data: RegionData, model_name: str, cfg: dict):
        self.data, self.cfg = data, cfg
        self.spec, self.pad = models.input_spec(model_name), models.pad_id(model_name)
        tok = models.tokenizer(model_name)
        texts = {"report": data.reports, "pair": data.pair_text}
        k = max([len(n) for n in data.pair_negatives], default=0)
        negatives = [n + [""] * (k - len(n)) for n in data.pair_negatives]
        self.negative_mask = torch.tensor([[j < len(n) for j in range(k)] for n in data.pair_negatives],
                                          dtype=torch.bool).reshape(-1, k)
        flat_neg = [t for n in negatives for t in n]
        self.tokens = {False: self._tokenize(tok, texts, flat_neg, k)}
        mirrored = {name: [mirror_text(t) for t in ts] for name, ts in texts.items()}
        if cfg["hflip"] > 0:  # the mirrored texts, tokenized once
            self.tokens[True] = self._tokenize(tok, mirrored, [mirror_text(t) for t in flat_neg], k)
        self.groups = None
        if cfg.get("dedupe", True):
            names = list(texts)
            ids = caption_groups(*[texts[n] for n in names], *[mirrored[n] for n in names])
            self.groups = {False: dict(zip(names, ids[: len(names)])), True: dict(zip(names, ids[len(names) :]))}
        self.concepts = tok(data.concepts, context_length=SHORT_CONTEXT)
        logits = data.teacher_scale * data.teacher_roi @ data.teacher_concepts.T  # (M, T)
        self.teacher_logits = torch.from_numpy(logits.astype(np.float32))
        self.concept_swap = torch.from_numpy(data.concept_swap)
        # pairs are stored image by image: image i owns pairs bounds[i]:bounds[i + 1]
        bounds = np.searchsorted(data.pair_image, np.arange(len(data) + 1))
        self.pairs_of = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def _tokenize(tok, texts: dict, flat_neg: list[str], k: int) -> dict[str, torch.Tensor]:
        return {"report": tok(texts["report"]), "pair": tok(texts["pair"], context_length=SHORT_CONTEXT),
                "negative": tok(flat_neg, context_length=SHORT_CONTEXT).reshape(len(texts["pair"]), k, -1)}

    def __len__(self) -> int:
        return len(self.data)

    def flips(self, idx: np.ndarray, step: int) -> np.ndarray:
        p = self.cfg["hflip"]
        return np.array([p > 0 and np.random.default_rng([self.cfg["seed"], step, int(i)]).random() < p
                         for i in idx], dtype=bool)

    def __call__(self, idx: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        d, cfg = self.data, self.cfg
        flip = self.flips(idx, step)
        counts = [len(self.pairs_of[i]) for i in idx]
        pairs = np.concatenate([self.pairs_of[i] for i in idx] + [np.zeros(0, np.int64)])
        pair_flip, roi_image = np.repeat(flip, counts), np.repeat(np.arange(len(idx)), counts)
        report = torch.stack([self.tokens[bool(f)]["report"][i] for i, f in zip(idx, flip)])
        batch = {"image": _pixels(d.images[idx], flip, self.spec), "report": _trim(report, self.pad)}
        if self.groups is not None:
            batch["report_groups"] = torch.stack([self.groups[bool(f)]["report"][i] for i, f in zip(idx, flip)])
        if len(pairs) == 0:
            return batch
        n_concepts = cfg["concepts_per_step"] or len(d.concepts)
        subset = np.sort(np.random.default_rng([cfg["seed"], step, 2]).permutation(len(d.concepts))[:n_concepts])
        teacher = self.teacher_logits[pairs]
        mirrored = teacher[:, self.concept_swap]  # p_teacher(T | mirrored ROI) = p_teacher(swap(T) | ROI)
        teacher = torch.where(torch.from_numpy(pair_flip)[:, None], mirrored, teacher)[:, subset]
        phrase = torch.stack([self.tokens[bool(f)]["pair"][p] for p, f in zip(pairs, pair_flip)])
        negative = torch.stack([self.tokens[bool(f)]["negative"][p] for p, f in zip(pairs, pair_flip)])
        r, k, _ = negative.shape
        short = _trim(torch.cat([phrase, negative.reshape(r * k, -1), self.concepts[subset]]), self.pad)
        size = d.images.shape[-1]
        box = d.pair_box[pairs].copy()  # a flipped image's boxes are mirrored with it
        box[pair_flip] = np.stack([size - box[pair_flip, 2], box[pair_flip, 1], size - box[pair_flip, 0],
                                   box[pair_flip, 3]], 1)
        batch.update(roi_image=torch.from_numpy(roi_image), roi_box=torch.from_numpy(box), short=short,
                     negative_mask=self.negative_mask[pairs], teacher_logits=teacher)
        if self.groups is not None:
            batch["phrase_groups"] = torch.stack([self.groups[bool(f)]["pair"][p] for p, f in zip(pairs, pair_flip)])
        return batch


class CLIPTrainStep(nn.Module):
    """The whole forward of one micro-batch in one call (what DistributedDataParallel hooks into): the images
    through the vision tower once (their ROIs pooled from the same pass, models.encode_image_and_rois), reports
    and the short texts through the text tower."""

    def __init__(self, clip: nn.Module, loss: RegionAwareLoss):
        super().__init__()
        self.clip, self.loss = clip, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = self.clip
        # a run with the regional losses off (the global_only control) skips the ROI and short-text work: the
        # same batches, flips and random streams, only the global loss
        regional = any(self.loss.weights[k] > 0 for k in ("roi_loss", "neg_loss", "distill_loss"))
        has_rois = "roi_box" in batch and regional
        if has_rois:
            image, roi = models.encode_image_and_rois(clip, batch["image"], batch["roi_image"], batch["roi_box"])
        else:
            image = clip.encode_image(batch["image"], normalize=True)
        report = models.encode_text(clip, batch["report"])
        scale = clip.logit_scale.exp()
        groups = {k: batch[k] for k in ("report_groups", "phrase_groups") if k in batch}
        if not has_rois:
            return self.loss(image, report, scale, **groups)
        r, k = batch["negative_mask"].shape
        short = models.encode_text(clip, batch["short"])
        phrase, negative, concepts = short[:r], short[r : r + r * k].reshape(r, k, -1), short[r + r * k :]
        return self.loss(image, report, scale, roi, phrase, negative, batch["negative_mask"], concepts,
                         teacher_logits=batch["teacher_logits"], **groups)


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"step": step, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "config": cfg, "config_sha256": config_sha256(cfg)}, tmp)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def fit(batches, cfg: dict, out_dir: str | Path, threads: int = 1, init: str | None = None,
        stop_after: int | None = None) -> dict:
    """Train `cfg["model"]` on `batches` (GlobalBatches or RegionBatches) with the loss weights in cfg; writes
    out_dir/model.pt (an open_clip state dict), metrics.jsonl and checkpoints/last.pt. `init` names weights to
    start from. `stop_after` ends the run after that step's checkpoint (to test resuming)."""
    out_dir = Path(out_dir)
    rank, world, local_rank = _distributed()
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(usable_threads(threads) if world == 1 else max(1, usable_threads(threads) // world))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    clip = models.create(cfg["model"], pretrained=init).to(device)
    loss_fn = RegionAwareLoss(cfg.get("alpha", 1.0), cfg.get("beta", 0.0), cfg.get("gamma", 0.0),
                              cfg.get("lambda", 0.0), symmetric=cfg["symmetric"])
    step_module = CLIPTrainStep(clip, loss_fn).to(device)
    net = nn.parallel.DistributedDataParallel(step_module, device_ids=[local_rank] if device.type == "cuda" else None
                                              ) if world > 1 else step_module
    optimizer = torch.optim.AdamW(param_groups(clip, cfg["weight_decay"]), lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)

    ckpt_path, metrics_path = out_dir / "checkpoints" / "last.pt", out_dir / "metrics.jsonl"
    start = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config_sha256") == config_sha256(cfg):
            clip.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start = ckpt["step"]
            log.info("resuming from step %d", start)
        else:
            log.info("checkpoint %s was made under another config; starting afresh", ckpt_path)
    if rank == 0:
        lines = metrics_path.read_text().splitlines() if start and metrics_path.exists() else []
        lines = [ln for ln in lines if json.loads(ln)["step"] < start]  # drop steps after the checkpoint
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(ln + "\n" for ln in lines))

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    t0, terms_sum = time.perf_counter(), {}
    clip.train()
    metrics = open(metrics_path, "a") if rank == 0 else None
    try:
        for step in range(start, cfg["steps"]):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = batch_indices(step, len(batches), cfg["batch_size"], cfg["seed"])[rank::world]
            optimizer.zero_grad(set_to_none=True)
            terms_sum = {}
            micros = [m for m in np.array_split(idx, cfg["accumulate"]) if len(m)]
            for j, micro in enumerate(micros):
                batch = {k: v.to(device) for k, v in batches(micro, step).items()}
                sync = contextlib.nullcontext() if world == 1 or j == len(micros) - 1 else net.no_sync()
                with sync:
                    with autocast:
                        terms = net(batch)
                    (terms["total_loss"] / len(micros)).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v.item() / len(micros)
            grad_norm = torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg["grad_clip"])
            optimizer.step()
            with torch.no_grad():  # CLIP's rule: 1/tau at most 100
                clip.logit_scale.clamp_(0, math.log(100))
            if world > 1:  # log the mean over processes
                values = torch.tensor(list(terms_sum.values()), device=device)
                dist.all_reduce(values)
                terms_sum = dict(zip(terms_sum, (values / world).tolist()))
            done = step + 1
            if rank == 0:
                record = {"step": step, "lr": lr_at(step, cfg), "grad_norm": float(grad_norm),
                          "logit_scale": clip.logit_scale.exp().item(), **terms_sum}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if done % cfg["checkpoint_every"] == 0 or done == cfg["steps"]:
                    save_checkpoint(ckpt_path, clip, optimizer, done, cfg)
                if step % 20 == 0 or done == cfg["steps"]:
                    log.info("step %d/%d loss %.4f lr %.2e (%.0f s)", done, cfg["steps"], terms_sum["total_loss"],
                             record["lr"], time.perf_counter() - t0)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
        if rank == 0:  # loads with open_clip.create_model(name, pretrained=...)
            with atomic_path(out_dir / "model.pt") as tmp:
                torch.save(clip.state_dict(), tmp)
        if world > 1:
            dist.barrier()
    finally:
        if metrics is not None:
            metrics.close()
    return {"steps": cfg["steps"], "seconds": time.perf_counter() - t0, "examples": len(batches), "world": world,
            "final_loss": terms_sum.get("total_loss") if cfg["steps"] > start else None}


def fit_global(pairs: ImageReportPairs, cfg: dict, out_dir: str | Path, threads: int = 1,
               stop_after: int | None = None) -> dict:
    """The teacher: an image <-> report CLIP trained from scratch with L_global alone."""
    batches = GlobalBatches(pairs, cfg["model"], models.input_size(cfg["model"]), cfg.get("dedupe", True))
    return fit(batches, {**cfg, "alpha": 1.0}, out_dir, threads, stop_after=stop_after)
