import os

import pytest

from pipeline.io import atomic_path, usable_threads


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
