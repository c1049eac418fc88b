"""One flat CLIP training loop over cached shards (nanoGPT-style: read it top to bottom).

It trains the teacher (`fit_teacher`: global loss only, the global baseline) and the region-aware student
(`train`: the four losses). AdamW with linear warmup and cosine decay, gradient accumulation, gradient clipping,
CLIP's logit scale clamped to 100, autocast on CUDA (bf16, else fp16 with a GradScaler), optional activation
checkpointing, frozen tower layers, channels-last and torch.compile (configure_memory), one `metrics.jsonl` line per step with every loss
term, atomic checkpoints every `checkpoint_every` steps holding model, optimizer, step and config.

Resuming: batch order, flips and concept subsets are pure functions of (seed, step), and the checkpoint holds
the rest of the state (model, AdamW, GradScaler, torch's RNG states, the metrics history), so a run killed after
a checkpoint and started again ends with the same weights as one that was never stopped, on the same hardware
(a resumed run keeps the checkpoint's torch thread count: a float sum split over another number of threads
rounds differently, and an uninterrupted run's weights belong to its thread count).
A checkpoint made under another config is not resumed. Checkpoints are tensors and plain values only and load
with `torch.load(weights_only=True)`: a planted pickle is refused, never run.

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
from .data import ImageReportPairs, RegionData, sentences
from .io import atomic_path, progress, sha256_file, usable_threads
from .losses import RegionAwareLoss
from .labels import OBSERVATIONS, SAID, STATED, said
from .vocab import mirror_text, normalize_text

log = logging.getLogger("pipeline.trainer")
SHORT_CONTEXT = 32  # finding phrases, hard negatives and concept prompts are far shorter than a report


def lr_at(step: int, cfg: dict) -> float:
    """Linear warmup to `lr`, then cosine decay to 0 at `steps`."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, seed: int, epoch: int, shard: np.ndarray | None = None, window: int = 0) -> np.ndarray:
    """The examples of an epoch in training order, drawn from (seed, epoch) alone (no state to save, so a resumed run
    continues mid-epoch exactly). Shard-aware: the shards in a random order, each shard's rows kept together, then
    shuffled within consecutive windows of `window` examples, so reads stay near-sequential and a batch touches one
    or two shards. window 0 (or no shards) = a full permutation."""
    rng = np.random.default_rng([seed, epoch])
    if shard is None or window <= 0 or window >= n:
        return rng.permutation(n)
    shards = np.unique(shard)
    order = np.concatenate([np.flatnonzero(shard == k) for k in rng.permutation(shards)])
    for start in range(0, n, window):
        order[start : start + window] = rng.permutation(order[start : start + window])
    return order


def batch_indices(step: int, n: int, batch_size: int, seed: int, shard: np.ndarray | None = None,
                  window: int = 0) -> np.ndarray:
    """The examples of `step`: batch k of epoch e (see epoch_order)."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch, shard, window)[k * batch_size : (k + 1) * batch_size]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings and the logit scale (open_clip's choice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # a locked tower layer
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _trim(tokens: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Drop the padding columns every row has (exact for a causal text tower and for a masked HF one, see models)."""
    return models.trim(tokens, pad)


def _pixels(images: np.ndarray, flip: np.ndarray, spec: models.InputSpec) -> torch.Tensor:
    """uint8 (B, s, s) at model size -> model input (the model's mean / std); flip[i] mirrors image i left <-> right."""
    x = torch.from_numpy(np.where(flip[:, None, None], images[:, :, ::-1], images))
    return models.to_model_input(x, spec)


