"""`bench unet` at its smallest: a CheXmask-format set built from rendered films trains, streaming and in memory."""

import pandas as pd

from pipeline import masks
from pipeline.bench import unet


def test_bench_unet_smallest_size_runs(tmp_path):
    films, masks_dir = unet.render_films(tmp_path / "films", films=2, size=64)
    table = unet.write_chexmask_set(tmp_path / "set", 12, films, masks_dir, validate_every=4)
    frame = pd.read_csv(table)
    assert len(frame) == 12 and frame["dicom_id"].is_unique and len(list((tmp_path / "set").glob("shard-*.h5"))) == 1
    assert masks.detect_format(table) == "chexmask"
    for in_memory in (False, True):
        res = unet.child(str(tmp_path / "set"), steps=2, in_memory=in_memory, size=64)
        assert res["rows"] == 12 and res["train_images"] == 9 and res["steps"] == 2
        assert res["samples_s"] > 0 and res["peak_rss_mb"] > 0
