"""The Snakemake workflow end to end on tiny trees the tests make: lint, dry run, reruns, privacy."""

import hashlib
import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import (MARKERS, ROOT, TINY, removed_unless_failed, run_snakemake, write_chexpert_tree,
                      write_mimic_tree)
from pipeline.dicom import DicomSpec, write_dicom
from pipeline.io import sha256_file
from pipeline.shards import Shard, check
from pipeline.stages import evaluate


def jobs(dry_run_output: str) -> dict[str, int]:
    """The job-count table of a dry run."""
    table = dry_run_output.split("job ", 1)[-1].split("total", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_lint_is_clean():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_dry_run_of_default_config(tmp_path):
    out = run_snakemake(tmp_path, "-n", configfile=None).stdout
    # per-shard jobs appear once the ingest checkpoint has run; train_run: 5 runs + student@1, @2, global_only@1, @2
    # the pretraining cohort's shards are known before ingest: 12000 films in shards of 500
    assert jobs(out) == {"synthesize": 1, "pretraining": 24, "ingest": 1, "fit_teacher": 1, "embed_concepts": 1,
                         "train_run": 9, "evaluate": 1, "visualize": 1, "all": 1}
    assert not (tmp_path / "results").exists()


def test_config_typo_stops_before_any_job(tmp_path):
    proc = run_snakemake(tmp_path, "--config", "normalize={sise: 128}", check=False)
    assert proc.returncode != 0
    assert "config key normalize: Additional properties are not allowed ('sise' was unexpected)" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, request):
    work = tmp_path_factory.mktemp("tiny")
    run_snakemake(work, "all")
    with removed_unless_failed(request, work):
        yield work


def test_tiny_synthetic_run_writes_valid_shards(tiny_run):
    studies = pd.read_csv(tiny_run / "results/ingest/studies.csv", dtype=str)
    shards = sorted((tiny_run / "results/normalize").glob("shard-*.h5"))
    assert len(shards) == len(set(studies["shard"])) >= 2
    kept = 0
    for path in shards:
        assert check(path) == []
        with Shard(path) as s:
            assert s.attrs["stage"] == "normalize" and s.config["size"] == 64
            kept += len(s)
            assert s.f["image"].shape[1:] == (64, 64)
    assert kept == len(studies)  # synthetic DICOMs are all usable
    assert len(list((tiny_run / "results/normalize/png").rglob("*.png"))) == kept
    assert (tiny_run / "benchmarks/normalize/shard-00000.tsv").exists()
    assert "kept" in (tiny_run / "logs/normalize/shard-00000.log").read_text()


def test_tiny_run_parses_every_report(tiny_run):
    studies = pd.read_csv(tiny_run / "results/ingest/studies.csv", dtype=str)
    shards = sorted((tiny_run / "results/reports").glob("shard-*.h5"))
    assert len(shards) == len(set(studies["shard"]))
    rows = 0
    for path in shards:
        assert check(path) == []
        with Shard(path) as s:
            rows += len(s)
            assert s.attrs["label_agreement"] == 1.0  # synthetic labels come from the same rule
            assert len(s.f["phrases/phrase"]) > len(s)
    assert rows == len(studies)
    assert "labels agree with the source table on 1.0000" in (tiny_run / "logs/parse_reports/shard-00000.log").read_text()


