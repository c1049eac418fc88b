"""One radiograph from the command line: `python -m pipeline zeroshot` and `python -m pipeline ground`.

The file (DICOM, PNG or JPEG) goes through the workflow's own code with the workflow's config, nothing cached:
normalize (`normalize.normalize_file`: VOI LUT, MONOCHROME1, letterbox), the U-Net (`segment.segment`: an image without
lungs falls back to the prior boxes like the crop stage), the ROI
boxes (`crop.padded_rois`), and the model's ROI embeddings (`models.embed_images_and_rois`). Then

    zeroshot   the 14 observation probabilities: softmax over a positive and a negative prompt ensemble
               (the same prompts and rule as evaluate's zero-shot AUROC);
    ground     the phrase's heat map over the image's ROIs (evaluate.heat_map) beside the dense patch-level map
               (grounding.similarity_map) drawn on the radiograph, each with a colour bar; first the presence
               call (grounding.decide, the rule `describe --text` uses) at the ROI most in favour of the affirmed
               finding (`roi_call`, which `describe --point` shares), with its margin from the threshold and
               that ROI's box in the file's pixels; a negated or normal phrase the model finds nowhere
               ("no left pleural effusion" where no region prefers "left pleural effusion") prints "not present"
               and draws nothing.

Both (and `describe`) first print what the checkpoint is (`provenance`): its run's summary.json (images, steps,
selection), its training source (spec.json, else results/ingest/studies.csv) and its test figures from the
workflow's results/evaluate/metrics.json against the null band, with a warning when it saw synthetic films only or
sits at chance.

A checkpoint is an open_clip state dict (`results/train/<run>/model.pt`, `results/teacher/model.pt`) or a
training checkpoint (`checkpoints/last.pt`, which names its own architecture). Nothing from the file's header
except pixels and the display tags is read; no identifier is printed or drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from . import grounding
from .labels import OBSERVATIONS
from .stages.crop import padded_rois
from .evaluation.embedder import Embedder
from .evaluation.grounding import heat_map, roi_weights
from .evaluation.zeroshot import NEGATIVE, POSITIVE
from .stages.normalize import as_uint8, normalize_file, to_original
from .stages.segment import load_unet, segment


@dataclass
class PreparedImage:
    image: np.ndarray  # (S, S) uint8, normalized and letterboxed
    boxes: np.ndarray  # (R, 4) padded ROI boxes in the normalized image's pixels
    labels: list[str]  # one per box: "image", "right lung", "left lower zone", "lesion (left)", ...
    transform: np.ndarray
    no_lungs: bool


def _label(kind: str, side: str, zone: str) -> str:
    if kind == "zone":
        return f"{side} {zone} zone"
    if kind == "lung":
        return f"{side} lung"
    return f"lesion ({side})" if kind == "lesion" and side else kind


def segmenter_path(cfg: dict) -> Path:
    """segment.weights when set, else the U-Net the workflow trained (rule train_segmenter)."""
    return Path(cfg["segment"]["weights"] or "results/segmenter/unet.pt")


def prepare(path: str | Path, cfg: dict, segmenter: str | Path) -> PreparedImage:
    """One file through normalize, segment and crop as the workflow does (stages.*). Raises normalize.Rejected."""
    image, transform, source = normalize_file(path, cfg["normalize"])
    image = as_uint8(image[None])[0]
    masks, q = segment(load_unet(segmenter, cfg["segment"]), image[None], cfg["segment"])
    no_lungs = bool(q["no_lungs"][0])
    rois = padded_rois(masks[0, 0], masks[0, 1], masks[0, 2], no_lungs, transform, np.array(source.pixels.shape),
                       image.shape[-1], cfg["crop"])
    boxes = np.array([r.box for r in rois], np.float64).reshape(-1, 4)
    return PreparedImage(image, boxes, [_label(r.kind, r.laterality, r.zone) for r in rois], transform, no_lungs)


def load_model(checkpoint: str | Path, name: str | None, cfg: dict, device: torch.device) -> Embedder:
    """An Embedder for a state dict or a training checkpoint; the architecture from the checkpoint's config,
    else `name`, else train.model."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors and plain values only
    if isinstance(blob, dict) and "config" in blob and "model" in blob.get("config", {}):
        name = name or blob["config"]["model"]
    return Embedder(checkpoint, name or cfg["train"]["model"], device)


