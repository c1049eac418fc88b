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
    bench normalize|synthesize|parse-reports|segment|pairing|train   figures on this machine
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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

    s = sub.add_parser("bench", help="throughput benchmarks")
    s.add_argument("stage", choices=["normalize", "synthesize", "parse-reports", "segment", "pairing", "train"])
    s.add_argument("--n", type=int, default=None, help="number of images (normalize) or studies (synthesize)")
    s.add_argument("--size", type=int, default=None, help="source image rows")
    s.add_argument("--teacher-model", default=None, help="bench train: the online teacher's architecture "
                   "(default teacher.model; medclip-vit-b-16 shows a GPU-sized teacher, randomly initialised)")

    args = p.parse_args(argv)
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

        from .io import setup_logging
        from .stages import train

        setup_logging(args.log if os.environ.get("RANK", "0") == "0" else None, append=True)
        train.run(args.spec, args.threads)
    elif args.command in ("zeroshot", "ground"):
        from . import predict

        return predict.main(args.command, args.checkpoint, args.image, getattr(args, "phrase", None),
                            getattr(args, "out", None), args.config, args.model, args.segmenter)
    elif args.command == "bench":
        from . import bench

        bench.run(args.stage, n=args.n, size=args.size, teacher_model=args.teacher_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
