import os

import pytest

import pipeline.io
from pipeline.io import atomic_path, progress, progress_line, usable_threads


def test_torch_threads_never_exceed_the_usable_cores():
    cores = len(os.sched_getaffinity(0))
    assert usable_threads(64) == cores and usable_threads(1) == 1 and usable_threads(0) == 1


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("whole")
    assert (tmp_path / "out.txt").read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_progress_in_a_log_is_one_line_per_interval_with_rate_and_eta(monkeypatch, caplog):
    clock = iter(range(0, 1000, 10))  # every call to the clock is 10 s later
    monkeypatch.setattr(pipeline.io.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(pipeline.io.sys.stderr, "isatty", lambda: False)
    with caplog.at_level("INFO", logger="pipeline"):
        assert list(progress(range(12), desc="normalize 00003", every_s=30)) == list(range(12))
    # start at t=0; item k ends at t=10k; a line at items 3, 6, 9, 12: 3 items per 30 s
    assert [r.getMessage() for r in caplog.records] == [
        "normalize 00003: 3/12 images, 0.1 images/s, ETA 1m30s",
        "normalize 00003: 6/12 images, 0.1 images/s, ETA 1m00s",
        "normalize 00003: 9/12 images, 0.1 images/s, ETA 30s",
        "normalize 00003: 12/12 images, 0.1 images/s, ETA 0s"]


def test_progress_of_a_resumed_run_counts_from_where_it_stopped(monkeypatch, caplog):
    assert progress_line("parse_reports", 7, None, 1.0, "sections") == "parse_reports: 7 sections, 1.0 sections/s"
    assert progress_line("x", 0, 7200, 1.0, "steps") == "x: 0/7200 steps, 1.0 steps/s, ETA 2h00m"
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(pipeline.io.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(pipeline.io.sys.stderr, "isatty", lambda: False)
    with caplog.at_level("INFO", logger="pipeline"):
        steps = list(progress(range(150, 156), desc="train student", unit="steps", initial=150, every_s=30))
    assert steps == list(range(150, 156))  # the total is the run's, the rate only this process's steps
    assert [r.getMessage() for r in caplog.records] == ["train student: 153/156 steps, 0.1 steps/s, ETA 30s",
                                                        "train student: 156/156 steps, 0.1 steps/s, ETA 0s"]


def test_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    # a write killed with SIGKILL leaves its temporary file behind (no finally runs)
    code = ("import os, signal, sys\nfrom pipeline.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "shard.h5")])
    assert [p.name for p in tmp_path.iterdir()][0].startswith(".shard.h5.tmp-")
    alive = tmp_path / f".shard.h5.tmp-{os.getppid()}"  # a write still running in another process is left alone
    alive.write_text("busy")
    with atomic_path(tmp_path / "shard.h5") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "shard.h5"]


def test_the_error_that_stops_a_rule_is_in_its_log(tmp_path):
    log = tmp_path / "logs" / "normalize" / "shard-00000.log"
    with pytest.raises(ValueError):
        with pipeline.io.logged(log):
            raise ValueError("percentile out of range")
    text = log.read_text()
    assert "Traceback" in text and "ValueError: percentile out of range" in text


def test_every_rule_script_logs_its_error():
    from pathlib import Path

    scripts = sorted((Path(pipeline.io.__file__).parent.parent / "workflow" / "scripts").glob("*.py"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert "with logged(snakemake.log[0]):" in text and "setup_logging" not in text, script.name


def test_a_rule_that_fails_under_snakemake_has_its_error_in_its_log(tmp_path):
    import yaml
    from conftest import run_snakemake

    (tmp_path / "table.csv").write_text("image_path,study_id\na.png,s1\n")  # no patient_id column
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"data": {"source": "csv", "root": str(tmp_path / "table.csv")}}))
    proc = run_snakemake(tmp_path, "stage_ingest", configfile=tmp_path / "cfg.yaml", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "ingest" / "ingest.log").read_text()
    assert "Traceback" in log and "IngestError: table.csv lacks required column(s) patient_id" in log
