"""report.md and the plots of the evaluate stage, from metrics.json's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..labels import OBSERVATIONS
from ..stats import TWO_LEVEL
from .controls import CONTROLS
from .robustness import PREFERENCES

ORACLE = "oracle_rois"  # "<run>/oracle_rois": the run's regional figures with ground-truth ROIs

REGIONAL_HEADLINE = ["presence/auroc", "region/same_position_top1", "robust/balanced_negation", "robust/negated",
                     "robust/converse", "region/laterality", "region/top1"]
HEADLINE = ["presence/auroc", "region/same_position_top1", "robust/balanced_negation", "auroc/mean", "5x200/accuracy",
            "i2r/R@1", "i2r/R@10", "r2i/R@1", "r2i/R@10", "region/top1", "region/laterality", "phrase2roi/R@1", "robust/negated", "robust/converse", "robust/uncertain",
            "robust/other_finding", "grounding/pointing_game", "grounding/iou", "grounding/cnr",
            "grounding/dense_pointing_game", "grounding/dense_miou", "grounding/dense_cnr",
            "groundable/negated_accuracy", "groundable/present_accuracy"]



def _cell(f: dict | None) -> str:
    if f is None or not np.isfinite(f["value"]):
        return "-"
    if not np.isfinite(f["ci_low"]):
        return f"{f['value']:.3f}"
    return f"{f['value']:.3f} ({f['ci_low']:.3f} to {f['ci_high']:.3f})"


def _seeds_cell(f: dict | None) -> str:
    """Mean over seeds ± SD over seeds, then the mean's interval (two-level bootstrap) where there is one."""
    if f is None or not np.isfinite(f["mean"]):
        return "-"
    if "ci_low" not in f or not np.isfinite(f["ci_low"]):
        return f"{f['mean']:.3f} ± {f['sd']:.3f}"
    return f"{f['mean']:.3f} ± {f['sd']:.3f} ({f['ci_low']:.3f} to {f['ci_high']:.3f})"


ORACLE_KEYS = ("presence/auroc", "region/same_position_top1", "region/top1")


def oracle_markdown(metrics: dict) -> list[str]:
    """Regional figures with the pipeline's predicted ROIs and with ground-truth ROIs, side by side, for the student
    and the control: means over seeds where there are seed figures, else the first seed's."""
    runs, control = metrics["runs"], metrics["test"]["control"]
    seeds, paired = metrics.get("seeds", {}), metrics.get("paired", {})
    if f"student/{ORACLE}" not in runs and f"{control}/{ORACLE}" not in runs:
        return []

    def cell(name: str, m: str) -> str:
        if m in seeds.get(name, {}):
            return _seeds_cell(seeds[name][m])
        return _cell(runs.get(name, {}).get(m))

    found = {m for n in (f"student/{ORACLE}", f"{control}/{ORACLE}") for m in runs.get(n, {})}
    keys = [k for k in ORACLE_KEYS if k in found] + sorted(k for k in found if k.startswith("presence/auroc/"))
    oracle = metrics["test"].get("oracle_rois", {})
    lines = ["## Predicted ROIs and ground-truth (oracle) ROIs", "",
             "The regional figures with the pipeline's ROIs (U-Net lungs, zones and lesions) and with ROIs from the "
             "synthetic ground truth: lung and zone boxes from the true lung masks by the crop stage's zone rule, "
             "lesion boxes from the true finding boxes, padded like the crop stage's; the phrases paired with them by "
             "the same rule (pairing.pair_rois)"
             + (f" ({oracle['images']} images, {oracle['pairs']} pairs)" if oracle else "") + ". Means over seeds ± "
             "SD with the two-level interval where there are seeds.", "",
             f"| metric | student | student, oracle ROIs | {control} | {control}, oracle ROIs | student - {control} | "
             f"student - {control}, oracle ROIs |", "|---" * 7 + "|"]
    for k in keys:
        lines.append(f"| {k} | {cell('student', k)} | {cell(f'student/{ORACLE}', k)} | {cell(control, k)} | "
                     f"{cell(f'{control}/{ORACLE}', k)} | {_cell(paired.get(f'student - {control}', {}).get(k))} | "
                     f"{_cell(paired.get(f'student/{ORACLE} - {control}/{ORACLE}', {}).get(k))} |")
    return lines + [""]


