"""Benchmarks: figures printed, never asserted in tests. `python -m pipeline bench STAGE` calls `run`.

`stages` (normalize, synthesize, pairing), `parse_reports`, `segment`, `train` (teacher cached vs online),
`scale` (memory against dataset size), `unet` (U-Net training memory against the number of CheXmask rows),
`backbones` (a BiomedCLIP-sized student against medclip-tiny).
"""

from __future__ import annotations

from pathlib import Path

from .. import config
from .parse_reports import _print_real, bench_parse_reports, bench_real_reports
from .segment import bench_segment, bench_segment_table
from .stages import bench_normalize, bench_pairing, bench_synthesize


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
    if stage == "unet":
        from .unet import bench_unet

        res = bench_unet(n or 2000, size=size)
        print(f"unet: the U-Net trained from a CheXmask-format table of N and 10N rows joined to as many normalized "
              f"images ({res['size']} px, U-Net at {res['input_size']} px), {res['steps']} steps of batch 8 each, "
              f"2 threads, a fresh process per run")
        for name in ("N", "10N", "in_memory_N"):
            m = res[name]
            print(f"  {name:>11}: {m['rows']} rows ({m['train_images']} train), indexed in {m['prepare_s']:.1f} s: "
                  f"peak RSS {m['peak_rss_mb']:.0f} MB (largest worker {m['worker_peak_rss_mb']:.0f} MB), "
                  f"{m['samples_s']:.1f} samples/s")
        print(f"  peak RSS 10N / N: {res['rss_ratio']:.3f}x, workers {res['worker_rss_ratio']:.3f}x (target <= 1.15); "
              f"streaming / in-memory samples/s at N: {res['speed_ratio']:.2f}x (target >= 0.9)")
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
