"""Benchmarks: figures printed, never asserted in tests.

`bench normalize`: images/s of the normalize stage beside a minimal baseline on the same files in the same
run (pydicom decode + resize + PNG write, nothing else). `bench synthesize`: studies/s on one core.
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


def bench_parse_reports(n: int) -> dict:
    """Reports/s on one process, and accuracy against the synthetic ground truth and the hand-written set."""
    from ..labels import OBSERVATIONS
    from ..reports import score
    from ..stages import parse_reports as pr

    cfg = config.load()
    syn = cfg["data"]["synthetic"]
    syn.update(n_studies=n, image_size=64, lateral_fraction=0.0)
    with tempfile.TemporaryDirectory() as d:
        synthesize.run(syn, Path(d) / "data", workers=2)
        table = ingest.read_mimic(Path(d) / "data").drop_duplicates("study_id")
        gold = score.synthetic_gold(Path(d) / "data" / "ground_truth" / "phrases.csv")
    pr.build_nlp(cfg["parse_reports"]["spacy_model"])  # built once per process, not part of the rate
    t0 = time.perf_counter()
    parsed = pr.parse_reports(table["report"].tolist(), cfg["parse_reports"])
    dt = time.perf_counter() - t0
    found: dict = {}
    for sid, rep in zip(table["study_id"], parsed):
        for p in rep.phrases:
            found.setdefault((sid, " ".join(p.sentence.split())), []).append(p)
    keys = list(gold) + [k for k in found if k not in gold]
    synthetic = score.score([gold.get(k, {}) for k in keys], [score.by_observation(found.get(k, [])) for k in keys])
    labels = np.array([[r.labels[o] for o in OBSERVATIONS] for r in parsed])
    synthetic["label_agreement"] = pr.agreement(labels, table[OBSERVATIONS].to_numpy(float))
    sentences, hand_gold = score.read_sentence_file(Path(__file__).resolve().parents[2] / "tests" / "data"
                                                    / "report_sentences.txt")
    hand = score.score(hand_gold, [score.by_observation(r.phrases)
                                   for r in pr.parse_reports(sentences, cfg["parse_reports"])])
    reports, labeler_gold = score.read_label_file(Path(__file__).resolve().parents[2] / "tests" / "data"
                                                  / "chexpert_style_reports.txt")
    labeler = score.label_agreement(labeler_gold, [r.labels for r in pr.parse_reports(reports, cfg["parse_reports"])])
    return {"reports": len(table), "seconds": dt, "reports_s": len(table) / dt, "synthetic": synthetic,
            "hand_written": hand, "chexpert_style": labeler}


def bench_real_reports(reports: pd.DataFrame, gold_table: str | Path, misses: int = 0,
                       hedge: str = "two_grade") -> dict:
    """Study labels parsed from real reports against an expert gold table (NegBio format), on the 8 findings
    both label schemes share (`pipeline/reports/real.py`); reports/s on one process.

    The figures are those of the labels under `hedge`, by default the gold's own convention: NegBio's experts
    count a probable finding and leave one only offered as a possibility unlabelled ("two_grade"), so scoring
    the CheXpert labeler's convention (every hedge -1, counted as present) against them would count as parser
    errors what is a difference of convention. The other convention's figures are in `by_convention`."""
    from ..reports import real
    from ..reports.score import HEDGE_CONVENTIONS
    from ..stages import parse_reports as pr

    cfg = config.load()["parse_reports"]
    gold = real.read_gold(gold_table)
    reports = reports[reports["study_id"].isin(gold.index)]
    pr.build_nlp(cfg["spacy_model"])
    t0 = time.perf_counter()
    parsed = pr.parse_reports(reports["report"].tolist(), cfg)
    dt = time.perf_counter() - t0
    ids = reports["study_id"].tolist()
    predicted = {h: pd.DataFrame([real.positive(r.labels_as(h)) for r in parsed], index=ids)
                 for h in HEDGE_CONVENTIONS}
    res = real.label_scores(gold, predicted[hedge])
    res.update(reports=len(ids), seconds=dt, reports_s=len(ids) / dt, not_in_reports=len(gold) - len(ids),
               hedge=hedge, config_hedge=cfg["hedge"],
               by_convention={h: real.label_scores(gold, p) for h, p in predicted.items()},
               confusions=real.confusions(gold, predicted[hedge], {s: r.phrases for s, r in zip(ids, parsed)}),
               texts=dict(zip(ids, reports["report"])) if misses else {})
    return res


