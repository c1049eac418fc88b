"""Real-data QC of the segment stage: which images' lungs look wrong, at a glance.

`python -m pipeline qc results/segment` reads every segment shard (and its normalize shard beside it), scores
each image by its quality flags and writes `qc_flags.csv` (worst first) and `qc_worst.png`, a montage of the
worst images with the right lung (red), left lung (green) and lesions (yellow) outlined.
Flags: `no_lungs` (the stage's own flag), `small_lungs` / `large_lungs` (lung area fraction outside the range a
frontal film in the letterbox shows), `left_right` (left / right lung area ratio far from the usual, the left
lung being a little smaller because of the heart).
Score: continuous, so images are ranked even when none is flagged: how far (in log units, scaled so that a
range's edge counts 1) the lung area fraction and the left / right ratio sit from their typical values, the
geometric middles of the plausible ranges; 10 more for `no_lungs`. 0 = typical; over 1 = outside a range.
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
MISSING = 5.0  # the score term of a quantity that cannot be measured (no lung at all, no right lung)


def _log_distance(value: pd.Series, plausible: tuple[float, float]) -> pd.Series:
    """|log(value / typical)| / half the log width of the plausible range: 0 at the range's geometric middle,
    1 at either edge; `MISSING` where the value is NaN or not positive."""
    lo, hi = np.log(plausible[0]), np.log(plausible[1])
    typical, half_width = (lo + hi) / 2, (hi - lo) / 2
    logs = np.log(value.where(value > 0))
    return (np.abs(logs - typical) / half_width).clip(upper=MISSING).fillna(MISSING)


def flags(table: pd.DataFrame) -> pd.DataFrame:
    """Add `flags` (";"-joined names) and `score` (continuous; 0 = typical lungs, larger = worse, over 1 =
    outside a plausible range) to the quality columns."""
    frac, ratio = table["lung_area_fraction"].astype(float), table["left_right_ratio"].astype(float)
    named = {
        "no_lungs": table["no_lungs"].astype(bool),
        "small_lungs": frac < LUNG_FRACTION[0],
        "large_lungs": frac > LUNG_FRACTION[1],
        "left_right": ~ratio.between(*LEFT_RIGHT),  # NaN (no right lung) counts as off
    }
    score = named["no_lungs"] * 10.0 + _log_distance(frac, LUNG_FRACTION) + _log_distance(ratio, LEFT_RIGHT)
    out = table.copy()
    out["flags"] = [";".join(n for n, v in named.items() if v.iloc[i]) for i in range(len(table))]
    out["score"] = score.round(4)
    return out


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """`flags` of the quality table, worst score first (image id breaks exact ties)."""
    return flags(table).sort_values(["score", "image_id"], ascending=[False, True], kind="stable")


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


def caption(rank: int, rec) -> str:
    """A montage panel's title: rank, image id, score, the two measurements behind it and the flags."""
    return (f"#{rank} {rec.image_id[:28]}\nscore {rec.score:.2f}: area {rec.lung_area_fraction:.2f}, "
            f"L/R {rec.left_right_ratio:.2f}\n{rec.flags or 'no flag'}")


def montage(worst: pd.DataFrame, segment_dir: Path, out: Path) -> None:
    cols = max(1, min(4, len(worst)))
    n_rows = max(1, int(np.ceil(len(worst) / cols)))
    # constrained layout keeps the three-line suptitle clear of the panels' captions (tight_layout does not)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.6 * n_rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for rank, (ax, rec) in enumerate(zip(axes.flat, worst.itertuples()), 1):
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
        ax.set_title(caption(rank, rec), fontsize=7)
    fig.suptitle("Worst segmentations first\nscore: distance of lung area and left/right ratio from typical\n"
                 "(0 typical, >1 out of range); right lung red, left green, lesion yellow", fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def run(segment_dir: str | Path, out_dir: str | Path | None = None, n: int = 16) -> tuple[Path, Path, pd.DataFrame]:
    segment_dir = Path(segment_dir)
    out_dir = Path(out_dir) if out_dir else segment_dir.parent / "qc"
    table = read(segment_dir)
    if table.empty:
        raise ValueError(f"no segment shards (shard-*.h5) in {segment_dir}")
    table = ranked(table)
    csv_path, png_path = out_dir / "qc_flags.csv", out_dir / "qc_worst.png"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    montage(table.head(n), segment_dir, png_path)
    return csv_path, png_path, table
