"""`python -m pipeline show SHARD --row N -o out.png`: one image with what every stage found for it.

Given any stage's shard (results/<stage>/shard-XXXXX.h5), the same shard of the other stages is found beside
it and joined by image_id: the normalized image, the segment masks (right lung red, left lung green, lesion
yellow), the crop boxes (each lung / lesion box its own colour, labelled kind / side / zone in a legend below the
image, so labels never overlap) and the parsed phrases, each once.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .shards import Shard  # noqa: E402

STAGE_DIRS = {"normalize": "normalize", "segment": "segment", "crop": "crop", "parse_reports": "reports"}
ZONE_COLOUR = "deepskyblue"
# one colour per labelled box, none of them the masks' red / lime / yellow
# what the colour of the project's two grounding maps means, on their colour bars
ROI_LABEL = "ROI weight (softmax over ROIs of similarity to phrase)"
DENSE_LABEL = "cosine similarity, patch vs phrase (smoothed)"
BOX_COLOURS = ("cyan", "magenta", "orange", "hotpink", "violet", "white", "salmon", "turquoise", "orchid")


def sibling(path: Path, stage: str) -> Path:
    return path.parent.parent / STAGE_DIRS[stage] / path.name


def row_of(path: Path, image_id: str) -> dict | None:
    if not path.exists():
        return None
    with Shard(path) as s:
        ids = s.image_ids
        return s.row(ids.index(image_id)) if image_id in ids else None


def phrase_items(phrases: dict) -> list[str]:
    """Each parsed phrase once (a report states a finding in findings and again in the impression), in order,
    with its status, side / zone and size: "small effusion (present, left/lower, small)"."""
    seen, items = set(), []
    sizes = phrases.get("phrase_size", [""] * len(phrases["phrase"]))
    for t, n, u, side, zone, size in zip(phrases["phrase"], phrases["phrase_negated"], phrases["phrase_uncertain"],
                                         phrases["phrase_laterality"], phrases["phrase_zone"], sizes):
        status = "negated" if n else ("uncertain" if u else "present")
        item = f"{t} ({status}, {side or '-'}/{zone or '-'}{', ' + size if size else ''})"
        if " ".join(item.casefold().split()) not in seen:
            seen.add(" ".join(item.casefold().split()))
            items.append(item)
    return items


def roi_legend(rois: dict) -> list[tuple[tuple[float, float, float, float], str, str, str]]:
    """(box, label, colour, line style) of every ROI drawn: each lung / lesion box its own colour and a label
    in the legend (labels written at the boxes overlap: the lesion and its lung share corners), zones one."""
    out, n_labelled = [], 0
    for box, kind, side, zone in zip(rois["roi_box"], rois["roi_kind"], rois["roi_laterality"], rois["roi_zone"]):
        if kind == "image":
            continue
        if kind == "zone":
            out.append((tuple(box), "zones (upper / middle / lower)", ZONE_COLOUR, ":"))
            continue
        colour = BOX_COLOURS[n_labelled % len(BOX_COLOURS)]
        n_labelled += 1
        out.append((tuple(box), f"{kind} {side} {zone}".strip(), colour, "-" if kind == "lung" else "--"))
    return out


def figure(shard: str | Path, row: int) -> plt.Figure:
    """The figure `show` saves: the image with masks and ROI boxes, the ROI labels in a legend below it and
    the parsed phrases (each once) in the title."""
    shard = Path(shard)
    with Shard(shard) as s:
        image_id = s.image_ids[row]
    rows = {stage: row_of(sibling(shard, stage), image_id) for stage in STAGE_DIRS}
    if rows["normalize"] is None:
        raise FileNotFoundError(f"no normalize shard beside {shard} holds {image_id}")
    fig, ax = plt.subplots(figsize=(6, 7.2))
    ax.imshow(rows["normalize"]["image"], cmap="gray")
    if rows["segment"]:
        for key, colour in (("right_lung", "red"), ("left_lung", "lime"), ("lesion", "yellow")):
            if rows["segment"][key].any():
                ax.contour(rows["segment"][key], levels=[0.5], colors=colour, linewidths=0.8)
    handles, labels = [], []
    if rows["crop"]:
        for (x0, y0, x1, y1), label, colour, style in roi_legend(rows["crop"]["rois"]):
            patch = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.9, ec=colour, ls=style)
            ax.add_patch(patch)
            if label not in labels:
                handles.append(patch)
                labels.append(label)
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=6,
                  frameon=False, handlelength=2.5)
    caption = f"{image_id}"
    if rows["parse_reports"]:
        lines = textwrap.wrap("; ".join(phrase_items(rows["parse_reports"]["phrases"])), 80)
        if len(lines) > 6:
            lines = lines[:5] + [f"... ({len(lines) - 5} more lines)"]
        caption += "\n" + "\n".join(lines)
    ax.set_title(caption, fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    return fig


def show(shard: str | Path, row: int, out: str | Path) -> str:
    fig = figure(shard, row)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # "tight": the legend below the image stays in
    plt.close(fig)
    return str(out)


def colour_bar(fig: plt.Figure, shown, ax: plt.Axes, label: str):
    """The one colour bar of the project's maps (ground, visualize, the benchmark pictures): beside `ax`, for the
    image `shown` (an overlay drawn with alpha: the bar is drawn opaque), labelled with what the colour means."""
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if bar.solids is not None:
        bar.solids.set_alpha(1)
    return bar
