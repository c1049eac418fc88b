import hashlib

import h5py
import numpy as np
import pytest

from pipeline.shards import Shard, ShardWriter, check, csr_offsets, csr_split, describe


def write(path, ids=("a", "b", "c"), fail=False):
    with ShardWriter(path, stage="demo", stage_version=3, config={"size": 8}, image_id=list(ids),
                     upstream={"studies.csv": "ab" * 32}) as w:
        w.rows("image", np.arange(len(ids) * 64, dtype=np.uint8).reshape(len(ids), 8, 8))
        w.rows("score", np.array([0.5, 1.5, 2.5][: len(ids)], dtype=np.float32))
        w.ragged("rois", csr_offsets([2, 0, 1][: len(ids)]),
                 roi_boxes=np.arange(12, dtype=np.float32).reshape(3, 4)[: sum([2, 0, 1][: len(ids)])],
                 roi_kind=["left_lung", "right_lung", "lesion"][: sum([2, 0, 1][: len(ids)])])
        w.table("rejected", image_id=["z"], reason=["not a DICOM file"])
        if fail:
            raise RuntimeError("killed mid-write")


def test_round_trip_rows_ragged_and_tables(tmp_path):
    path = tmp_path / "shard-00000.h5"
    write(path)
    with Shard(path) as s:
        assert len(s) == 3 and s.image_ids == ["a", "b", "c"]
        row = s.row(0)
        assert row["image"].shape == (8, 8) and row["score"] == pytest.approx(0.5)
        assert row["rois"]["roi_kind"] == ["left_lung", "right_lung"]
        assert s.row(1)["rois"]["roi_boxes"].shape == (0, 4)
        assert s.table("rejected") == {"image_id": ["z"], "reason": ["not a DICOM file"]}
        assert s.attrs["stage_version"] == 3 and s.config == {"size": 8}
        img = s.f["image"]
        assert img.compression == "gzip" and img.chunks == (1, 8, 8)
    assert check(path) == []


def test_identical_inputs_give_byte_identical_files(tmp_path):
    write(tmp_path / "a.h5")
    write(tmp_path / "b.h5")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a.h5") == digest(tmp_path / "b.h5")


def test_killed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "shard-00000.h5"
    write(path, ids=("a", "b"))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write(path, fail=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.h5"]
    with pytest.raises(RuntimeError):
        write(tmp_path / "new.h5", fail=True)
    assert not (tmp_path / "new.h5").exists()


def test_writer_rejects_wrong_row_counts_and_offsets(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        with ShardWriter(tmp_path / "x.h5", stage="s", stage_version=1, config={}, image_id=["a", "b"]) as w:
            w.rows("score", np.zeros(3))
    with pytest.raises(ValueError, match="offsets"):
        with ShardWriter(tmp_path / "x.h5", stage="s", stage_version=1, config={}, image_id=["a", "b"]) as w:
            w.ragged("rois", np.array([0, 2, 1]), roi_kind=["a"])
    assert not (tmp_path / "x.h5").exists()


def test_check_finds_broken_offsets_counts_and_schema(tmp_path):
    path = tmp_path / "s.h5"
    write(path)
    with h5py.File(path, "a") as f:
        f["rois/offsets"][1] = 5
        del f["score"]
        f["score"] = np.zeros(2)
        f.attrs["schema_version"] = 99
    problems = "\n".join(check(path))
    assert "rois/offsets: must start at 0 and not decrease" in problems
    assert "score: 2 rows, expected 3" in problems
    assert "schema_version 99" in problems
    assert check(tmp_path / "missing.h5")[0].startswith("cannot open")


def test_describe_shows_tree_attributes_and_row(tmp_path):
    path = tmp_path / "s.h5"
    write(path)
    text = describe(path, row=2)
    assert "image  (3, 8, 8) uint8 chunks=(1, 8, 8) gzip(4)" in text
    assert "rois/  [ragged]" in text and "rejected/  [table]" in text
    assert "stage = demo" in text and "row 2:" in text and "'lesion'" in text


def test_csr_helpers():
    off = csr_offsets([2, 0, 3])
    assert off.tolist() == [0, 2, 2, 5] and off.dtype == np.int64
    parts = csr_split(np.arange(5), off)
    assert [p.tolist() for p in parts] == [[0, 1], [], [2, 3, 4]]


def test_reader_reopens_in_a_new_process(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "s.h5"
    write(path)
    s = Shard(path)
    assert len(s) == 3  # opened in this process
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_ids, (s,)) == ["a", "b", "c"]


def _ids(shard):
    return shard.image_ids



def test_a_truncated_shard_is_named_in_the_error(tmp_path):
    path = tmp_path / "normalize" / "shard-00003.h5"
    write(path)
    path.write_bytes(path.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(OSError, match=r"shard-00003\.h5.*truncated file"):
        len(Shard(path))


def test_describe_counts_label_values_and_blanks_instead_of_nan_statistics(tmp_path):
    labels = np.array([1] * 3 + [0] * 5 + [-1] * 2 + [np.nan] * 4, dtype=np.float32)  # CheXpert-style, NaN = blank
    scores = np.array([0.5, np.nan, 1.5, 2.5, np.nan, 0.25, 3.0, 1.0, 2.0, 0.75], dtype=np.float32)
    with ShardWriter(tmp_path / "s.h5", stage="demo", stage_version=1, config={}, image_id=["a"]) as w:
        w.rows("labels", labels[None])
        w.rows("scores", scores[None])
        w.rows("unknown", np.full((1, 10), np.nan, np.float32))
    text = describe(tmp_path / "s.h5", row=0)
    assert "labels = array(14,) float32 1: 3, 0: 5, -1: 2, blank: 4" in text
    assert "scores = array(10,) float32 min=0.25 max=3 mean=1.438 NaN=2 of 10" in text
    assert "unknown = array(10,) float32 all 10 NaN" in text
    assert "nan" not in text
