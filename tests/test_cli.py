"""The command line's errors: one line naming the problem, the traceback only with --debug."""

import subprocess
import sys


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd)


def test_an_error_is_one_line_and_the_traceback_comes_with_debug(tmp_path):
    not_a_shard = tmp_path / "copied.h5"
    not_a_shard.write_text("this is not HDF5")
    proc = cli("show", str(not_a_shard), "--row", "999", "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: cannot read shard") and str(not_a_shard) in lines[-1] and "--debug" in lines[-1]
    proc = cli("--debug", "show", str(not_a_shard), "--row", "0", "-o", str(tmp_path / "x.png"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_config_typo_through_config_is_one_line(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("normalize: {sise: 128}\n")
    proc = cli("pin", str(tmp_path / "pinned"), "--config", str(typo))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: invalid config: config key normalize: Additional properties are not allowed ('sise' was unexpected)" in proc.stderr
