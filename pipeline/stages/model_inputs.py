"""model_inputs: each normalized radiograph at a model's input size, stored uncompressed, so that training reads
its images without inflating or resizing anything.

The pixels depend on the model's input size and resampling only (`model_spec.InputSpec.key`): the mean / std of
the model are applied when a batch is made, so another model of the same size reads the same shards.

A 96 px input is 9 KB against 64 KB for the 256 px normalized image, and it is the resize that models use
(`data.resize`: antialiased bilinear, rounded back to uint8), so a batch made from these pixels equals one made
from the normalize shard. The crop shard's ROI boxes map into these pixels by `scale`.

Output `results/inputs/<size>px[-bicubic]/shard-XXXXX.h5` (bilinear, our architectures, has no suffix):
    image_id (N,)
    image    (N, size, size) uint8, contiguous, no compression filter (a single read)
    attrs    size, interpolation, scale (= size / normalize.size: multiply crop boxes by it)
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import sha256_file
from ..shards import Shard, ShardWriter
from ..versions import STAGE_VERSIONS
from .normalize import as_uint8

log = logging.getLogger("pipeline.model_inputs")
STAGE = "model_inputs"


def run(normalized: str | Path, out: str | Path, size: int, interpolation: str = "bilinear") -> dict:
    with Shard(normalized) as n:
        ids, images = n.image_ids, as_uint8(n.f["image"][()])
    full = images.shape[-1]
    if interpolation == "bilinear":  # models.resize's own bilinear path, without importing open_clip for it
        from ..data import resize

        small = resize(images, size)
    else:
        from ..models import resize

        small = resize(images, size, interpolation)
    # the config of a bilinear shard is as before (size only), so existing shards stay valid
    config = {"size": size} if interpolation == "bilinear" else {"size": size, "interpolation": interpolation}
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=config, image_id=ids,
                     upstream={"normalize": sha256_file(normalized)},
                     attrs={"size": size, "interpolation": interpolation, "scale": size / full}) as w:
        w.rows("image", small, compress=False)
    log.info("%d images, %d px -> %d px (%s)", len(ids), full, size, interpolation)
    return {"images": len(ids), "size": size}