# The bars a default that learns must clear, and a region-aware gain with it: (key, what, the figure's source, the
# bar; every figure must reach its bar from below). "base" figures are the teacher's (`baseline`), "diff" the
# student - control difference over seeds (its interval must lie above 0), "loss" the same difference read as what
# the student may lose, "student" the student's mean over seeds.
BARS = [
    ("auroc/mean", "the base: mean zero-shot AUROC", "base", 0.80),
    ("i2r/R@10", "the base: image -> report R@10, x chance", "base", 3.0),
    ("presence/auroc", "presence AUROC at fixed positions, student - control", "diff", 0.10),
    ("region/same_position_top1", "same-position region top-1, student - control", "diff", 0.10),
    ("auroc/mean", "global zero-shot AUROC, student - control (at most 0.02 lost)", "loss", -0.02),
    ("i2r/R@10", "image -> report R@10, student - control (at most 0.02 lost)", "loss", -0.02),
    ("robust/balanced_negation", "balanced negation, the student", "student", 0.75),
]
MEAN_IMAGE_KEYS = ("presence/auroc", "region/same_position_top1")
POWER_KEY, POWER_HALF_WIDTH = "presence/auroc", 0.05  # the headline's 95% interval: within 0.05 on either side


def bars_markdown(metrics: dict) -> list[str]:
    """Each bar with its figure and a verdict. "not met" where the figure is short of its bar; where it reaches it,
    "met" only if the figure carrying it lies above the untrained models' band (the student's mean over seeds for a
    difference, whose interval must also lie above 0), else "no result: inside the band". The "lost to the
    control" rows judge the point estimate and say so where the interval reaches past the bar. Plus power (the
    headline difference's interval reaching no further than 0.05 from its point estimate on either side) and the
    mean-image control: with every test image replaced by the mean image, both arms' regional figures must lie
    inside the band."""
    runs, t = metrics["runs"], metrics["test"]
    control, band = t["control"], metrics.get("null_band", {}).get("figures", {})
    seeds, paired = metrics.get("seeds", {}), metrics.get("paired", {}).get(f"student - {t['control']}", {})
    eps = 1e-9  # 30 of 237 studies is 3x chance exactly, whatever the float division gives

    def judged(met: bool, value: float, key: str) -> str:
        if not met:
            return "not met"
        if key not in band:
            return "met (no band to compare)"
        return "met" if value > band[key]["high"] else "no result: inside the band"

    rows = []
    for key, what, source, bar in BARS:
        top = f"; band top {band[key]['high']:.3f}" if key in band else ""
        if source == "base":
            f = runs.get("baseline", {}).get(key)
            if f is None:
                continue
            value, shown = f["value"], _cell(f) + top
            if key == "i2r/R@10":  # as a multiple of chance: 10 of the test studies
                chance = min(1.0, 10 / t["studies"])
                value = value / chance
                shown += f"; {value:.1f}x chance ({chance:.3f})"
            verdict = judged(value >= bar - eps, f["value"], key)
        elif source == "student":
            f = seeds.get("student", {}).get(key)
            if f is None:
                continue
            verdict, shown = judged(f["mean"] >= bar - eps, f["mean"], key), _seeds_cell(f) + top
        elif source == "loss":
            f = paired.get(key)
            if f is None:
                continue
            c = seeds.get(control, {}).get(key, {}).get("mean", np.nan)
            shown = _cell(f) + f"; {control} {c:.3f}" + top
            verdict = ("not met" if f["value"] < bar - eps else "met" if f["ci_low"] >= bar - eps
                       else f"met on the point estimate (the interval reaches {f['ci_low']:.3f})")
        else:
            f = paired.get(key)
            if f is None:
                continue
            student = seeds.get("student", {}).get(key, {}).get("mean", np.nan)
            shown = _cell(f) + f"; the student {student:.3f}" + top
            verdict = judged(f["value"] >= bar - eps and f["ci_low"] > 0, student, key)
        rows.append(f"| {what} | >= {bar:g} | {shown} | {verdict} |")
    f = paired.get(POWER_KEY)
    if f is not None:  # power: the headline's interval reaches no further than POWER_HALF_WIDTH on either side
        half = max(f["value"] - f["ci_low"], f["ci_high"] - f["value"])  # a percentile interval can be lopsided
        rows.append(f"| power: the interval of presence AUROC, student - control | +-{POWER_HALF_WIDTH:g} | "
                    f"{f['value']:.3f} ({f['ci_low']:.3f} to {f['ci_high']:.3f}): {half:.3f} on its wider side; "
                    f"{t.get('patients', '?')} patients, {f.get('seeds', '?')} seeds | "
                    f"{'met' if half <= POWER_HALF_WIDTH + eps else 'not met'} |")
    checked, outside, unchecked = 0, [], []
    for n in ("student", control):
        for k in MEAN_IMAGE_KEYS:
            f = runs.get(f"{n}/mean_image", {}).get(k)
            if f is None or k not in band:
                unchecked.append(f"{n} {k}")
                continue
            checked += 1
            if not band[k]["low"] <= f["value"] <= band[k]["high"]:
                outside.append(f"{n} {k} {f['value']:.3f} (band {band[k]['low']:.3f}-{band[k]['high']:.3f})")
    if checked:
        shown = "; ".join(outside) or f"all {checked} inside"
        rows.append(f"| mean-image control: both arms' regional figures inside the band | inside | {shown}"
                    + (f"; not measured: {', '.join(unchecked)}" if unchecked else "")
                    + f" | {'not met' if outside else 'met'} |")
    if not rows:
        return []
    return ["## The bars", "", "Each bar against its figure. A figure short of its bar is \"not met\"; one that "
            "reaches it but lies at or below the top of the untrained models' band (the chance row) carries no "
            "result; a difference needs its interval above 0 and the student above the band.", "",
            "| bar | needs | figure | verdict |", "|---|---|---|---|", *rows, "",
            *(["What was tried on the default config for the bars it does not meet: the README, \"The base\" (the "
               "base's bars and the time) and \"Comparisons\" (the student's).", ""]
              if any(r.endswith("| not met |") for r in rows) else [])]


