"""`bench segment`: U-Net images/s and crop ROIs/s on this CPU, or lung Dice against a mask table."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .. import config
from ..stages import ingest, normalize
from .stages import _synthetic


def bench_segment(shard: str | None = None, weights: str | None = None) -> dict:
    """Segment inference images/s and crop ROIs/s on this CPU, on a normalize shard of the default size.

    Uses the workflow's shard and U-Net when given (or found under results/), else an untrained U-Net on a
    synthetic shard: the speed does not depend on the weights."""
    import torch

    from ..stages import crop, segment

    cfg = config.load()
    shard = shard or "results/normalize/shard-00000.h5"
    weights = weights or (cfg["segment"]["weights"] or "results/segmenter/unet.pt")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not Path(shard).exists():
            table = _synthetic(tmp, n_studies=32, size=cfg["data"]["synthetic"]["image_size"])
            table, _ = ingest.plan_shards(table.assign(split="train"), shard_size=len(table))
            table.to_csv(tmp / "studies.csv", index=False)
            shard = tmp / "normalized.h5"
            normalize.run(tmp / "studies.csv", "00000", shard, None, cfg["normalize"])
        if not Path(weights).exists():
            weights = tmp / "unet.pt"
            torch.save(segment.build_unet(cfg["segment"]).state_dict(), weights)
        t0 = time.perf_counter()
        counts = segment.run(shard, weights, tmp / "segment.h5", cfg["segment"], threads=2)
        t_seg = time.perf_counter() - t0
        t0 = time.perf_counter()
        c = crop.run(shard, tmp / "segment.h5", tmp / "crop.h5", cfg["crop"])
        t_crop = time.perf_counter() - t0
    return {"images": counts["images"], "size": cfg["normalize"]["size"], "input_size": cfg["segment"]["input_size"],
            "segment_img_s": counts["images"] / t_seg, "rois": c["rois"], "crop_rois_s": c["rois"] / t_crop,
            "crop_img_s": counts["images"] / t_crop}


def bench_segment_table(table: str, weights: str | None, holdout: float, cfg_path: str | None, folds: int = 0
                        ) -> dict:
    """Lung Dice of a U-Net on the images of a mask table (any `segment.train` format but boxes). With
    `weights` every image is scored. Without, a U-Net is trained on the table's other patients first: with
    `folds` K, patients are hashed into K folds and each fold is scored by a U-Net trained on the other K - 1
    (every image scored once, by a model that never saw its patient); else a patient hash puts `holdout` of them
    aside for scoring and 10 % for early stopping. Dice is pooled over every scored image."""
    import torch

    from ..masks import detect_format
    from ..stages import segment, train_segmenter as ts

    import yaml

    cfg = config.load(overrides=yaml.safe_load(Path(cfg_path).read_text()) if cfg_path else None)
    seg, norm_cfg, seed = cfg["segment"], cfg["normalize"], cfg["data"]["split"]["seed"]
    if weights:
        plans = [{"train": 0.0, "validate": 0.0, "test": 1.0}]
    elif folds:
        plans = [{"folds": folds, "fold": k, "seed": seed} for k in range(folds)]
    else:
        plans = [{"train": 0.9 - holdout, "validate": 0.1, "test": holdout, "seed": seed}]
    source = {"format": detect_format(table), "path": table}
    torch.set_num_threads(2)
    res = {"format": source["format"], "prepare_seconds": 0.0, "train_seconds": 0.0, "train_images": [],
           "validate_images": [], "best_epoch": [], "epochs": [], "folds": folds}
    preds, truths = [], []
    for fractions in plans:
        t0 = time.perf_counter()
        examples = ts.real_examples([source], ts.Ingested({}, {}, {}, {}), norm_cfg, fractions)
        res["prepare_seconds"] += time.perf_counter() - t0
        if "test" not in examples:
            continue
        if weights:
            model = segment.load_unet(weights, seg)
        else:
            t0 = time.perf_counter()
            model, metrics = ts.train(examples, seg, threads=2)
            res["train_seconds"] += time.perf_counter() - t0
            res["train_images"].append(metrics["train_images"])
            res["validate_images"].append(len(examples.get("validate", [[]])[0]))
            res["best_epoch"].append(metrics.get("best_epoch"))
            res["epochs"].append(metrics["epochs"])
        images, masks, known, _ = examples["test"]
        preds.append(segment.clean_lungs(segment.predict(model.eval(), images, seg["input_size"], seg["threshold"])))
        truths.append(masks)
    pred, masks = np.concatenate(preds), np.concatenate(truths)
    res["scored_images"] = len(pred)
    for c, name in enumerate(segment.CLASSES[:2]):
        per_image = [ts.dice(p, t) for p, t in zip(pred[:, c], masks[:, c])]
        res[f"dice_{name}"] = ts.dice(pred[:, c], masks[:, c])
        res[f"dice_{name}_per_image_mean"] = float(np.nanmean(per_image))
        res[f"dice_{name}_per_image_min"] = float(np.nanmin(per_image))
    return res
