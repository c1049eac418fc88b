"""A grid of synthetic radiographs with ground-truth outlines and each study's impression."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from .stages.ingest import read_mimic  # noqa: E402
from .stages.normalize import read_dicom  # noqa: E402

DISPLAY = {"voi": "voi_lut", "percentile": [0.5, 99.5], "modalities": ["CR", "DX"]}


def impression(report: str) -> str:
    """The IMPRESSION section's text (whole report when there is none), for a caption."""
    text = report.split("IMPRESSION:", 1)[-1]
    return " ".join(text.split())


def montage(data_dir: str | Path, out: str | Path, n: int = 8) -> None:
    data_dir = Path(data_dir)
    table = read_mimic(data_dir)
    table = table[table["view"].isin(["PA", "AP"])].head(n)
    cols = min(4, len(table))
    rows = int(np.ceil(len(table) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 5.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, table.itertuples()):
        rad = read_dicom(rec.image_path, DISPLAY)
        ax.imshow(rad.pixels, cmap="gray", vmin=0, vmax=1)
        mask_path = data_dir / "ground_truth" / "masks" / f"{rec.image_id}.png"
        if mask_path.exists():
            mask = np.asarray(Image.open(mask_path))
            for bit, colour in ((1, "tab:red"), (2, "tab:green"), (4, "yellow")):
                if (mask & bit).any():
                    ax.contour((mask & bit) > 0, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title("\n".join(textwrap.wrap(impression(rec.report), 48)[:4]), fontsize=8)
    fig.suptitle("Synthetic radiographs: right lung (red), left lung (green), lesions (yellow)", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


__all__ = ["montage", "impression", "pd"]