def report_markdown(metrics: dict) -> str:
    runs, t = metrics["runs"], metrics["test"]
    control, split = t["control"], t.get("split", "test")  # metrics.json before evaluate.split: test
    lines = ["# Region-Aware MedCLIP: evaluation", "",
             f"{split.capitalize()} split: {t['images']} images of {t['patients']} patients, {t['studies']} studies "
             f"(retrieval), {t['pairs']} ROI-phrase pairs, {t['clear_regions']} clear-region tests, "
             f"{t['grounding_boxes']} ground-truth boxes, {t['five_by_200']} images in the 5x200-style subset. "
             f"Intervals of one run's "
             f"figures: patient-level bootstrap 95% ({t['bootstrap']} resamples, seed {t['seed']}), the same "
             f"resamples for every run; of means over seeds and of student - {control}: {TWO_LEVEL}. "
             f"`{control}` is the control (the student's init, steps, batches, flips and seed, with the regional "
             "losses off); `baseline` is the teacher; `/crop` rows embed each ROI's crop as an image"
             + (f"; external baselines, zero-shot: {', '.join(t['external'])}" if t.get("external") else "") + ".", ""]
    if split != "test":
        lines += [f"**These are {split} figures** (`evaluate.split: {split}`), for tuning: quote the test split's.", ""]
    lines += bars_markdown(metrics)
    band = metrics.get("null_band", {})
    controlled = [n for n in runs if n.endswith(tuple(f"/{c}" for c in CONTROLS))]
    keys = [k for k in REGIONAL_HEADLINE if any(k in r for r in runs.values())]
    if keys:
        shown = [n for n in runs if "/" not in n and (any(c.startswith(f"{n}/") for c in controlled) or not controlled)]
        lines += ["## Figures only the image can win", "",
                  "Presence of each regional finding at fixed positions (AUROC over images at one lung or zone "
                  "position), region <-> phrase top-1 among findings at the pair's own position, and negation as one "
                  "balanced figure; laterality and plain top-1 beside them (both can be won from where a box sits). "
                  "`/mean_image` and `/other_patient`: every test image replaced by the mean test image or by another "
                  "patient's image, the ROI boxes kept. A gain counts only where the real images beat these controls "
                  "and lie above the chance row.", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name in shown:
            lines += [f"| {n} | " + " | ".join(_cell(runs[n].get(k)) for k in keys) + " |"
                      for n in [name] + [c for c in controlled if c.startswith(f"{name}/")]]
        if band.get("models"):
            f = band["figures"]
            lines.append(f"| chance: {band['models']} untrained {band['architecture']} | " + " | ".join(
                f"{f[k]['mean']:.3f} ({f[k]['low']:.3f} to {f[k]['high']:.3f})" if k in f else "-" for k in keys) + " |")
        lines.append("")
    seeds, paired = metrics["seeds"], metrics["paired"].get(f"student - {control}", {})
    if paired:
        n_seeds = len(next(iter(seeds["student"].values()))["runs"]) if seeds.get("student") else 0
        lines += [f"## Student vs {control} ({n_seeds} seeds)", "",
                  f"Mean over seeds ± SD over seeds, with the mean's 95% interval; the difference is the mean over "
                  f"seeds of the per-seed difference (seed k of the student against seed k of {control}). Intervals: "
                  f"{TWO_LEVEL}: each round draws the seeds with replacement and resamples the patients, and takes "
                  f"the mean over the drawn seeds on that round's patients, so they hold training (seed) variance "
                  f"beside patient variance.", "", f"| metric | student | {control} | student - {control} |", "|---|---|---|---|"]
        keys = [k for k in HEADLINE if k in paired] + sorted(k for k in paired if k not in HEADLINE)
        lines += [f"| {k} | {_seeds_cell(seeds['student'].get(k))} | {_seeds_cell(seeds[control].get(k))} | "
                  f"{_cell(paired[k])} |" for k in keys if k.count("/") == 1]
        lines.append("")
    lines += oracle_markdown(metrics)

    def table(title: str, keys: list[str]) -> None:
        keys = [k for k in keys if any(k in r for r in runs.values())]
        if not keys:
            return
        lines.extend([f"## {title}", "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"])
        lines.extend(f"| {name} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for name, r in runs.items())
        lines.append("")

    table("Headline, every run", HEADLINE)
    others = {k: v for k, v in metrics["paired"].items() if k != f"student - {control}" and f"/{ORACLE} - " not in k}
    if others:
        keys = [k for k in HEADLINE if any(k in v for v in others.values())]
        lines.extend(["## Paired differences (first seed)", "", "| comparison | " + " | ".join(keys) + " |",
                      "|---" * (len(keys) + 1) + "|"])
        lines.extend(f"| {name} | " + " | ".join(_cell(v.get(k)) for k in keys) + " |" for name, v in others.items())
        lines.append("")
    table("Retrieval", [f"{d}/{m}" for d in ("i2r", "r2i", "phrase2roi") for m in ("R@1", "R@5", "R@10", "median_rank")])
    table("Zero-shot AUROC per observation", [f"auroc/{o}" for o in OBSERVATIONS])
    table("Robustness: the true statement preferred over", [f"robust/{k}" for k in PREFERENCES])
    per_finding = sorted({k for r in runs.values() for k in r if k.count("/") == 2})
    table("Robustness per finding", per_finding)
    if "pairing_on_truth" in metrics:
        p = metrics["pairing_on_truth"]
        rules = "; ".join(f"{rule} ROIs {t['right']} of {t['judged']}" for rule, t in p.get("by_rule", {}).items()
                          if t["judged"])
        lines.extend([f"Pairing on the synthetic truth (all splits): {p['right']} of {p['judged']} judged pairs right "
                      f"({p['accuracy']:.3f}; {rules}). A lung ROI holds almost any finding of its side: the lesion "
                      "figure is the demanding one.", ""])
    lines.extend(["## Evaluation sets (manifests)", "", "Sets pinned by `evaluate.manifests` whose ROIs come from the "
                  "trained U-Net (region pairs, clear regions, grounding) are evaluated on the pinned entries found "
                  "again: lungs and zones by name, lesions by box (IoU >= 0.3, or one box holds the other's centre).", "",
                  "| set | n | pinned entries found | seed | sha256 |", "|---|---|---|---|---|"])
    found = lambda v: f"{v['found']} of {v['pinned']}" if "pinned" in v else "-"  # noqa: E731
    lines.extend(f"| {k} | {v['n']} | {found(v)} | {v['seed']} | `{v['sha256'][:16]}` |"
                 for k, v in metrics["manifests"].items())
    return "\n".join(lines) + "\n"


def benchmarks_markdown(metrics: dict, markdown) -> str:
    """The benchmarks' section, written by `markdown` (pipeline.benchmarks.markdown: the stage passes it, so
    nothing here imports the benchmark readers, which import this package)."""
    return ("\n" + markdown(metrics["benchmarks"])) if metrics.get("benchmarks") else ""


def plot(curves: dict, results: dict, out_dir: Path, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    observations = sorted({o for c in curves.values() for o in c["roc"]})
    if observations:
        cols = min(4, len(observations))
        rows = -(-len(observations) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
        for ax, o in zip(axes.flat, observations):
            for name, c in curves.items():
                if o in c["roc"]:
                    y, s = c["roc"][o]
                    fpr, tpr, _ = roc_curve(y, s)
                    ax.plot(fpr, tpr, label=f"{name} {results[name][f'auroc/{o}']['value']:.2f}")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
            ax.set_title(o, fontsize=9)
            ax.legend(fontsize=6, loc="lower right")
        for ax in list(axes.flat)[len(observations):]:
            ax.axis("off")
        fig.suptitle(f"Zero-shot ROC on the {split} split")
    else:  # a small test split may have no observation with two positives and two negatives
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, f"no observation with >= 2 positives\nand >= 2 negatives in the {split} split", ha="center",
                va="center")
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_dir / "roc.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    keys = ["i2r/R@1", "i2r/R@5", "i2r/R@10", "r2i/R@1", "r2i/R@5", "r2i/R@10", "phrase2roi/R@1", "phrase2roi/R@5"]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / max(len(results), 1)
    for j, (name, r) in enumerate(results.items()):
        vals = [r.get(k, {"value": np.nan})["value"] for k in keys]
        err = [[max(0.0, v - r[k]["ci_low"]) if k in r and np.isfinite(r[k]["ci_low"]) else 0 for k, v in zip(keys, vals)],
               [max(0.0, r[k]["ci_high"] - v) if k in r and np.isfinite(r[k]["ci_high"]) else 0 for k, v in zip(keys, vals)]]
        ax.bar(np.arange(len(keys)) + j * width, vals, width, yerr=err, label=name, capsize=2)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend(fontsize=7)
    ax.set_title(f"Retrieval on the {split} split (95% bootstrap intervals)")
    fig.tight_layout()
    with atomic_path(out_dir / "retrieval.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