def zeroshot(emb: Embedder, image: np.ndarray) -> dict[str, float]:
    """p(observation present) for the 14 CheXpert observations, as evaluate scores them."""
    img = emb.images(image[None])[0]
    out = {}
    for o in OBSERVATIONS:
        name = o.lower()
        logits = emb.scale * np.array([img @ emb.ensemble(POSITIVE, name), img @ emb.ensemble(NEGATIVE, name)])
        out[o] = float(1.0 / (1.0 + np.exp(logits[1] - logits[0])))
    return out


def ground(emb: Embedder, rad: PreparedImage, phrase: str) -> tuple[np.ndarray, np.ndarray]:
    """(heat map (S, S) in [0, 1], each ROI's softmax weight) for `phrase`; the whole-image box is left out
    (it contains every finding), unless no other ROI exists."""
    keep = np.array([lab != "image" for lab in rad.labels]) if len(rad.labels) > 1 else np.ones(1, bool)
    size = rad.image.shape[-1]
    _, rois = emb.images_and_rois(rad.image[None], np.zeros(int(keep.sum()), np.int64), rad.boxes[keep])
    scores = rois @ emb.texts([phrase])[0]
    weights = np.zeros(len(rad.labels))
    weights[keep] = roi_weights(scores, emb.scale)
    return heat_map(scores, rad.boxes[keep], size, emb.scale), weights


def dense_map(emb: Embedder, rad: PreparedImage, phrase: str) -> np.ndarray:
    """The phrase's patch-level similarity map over the image (grounding.similarity_map)."""
    patches = grounding.patch_features(emb.model, rad.image[None])[0]
    return grounding.similarity_map(patches, emb.texts([phrase])[0], rad.image.shape)


@dataclass
class RoiCall:
    """A presence call made at one of the image's ROIs (`roi_call`)."""

    call: grounding.Call
    label: str  # the ROI it was made at: "left lower zone"
    box: np.ndarray  # (4,) that ROI in the normalized image's pixels

    def where(self, transform: np.ndarray) -> str:
        """The ROI in words and in the original file's pixels, as `ground` and `describe --point` print it."""
        box = to_original(self.box[None], transform)[0]
        return f"{self.label} (box {','.join(f'{v:.0f}' for v in box)} in the file's pixels)"


def roi_call(emb: Embedder, rad: PreparedImage, phrase: str, point: tuple[float, float] | None = None
             ) -> RoiCall | None:
    """The presence call for `phrase` (grounding.decide) at the ROI most in favour of its affirmed form: among the
    image's ROIs (the whole-image box left out, as `ground` leaves it out, unless it is the only one), or, given a
    `point` (x, y in the normalized image's pixels), among those holding the point. The one region rule of
    `ground` and `describe --point`: a point inside the ROI `ground` decided at gets `ground`'s call exactly (that
    ROI is the most in favour of all, so of those holding the point). None for a normal statement, which names
    nothing to point at, and for a point no ROI holds."""
    if grounding.is_normal_statement(phrase):
        return None
    keep = np.array([lab != "image" for lab in rad.labels]) if len(rad.labels) > 1 else np.ones(1, bool)
    if point is not None:
        x, y = point
        b = rad.boxes
        keep &= (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3])
    if not keep.any():
        return None
    index = np.flatnonzero(keep)
    _, rois = emb.images_and_rois(rad.image[None], np.zeros(len(index), np.int64), rad.boxes[index])
    call = grounding.phrase_call(emb.texts, rois, emb.scale, phrase)
    k = index[call.index]
    return RoiCall(call, rad.labels[k], rad.boxes[k].copy())


def decide(emb: Embedder, rad: PreparedImage, phrase: str) -> tuple[grounding.Call, str] | None:
    """`roi_call` over all the ROIs as (call, the ROI's label); None for a normal statement."""
    r = roi_call(emb, rad, phrase)
    return None if r is None else (r.call, r.label)


HEADLINE = ("auroc/mean", "i2r/R@10", "presence/auroc")  # the test figures a command prints about its checkpoint