def _print_real(res: dict, misses: int) -> None:
    print(f"parse-reports on real reports: {res['reports']} reports with gold labels ({res['not_in_reports']} gold "
          f"rows without a report) in {res['seconds']:.1f} s on one core: {res['reports_s']:.0f} reports/s")
    print(f"labels under the {res['hedge']} hedge convention (the gold's: a finding only offered as a possibility "
          "is unlabelled, a probable one counts), a label of 1 or -1 counting as present:")
    print(f"  {'label':<18} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}   fp  fn")
    for obs, v in res["labels"].items():
        print(f"  {obs:<18} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>6.3f} {v['support']:>8} "
              f"{v['fp']:>4} {v['fn']:>3}")
    print(f"  macro F1 over the {len(res['labels'])} shared labels: {res['macro_f1']:.3f} "
          f"(targets: >= 0.90, no label below 0.80)")
    for h, other in res["by_convention"].items():
        if h != res["hedge"]:
            print(f"  under the {h} convention{' (this config)' if h == res['config_hedge'] else ''}, every hedged "
                  f"finding counted as present: macro F1 {other['macro_f1']:.3f} ("
                  + ", ".join(f"{o} {v['f1']:.3f}" for o, v in other["labels"].items()) + ")")
    print("confusions that cost most (phrase: studies):")
    for obs, c in res["confusions"].items():
        if not (c["false_positive_phrases"] or c["missed_negated_phrases"] or c["missed_unmentioned"]):
            continue
        print(f"  {obs}:")
        if c["false_positive_phrases"]:
            print("    fired wrongly: " + "; ".join(f"{p}: {n}" for p, n in c["false_positive_phrases"]))
        if c["missed_negated_phrases"]:
            print("    missed, read as negated or only possible: " + "; ".join(f"{p}: {n}" for p, n in c["missed_negated_phrases"]))
        if c["missed_unmentioned"]:
            print(f"    missed, no mention found: {len(c['missed_unmentioned'])} studies")
            for sid in c["missed_unmentioned"][:misses]:
                print(f"      {sid}: {' '.join(res['texts'][sid].split())[:300]}")


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


def bench_pairing(results: str = "results") -> dict:
    """ROI <-> phrase pairing on the workflow's crop and report shards, scored on the synthetic truth."""
    from ..pairing import accuracy_on_truth

    truth = Path(config.load()["data"]["synthetic"]["out_dir"]) / "ground_truth"
    crops = sorted(Path(results, "crop").glob("shard-*.h5"))
    return accuracy_on_truth(crops, [Path(results, "reports", c.name) for c in crops], truth)


