"""Command line: `python -m pipeline <command>` (also installed as `medclip`).

    inspect FILE [--row N]          tree, attributes and one row of any shard
    validate FILE [FILE ...]        schema version, row counts, offsets; exit 1 on a problem
    synthesize -o DIR [--config C]  write the synthetic MIMIC-layout tree outside the workflow
    show SHARD --row N -o PNG       one image with masks, ROI boxes and phrases from every stage
    montage DATA_DIR -o PNG         grid of synthetic radiographs with lung / lesion outlines and impressions
            [--compare DIR]         ... or beside the real films of DIR at the same size
    parse-reports CSV -o DIR        reports (study_id, report) -> phrases.csv and labels.csv
    train --spec SPEC               one training run (what the rule, or torchrun in each process, starts)
    zeroshot --checkpoint CKPT IMAGE          the 14 observation probabilities of one DICOM / PNG
    ground --checkpoint CKPT IMAGE "PHRASE"   the phrase's heat map over that image's ROIs (-o PNG)
    describe --checkpoint CKPT IMAGE --box x0,y0,x1,y1 | --point x,y | --mask PNG [--text "..."]
                                    concept probabilities of one region (pooled as training pools ROIs)
    benchmark NAME --checkpoint CKPT [--root DIR]   ms_cxr, rsna_pneumonia, nih_bbox, siim_pneumothorax,
                                    chexpert_5x200, mimic_5x200 from their official files
    qc SEGMENT_DIR [-o DIR]         flags per image and a montage of the worst segmentations
    pin FOLDER [--results DIR]      pin a run's evaluation sets (for evaluate.manifests) without evaluating
    bench normalize|synthesize|parse-reports|segment|pairing|train|backbones|scale|unet   figures on this machine
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="on an error, the full traceback instead of one line")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="print a shard's tree, attributes and one row")
    s.add_argument("file")
    s.add_argument("--row", type=int, default=None)

    s = sub.add_parser("validate", help="check shards: schema version, row counts, offsets")
    s.add_argument("files", nargs="+")

    s = sub.add_parser("synthesize", help="write the synthetic dataset (MIMIC-CXR layout)")
    s.add_argument("-o", "--out", required=True)
    s.add_argument("--config", default=None, help="workflow config (default: the repository's config.yaml)")
    s.add_argument("--workers", type=int, default=1)

    s = sub.add_parser("show", help="one row with masks, ROI boxes and phrases from every stage's shard")
    s.add_argument("shard")
    s.add_argument("--row", type=int, default=0)
    s.add_argument("-o", "--out", required=True)

    s = sub.add_parser("montage", help="grid of synthetic images with outlines and impressions")
    s.add_argument("data_dir")
    s.add_argument("-o", "--out", required=True)
    s.add_argument("--n", type=int, default=8)
    s.add_argument("--compare", help="a folder of real films (DICOM / PNG / JPG) to show beside the synthetic ones")

    s = sub.add_parser("parse-reports", help="report CSV (study_id, report) -> phrases.csv, labels.csv")
    s.add_argument("table")
    s.add_argument("-o", "--out", required=True)
    s.add_argument("--config", default=None, help="workflow config (default: the repository's config.yaml)")

    s = sub.add_parser("train", help="one training run from its spec.json (see pipeline/stages/train.py)")
    s.add_argument("--spec", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--log", default=None, help="log file (rank 0 appends to it)")

    for name, what in (("zeroshot", "the 14 observation probabilities of one radiograph"),
                       ("ground", "where a phrase is on one radiograph: heat map over its ROIs")):
        s = sub.add_parser(name, help=what + " (normalize, segment and crop run on the file with the config)")
        s.add_argument("--checkpoint", required=True, help="model.pt of a run or the teacher, or a checkpoints/last.pt")
        s.add_argument("image", help="a DICOM, PNG or JPEG file")
        if name == "ground":
            s.add_argument("phrase", help='e.g. "small left pleural effusion"')
            s.add_argument("-o", "--out", default="ground.png")
        s.add_argument("--config", default=None, help="a config file merged over the repository's config.yaml")
        s.add_argument("--model", default=None, help="architecture (default: the checkpoint's, else train.model)")
        s.add_argument("--segmenter", default=None,
                       help="U-Net weights (default: segment.weights, else results/segmenter/unet.pt)")

    s = sub.add_parser("describe", help="what the model sees in one region of a radiograph (box, point or mask)")
    s.add_argument("image", help="a DICOM, PNG or JPEG file")
    s.add_argument("--checkpoint", required=True, help="model.pt of a run or the teacher, or a checkpoints/last.pt")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--box", help="x0,y0,x1,y1 in the file's pixels")
    where.add_argument("--point", help="x,y in the file's pixels (the patch it falls in)")
    where.add_argument("--mask", help="a PNG of the image's size, non-zero inside the region")
    s.add_argument("--text", default=None, help='a phrase to score against the region, e.g. "no left effusion"')
    s.add_argument("--config", default=None, help="a config file merged over the repository's config.yaml")
    s.add_argument("--model", default=None, help="architecture (default: the checkpoint's, else train.model)")

    s = sub.add_parser("benchmark", help="one public benchmark from its official files, outside the workflow")
    s.add_argument("name", choices=["ms_cxr", "rsna_pneumonia", "nih_bbox", "siim_pneumothorax", "chexpert_5x200",
                                    "mimic_5x200"])
    s.add_argument("--checkpoint", required=True, help="model.pt of a run or the teacher, or a checkpoints/last.pt")
    s.add_argument("--root", default=None, help="the dataset's folder (default: evaluate.benchmarks.NAME.root)")
    s.add_argument("--images", default=None, help="ms_cxr: the MIMIC-CXR-JPG root its `path` column is relative to "
                   "(default: --root)")
    s.add_argument("--manifest", default=None, help="the pinned manifest (default results/benchmarks/NAME/manifest.json; "
                   "written on the first read)")
    s.add_argument("--prompts", default=None, help="5x200: a JSON vocabulary in GLoRIA's CHEXPERT_CLASS_PROMPTS form "
                   "for the GLoRIA / MedCLIP prompt grammar (default: our prompt ensemble)")
    s.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap resamples")
    s.add_argument("-o", "--out", default=None, help="a folder for grounding pictures of 3 cases")
    s.add_argument("--config", default=None, help="a config file merged over the repository's config.yaml")
    s.add_argument("--model", default=None, help="architecture (default: the checkpoint's, else train.model)")
    s.add_argument("--segmenter", default=None, help="U-Net weights for the ROI-level map (default: segment.weights, "
                   "else results/segmenter/unet.pt; without one, dense maps only)")
    s = sub.add_parser("qc", help="segmentation quality flags (CSV) and a montage of the worst images")
    s.add_argument("segment_dir", help="the segment stage's folder, e.g. results/segment")
    s.add_argument("-o", "--out", default=None, help="output folder (default: results/qc beside it)")
    s.add_argument("--n", type=int, default=16, help="images in the montage")

    s = sub.add_parser("pin", help="pin the evaluation sets (test images, pairs, ...) of a run's shards in a folder "
                       "for evaluate.manifests, without evaluating")
    s.add_argument("folder", help="where the manifests go, e.g. workflow/manifests/my-data")
    s.add_argument("--results", default="results", help="the run's results folder")
    s.add_argument("--config", default=None, help="a config file merged over the repository's config.yaml")

    s = sub.add_parser("bench", help="throughput benchmarks")
    s.add_argument("stage", choices=["normalize", "synthesize", "parse-reports", "segment", "pairing", "train",
                                      "backbones", "scale", "unet"])
    s.add_argument("--n", type=int, default=None, help="number of images (normalize), studies (synthesize, scale) "
                   "or CheXmask rows (unet: N, and 10N)")
    s.add_argument("--size", type=int, default=None, help="source image rows")
    s.add_argument("--teacher-model", default=None, help="bench train: the online teacher's architecture "
                   "(default teacher.model; medclip-vit-b-16 shows a GPU-sized teacher, randomly initialised)")
    s.add_argument("--gold", "--negbio", dest="gold", default=None,
                   help="bench parse-reports on real reports: a NegBio-format gold table (filename, 0/1 per finding)")
    s.add_argument("--reports", default=None, help="bench parse-reports: a CSV of real reports (study_id, report)")
    s.add_argument("--iu", default=None, help="bench parse-reports: the IU (Open-i) ecgen-radiology XML tar.gz")
    s.add_argument("--misses", type=int, default=0, help="bench parse-reports: print this many missed reports a label")
    s.add_argument("--table", default=None, help="bench segment: lung Dice against this mask table (masks, lungs "
                   "or chexmask format); trains a U-Net on the table's other patients unless --weights is given")
    s.add_argument("--weights", default=None, help="bench segment --table: the U-Net to score")
    s.add_argument("--holdout", type=float, default=0.2, help="bench segment --table: share of patients scored")
    s.add_argument("--folds", type=int, default=0, help="bench segment --table: K-fold cross-validation by patient "
                   "(every image scored once by a U-Net trained on the other folds) instead of --holdout")
    s.add_argument("--config", default=None, help="a config file merged over the repository's config.yaml")

    args = p.parse_args(argv)
    try:
        return run(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one line for the user; the traceback on request
        if args.debug:
            raise
        message = " ".join(str(e).split()) or "(no message)"
        print(f"error: {message} ({type(e).__name__}; python -m pipeline --debug {args.command} ... for the traceback)",
              file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """The command `args.command`; its exit status."""
    if args.command == "inspect":
        from .shards import describe

        print(describe(args.file, args.row))
    elif args.command == "validate":
        from .shards import check

        bad = 0
        for f in args.files:
            problems = check(f)
            bad += bool(problems)
            print(f"{f}: {'ok' if not problems else 'INVALID'}")
            for prob in problems:
                print(f"  - {prob}")
        return 1 if bad else 0
    elif args.command == "synthesize":
        from . import config
        from .io import setup_logging
        from .stages import synthesize

        setup_logging()
        synthesize.run(config.load(args.config)["data"]["synthetic"], args.out, workers=args.workers)
    elif args.command == "show":
        from .show import show

        print(show(args.shard, args.row, args.out))
    elif args.command == "montage":
        from .montage import montage

        montage(args.data_dir, args.out, args.n, compare=args.compare)
        print(args.out)
    elif args.command == "parse-reports":
        from . import config
        from .stages import parse_reports

        for path in parse_reports.parse_csv(args.table, args.out, config.load(args.config)["parse_reports"]):
            print(path)
    elif args.command == "train":
        import os

        from .io import logged
        from .stages import train

        with logged(args.log if os.environ.get("RANK", "0") == "0" else None, append=True):
            train.run(args.spec, args.threads)
    elif args.command in ("zeroshot", "ground"):
        from . import predict

        return predict.main(args.command, args.checkpoint, args.image, getattr(args, "phrase", None),
                            getattr(args, "out", None), args.config, args.model, args.segmenter)
    elif args.command == "describe":
        from . import describe

        return describe.main(args.image, args.checkpoint, args.box, args.point, args.mask, args.text, args.config,
                             args.model)
    elif args.command == "benchmark":
        from . import benchmarks
        from .io import setup_logging

        setup_logging()
        return benchmarks.main(args.name, args.checkpoint, args.root, args.config, args.model, args.segmenter,
                               args.manifest, args.images, args.prompts, args.bootstrap, args.out)
    elif args.command == "qc":
        from . import qc

        csv_path, png_path, table = qc.run(args.segment_dir, args.out, args.n)
        print(f"{len(table)} images, {(table['flags'] != '').sum()} flagged "
              f"({(table['no_lungs']).sum()} without lungs): {csv_path}, {png_path}")
    elif args.command == "pin":
        from pathlib import Path

        import yaml

        from . import config
        from .stages import evaluate

        cfg = config.load(overrides=yaml.safe_load(Path(args.config).read_text()) if args.config else None)
        synthetic = cfg["data"]["source"] == "synthetic"
        truth = Path(cfg["data"]["synthetic"]["out_dir"], "ground_truth") if synthetic else None
        for name, m in evaluate.pin(args.results, args.folder, cfg["evaluate"]["seed"], truth).items():
            print(f"{name}: {m['n']} entries, sha256 {m['sha256'][:12]}: {m['path']}")
    elif args.command == "bench":
        from . import bench

        bench.run(args.stage, n=args.n, size=args.size, teacher_model=args.teacher_model, gold=args.gold,
                  reports=args.reports, iu=args.iu, misses=args.misses, table=args.table, weights=args.weights,
                  holdout=args.holdout, cfg_path=args.config, folds=args.folds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