def run_folder(checkpoint: str | Path) -> Path:
    """results/train/<run> of a run's model.pt or of its checkpoints/last.pt."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def training_source(run: Path, spec: dict, synthetic_dir: str) -> str | None:
    """Where the run's training images came from: the spec's data source when it names one, else the train rows of
    results/ingest/studies.csv (synthetic when every image lies under data.synthetic.out_dir)."""
    data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
    named = spec.get("source") or data.get("source")
    if named:
        return str(named)
    studies = run.parent.parent / "ingest" / "studies.csv"
    if not studies.is_file():
        return None
    import pandas as pd

    rows = pd.read_csv(studies, usecols=["split", "image_path"], dtype=str)
    paths = rows.loc[rows["split"] == "train", "image_path"].fillna("")
    prefix = str(Path(synthetic_dir)).rstrip("/") + "/"
    synthetic = int(paths.map(lambda x: x.startswith(prefix) or f"/{prefix}" in x).sum())
    if synthetic == len(paths):
        return "synthetic"
    return "real" if synthetic == 0 else f"mixed: {synthetic} synthetic and {len(paths) - synthetic} other train images"


def provenance(checkpoint: str | Path, cfg: dict) -> list[str]:
    """What the checkpoint is, read from its run folder (summary.json, spec.json, results/ingest/studies.csv) and
    the workflow's results/evaluate/metrics.json, with a warning when it saw synthetic films only or its test
    figures lie at chance (within the null band, else an AUROC interval holding 0.5)."""
    run = run_folder(checkpoint)
    results = run.parent.parent if run.parent.name == "train" else run.parent  # results/train/<run>, results/teacher
    name = "baseline" if run.name == "teacher" else run.name  # evaluate calls the teacher the baseline
    lines, warnings = [], []
    summary_path, spec_path = run / "summary.json", run / "spec.json"
    if summary_path.is_file():
        import json

        summary = json.loads(summary_path.read_text())
        spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
        source = training_source(run, spec, cfg["data"]["synthetic"]["out_dir"])
        selected = summary.get("select", "?")
        if summary.get("best_step") is not None:
            selected += f" (step {summary['best_step']})"
        lines.append(f"checkpoint: run {run.name} ({run}): trained on {summary.get('images', '?')} "
                     f"{source or 'unknown-source'} images, {summary.get('steps', '?')} steps, "
                     f"selection {selected}, seed {summary.get('seed', '?')}, init {summary.get('init', '?')}")
        if source == "synthetic":
            warnings.append("trained on synthetic films only: its probabilities and maps on a real radiograph "
                            "are not clinical findings")
        elif source is None:
            warnings.append("the training source is unknown (no results/ingest/studies.csv beside the run)")
    else:
        lines.append("checkpoint: unknown provenance: no summary.json beside the checkpoint")
    metrics_path = results / "evaluate" / "metrics.json"
    figures = {}
    if metrics_path.is_file():
        import json

        metrics = json.loads(metrics_path.read_text())
        figures = metrics.get("runs", {}).get(name, {})
        band = metrics.get("null_band", {}).get("figures", {})
        shown, at_chance = [], []
        for k in HEADLINE if figures else ():
            f = figures.get(k)
            if not isinstance(f, dict) or f.get("value") is None:
                continue
            text = f"{k} {f['value']:.3f} ({f.get('ci_low', float('nan')):.3f}-{f.get('ci_high', float('nan')):.3f})"
            b = band.get(k)
            if b:  # higher is better for each headline figure: at or under the band's top is chance
                text += f" [chance {b['low']:.3f}-{b['high']:.3f}]"
                if f["value"] <= b["high"]:
                    at_chance.append(k)
            elif "auroc" in k and f.get("ci_low", 1) <= 0.5 <= f.get("ci_high", 0):
                at_chance.append(k)
            shown.append(text)
        if shown:
            lines.append(f"test split of {metrics_path} (95% interval"
                         + (", [null band of untrained models])" if band else ")") + ": " + "; ".join(shown))
        if at_chance:
            warnings.append("at chance on its own test split (" + ", ".join(at_chance)
                            + (" at or under the null band's top)" if band else ": intervals hold 0.5)"))
    if not figures:
        lines.append(f"test figures: none (no run {name!r} in {metrics_path})" if metrics_path.is_file()
                     else f"test figures: none (no {metrics_path})")
    return lines + [f"warning: this checkpoint was {w}" if w.startswith(("trained", "at chance")) else f"warning: {w}"
                    for w in warnings]


def draw(rad: PreparedImage, heat: np.ndarray, weights: np.ndarray, phrase: str, out: str | Path,
         dense: np.ndarray | None = None, decided: RoiCall | None = None) -> Path:
    """The ROI map (the highest-weight ROI outlined yellow; the ROI the presence call was made at, when another,
    dashed orange) and the dense map beside it, each with a colour bar saying what its colour is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .io import atomic_path
    from .show import DENSE_LABEL, ROI_LABEL, colour_bar

    fig, axes = plt.subplots(1, 1 if dense is None else 2, figsize=(5.2 if dense is None else 10.2, 4.8), squeeze=False)
    ax = axes[0, 0]
    if dense is not None:
        d = axes[0, 1]
        d.imshow(rad.image, cmap="gray", vmin=0, vmax=255)
        shown = d.imshow(np.ma.masked_invalid(dense), cmap="jet", alpha=0.35)
        d.set_title("dense map: each patch vs the phrase", fontsize=9)
        d.axis("off")
        colour_bar(fig, shown, d, DENSE_LABEL)
    ax.imshow(rad.image, cmap="gray", vmin=0, vmax=255)
    shown = ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    colour_bar(fig, shown, ax, ROI_LABEL)
    best = int(np.argmax(weights))
    for k, (x0, y0, x1, y1) in enumerate(rad.boxes):
        if rad.labels[k] != "image":
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5 if k == best else 0.5,
                                   ec="yellow" if k == best else "white", alpha=0.9 if k == best else 0.5))
    title = f'"{phrase}"\nbest ROI: {rad.labels[best]} ({weights[best]:.2f})'
    if decided is not None:
        x0, y0, x1, y1 = decided.box
        if not np.allclose(decided.box, rad.boxes[best]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ls="--", ec="orange"))
        title += f"; call at {decided.label}: p {decided.call.p:.2f}, margin {decided.call.margin:+.2f}"
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


