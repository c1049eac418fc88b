"""A grid of synthetic radiographs with ground-truth outlines and each study's impression; with a folder of
real films (`compare`), synthetic and real films side by side at the same normalized size."""

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
from .stages.normalize import Rejected, letterbox, read_dicom, read_image  # noqa: E402

DISPLAY = {"voi": "voi_lut", "percentile": [0.5, 99.5], "modalities": ["CR", "DX"]}


def impression(report: str) -> str:
    """The IMPRESSION section's text (whole report when there is none), for a caption."""
    text = report.split("IMPRESSION:", 1)[-1]
    return " ".join(text.split())


REAL_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")


def real_films(folder: str | Path, n: int, size: int) -> list[tuple[str, np.ndarray]]:
    """The first `n` readable images of a folder (DICOM / PNG / JPG), letterboxed like normalize does."""
    films = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in REAL_SUFFIXES):
        try:
            rad = read_image(path, DISPLAY)
        except Rejected:
            continue
        films.append((path.name, letterbox(rad.pixels, size)[0]))
        if len(films) == n:
            break
    return films


def montage(data_dir: str | Path, out: str | Path, n: int = 8, compare: str | Path | None = None,
            size: int = 256) -> None:
    """`n` synthetic frontal films with outlines and impressions; with `compare`, rows alternate between
    synthetic and real films, both letterboxed to `size` without outlines, so only the pictures differ."""
    if compare is not None:
        return _compare(data_dir, compare, out, n, size)
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


def _compare(data_dir: str | Path, real_dir: str | Path, out: str | Path, n: int, size: int) -> None:
    table = read_mimic(Path(data_dir))
    table = table[table["view"].isin(["PA", "AP"])].head(n)
    synthetic = [(f"synthetic {r.view}", letterbox(read_dicom(r.image_path, DISPLAY).pixels, size)[0])
                 for r in table.itertuples()]
    real = [(f"real {name[:18]}", image) for name, image in real_films(real_dir, n, size)]
    if not real:
        raise ValueError(f"no readable DICOM / PNG / JPG images in {real_dir}")
    cols = min(4, max(len(synthetic), len(real)))
    pairs = [(synthetic[i : i + cols], real[i : i + cols]) for i in range(0, max(len(synthetic), len(real)), cols)]
    rows = [row for pair in pairs for row in pair]
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3.2 * len(rows)), squeeze=False)
    for ax_row, films in zip(axes, rows):
        for ax in ax_row:
            ax.axis("off")
        for ax, (title, image) in zip(ax_row, films):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"Synthetic (rows 1, 3, ...) beside real films from {Path(real_dir).name}, both letterboxed to "
                 f"{size} px", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


__all__ = ["montage", "impression", "real_films", "pd"]