def caption_groups(texts: list[str]) -> torch.Tensor:
    """One int64 id per text, equal for texts that are the same caption (vocab.normalize_text): what the
    duplicate-aware losses mask."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(normalize_text(t), len(ids)) for t in texts], dtype=torch.long)


def label_groups(labels: np.ndarray) -> torch.Tensor:
    """One int64 id per row of CheXpert study labels (N, 14), equal for equal label vectors; a blank (NaN, not
    mentioned) counts as 0, as evaluation scores it. Reports with the same findings are not false negatives of each
    other (MedCLIP's point: two normal studies are not a mismatched pair)."""
    ids: dict[bytes, int] = {}
    rows = np.nan_to_num(np.asarray(labels, np.float32), nan=0.0)
    return torch.tensor([ids.setdefault(r.tobytes(), len(ids)) for r in rows], dtype=torch.long)


class GlobalBatches:
    """Image <-> report batches (the teacher, the global baseline); images read on demand (data.ShardRows).

    captions: "report", the whole report text of each image; or "sentences", as ConVIRT samples them: each time an
    image is drawn, its whole report or (with probability 1/2) one sentence of it, a pure function of
    (seed, step, example). A sentence ("No pleural effusion.", "Small left pleural effusion.") is the text a
    zero-shot prompt resembles, and one report yields many such pairs; identical captions in a batch are masked
    as duplicates (dedupe), so the many "Heart size is normal." are not each other's negatives.

    negatives: "captions", reports are each other's negatives unless they are the same caption (dedupe); "labels",
    unless their study labels are the same (label_groups), so L_global contrasts reports that state different
    findings, which is what zero-shot classification asks of the base. A sentence caption is grouped by its
    report's labels, so two equal sentences of reports with other findings stay each other's negatives.

    polarity: each image also gets one finding its report states, drawn per (seed, step, example) from its study
    labels, as a statement in one of the wordings of labels.SAID ("without edema") with the statement of
    the opposite label as its hard negative (L_polarity, NegCLIP's idea at the label level): whole reports differ in
    many words at once, and a text tower fitted on them alone learns to read "no cardiomegaly" much like
    "cardiomegaly"; this term rewards it only for telling the two apart in the image's direction. Images whose
    report states no finding (all labels blank or uncertain) are left out of the term."""

    def __init__(self, pairs: ImageReportPairs, model_name: str, dedupe: bool = True, captions: str = "report",
                 seed: int = 0, negatives: str = "captions", polarity: bool = False):
        if (negatives == "labels" or polarity) and pairs.labels is None:
            raise ValueError(f"{'negatives: labels' if negatives == 'labels' else 'polarity'} needs the pairs' "
                             "study labels")
        self.pairs, self.dedupe, self.captions, self.seed = pairs, dedupe, captions, seed
        self.negatives, self.polarity = negatives, polarity
        self.tok = models.tokenizer(model_name)
        self.spec, self.pad = models.input_spec(model_name), models.pad_id(model_name)
        self.sentences = [sentences(r) for r in pairs.reports] if captions == "sentences" else None

    def caption(self, i: int, step: int) -> str:
        if self.sentences is None:
            return self.pairs.reports[i]
        rng = np.random.default_rng([self.seed, step, int(i), 3])
        own = self.sentences[i]
        return own[int(rng.integers(len(own)))] if rng.random() < 0.5 else self.pairs.reports[i]

    def statement(self, i: int, step: int) -> tuple[str, str, int] | None:
        """(the statement of one finding image i's report states, its opposite, its class: 2 x the finding's column,
        + 1 where present), or None when the report states none."""
        row = self.pairs.labels[i]
        stated = [k for k in STATED if row[k] in (0.0, 1.0)]
        if not stated:
            return None
        rng = np.random.default_rng([self.seed, step, int(i), 4])
        k, form = stated[int(rng.integers(len(stated)))], int(rng.integers(len(SAID)))
        name = OBSERVATIONS[k]
        return said(name, row[k], form), said(name, 1.0 - row[k], form), 2 * k + int(row[k] == 1)

    def __len__(self) -> int:
        return len(self.pairs.image_id)

    @property
    def shard(self) -> np.ndarray:
        return self.pairs.shard

    def __call__(self, idx: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        reports = [self.caption(i, step) for i in idx]
        batch = {"image": _pixels(self.pairs.images[idx], np.zeros(len(idx), bool), self.spec),
                 "report": _trim(self.tok(reports), self.pad)}
        if self.negatives == "labels":
            batch["report_groups"] = label_groups(self.pairs.labels[idx])
        elif self.dedupe:
            batch["report_groups"] = caption_groups(reports)
        if self.polarity:
            drawn = [self.statement(i, step) for i in idx]
            texts = [s[0] if s else "" for s in drawn] + [s[1] if s else "" for s in drawn]
            batch["statements"] = _trim(self.tok(texts, context_length=SHORT_CONTEXT), self.pad)
            batch["statement_mask"] = torch.tensor([s is not None for s in drawn], dtype=torch.bool)
            batch["statement_classes"] = torch.tensor([s[2] if s else -1 for s in drawn], dtype=torch.long)
        return batch


class RegionBatches:
    """Images, reports, and every paired ROI (its image in the batch and its box) of the batch's images with its
    phrase, hard negatives and the teacher's concept distribution, assembled per batch (in DataLoader workers) from
    what `data.load_region_data` joined: images and the teacher's ROI embeddings are read on demand, texts are
    tokenized here. Side-aware flips: a flipped image's ROI boxes are mirrored with it, every text of it is
    mirrored (vocab.mirror_text), and the teacher's concept distribution is permuted by the concepts' mirror map.
    With cfg["dedupe"], each report and phrase carries the id of its caption within the batch, for the
    duplicate-aware L_global and L_ROI."""

    def __init__(self, data: RegionData, model_name: str, cfg: dict):
        self.data, self.cfg = data, cfg
        self.tok = models.tokenizer(model_name)
        self.spec, self.pad = models.input_spec(model_name), models.pad_id(model_name)
        self.k = max([len(n) for n in data.pair_negatives], default=0)
        self.concepts = self.tok(data.concepts, context_length=SHORT_CONTEXT)
        self.teacher_concepts = data.teacher_scale * data.teacher_concepts.T  # (Dt, T)
        self.concept_swap = torch.from_numpy(data.concept_swap)
        # pairs are stored image by image: image i owns pairs bounds[i]:bounds[i + 1]
        bounds = np.searchsorted(data.pair_image, np.arange(len(data) + 1))
        self.pairs_of = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shard(self) -> np.ndarray:
        return self.data.shard

    def flips(self, idx: np.ndarray, step: int) -> np.ndarray:
        p = self.cfg["hflip"]
        return np.array([p > 0 and np.random.default_rng([self.cfg["seed"], step, int(i)]).random() < p
                         for i in idx], dtype=bool)

    def __call__(self, idx: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        d, cfg, tok = self.data, self.cfg, self.tok
        flip = self.flips(idx, step)
        counts = [len(self.pairs_of[i]) for i in idx]
        pairs = np.concatenate([self.pairs_of[i] for i in idx] + [np.zeros(0, np.int64)])
        pair_flip, roi_image = np.repeat(flip, counts), np.repeat(np.arange(len(idx)), counts)
        seen = lambda text, f: mirror_text(text) if f else text  # noqa: E731  the text of the image as trained
        reports = [seen(d.reports[i], f) for i, f in zip(idx, flip)]
        batch = {"image": _pixels(d.images[idx], flip, self.spec), "report": _trim(tok(reports), self.pad)}
        if cfg.get("dedupe", True):
            batch["report_groups"] = caption_groups(reports)
        if len(pairs) == 0:
            return batch
        n_concepts = cfg["concepts_per_step"] or len(d.concepts)
        subset = np.sort(np.random.default_rng([cfg["seed"], step, 2]).permutation(len(d.concepts))[:n_concepts])
        teacher = torch.from_numpy((d.teacher_roi[pairs].astype(np.float32) @ self.teacher_concepts).astype(np.float32))
        mirrored = teacher[:, self.concept_swap]  # p_teacher(T | mirrored ROI) = p_teacher(swap(T) | ROI)
        teacher = torch.where(torch.from_numpy(pair_flip)[:, None], mirrored, teacher)[:, subset]
        phrases = [seen(d.pair_text[p], f) for p, f in zip(pairs, pair_flip)]
        negatives = [[seen(t, f) for t in d.pair_negatives[p]] for p, f in zip(pairs, pair_flip)]
        negative_mask = torch.tensor([[j < len(n) for j in range(self.k)] for n in negatives], dtype=torch.bool)
        flat_neg = [t for n in negatives for t in n + [""] * (self.k - len(n))]
        short = _trim(torch.cat([tok(phrases, context_length=SHORT_CONTEXT), tok(flat_neg, context_length=SHORT_CONTEXT),
                                 self.concepts[subset]]), self.pad)
        size = d.images.shape[-1]
        box = d.pair_box[pairs].copy()  # a flipped image's boxes are mirrored with it
        box[pair_flip] = np.stack([size - box[pair_flip, 2], box[pair_flip, 1], size - box[pair_flip, 0],
                                   box[pair_flip, 3]], 1)
        batch.update(roi_image=torch.from_numpy(roi_image), roi_box=torch.from_numpy(box), short=short,
                     negative_mask=negative_mask.reshape(-1, self.k), teacher_logits=teacher)
        if cfg.get("dedupe", True):
            batch["phrase_groups"] = caption_groups(phrases)
        return batch


class CLIPTrainStep(nn.Module):
    """The whole forward of one micro-batch in one call (what DistributedDataParallel hooks into): the images
    through the vision tower once (their ROIs pooled from the same pass, models.encode_image_and_rois), reports
    and the short texts through the text tower. With `image_locked` (the whole image tower frozen) the tower stays
    in eval mode whatever train() says, so a locked tower's BatchNorm statistics (ResNet and timm towers) and
    dropout do not move either; in a partly locked tower (`lock_image_groups` > 0) each BatchNorm whose weights are
    frozen stays in eval mode (one without affine weights cannot be told apart, and keeps updating its statistics).
    (In eval mode, without grad and autocast, torch's attention may take its fused path: the same figures to about
    1e-7, not bit for bit, for towers whose head count is even; medclip-tiny's 3 heads take the plain path.)"""

    def __init__(self, clip: nn.Module, loss: RegionAwareLoss, image_locked: bool = False):
        super().__init__()
        self.clip, self.loss, self.image_locked = clip, loss, image_locked

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_locked:
            self.clip.visual.eval()
            return self
        for m in self.clip.visual.modules():
            weights = list(m.parameters(recurse=False))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and weights and not any(w.requires_grad for w in weights):
                m.eval()  # a locked group's normalisation keeps the statistics it was trained with
        return self

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
        if "statements" in batch:  # the teacher's polarity term: each image's stated finding against its opposite
            encoded, keep = models.encode_text(clip, batch["statements"]), batch["statement_mask"]
            true, opposite = encoded[: len(keep)][keep], encoded[len(keep) :][keep]
            groups.update(statement_image=image[keep], statement_features=true, opposite_features=opposite,
                          statement_classes=batch["statement_classes"][keep])
        if not has_rois:
            return self.loss(image, report, scale, **groups)
        r, k = batch["negative_mask"].shape
        short = models.encode_text(clip, batch["short"])
        phrase, negative, concepts = short[:r], short[r : r + r * k].reshape(r, k, -1), short[r + r * k :]
        return self.loss(image, report, scale, roi, phrase, negative, batch["negative_mask"], concepts,
                         teacher_logits=batch["teacher_logits"], **groups)


class StepBatches(torch.utils.data.Dataset):
    """Item j is step `start + j`: this process's share of the step's examples (rank::world), split into
    micro-batches and assembled by `batches`. A DataLoader over it runs the assembly (reads, flips, pairing,
    tokenization) in its workers; the order is a pure function of (seed, step), so resuming is exact."""

    def __init__(self, batches, cfg: dict, start: int, rank: int = 0, world: int = 1):
        self.batches, self.cfg, self.start, self.rank, self.world = batches, cfg, start, rank, world

    def __len__(self) -> int:
        return max(0, self.cfg["steps"] - self.start)

    def indices(self, step: int) -> np.ndarray:
        cfg = self.cfg
        return batch_indices(step, len(self.batches), cfg["batch_size"], cfg["seed"], self.batches.shard,
                             cfg.get("shuffle_window", 0))[self.rank :: self.world]

    def __getitem__(self, j: int) -> list[dict[str, torch.Tensor]]:
        step = self.start + j
        micros = [m for m in np.array_split(self.indices(step), self.cfg["accumulate"]) if len(m)]
        return [self.batches(m, step) for m in micros]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # a worker assembles batches; the main process computes


def step_loader(batches, cfg: dict, start: int, rank: int, world: int, pin: bool) -> torch.utils.data.DataLoader:
    workers = cfg.get("num_workers", 0)
    return torch.utils.data.DataLoader(
        StepBatches(batches, cfg, start, rank, world), batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=cfg.get("prefetch_factor", 2) if workers else None, pin_memory=pin,
        worker_init_fn=_worker_init if workers else None,
        # its own generator: starting the loader must not draw from torch's global RNG (dropout's), which a
        # resumed run restores from the checkpoint
        generator=torch.Generator().manual_seed(cfg["seed"]))


def rng_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """torch's global RNG states as tensors (what dropout draws from)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())  # CPU byte tensors, wherever map_location put them
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: dict, best: dict | None = None,
                    scaler: torch.amp.GradScaler | None = None, history: list[dict] | None = None) -> None:
    """Everything a resumed run needs, as tensors and plain values (it loads with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save({"step": step, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "config": cfg, "config_sha256": config_sha256(cfg), "best": best,
                    "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng_state(),
                    "threads": torch.get_num_threads(), "metrics": history or []}, tmp)


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """A checkpoint's contents, or None when it cannot be loaded as tensors and plain values (a planted or foreign
    pickle is refused, its code never run)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  an unsafe or unreadable file is not resumed, whatever went wrong
        log.warning("checkpoint %s not resumed: it does not load as tensors and plain values (%s: %s)", path,
                    type(e).__name__, str(e).splitlines()[0][:200])
        return None


@torch.no_grad()
def validation_loss(step_module: nn.Module, val_batches, batch_size: int, device: torch.device, autocast
                    ) -> dict[str, float]:
    """On the validate split (fixed batches in order, no flips, mean over examples): the run's own objective
    (`val_loss`) and its image <-> report term alone (`val_global_loss`), the one figure every run is trained for
    (alpha L_global), so the one a selection rule may compare across runs."""
    was_training = step_module.training
    step_module.eval()
    total, glob, n = 0.0, 0.0, 0
    with torch.no_grad():
        for idx in np.array_split(np.arange(len(val_batches)), max(1, -(-len(val_batches) // batch_size))):
            with autocast:
                terms = step_module({k: v.to(device) for k, v in val_batches(idx, 0).items()})
            total += terms["total_loss"].item() * len(idx)
            glob += terms["global_loss"].item() * len(idx)
            n += len(idx)
    step_module.train(was_training)
    return {"val_loss": total / max(n, 1), "val_global_loss": glob / max(n, 1)}


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def precision(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: on CUDA bf16 where the GPU has it, else fp16 (with a GradScaler); None = float32 (CPU,
    or amp: off)."""
    amp = cfg.get("amp", "auto")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def configure_memory(clip: nn.Module, cfg: dict, device: torch.device) -> None:
    """The memory knobs of a small GPU: activation checkpointing, frozen tower layers (open_clip's lock_*_tower),
    channels-last images."""
    if cfg.get("grad_checkpointing"):
        clip.set_grad_checkpointing(True)
    if cfg.get("lock_image_groups") is not None:  # keep the last n layer groups trainable
        # BatchNorm statistics: CLIPTrainStep holds a locked tower, or a locked BatchNorm, in eval mode
        clip.lock_image_tower(unlocked_groups=cfg["lock_image_groups"], freeze_bn_stats=False)
    if cfg.get("lock_text_layers") is not None:  # keep the last n text groups trainable (1 = the projection)
        clip.lock_text_tower(unlocked_layers=cfg["lock_text_layers"], freeze_layer_norm=True)
    if cfg.get("channels_last") and device.type == "cuda":
        clip.to(memory_format=torch.channels_last)


def fit(batches, cfg: dict, out_dir: str | Path, threads: int = 1, init: str | None = None,
        stop_after: int | None = None, val_batches=None) -> dict:
    """Train `cfg["model"]` on `batches` (GlobalBatches or RegionBatches) with the loss weights in cfg; writes
    out_dir/model.pt (an open_clip state dict), the same weights as an open_clip folder out_dir/open_clip/,
    metrics.jsonl and checkpoints/last.pt. `init` names weights to start from. `stop_after` ends the run after that
    step's checkpoint (to test resuming).

    Selection (cfg["select"], one rule for every run of a comparison): "final", model.pt is the last step of the
    fixed budget; "val_global_loss", the step with the lowest image <-> report loss on the validate split, the
    initial weights (step 0) a candidate too. With `val_batches` (the validate split, made like `batches` without
    flips) and cfg["validate_every"] > 0 the validate figures are logged every that many steps and at the end
    (`val_loss`, the run's own objective; `val_global_loss`) whatever the rule. The test split is never looked at."""
    out_dir = Path(out_dir)
    rank, world, local_rank = _distributed()
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(usable_threads(threads) if world == 1 else max(1, usable_threads(threads) // world))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    clip = models.create(cfg["model"], pretrained=init).to(device)
    configure_memory(clip, cfg, device)
    loss_fn = RegionAwareLoss(cfg.get("alpha", 1.0), cfg.get("beta", 0.0), cfg.get("gamma", 0.0),
                              cfg.get("lambda", 0.0), symmetric=cfg["symmetric"], polarity=cfg.get("polarity", 0.0))
    step_module = CLIPTrainStep(clip, loss_fn, image_locked=cfg.get("lock_image_groups") == 0).to(device)
    net = nn.parallel.DistributedDataParallel(step_module, device_ids=[local_rank] if device.type == "cuda" else None
                                              ) if world > 1 else step_module
    optimizer = torch.optim.AdamW(param_groups(clip, cfg["weight_decay"]), lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)

    amp_dtype = precision(cfg, device)
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    # fp16 needs its gradients scaled (bf16 has float32's range and does not)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    ckpt_path, metrics_path = out_dir / "checkpoints" / "last.pt", out_dir / "metrics.jsonl"
    start, best = 0, None  # best: {"step", "val_loss", "state_dict"} of the best validated step
    history: list[dict] = []  # every step's metrics record; kept in the checkpoint
    ckpt = load_checkpoint(ckpt_path, device) if ckpt_path.exists() else None
    if ckpt is not None and ckpt.get("config_sha256") != config_sha256(cfg):
        log.info("checkpoint %s was made under another config; starting afresh", ckpt_path)
    elif ckpt is not None:
        clip.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        start, best = ckpt["step"], ckpt.get("best")
        if "metrics" in ckpt:
            history = list(ckpt["metrics"])
        elif metrics_path.exists():  # a checkpoint from before the history was kept in it
            history = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if r["step"] < start]
        log.info("resuming from step %d", start)
        if ckpt.get("threads", torch.get_num_threads()) != torch.get_num_threads():
            # a float sum split over another number of threads rounds differently (1 ulp, 1.2e-7, from the first
            # step on): the run's numbers belong to its thread count, so the resumed run keeps it
            log.warning("the checkpoint was made with %d torch threads, this process was given %d: resuming with "
                        "%d, so that the weights are those of an uninterrupted run", ckpt["threads"],
                        torch.get_num_threads(), ckpt["threads"])
            torch.set_num_threads(ckpt["threads"])
    select = cfg.get("select", "final")
    validating = val_batches is not None and len(val_batches) and cfg.get("validate_every", 0)
    if select != "final" and not validating:
        log.warning("select: %s needs validate images and validate_every > 0: model.pt is the last step", select)
        select = "final"
    at_init = None
    if rank == 0 and validating and start == 0 and select != "final":  # the initial weights are a candidate
        at_init = validation_loss(step_module, val_batches, cfg["batch_size"], device, autocast)
        best = {"step": 0, "val_loss": at_init[select], "state_dict": {k: v.detach().cpu().clone()
                                                                        for k, v in clip.state_dict().items()}}
        log.info("validate at step 0 (the initial weights): %s", ", ".join(f"{k} {v:.4f}" for k, v in at_init.items()))
    if rank == 0:  # the history before the checkpoint, whatever happened to metrics.jsonl since
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(metrics_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    if cfg.get("compile"):
        net = torch.compile(net)
    t0, terms_sum = time.perf_counter(), {}
    step_module.train()
    metrics = open(metrics_path, "a") if rank == 0 else None
    loader = step_loader(batches, cfg, start, rank, world, pin=device.type == "cuda")
    try:
        steps = zip(range(start, cfg["steps"]), loader)
        for step, micros in progress(steps, cfg["steps"], "train", log, "steps", start) if rank == 0 else steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            terms_sum = {}
            for j, micro in enumerate(micros):
                batch = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
                sync = contextlib.nullcontext() if world == 1 or j == len(micros) - 1 else net.no_sync()
                with sync:
                    with autocast:
                        terms = net(batch)
                    scaler.scale(terms["total_loss"] / len(micros)).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v.item() / len(micros)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
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
                every = cfg.get("validate_every", 0)
                if validating and (done % every == 0 or done == cfg["steps"]):
                    record.update(validation_loss(step_module, val_batches, cfg["batch_size"], device, autocast))
                    if select != "final" and (best is None or record[select] < best["val_loss"]):
                        best = {"step": done, "val_loss": record[select],
                                "state_dict": {k: v.detach().cpu().clone() for k, v in clip.state_dict().items()}}
                history.append(record)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if done % cfg["checkpoint_every"] == 0 or done == cfg["steps"]:
                    save_checkpoint(ckpt_path, clip, optimizer, done, cfg, best, scaler, history)
                if step % 20 == 0 or done == cfg["steps"]:
                    log.info("step %d/%d loss %.4f lr %.2e (%.0f s)", done, cfg["steps"], terms_sum["total_loss"],
                             record["lr"], time.perf_counter() - t0)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
        if rank == 0:  # loads with open_clip.create_model(name, pretrained=...)
            weights = best["state_dict"] if best else clip.state_dict()
            with atomic_path(out_dir / "model.pt") as tmp:
                torch.save(weights, tmp)
            # the same weights as an open_clip folder (config, our preprocessing, safetensors): loads with
            # open_clip's "local-dir:" and the project's local-dir:PATH model names
            models.save_open_clip_folder(weights, cfg["model"], out_dir / "open_clip")
            if best:
                log.info("model.pt: the weights of step %d (%s %.4f)", best["step"], select, best["val_loss"])
            else:
                log.info("model.pt: the weights of the last step, %d (select: final)", cfg["steps"])
        if world > 1:
            dist.barrier()
    finally:
        if metrics is not None:
            metrics.close()
    return {"steps": cfg["steps"], "seconds": time.perf_counter() - t0, "examples": len(batches), "world": world,
            "final_loss": terms_sum.get("total_loss") if cfg["steps"] > start else None,
            "best_step": best["step"] if best else None, "best_val_loss": best["val_loss"] if best else None,
            "select": select, "validate_at_init": at_init}


def fit_global(pairs: ImageReportPairs, cfg: dict, out_dir: str | Path, threads: int = 1,
               stop_after: int | None = None, val_pairs: ImageReportPairs | None = None) -> dict:
    """The teacher: an image <-> report CLIP trained from scratch with L_global alone (early stopping on
    `val_pairs`, see fit).

    With cfg["text_steps"] > 0 a second phase follows (locked-image tuning, as LiT): `text_steps` more steps from
    the first phase's weights with the image tower frozen, L_polarity (each image's stated finding against its
    opposite, GlobalBatches' polarity) plus `text_alpha` L_global at `text_lr`, so that the text side learns to read
    "no" against image features that no longer move, and keeps reading reports; the first phase is kept in
    out_dir/image_text/, and model.pt is the last step of the second (select: final). L_polarity from the first
    step on, with the image tower free, kept the image side from learning the findings at all; a full-weight
    L_global in the second phase turned the weakly learnt findings' prompts the wrong way (README, "The base").

    `stop_after` counts the steps of both phases; as in fit, a run stopped after its very last step has its
    checkpoint but no model.pt until it is called again."""
    out_dir = Path(out_dir)
    batches = GlobalBatches(pairs, cfg["model"], cfg.get("dedupe", True), cfg.get("captions", "report"), cfg["seed"],
                            cfg.get("negatives", "captions"))
    # validation always scores whole reports against every other caption: the selection criterion does not move
    # with the caption sampling or the negatives
    val = GlobalBatches(val_pairs, cfg["model"], cfg.get("dedupe", True)) if val_pairs is not None else None
    text_steps = cfg.get("text_steps", 0)
    # built before the first phase, so pairs without study labels are refused before an hour of fitting, not after
    polar = GlobalBatches(pairs, cfg["model"], cfg.get("dedupe", True), cfg.get("captions", "report"), cfg["seed"],
                          cfg.get("negatives", "captions"), polarity=True) if text_steps else None
    # the second phase's val_loss is its own objective: validate images with their statements (drawn as at step 0)
    val_polar = val
    if text_steps and val_pairs is not None:
        if val_pairs.labels is not None:
            val_polar = GlobalBatches(val_pairs, cfg["model"], cfg.get("dedupe", True), seed=cfg["seed"], polarity=True)
        else:
            log.warning("the validate pairs carry no study labels: the text phase's val_loss is text_alpha x "
                        "val_global_loss, without the polarity term")
    steps = cfg["steps"]
    first = fit(batches, {**cfg, "alpha": 1.0}, out_dir / "image_text" if text_steps else out_dir, threads,
                stop_after=stop_after if stop_after is None or stop_after <= steps or not text_steps else None,
                val_batches=val)
    if not text_steps or "stopped_at" in first:
        return first
    phase = {**cfg, "alpha": cfg["text_alpha"], "polarity": 1.0, "steps": text_steps, "lr": cfg["text_lr"],
             "warmup_steps": max(1, text_steps // 15), "lock_image_groups": 0, "select": "final",
             # its checkpoint resumes only from the same first phase (whose steps, lr... this dict overwrites)
             "init_sha256": sha256_file(out_dir / "image_text" / "model.pt")}
    second = fit(polar, phase, out_dir, threads, init=str(out_dir / "image_text" / "model.pt"),
                 stop_after=None if stop_after is None else stop_after - steps, val_batches=val_polar)
    if "stopped_at" in second:
        return {"stopped_at": steps + second["stopped_at"]}
    return {**second, "image_text": first}