def test_nothing_to_do_on_rerun_and_a_change_reruns_only_its_stage(tiny_run):
    assert jobs(run_snakemake(tiny_run, "-n", "all").stdout) == {}
    n_shards = len(list((tiny_run / "results/normalize").glob("shard-*.h5")))
    rerun = lambda override: jobs(run_snakemake(tiny_run, "-n", "all", "--config", override).stdout)  # noqa: E731
    # evaluate.runs of config.yaml (a --configfile merges into it, it cannot remove runs) and the seed replicas of
    # student and global_only (tiny.yaml: 2 seeds)
    runs = 5 + 2
    downstream = {"embed_teacher": n_shards, "train_run": runs, "evaluate": 1, "visualize": 1, "all": 1}
    # the teacher is fitted on the pretraining cohort: the target cohort's stages do not refit it
    assert rerun("normalize={size: 32}") == {"normalize": n_shards, "train_segmenter": 1, "segment": n_shards,
                                             "crop": n_shards, "model_inputs": n_shards, **downstream}
    assert rerun("parse_reports={max_chars: 5000}") == {"parse_reports": n_shards, **downstream}
    assert rerun("teacher={steps: 4}") == {"fit_teacher": 1, "embed_concepts": 1, **downstream}
    assert rerun("pretraining={films: 36, shard_size: 12, image_size: 64}") == {
        "pretraining": 3, "fit_teacher": 1, "embed_concepts": 1, **downstream}
    assert rerun("teacher={fit_on: target}") == {"fit_teacher": 1, "embed_concepts": 1, **downstream}
    assert rerun("segment={epochs: 3}") == {"train_segmenter": 1, "segment": n_shards, "crop": n_shards,
                                            **downstream}
    assert rerun("crop={pad: 0.1}") == {"crop": n_shards, **downstream}
    # one run's value retrains that run only; evaluation settings retrain nothing
    assert rerun("evaluate={runs: {student: {}, no_roi: {beta: 0.5}}}") == {"train_run": 1, "evaluate": 1, "all": 1}
    assert rerun("evaluate={bootstrap: 50}") == {"evaluate": 1, "all": 1}
    assert rerun("train={lr: 0.001}") == {"train_run": runs, "evaluate": 1, "visualize": 1, "all": 1}


