"""What a figure is worth beside chance.

- Input controls: every test image replaced by the mean test image (`mean_image`), or by the image of another
  patient (`other_patient`); each ROI keeps its own box. A figure that the real images do not beat under these
  controls is won from where the boxes sit or from the text alone, not from the image.
- The null band: the same figures for N untrained models of the evaluated architecture (init seeds 0..N-1):
  their mean and their 2.5-97.5 percentile range are "chance" in report.md.
"""

from __future__ import annotations

import numpy as np

CONTROLS = ("mean_image", "other_patient")


class ControlImages:
    """The test images as a control feeds them; indexes like the images it stands for (ints, slices, arrays)."""

    def __init__(self, images, control: str, patients: list[str], seed: int = 0, batch: int = 64):
        if control not in CONTROLS:
            raise ValueError(f"unknown input control {control!r}: one of {CONTROLS}")
        self.images, self.control, self.shape, self.dtype = images, control, images.shape, np.uint8
        n = len(patients)
        if control == "mean_image":
            total = np.zeros(images.shape[1:], np.float64)
            for i in range(0, n, batch):
                total += images[i : i + batch].astype(np.float64).sum(0)
            self.mean = np.round(total / max(n, 1)).astype(np.uint8)
        else:
            self.source = other_patient(patients, seed)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[[idx]][0]
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.atleast_1d(np.asarray(idx, np.int64))
        if self.control == "mean_image":
            return np.repeat(self.mean[None], len(rows), 0)
        return np.asarray(self.images[self.source[rows]], np.uint8)


def other_patient(patients: list[str], seed: int) -> np.ndarray:
    """For each image, an image of another patient (a seeded shuffle, redrawn where it lands on the same patient).
    With a single patient there is no other: the images stay."""
    patients = np.asarray(patients, object)
    n = len(patients)
    rng = np.random.default_rng(seed)
    source = rng.permutation(n)
    if len(set(patients)) < 2:
        return np.arange(n)
    for i in range(n):
        while patients[source[i]] == patients[i]:
            source[i] = rng.integers(n)
    return source


def null_band(figures: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric over the untrained models: mean, SD, 2.5 and 97.5 percentiles, count of finite values."""
    out = {}
    for m in sorted({k for f in figures for k in f}):
        v = np.array([f.get(m, np.nan) for f in figures], float)
        v = v[np.isfinite(v)]
        if len(v):
            out[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5)), "n": int(len(v))}
    return out
