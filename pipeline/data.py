"""Training data from the cached shards: stages are joined by image_id, never by row number.

`load_pairs` reads the normalize and parse_reports shards of the chosen splits into memory: the synthetic default
and the tiny CPU models fit easily. A streaming reader for MIMIC-scale runs is the trainer issue's next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .shards import Shard, decode
from .stages.normalize import as_uint8


@dataclass
class ImageReportPairs:
    image_id: list[str]
    images: np.ndarray  # (N, S, S) uint8, normalized radiographs
    reports: list[str]  # findings + impression (the full report when those are empty)


def load_pairs(normalize_shards: list[str | Path], report_shards: list[str | Path], splits: set[str]
               ) -> ImageReportPairs:
    """Image <-> report pairs of `splits`; images without report text are left out."""
    text: dict[str, str] = {}
    for path in report_shards:
        with Shard(path) as r:
            for image_id, fi, report in zip(r.image_ids, decode(r.f["findings_impression"][()]),
                                            decode(r.f["report"][()])):
                text[image_id] = fi.strip() or " ".join(report.split())
    ids, images, reports = [], [], []
    for path in normalize_shards:
        with Shard(path) as n:
            keep = [i for i, (image_id, s) in enumerate(zip(n.image_ids, decode(n.f["split"][()])))
                    if s in splits and text.get(image_id)]
            if not keep:
                continue
            block = as_uint8(n.f["image"][keep[0] : keep[-1] + 1][np.array(keep) - keep[0]])
            ids += [n.image_ids[i] for i in keep]
            images.append(block)
            reports += [text[n.image_ids[i]] for i in keep]
    size = images[0].shape[-1] if images else 0
    return ImageReportPairs(ids, np.concatenate(images) if images else np.zeros((0, size, size), np.uint8), reports)