def main(command: str, checkpoint: str, image: str, phrase: str | None, out: str | None, config: str | None,
         model: str | None, segmenter: str | None) -> int:
    overrides = {}
    if config:  # merged over the repository's config.yaml, like snakemake --configfile
        import yaml

        overrides = yaml.safe_load(Path(config).read_text()) or {}
    cfg = config_mod.load(None, overrides)
    seg = Path(segmenter) if segmenter else segmenter_path(cfg)
    for what, p in (("checkpoint", Path(checkpoint)), ("segmenter", seg), ("image", Path(image))):
        if not p.is_file():
            raise SystemExit(f"error: {what} {p} is not a file"
                             + (" (run the workflow first, or pass --segmenter)" if what == "segmenter" else ""))
    rad = prepare(image, cfg, seg)
    emb = load_model(checkpoint, model, cfg, torch.device("cpu"))
    for line in provenance(checkpoint, cfg):
        print(line)
    if rad.no_lungs:
        print("note: no lungs found; the ROIs are the prior boxes")
    if command == "zeroshot":
        for o, p in zeroshot(emb, rad.image).items():
            print(f"{o:28s} {p:.3f}")
        return 0
    decided = roi_call(emb, rad, phrase)
    if decided is None:
        print(f'not present: "{phrase}" grounds to nothing (a normal statement names nothing to point at); '
              "no map drawn")
        return 0
    call = decided.call
    print(f"call at {decided.where(rad.transform)}, the ROI most in favour: {call.line()}")
    if grounding.negation_parts(phrase) is not None:
        if not call.present:
            print(f'not present: "{phrase}" grounds to nothing (no region prefers "{call.affirmed}"); no map drawn')
            return 0
        print(f'note: the model finds "{call.affirmed}" (p {call.p:.3f}), against "{phrase}"; its map follows')
        phrase = call.affirmed
    elif not call.present:
        print(f'note: the call is absent; the map shows where "{phrase}" is most similar, not a finding')
    heat, weights = ground(emb, rad, phrase)
    for k in np.argsort(-weights):
        if weights[k] > 0:
            box = to_original(rad.boxes[k : k + 1], rad.transform)[0]
            print(f"{rad.labels[k]:20s} {weights[k]:.3f}  box in the original image (x0 y0 x1 y1): "
                  + " ".join(f"{v:.0f}" for v in box))
    print(draw(rad, heat, weights, phrase, out or "ground.png", dense_map(emb, rad, phrase), decided))
    return 0
