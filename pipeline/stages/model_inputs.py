"""model_inputs: each normalized radiograph at a model's input size, stored uncompressed, so that training reads
its images without inflating or resizing anything.

A 96 px input is 9 KB against 64 KB for the 256 px normalized image, and it is the resize that models use
(`data.resize`: antialiased bilinear, rounded back to uint8), so a batch made from these pixels equals one made
from the normalize shard. The crop shard's ROI boxes map into these pixels by `scale`.

Output `results/inputs/<size>px/shard-XXXXX.h5`:
    image_id (N,)
    image    (N, size, size) uint8, contiguous, no compression filter (a single read)
    attrs    size, scale (= size / normalize.size: multiply crop boxes by it)
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data import resize
from ..io import sha256_file
from ..shards import Shard, ShardWriter
from ..versions import STAGE_VERSIONS
from .normalize import as_uint8

log = logging.getLogger("pipeline.model_inputs")
STAGE = "model_inputs"


def run(normalized: str | Path, out: str | Path, size: int) -> dict:
    with Shard(normalized) as n:
        ids, images = n.image_ids, as_uint8(n.f["image"][()])
    full = images.shape[-1]
    small = resize(images, size)
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config={"size": size}, image_id=ids,
                     upstream={"normalize": sha256_file(normalized)},
                     attrs={"size": size, "scale": size / full}) as w:
        w.rows("image", small, compress=False)
    log.info("%d images, %d px -> %d px", len(ids), full, size)
    return {"images": len(ids), "size": size}
