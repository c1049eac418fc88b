"""`python -m pipeline show SHARD --row N -o out.png`: one image with what every stage found for it.

Given any stage's shard (results/<stage>/shard-XXXXX.h5), the same shard of the other stages is found beside
it and joined by image_id: the normalized image, the segment masks (right lung red, left lung green, lesion
yellow), the crop boxes with kind / side / zone, and the parsed phrases.
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
COLOURS = {"lung": "cyan", "zone": "deepskyblue", "lesion": "orange", "image": "white"}


def sibling(path: Path, stage: str) -> Path:
    return path.parent.parent / STAGE_DIRS[stage] / path.name


def row_of(path: Path, image_id: str) -> dict | None:
    if not path.exists():
        return None
    with Shard(path) as s:
        ids = s.image_ids
        return s.row(ids.index(image_id)) if image_id in ids else None


def show(shard: str | Path, row: int, out: str | Path) -> str:
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
    if rows["crop"]:
        r = rows["crop"]["rois"]
        for box, kind, side, zone in zip(r["roi_box"], r["roi_kind"], r["roi_laterality"], r["roi_zone"]):
            if kind == "image":
                continue
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8, ec=COLOURS[kind]))
            if kind != "zone":
                ax.text(x0, y0 - 1, f"{kind} {side} {zone}".strip(), color=COLOURS[kind], fontsize=6)
    caption = f"{image_id}"
    if rows["parse_reports"]:
        p = rows["parse_reports"]["phrases"]
        items = [f"{t} ({'negated' if n else ('uncertain' if u else 'present')}, {side or '-'}/{zone or '-'})"
                 for t, n, u, side, zone in zip(p["phrase"], p["phrase_negated"], p["phrase_uncertain"],
                                                p["phrase_laterality"], p["phrase_zone"])]
        caption += "\n" + "\n".join(textwrap.wrap("; ".join(items), 80)[:6])
    ax.set_title(caption, fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)
