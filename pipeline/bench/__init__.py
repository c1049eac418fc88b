"""Benchmarks: figures printed, never asserted in tests. `python -m pipeline bench STAGE` calls `run`.

`stages` (normalize, synthesize, pairing), `parse_reports`, `segment`, `train` (teacher cached vs online),
`scale` (the workflow at N and 10N films: per-stage rates and peak RSS, a MIMIC-CXR projection), `unet` (U-Net training memory against the number of CheXmask rows),
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
        from .scale import MIMIC_IMAGES, PER_IMAGE, STAGES, bench_scale

        res = bench_scale(n or 500)
        n_res, big = res["N"], res["10N"]
        print(f"scale: snakemake --cores {res['cores']} train on MIMIC-CXR-layout folders of N = {n_res['films']} and "
              f"10N = {big['films']} films ({res['films']} films rendered at 512 rows, repeated under new ids as hard "
              f"links; one film per study, 2 studies per patient), the U-Net trained from a CheXmask-format table of "
              f"as many rows (1 epoch, U-Net at {res['unet_size']} px), {res['student_steps']} student steps of "
              f"batch 16; normalize.size {res['size']}, shards of {res['shard_size']} films; "
              f"{res['seconds'] / 60:.1f} min in all, load average {res['load_before']:.1f} before, "
              f"{res['load_after']:.1f} after")
        for name in ("N", "10N"):
            print(f"  {name:>3}: source laid out in {res[name]['source_s']:.0f} s, workflow "
                  f"{res[name]['workflow_s']:.0f} s")
        print("  per stage, from benchmarks/<rule>/*.tsv: images per core-second (images / summed job seconds x "
              "threads), peak RSS of the largest job (MB; its process tree, shared pages counted per process; PSS "
              "beside it)")
        print(f"  {'stage':<16}{'jobs N/10N':>11}{'threads':>8}{'img/s N':>9}{'10N':>8}{'RSS N':>8}{'10N':>7}"
              f"{'10N/N':>7}{'PSS N':>7}{'10N':>6}")
        for s in STAGES:
            a, b = n_res["stages"][s], big["stages"][s]
            print(f"  {s:<16}{a['jobs']:>5} /{b['jobs']:>4}{a['threads']:>8}{a['core_images_s']:>9.1f}"
                  f"{b['core_images_s']:>8.1f}{a['peak_rss_mb']:>8.0f}{b['peak_rss_mb']:>7.0f}"
                  f"{res['rss_ratio'][s]:>7.2f}{a['peak_pss_mb']:>7.0f}{b['peak_pss_mb']:>6.0f}")
        flat = max(res["rss_ratio"].values())
        print(f"  largest peak RSS 10N / N: {flat:.2f}x ({max(res['rss_ratio'], key=res['rss_ratio'].get)}; "
              f"target <= 1.15). train_segmenter counts the images it trained on x epochs, train (the student) its "
              f"steps x batch; the others a shard's images per job. Snakemake samples memory every 0.5 s for a "
              f"job's first 15 s, then every 30 s")
        p = res["projection"]
        print(f"projection: MIMIC-CXR's {MIMIC_IMAGES:,} images on a {p['cores']}-core workstation from the 10N "
              f"per-core rates (per-shard jobs keep the {p['cores']} cores busy: {p['cores']} one-thread jobs or "
              f"{p['cores'] // 2} of segment's two-thread jobs at a time, each core as fast as one measured here)")
        print("  " + ", ".join(f"{s} {p['hours'][s]:.2f} h" for s in PER_IMAGE)
              + f": {p['total_hours']:.2f} h (target <= 1 h); {p['dominant']} dominates "
              f"({p['hours'][p['dominant']] / p['total_hours']:.0%})")
        print(f"  parse_reports (per shard; it parses each study of a shard once, and MIMIC's dicom_ids are hashes, "
              f"so a study's images rarely share a shard: about one parse per image) adds "
              f"{res['parse_reports_hours']:.2f} h, embed_teacher {res['embed_teacher_hours']:.2f} h")
        print("  each job first starts Python and imports its stage (torch for most): start-up s per job, measured "
              "in fresh processes after the runs; per-core rates without it:")
        print("  " + ", ".join(f"{s} {f['startup_s']:.1f} s, {f['work_core_images_s']:.1f} img/s"
                               for s, f in res["startup"].items()))
        print("  MIMIC-CXR at other data.shard_size values (start-up per job + images at the rates without it):")
        for k, q in res["by_shard_size"].items():
            print(f"    shards of {k:>5}: " + ", ".join(f"{s} {q['hours'][s]:.2f} h" for s in PER_IMAGE)
                  + f": {q['total_hours']:.2f} h")
        default = config.load()
        print(f"  caveats: these films are 512 rows (MIMIC-CXR's DICOMs are about 3000 x 2500, so normalize decodes "
              f"far fewer pixels here); normalize.size {res['size']} and the U-Net at {res['unet_size']} px against "
              f"config.yaml's {default['normalize']['size']} and {default['segment']['input_size']} px; the cores "
              f"here may be shared (load average above)")
        if "in_memory_N" in res:
            print(f"student memory: {res['memory_steps']} steps of batch 16 on the workflow's shards, a fresh "
                  f"process each")
            memory = {"N": n_res["student_memory"], "10N": big["student_memory"], "in_memory_N": res["in_memory_N"]}
            for name, m in memory.items():
                print(f"  {name:>11}: {m['images']} images, {m['pairs']} pairs: peak RSS {m['peak_rss_mb']:.0f} MB "
                      f"(workers {m['worker_peak_rss_mb']:.0f} MB), {m['samples_s']:.1f} samples/s")
            print(f"  peak RSS 10N / N: {res['student_memory_ratio']:.3f}x (target <= 1.15); streaming / in-memory "
                  f"samples/s at N: {res['speed_ratio']:.2f}x (target >= 0.9)")
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
                  f"peak RSS {m['peak_rss_mb']:.0f} MB ("
                  + (f"{m['workers']} workers, largest child {m['worker_peak_rss_mb']:.0f} MB" if m["workers"] else
                     "no workers: read in the training process") + "), "
                  f"{m['samples_s']:.1f} samples/s")
        speeds = res["samples_s"]
        print(f"  samples/s at N, {res['repeats']} runs each in turns: streaming "
              f"{', '.join(f'{v:.1f}' for v in speeds['streaming'])}; in memory "
              f"{', '.join(f'{v:.1f}' for v in speeds['in_memory'])}")
        workers = f", largest child {res['worker_rss_ratio']:.3f}x" if "worker_rss_ratio" in res else ""
        print(f"  peak RSS 10N / N: {res['rss_ratio']:.3f}x{workers} (target <= 1.15); "
              f"streaming / in-memory samples/s at N (means): {res['speed_ratio']:.2f}x (target >= 0.9)")
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
              f"{res['lung']}); {res['judged']} judged on synthetic truth: accuracy {res['accuracy']:.4f} ("
              + ", ".join(f"{rule} {t['right']}/{t['judged']}" for rule, t in res["by_rule"].items()) + ")")
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