def _figures(d: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def run(stage: str, n: int | None = None, size: int | None = None, teacher_model: str | None = None,
        gold: str | None = None, reports: str | None = None, iu: str | None = None, misses: int = 0,
        table: str | None = None, weights: str | None = None, holdout: float = 0.2, cfg_path: str | None = None,
        folds: int = 0) -> dict:
    if stage == "backbones":
        from .backbones import bench_backbones

        res = bench_backbones(n or 3)
        print(f"backbones: one region-aware training step (4 losses, AdamW), the same 8 images / 16 ROIs / texts, "
              f"CPU, 2 threads, mean of {n or 3} steps")
        for key in ("medclip-tiny", "biomedclip-sized"):
            m = res[key]
            print(f"  {key:>16}: {m['params_m']:.1f} M parameters, {m['size']} px, report {m['report_tokens']} tokens: "
                  f"{m['step_s']:.2f} s/step, peak RSS {m['peak_rss_mb']:.0f} MB (training {m['train_mb']:.0f} MB)")
        print(f"  BiomedCLIP-sized / medclip-tiny: step time {res['step_ratio']:.1f}x, peak RSS {res['peak_ratio']:.1f}x")
        return res
    if stage == "train":
        from .train import bench_train

        res = bench_train(n or 10, teacher_model)
        a, b = res["cached"], res["online"]
        print(f"train: {n or 10} steps of the same student and batches; teacher {b['teacher']} "
              f"(a) cached in shards, (b) run online inside the step")
        for m in (a, b):
            cuda = f", CUDA peak {m['cuda_peak_mb']:.0f} MB" if m["cuda_peak_mb"] else ""
            print(f"  {m['teacher']:>18}: {m['step_s']:.3f} s/step, peak RSS {m['peak_rss_mb']:.0f} MB, "
                  f"training memory {m['train_mb']:.0f} MB{cuda}")
        print(f"  (a)/(b): step time {res['step_ratio']:.2f}x (target <= 0.7), peak RSS {res['peak_ratio']:.2f}x, "
              f"training memory {res['train_mem_ratio']:.2f}x (target <= 0.6)"
              + (f", CUDA peak {res['cuda_ratio']:.2f}x" if "cuda_ratio" in res else ""))
        ld = res["loading"]
        print(f"loading {ld['samples']} samples (an image at model size, its ROI pairs):\n"
              f"  pixels: model_inputs shards {ld['shards_samples_s']:.0f}/s, PNG decode + resize "
              f"{ld['png_samples_s']:.0f}/s: {ld['ratio']:.2f}x (target >= 3)\n"
              f"  whole loader (pairing, captions, teacher embeddings too): {ld['loader_samples_s']:.0f}/s, with "
              f"PNG pixels {ld['png_loader_samples_s']:.0f}/s: {ld['loader_ratio']:.2f}x")
        return res
    if stage == "scale":
        from .scale import bench_scale

        res = bench_scale(n or 48)
        print(f"scale: the same {res['N']['images']}-image and {res['10N']['images']}-image synthetic sets "
              f"(built in {res['build_N_s']:.0f} s and {res['build_10N_s']:.0f} s), 20 student steps each")
        for name in ("N", "10N", "in_memory_N"):
            m = res[name]
            print(f"  {name:>11}: {m['images']} images, {m['pairs']} pairs: peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"(workers {m['worker_peak_rss_mb']:.0f} MB), {m['samples_s']:.1f} samples/s")
        print(f"  peak RSS 10N / N: {res['rss_ratio']:.3f}x (target <= 1.15); streaming / in-memory samples/s at N: "
              f"{res['speed_ratio']:.2f}x (target >= 0.9)")
        return res
    if stage == "normalize":
        res = bench_normalize(n or 24, size or 2048)
        print(f"normalize: {res['images']} DICOMs of {res['source_rows']} rows -> {res['out_size']}px")
        print(f"  baseline (decode + resize + PNG): {res['baseline_img_s']:.2f} images/s")
        print(f"  normalize stage (shard + PNG):    {res['normalize_img_s']:.2f} images/s")
        print(f"  ratio: {res['ratio']:.2f}x (target >= 0.8x)")
    elif stage == "segment" and table:
        res = bench_segment_table(table, weights, holdout, cfg_path, folds)
        what = f"given weights {weights}" if weights else (
            f"{'a U-Net per fold, ' + str(folds) + '-fold cross-validation by patient, ' if folds else 'a U-Net '}"
            f"trained on {res['train_images']} images ({res['validate_images']} more for early stopping, "
            f"best epoch {res['best_epoch']} of {res['epochs']}, {res['train_seconds']:.0f} s on 2 threads)")
        print(f"segment on {table} ({res['format']}): {what}; scored on {res['scored_images']} held-out images")
        for name in ("right_lung", "left_lung"):
            print(f"  {name}: Dice {res[f'dice_{name}']:.4f} (pooled pixels), per image mean "
                  f"{res[f'dice_{name}_per_image_mean']:.4f}, min {res[f'dice_{name}_per_image_min']:.4f}")
    elif stage == "segment":
        res = bench_segment()
        print(f"segment: {res['images']} images at {res['size']}px (U-Net at {res['input_size']}px, 2 threads): "
              f"{res['segment_img_s']:.1f} images/s")
        print(f"crop: {res['rois']} ROIs in {res['images']} images: {res['crop_rois_s']:.0f} ROIs/s "
              f"({res['crop_img_s']:.1f} images/s)")
        shards = sorted(Path("results/segment").glob("shard-*.h5"))
        cfg = config.load()
        masks = Path(cfg["data"]["synthetic"]["out_dir"]) / "ground_truth" / "masks"
        if shards and masks.exists():
            from ..stages.train_segmenter import evaluate_shards

            dice = evaluate_shards(shards, masks, "test", cfg["segment"]["min_lesion_area"])
            print("workflow segment shards, synthetic test split: " + _figures(dice))
            res["test_dice"] = dice
    elif stage == "pairing":
        res = bench_pairing()
        print(f"pairing: {res['pairs']} ROI-phrase pairs (lesion {res['lesion']}, zone {res['zone']}, lung "
              f"{res['lung']}); {res['judged']} judged on synthetic truth: accuracy {res['accuracy']:.4f}")
    elif stage == "parse-reports" and (gold or reports or iu):
        from ..reports import real

        if not gold or bool(reports) == bool(iu):
            raise SystemExit("bench parse-reports on real reports: --gold (or --negbio) and one of --reports / --iu")
        table = real.read_iu(iu) if iu else real.read_reports(reports)
        for name, why in table.attrs.get("errors", []):
            print(f"skipped {name}: {why}")
        res = bench_real_reports(table, gold, misses)
        _print_real(res, misses)
    elif stage == "parse-reports":
        res = bench_parse_reports(n or 1000)
        print(f"parse-reports: {res['reports']} synthetic reports in {res['seconds']:.1f} s on one core: "
              f"{res['reports_s']:.0f} reports/s (target >= 100)")
        for name in ("synthetic", "hand_written"):
            print(f"  {name}: " + _figures(res[name]))
        lab = res["chexpert_style"]
        print(f"  CheXpert-labeler-style reports ({lab['reports']}, tests/data/chexpert_style_reports.txt), study "
              f"labels under parse_reports.hedge = {config.load()['parse_reports']['hedge']}: agreement "
              f"{lab['agreement']:.3f} of the {lab['labelled_cells']} labelled cells, {lab['agreement_either']:.3f} "
              f"of the {lab['cells_either']} cells either labels (target >= 0.92)")
    else:
        res = bench_synthesize(n or 20, size or config.load()["data"]["synthetic"]["image_size"])
        print(f"synthesize: {res['studies']} studies ({res['images']} images, {res['image_rows']} rows) "
              f"in {res['seconds']:.1f} s on one core: {res['studies_s_per_core']:.2f} studies/s/core")
    return res
