"""Real-data QC of the segment stage: which images' lungs look wrong, at a glance.

`python -m pipeline qc results/segment` reads every segment shard (and its normalize shard beside it), scores
each image by its quality flags and writes `qc_flags.csv` (worst first) and `qc_worst.png`, a montage of the
worst images with the right lung (red), left lung (green) and lesions (yellow) outlined.
Flags: `no_lungs` (the stage's own flag), `small_lungs` / `large_lungs` (lung area fraction outside the range a
frontal film in the letterbox shows), `left_right` (left / right lung area ratio far from the usual, the left
lung being a little smaller because of the heart).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402
from .shards import Shard, decode  # noqa: E402
from .stages.segment import CLASSES  # noqa: E402

LUNG_FRACTION = (0.10, 0.55)  # plausible share of the normalized image covered by both lungs
LEFT_RIGHT = (0.5, 1.5)  # plausible left / right lung area ratio


def flags(table: pd.DataFrame) -> pd.DataFrame:
    """Add `flags` (";"-joined names) and `score` (0 = nothing odd; larger = worse) to the quality columns."""
    frac, ratio = table["lung_area_fraction"].astype(float), table["left_right_ratio"].astype(float)
    named = {
        "no_lungs": table["no_lungs"].astype(bool),
        "small_lungs": frac < LUNG_FRACTION[0],
        "large_lungs": frac > LUNG_FRACTION[1],
        "left_right": ~ratio.between(*LEFT_RIGHT),  # NaN (no right lung) counts as off
    }
    log_ratio = np.abs(np.log(ratio.where(ratio > 0)))
    score = (named["no_lungs"] * 10.0
             + np.maximum(0, LUNG_FRACTION[0] - frac) / LUNG_FRACTION[0]
             + np.maximum(0, frac - LUNG_FRACTION[1]) / LUNG_FRACTION[1]
             + np.maximum(0, log_ratio.fillna(5.0) - np.log(LEFT_RIGHT[1])))
    out = table.copy()
    out["flags"] = [";".join(n for n, v in named.items() if v.iloc[i]) for i in range(len(table))]
    out["score"] = score.round(4)
    return out


def read(segment_dir: str | Path) -> pd.DataFrame:
    rows = []
    for path in sorted(Path(segment_dir).glob("shard-*.h5")):
        with Shard(path) as s:
            f = s.f
            q = {k: f[k][()] for k in ("lung_area_fraction", "left_right_ratio", "lesion_area", "no_lungs")}
            for i, image_id in enumerate(s.image_ids):
                rows.append({"image_id": image_id, "shard": path.name, "row": i, **{k: v[i] for k, v in q.items()}})
    return pd.DataFrame(rows, columns=["image_id", "shard", "row", "lung_area_fraction", "left_right_ratio",
                                       "lesion_area", "no_lungs"])


def montage(worst: pd.DataFrame, segment_dir: Path, out: Path) -> None:
    cols = max(1, min(4, len(worst)))
    n_rows = max(1, int(np.ceil(len(worst) / cols)))
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.6 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, worst.itertuples()):
        norm_path = segment_dir.parent / "normalize" / rec.shard
        with Shard(segment_dir / rec.shard) as s:
            masks = [s.f[c][rec.row] > 0 for c in CLASSES]
        image = None
        if norm_path.exists():
            with Shard(norm_path) as n:
                image = n.f["image"][rec.row]
        ax.imshow(image if image is not None else np.zeros_like(masks[0], np.uint8), cmap="gray")
        for m, colour in zip(masks, ("tab:red", "tab:green", "yellow")):
            if m.any():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{rec.image_id[:28]}\n{rec.flags or 'ok'} ({rec.score:.2f})", fontsize=7)
    fig.suptitle("Worst segmentations: right lung red, left lung green, lesion yellow", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def run(segment_dir: str | Path, out_dir: str | Path | None = None, n: int = 16) -> tuple[Path, Path, pd.DataFrame]:
    segment_dir = Path(segment_dir)
    out_dir = Path(out_dir) if out_dir else segment_dir.parent / "qc"
    table = read(segment_dir)
    if table.empty:
        raise ValueError(f"no segment shards (shard-*.h5) in {segment_dir}")
    table = flags(table).sort_values(["score", "image_id"], ascending=[False, True], kind="stable")
    csv_path, png_path = out_dir / "qc_flags.csv", out_dir / "qc_worst.png"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    montage(table.head(n), segment_dir, png_path)
    return csv_path, png_path, table