def test_tiny_run_trains_the_student_from_shards_and_evaluates_it(tiny_run):
    import open_clip

    import pipeline.models  # noqa: F401

    embed = sorted((tiny_run / "results/embed").glob("shard-*.h5"))
    teacher_hash = sha256_file(tiny_run / "results/teacher/model.pt")
    for path in embed:
        assert check(path) == []
        with Shard(path) as e, Shard(tiny_run / "results/crop" / path.name) as c:
            assert e.image_ids == c.image_ids and e.attrs["teacher_sha256"] == teacher_hash
            assert e.f["rois/roi_embedding"].shape[0] == c.f["rois/roi_image"].shape[0]
            assert e.f["image_embedding"].dtype == np.float16
    with Shard(tiny_run / "results/embed/concepts.h5") as c:
        assert len(c.table("concepts")["prompt"]) == 146
    for run in ("student", "no_roi"):
        lines = [json.loads(x) for x in (tiny_run / f"results/train/{run}/metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [0, 1, 2]
        assert {"global_loss", "roi_loss", "neg_loss", "distill_loss", "total_loss"} <= set(lines[-1])
        open_clip.create_model("medclip-tiny", pretrained=str(tiny_run / f"results/train/{run}/model.pt"))
    summary = json.loads((tiny_run / "results/train/student/summary.json").read_text())
    assert summary["teacher_sha256"] == teacher_hash and "pairing_on_truth" not in summary  # train reads no truth
    assert json.loads((tiny_run / "results/train/student@1/summary.json").read_text())["seed"] == summary["seed"] + 1
    metrics = json.loads((tiny_run / "results/evaluate/metrics.json").read_text())
    assert metrics["pairing_on_truth"]["judged"] > 0
    controls = {f"{run}/{c}" for run in ("student", "global_only", "baseline") for c in ("mean_image", "other_patient")}
    oracle = {f"{run}/oracle_rois" for run in ("student", "student@1", "global_only", "global_only@1")}
    assert set(metrics["runs"]) == {"baseline", "student", "global_only", "no_roi", "no_neg", "no_distill", "student@1",
                                    "global_only@1", "baseline/crop", "global_only/crop"} | controls | oracle
    # figures only the image can win, beside the input controls and the null band of 3 untrained models
    assert {"presence/auroc", "region/same_position_top1", "robust/balanced_negation"} <= set(metrics["runs"]["student"])
    assert metrics["null_band"]["models"] == 3 and "presence/auroc" in metrics["null_band"]["figures"]
    assert "student - student/mean_image" in metrics["paired"]
    for run, figures in metrics["runs"].items():
        # the oracle-ROI runs hold regional figures only: the whole-image ones are their run's
        keys = ("region/top1",) if run.endswith("/oracle_rois") else (
            "i2r/R@1", "r2i/median_rank", "region/top1", "robust/negated", "robust/converse")
        for key in keys:
            f = figures[key]
            assert f["ci_low"] <= f["value"] <= f["ci_high"] or not np.isfinite(f["ci_low"])
    # the control differs from the student only in its regional losses: they are exactly 0 in its log
    control = [json.loads(x) for x in (tiny_run / "results/train/global_only/metrics.jsonl").read_text().splitlines()]
    assert all(x["roi_loss"] == x["neg_loss"] == x["distill_loss"] == 0.0 for x in control)
    # the headline: student - global_only pooled over both seeds, on the same patient resamples
    headline = metrics["paired"]["student - global_only"]["region/top1"]
    seeds = metrics["seeds"]
    assert seeds["student"]["region/top1"]["runs"] == ["student", "student@1"]
    assert headline["value"] == pytest.approx(seeds["student"]["region/top1"]["mean"]
                                              - seeds["global_only"]["region/top1"]["mean"])
    assert "student - no_roi" in metrics["paired"]
    for name, m in metrics["manifests"].items():
        body = (tiny_run / "results/evaluate/manifests" / f"{name}.json").read_bytes()
        assert hashlib.sha256(body).hexdigest() == m["sha256"]
    # `pipeline pin` draws the same sets from the shards without evaluating
    pinned = evaluate.pin(tiny_run / "results", tiny_run / "pinned", metrics["test"]["seed"],
                          tiny_run / "data/synthetic/ground_truth")
    assert {k: v["sha256"] for k, v in pinned.items()} == {k: v["sha256"] for k, v in metrics["manifests"].items()}
    report = (tiny_run / "results/evaluate/report.md").read_text()
    assert report.index("## Figures only the image can win") < report.index("## Student vs global_only (2 seeds)")
    assert report.index("## Student vs global_only (2 seeds)") < report.index("## Headline, every run")
    assert "| student/mean_image |" in report and "| chance: 3 untrained medclip-tiny |" in report
    assert (tiny_run / "results/evaluate/roc.png").stat().st_size > 0
    assert list((tiny_run / "results/visualize").glob("grounding-*.png"))


RETRAIN = """
import shutil, sys, torch
from pathlib import Path
from pipeline.stages import train, train_segmenter
out = Path(sys.argv[1])
shards = sorted(str(p) for p in Path("results/normalize").glob("shard-*.h5"))
cfg = torch.load("results/segmenter/unet.pt", weights_only=True)["config"]
train_segmenter.run(shards, "data/synthetic/ground_truth/masks", out / "unet.pt", out / "unet.json", cfg, {},
                    threads=2, studies="results/ingest/studies.csv")
(out / "student").mkdir()
shutil.copy("results/train/student/spec.json", out / "student" / "spec.json")
train.run(out / "student" / "spec.json", threads=2)
"""


def test_a_second_process_trains_the_same_unet_and_student_bit_for_bit(tiny_run, tmp_path):
    """Same machine, same thread count (2, as the workflow ran): the U-Net and the student retrained in another
    process are bit-identical to the workflow's (the teacher: see the pinned-sets test below)."""
    import subprocess

    import torch

    subprocess.run([sys.executable, "-c", RETRAIN, str(tmp_path)], cwd=tiny_run, check=True, capture_output=True)
    for ours, theirs, key in ((tmp_path / "unet.pt", tiny_run / "results/segmenter/unet.pt", "state_dict"),
                              (tmp_path / "student/model.pt", tiny_run / "results/train/student/model.pt", None)):
        a, b = (torch.load(p, weights_only=True) for p in (ours, theirs))
        a, b = (a[key], b[key]) if key else (a, b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ours


def test_sets_pinned_by_another_unet_are_found_again_and_evaluate_finishes(tiny_run, tmp_path):
    """A fresh clone trains a U-Net that differs from the one of the run that pinned the sets (another CPU there;
    another seed here): evaluate finds the pinned pairs again by ROI name and lesion overlap, says how many, and
    finishes."""
    import torch

    pinned = tiny_run / "results/evaluate/manifests"
    override = tmp_path / "other-unet.yaml"
    override.write_text(yaml.safe_dump({"segment": {"seed": 7}, "evaluate": {"manifests": str(pinned)}}))
    work = tmp_path / "run"
    work.mkdir()
    run_snakemake(work, "all", "--configfile", str(TINY), str(override), configfile=None)
    ours, theirs = (torch.load(w / "results/segmenter/unet.pt", weights_only=True)["state_dict"] for w in (work, tiny_run))
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours)  # really another U-Net
    # the teacher never sees the U-Net: fitted again in another process, it is bit-identical
    a, b = (torch.load(w / "results/teacher/model.pt", weights_only=True) for w in (work, tiny_run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((work / "results/evaluate/metrics.json").read_text())
    for name in ("region_pairs", "clear_regions", "grounding"):
        m, n_pinned = metrics["manifests"][name], len(json.loads((pinned / f"{name}.json").read_text())["ids"])
        assert m["pinned"] == n_pinned and m["n"] == m["found"] <= n_pinned
    assert metrics["manifests"]["region_pairs"]["found"] > 0 and metrics["manifests"]["clear_regions"]["found"] > 0
    assert metrics["test"]["pairs"] == metrics["manifests"]["region_pairs"]["found"]
    found = metrics["manifests"]["region_pairs"]
    assert f"| region_pairs | {found['n']} | {found['found']} of {found['pinned']} |" in (
        work / "results/evaluate/report.md").read_text()
    assert "pinned region_pairs found" in (work / "logs/evaluate/evaluate.log").read_text()


def test_one_image_zeroshot_and_ground_from_the_command_line(tiny_run):
    import subprocess

    from PIL import Image

    dicom = sorted((tiny_run / "data/synthetic/files").rglob("*.dcm"))[0]
    blank = tiny_run / "blank.png"  # no lungs to find: the prior boxes stand in
    Image.fromarray(np.full((80, 70), 128, np.uint8)).save(blank)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--config", str(TINY)], cwd=tiny_run,
                              capture_output=True, text=True)

    ckpt = "results/train/student/model.pt"
    out = cli("zeroshot", "--checkpoint", ckpt, str(dicom))
    assert out.returncode == 0, out.stderr
    probs = dict(line.rsplit(None, 1) for line in out.stdout.splitlines() if line[:1].isupper())
    assert len(probs) == 14 and all(0 <= float(v) <= 1 for v in probs.values())
    # a U-Net that finds nothing (its head silenced), so the anatomical prior boxes must stand in
    import torch

    unet = torch.load(tiny_run / "results/segmenter/unet.pt", weights_only=False)
    unet["state_dict"]["segmentation_head.0.weight"].zero_()
    unet["state_dict"]["segmentation_head.0.bias"].fill_(-20.0)
    torch.save(unet, tiny_run / "blind_unet.pt")
    out = cli("ground", "--checkpoint", "results/train/student/checkpoints/last.pt", str(blank),
              "small left pleural effusion", "-o", "g.png", "--segmenter", str(tiny_run / "blind_unet.pt"))
    assert out.returncode == 0, out.stderr
    assert "no lungs found" in out.stdout and "left lower zone" in out.stdout
    assert (tiny_run / "g.png").stat().st_size > 0
    bad = cli("zeroshot", "--checkpoint", "missing.pt", str(dicom))
    assert bad.returncode != 0 and "checkpoint missing.pt is not a file" in bad.stderr


def test_describe_regions_and_ground_a_negation_on_the_tiny_checkpoint(tiny_run):
    import subprocess

    from PIL import Image

    metrics = json.loads((tiny_run / "results/evaluate/metrics.json").read_text())
    for key in ("grounding/dense_cnr", "grounding/dense_pointing_game", "groundable/negated_accuracy"):
        assert key in metrics["runs"]["student"] and key in metrics["runs"]["global_only"], key
    assert "grounding/dense_cnr" in (tiny_run / "results/evaluate/report.md").read_text()
    dicom = sorted((tiny_run / "data/synthetic/files").rglob("*.dcm"))[0]
    ckpt = "results/train/student/model.pt"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--config", str(TINY)], cwd=tiny_run,
                              capture_output=True, text=True)

    import pydicom

    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    mask = np.zeros((header.Rows, header.Columns), np.uint8)  # the mask has the file's size
    mask[40:120, 90:150] = 255
    Image.fromarray(mask).save(tiny_run / "region.png")
    for where in (["--box", "90,40,150,120"], ["--point", "120,80"], ["--mask", str(tiny_run / "region.png")]):
        out = cli("describe", str(dicom), "--checkpoint", ckpt, *where, "--text", "no left pleural effusion")
        assert out.returncode == 0, out.stderr
        assert "pleural effusion" in out.stdout and "side: right" in out.stdout and 'p("left pleural effusion")' in out.stdout
    out = cli("ground", "--checkpoint", ckpt, str(dicom), "no left pleural effusion", "-o", "neg.png")
    assert out.returncode == 0, out.stderr
    said = out.stdout
    assert ("not present" in said and not (tiny_run / "neg.png").exists()) or (
        "the model finds" in said and (tiny_run / "neg.png").exists())


def test_tiny_run_fits_a_teacher_open_clip_loads(tiny_run):
    import open_clip
    import torch

    import pipeline.models  # noqa: F401  (registers the medclip-* configs with open_clip)

    fit = [json.loads(line) for line in (tiny_run / "results/teacher/image_text/metrics.jsonl").read_text().splitlines()]
    text = [json.loads(line) for line in (tiny_run / "results/teacher/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in fit] == [0, 1, 2] and all(r["polarity_loss"] == 0 for r in fit)  # the fit alone
    assert [r["step"] for r in text] == [0, 1] and all(r["polarity_loss"] > 0 for r in text)  # then the text phase
    before, after = (open_clip.create_model("medclip-tiny", pretrained=str(tiny_run / p)).state_dict()
                     for p in ("results/teacher/image_text/model.pt", "results/teacher/model.pt"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))  # the image tower locked
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("transformer."))


def test_given_teacher_weights_skip_fit_teacher(tiny_run, tmp_path):
    override = tmp_path / "given.yaml"
    override.write_text(f"teacher:\n  weights: {tiny_run / 'results/teacher/model.pt'}\n  steps: 99\n")
    out = run_snakemake(tiny_run, "-n", "all", "--configfile", str(TINY), str(override), configfile=None).stdout
    assert "fit_teacher" not in jobs(out)


def _snakemake(work, *args):
    """Snakemake as the README runs it: no --cores unless a profile sets it."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(work), *args, "--configfile", str(TINY)], cwd=work, capture_output=True, text=True)


def test_report_as_the_readme_writes_it_with_and_without_a_profile(tiny_run):
    for profile in ((), ("--profile", str(ROOT / "profiles" / "workstation"))):
        report = tiny_run / "report.html"
        report.unlink(missing_ok=True)
        proc = _snakemake(tiny_run, *profile, "--report", "report.html")
        assert proc.returncode == 0, proc.stderr[-3000:]
        html = report.read_text(errors="replace")
        assert "retrieval.png" in html and "grounding-00.png" in html


def job_resources(dry_run_output: str) -> dict[str, dict[str, str]]:
    """rule -> the resources of its first job in a dry run ('gpu' -> '1', 'runtime' -> '30', ...)."""
    found = {}
    for rule, body in re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", dry_run_output, re.M):
        line = re.search(r"^    resources: (.*)$", body, re.M)
        found.setdefault(rule, dict(kv.split("=", 1) for kv in line[1].split(", ")) if line else {})
    return found


def test_slurm_profile_asks_a_gpu_for_the_model_rules_only(tiny_run):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the slurm executor plugin is not installed "
                        "(pip install -e '.[slurm]' or '.[test]')")
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.utils import set_gres_string

    # a dry run resolves the profile without sbatch; forcing the per-shard roots and the pretraining cohort lists
    # every rule after ingest
    proc = _snakemake(tiny_run, "--profile", str(ROOT / "profiles" / "slurm"), "-n", "--forcerun", "normalize",
                      "parse_reports", "pretraining")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resources = job_resources(proc.stdout)
    gpu_rules = {"fit_teacher", "embed_concepts", "embed_teacher", "train_run", "evaluate", "visualize"}
    cpu_rules = {"normalize", "parse_reports", "train_segmenter", "segment", "crop", "model_inputs"}
    assert set(resources) >= gpu_rules | cpu_rules
    for rule in gpu_rules:
        job = SimpleNamespace(resources=resources[rule], rule=rule)
        assert resources[rule]["slurm_partition"] == "gpu" and set_gres_string(job) == " --gpus=1", rule
    for rule in cpu_rules:
        job = SimpleNamespace(resources=resources[rule], rule=rule)
        assert resources[rule]["slurm_partition"] == "cpu" and set_gres_string(job) == "", rule
    # per-rule runtimes: the profile's for the training rules, the workflow config's elsewhere
    assert resources["train_run"]["runtime"] == "1440" and resources["normalize"]["runtime"] == "30"
    assert resources["train_run"]["mem_mb"] == "8000" and resources["parse_reports"]["mem_mb"] == "1500"


def test_gpu_resource_follows_config_and_torchrun_processes(tmp_path):
    runs = "evaluate={runs: {student: {nproc_per_node: 2}}}"  # merged into config.yaml's runs
    # no profile: the workstation's --resources gpu=1 would cap a job's request at its one GPU
    proc = _snakemake(tmp_path, "-n", "--config", runs, "resources={train_run: {runtime: 60}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    gpus = dict(re.findall(r"wildcards: run=(\S+)\n(?:    threads: .*\n)?    resources: .*?gpu=(\d+)", out))
    assert gpus == {"student": "2", "student@1": "2", "global_only": "1", "global_only@1": "1", "no_roi": "1",
                    "no_neg": "1", "no_distill": "1"}
    # one value changed in --config; the rule's other values stay
    train_run = job_resources(out)["train_run"]
    assert train_run["runtime"] == "60" and train_run["mem_mb"] == "8000"


def test_tiny_run_segments_and_crops_every_image(tiny_run):
    metrics = json.loads((tiny_run / "results/segmenter/metrics.json").read_text())
    assert metrics["train_images"] > 0 and "dice_right_lung" in metrics["validate"]
    for path in sorted((tiny_run / "results/crop").glob("shard-*.h5")):
        assert check(path) == []
        seg = path.parent.parent / "segment" / path.name
        with Shard(path) as c, Shard(seg) as s, Shard(path.parent.parent / "normalize" / path.name) as n:
            assert c.image_ids == s.image_ids == n.image_ids
            kinds = c.f["rois/roi_kind"][()]
            assert (kinds == b"image").sum() == len(c)  # one whole-image ROI per image, whatever was found
            assert c.f["rois/roi_image"].shape[1:] == (32, 32)
    out = tiny_run / "show.png"
    from pipeline.show import show

    show(tiny_run / "results/crop/shard-00000.h5", 0, out)
    assert out.stat().st_size > 10_000


def _privacy_check(work, markers=tuple(MARKERS.values())):
    leaks = []
    for folder in ("results", "logs", "benchmarks"):
        for path in (work / folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                leaks += [f"{path}: {m}" for m in markers if m.encode() in data]
    assert leaks == []


def test_synthetic_identifiers_stay_in_the_dicom_headers(tiny_run):
    import pydicom

    values = set()
    for path in (tiny_run / "data/synthetic/files").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values |= {str(ds.PatientName), ds.PatientBirthDate, ds.PatientID, ds.AccessionNumber}
    assert len(values) > 10
    _privacy_check(tiny_run, sorted(values))


def _run_source(work, data: dict) -> list:
    cfg = {"data": {**data, "shard_size": 4}, "normalize": {"size": 48}}
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(work, "stage_normalize", configfile=work / "cfg.yaml")
    shards = sorted((work / "results/normalize").glob("shard-*.h5"))
    assert shards and all(check(p) == [] for p in shards)
    return shards


def test_stage_normalize_on_mimic_layout_keeps_identifiers_out(tmp_path):
    write_mimic_tree(tmp_path / "mimic", identifiers=MARKERS)
    shards = _run_source(tmp_path, {"source": "mimic-cxr", "root": str(tmp_path / "mimic")})
    assert sum(len(Shard(p)) for p in shards) == 8
    _privacy_check(tmp_path)


def test_stage_normalize_on_chexpert_layout(tmp_path):
    root = write_chexpert_tree(tmp_path / "src")
    shards = _run_source(tmp_path, {"source": "chexpert", "root": str(root)})
    assert sum(len(Shard(p)) for p in shards) == 5


def test_stage_normalize_on_csv_table_records_bad_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(5):
        write_dicom(src / f"{i}.dcm", np.full((40, 30), 100 * i + 50, "uint16"),
                    DicomSpec(identifiers=MARKERS, window=(300, 600)))
        rows.append({"image_path": f"{i}.dcm", "patient_id": f"P{i}", "study_id": f"S{i}",
                     "report": "No pneumothorax.", "split": "train"})
    (src / "broken.dcm").write_text("<html>404</html>")
    rows.append({"image_path": "broken.dcm", "patient_id": "P9", "study_id": "S9", "split": "test"})
    pd.DataFrame(rows).to_csv(src / "table.csv", index=False)
    shards = _run_source(tmp_path, {"source": "csv", "root": str(src / "table.csv")})
    rejected = [r for p in shards for r in Shard(p).table("rejected").get("reason", [])]
    assert rejected == ["not a DICOM file (no DICM preamble)"]
    assert sum(len(Shard(p)) for p in shards) == 5
    assert "rejected broken" in "".join(p.read_text() for p in (tmp_path / "logs/normalize").glob("*.log"))
    _privacy_check(tmp_path)
    # real data has no synthetic masks: asking for segmentation without weights is a clear error
    proc = run_snakemake(tmp_path, "-n", "all", configfile=tmp_path / "cfg.yaml", check=False)
    assert proc.returncode != 0 and "set segment.weights" in proc.stdout + proc.stderr


def test_tiny_config_is_valid():
    from pipeline import config

    cfg = config.load(TINY)
    assert cfg["normalize"]["size"] == 64


def test_evaluate_split_validate_measures_validate_patients_and_says_so(tiny_run, tmp_path):
    """evaluate.split: validate (for tuning): every figure from the validate split, the pinned manifests (test sets)
    not used, and report.md names the split."""
    from pipeline import config

    results = tiny_run / "results"
    shards = sorted((results / "crop").glob("shard-*.h5"))
    inputs = {"normalized": [results / "normalize" / p.name for p in shards], "crops": shards,
              "reports": [results / "reports" / p.name for p in shards]}
    runs = sorted(p.parent.name for p in (results / "train").glob("*/model.pt"))
    checkpoints = {"baseline": str(results / "teacher/model.pt"),
                   **{r: str(results / "train" / r / "model.pt") for r in runs}}
    cfg = {**config.load(TINY)["evaluate"], "split": "validate", "null_models": 2, "input_controls": [],
           "crop_baselines": [], "manifests": str(results / "evaluate/manifests")}  # test sets: must be ignored
    truth = tiny_run / "data/synthetic/ground_truth"
    metrics = evaluate.run(inputs, checkpoints, {n: "medclip-tiny" for n in checkpoints}, tmp_path, cfg, truth)
    splits = {}
    for path in inputs["normalized"]:
        with Shard(path) as n:
            splits.update(zip(n.f["image_id"].asstr()[()], n.f["split"].asstr()[()]))
    evaluated = json.loads((tmp_path / "manifests/test_images.json").read_text())["ids"]
    assert evaluated and {splits[i] for i in evaluated} == {"validate"}
    assert metrics["test"]["split"] == "validate" and metrics["test"]["images"] == len(evaluated)
    assert metrics["test"]["oracle_rois"]["images"] == len(evaluated)  # the ground-truth ROIs of the same images
    boxes = json.loads((tmp_path / "manifests/grounding.json").read_text())["ids"]
    assert {splits[entry[0]] for entry in boxes} <= {"validate"}
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Region-Aware MedCLIP: evaluation\n\nValidate split:") and "These are validate" in report
