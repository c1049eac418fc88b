"""`bench scale` at its smallest: the film folder, the workflow's per-stage figures, the projection's arithmetic;
and `bench unet`'s CheXmask-format set, which the scale bench reuses."""

import os

import pandas as pd
import pytest

from pipeline import masks
from pipeline.bench import scale, unet
from pipeline.stages import ingest


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    folder = tmp_path_factory.mktemp("films")
    shard, masks_dir = unet.render_films(folder, films=2, size=32)
    return folder, shard, masks_dir


def test_bench_unet_smallest_size_runs(tmp_path, films):
    _, shard, masks_dir = films
    table = unet.write_chexmask_set(tmp_path / "set", 12, shard, masks_dir, validate_every=4)
    frame = pd.read_csv(table)
    assert len(frame) == 12 and frame["dicom_id"].is_unique and len(list((tmp_path / "set").glob("shard-*.h5"))) == 1
    assert masks.detect_format(table) == "chexmask"
    for in_memory in (False, True):
        res = unet.child(str(tmp_path / "set"), steps=2, in_memory=in_memory, size=32)
        assert res["rows"] == 12 and res["train_images"] == 9 and res["steps"] == 2
        assert res["samples_s"] > 0 and res["peak_rss_mb"] > 0


def test_source_holds_n_films_under_distinct_ids_linked_to_the_rendered_ones(tmp_path, films):
    folder, shard, masks_dir = films
    table = scale.write_source(tmp_path, 12, folder / "data", shard, masks_dir)
    rejected = []
    rows = ingest.read_mimic(tmp_path / "mimic", rejected)
    assert not rejected and len(rows) == 12 and rows["image_id"].is_unique
    assert rows["study_id"].is_unique and rows["patient_id"].nunique() == 12 // scale.STUDIES_PER_PATIENT
    assert (rows["report"].str.len() > 0).all() and set(rows["split"]) <= {"train", "validate", "test"}
    assert rows.groupby("patient_id")["split"].nunique().max() == 1
    rendered = {os.stat(p).st_ino for p in ingest.read_mimic(folder / "data")["image_path"]}
    assert {os.stat(p).st_ino for p in rows["image_path"]} == rendered  # links, not new pixels
    chexmask = pd.read_csv(table)
    assert sorted(chexmask["dicom_id"]) == sorted(rows["image_id"])
    assert not list(table.parent.glob("shard-*.h5"))


def test_workflow_gives_every_stage_positive_figures(tmp_path, films):
    folder, shard, masks_dir = films
    table = scale.write_source(tmp_path / "source", 12, folder / "data", shard, masks_dir)
    cfg = scale.workflow_config(tmp_path / "source" / "mimic", table, shard_size=12, size=64, unet_size=64,
                                student_steps=1)
    for section in ("segment", "train"):  # no DataLoader worker processes: the test's own time
        cfg[section]["num_workers"] = 0
    assert scale.run_workflow(tmp_path / "run", cfg) > 0
    figures = scale.stage_figures(tmp_path / "run", cfg)
    assert set(figures) == set(scale.STAGES)
    for stage in scale.PER_IMAGE + ("parse_reports", "embed_teacher"):
        assert figures[stage]["images"] == 12 and figures[stage]["jobs"] == 1
    assert figures["train"]["images"] == 16  # 1 step of batch 16
    for f in figures.values():
        assert f["seconds"] > 0 and f["images_s"] > 0 and f["core_images_s"] > 0 and f["peak_rss_mb"] > 0


def test_projection_arithmetic():
    # 288,000 images on 8 cores: 10 images per core-second is 3,600 s, 40 a quarter of that
    p = scale.project({"normalize": 10.0, "segment": 40.0}, images=288_000, cores=8)
    assert p["hours"] == pytest.approx({"normalize": 1.0, "segment": 0.25})
    assert p["total_hours"] == pytest.approx(1.25) and p["dominant"] == "normalize"
    assert scale.project({"crop": 1.0})["total_hours"] == pytest.approx(scale.MIMIC_IMAGES / 8 / 3600)


def test_projection_by_shard_size_charges_each_job_its_start_up():
    # 10 jobs of 100 images, 2 threads, 50 s in all, 3 s start-up each: 20 s of work, 1000 / (20 x 2) = 25 img/s
    stage = scale.split_startup({"jobs": 10, "images": 1000, "seconds": 50.0, "threads": 2}, startup=3.0)
    assert stage["work_core_images_s"] == pytest.approx(25.0)
    # 7,200 images on 8 cores in shards of 720: 10 jobs x 3 s x 2 threads + 7,200 / 25 core-seconds
    p = scale.project_sharded({"segment": stage}, shard_size=720, images=7_200, cores=8)
    assert p["hours"]["segment"] == pytest.approx((60 + 288) / 8 / 3600)
    # smaller shards, more start-ups: 100 jobs
    assert scale.project_sharded({"segment": stage}, 72, 7_200, 8)["total_hours"] == pytest.approx(
        (600 + 288) / 8 / 3600)
    # a start-up measured larger than a job's seconds leaves a tenth of them as work, never a negative rate
    assert scale.split_startup({"jobs": 2, "images": 10, "seconds": 4.0, "threads": 1}, 5.0)[
        "work_core_images_s"] == pytest.approx(10 / 0.4)


def test_start_up_is_measured_in_a_fresh_process():
    assert 0 < scale.startup_seconds("model_inputs", repeats=1) < 120
