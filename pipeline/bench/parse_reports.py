"""`bench parse-reports`: reports/s and accuracy on synthetic reports and the hand-written sets, or per-label
figures on real reports against an expert gold table."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config
from ..stages import ingest, synthesize


def bench_parse_reports(n: int) -> dict:
    """Reports/s on one process, and accuracy against the synthetic ground truth and the hand-written set."""
    from ..labels import OBSERVATIONS
    from ..reports import score
    from ..stages import parse_reports as pr

    cfg = config.load()
    syn = cfg["data"]["synthetic"]
    syn.update(n_studies=n, image_size=64, lateral_fraction=0.0)
    with tempfile.TemporaryDirectory() as d:
        synthesize.run(syn, Path(d) / "data", workers=2)
        table = ingest.read_mimic(Path(d) / "data").drop_duplicates("study_id")
        gold = score.synthetic_gold(Path(d) / "data" / "ground_truth" / "phrases.csv")
    pr.build_nlp(cfg["parse_reports"]["spacy_model"])  # built once per process, not part of the rate
    t0 = time.perf_counter()
    parsed = pr.parse_reports(table["report"].tolist(), cfg["parse_reports"])
    dt = time.perf_counter() - t0
    found: dict = {}
    for sid, rep in zip(table["study_id"], parsed):
        for p in rep.phrases:
            found.setdefault((sid, " ".join(p.sentence.split())), []).append(p)
    keys = list(gold) + [k for k in found if k not in gold]
    synthetic = score.score([gold.get(k, {}) for k in keys], [score.by_observation(found.get(k, [])) for k in keys])
    labels = np.array([[r.labels[o] for o in OBSERVATIONS] for r in parsed])
    synthetic["label_agreement"] = pr.agreement(labels, table[OBSERVATIONS].to_numpy(float))
    sentences, hand_gold = score.read_sentence_file(Path(__file__).resolve().parents[2] / "tests" / "data"
                                                    / "report_sentences.txt")
    hand = score.score(hand_gold, [score.by_observation(r.phrases)
                                   for r in pr.parse_reports(sentences, cfg["parse_reports"])])
    reports, labeler_gold = score.read_label_file(Path(__file__).resolve().parents[2] / "tests" / "data"
                                                  / "chexpert_style_reports.txt")
    labeler = score.label_agreement(labeler_gold, [r.labels for r in pr.parse_reports(reports, cfg["parse_reports"])])
    return {"reports": len(table), "seconds": dt, "reports_s": len(table) / dt, "synthetic": synthetic,
            "hand_written": hand, "chexpert_style": labeler}


def bench_real_reports(reports: pd.DataFrame, gold_table: str | Path, misses: int = 0,
                       hedge: str = "two_grade") -> dict:
    """Study labels parsed from real reports against an expert gold table (NegBio format), on the 8 findings
    both label schemes share (`pipeline/reports/real.py`); reports/s on one process.

    The figures are those of the labels under `hedge`, by default the gold's own convention: NegBio's experts
    count a probable finding and leave one only offered as a possibility unlabelled ("two_grade"), so scoring
    the CheXpert labeler's convention (every hedge -1, counted as present) against them would count as parser
    errors what is a difference of convention. The other convention's figures are in `by_convention`."""
    from ..reports import real
    from ..reports.score import HEDGE_CONVENTIONS
    from ..stages import parse_reports as pr

    cfg = config.load()["parse_reports"]
    gold = real.read_gold(gold_table)
    reports = reports[reports["study_id"].isin(gold.index)]
    pr.build_nlp(cfg["spacy_model"])
    t0 = time.perf_counter()
    parsed = pr.parse_reports(reports["report"].tolist(), cfg)
    dt = time.perf_counter() - t0
    ids = reports["study_id"].tolist()
    predicted = {h: pd.DataFrame([real.positive(r.labels_as(h)) for r in parsed], index=ids)
                 for h in HEDGE_CONVENTIONS}
    res = real.label_scores(gold, predicted[hedge])
    res.update(reports=len(ids), seconds=dt, reports_s=len(ids) / dt, not_in_reports=len(gold) - len(ids),
               hedge=hedge, config_hedge=cfg["hedge"],
               by_convention={h: real.label_scores(gold, p) for h, p in predicted.items()},
               confusions=real.confusions(gold, predicted[hedge], {s: r.phrases for s, r in zip(ids, parsed)}),
               texts=dict(zip(ids, reports["report"])) if misses else {})
    return res


def _print_real(res: dict, misses: int) -> None:
    print(f"parse-reports on real reports: {res['reports']} reports with gold labels ({res['not_in_reports']} gold "
          f"rows without a report) in {res['seconds']:.1f} s on one core: {res['reports_s']:.0f} reports/s")
    print(f"labels under the {res['hedge']} hedge convention (the gold's: a finding only offered as a possibility "
          "is unlabelled, a probable one counts), a label of 1 or -1 counting as present:")
    print(f"  {'label':<18} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}   fp  fn")
    for obs, v in res["labels"].items():
        print(f"  {obs:<18} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>6.3f} {v['support']:>8} "
              f"{v['fp']:>4} {v['fn']:>3}")
    print(f"  macro F1 over the {len(res['labels'])} shared labels: {res['macro_f1']:.3f} "
          f"(targets: >= 0.90, no label below 0.80)")
    for h, other in res["by_convention"].items():
        if h != res["hedge"]:
            print(f"  under the {h} convention{' (this config)' if h == res['config_hedge'] else ''}, every hedged "
                  f"finding counted as present: macro F1 {other['macro_f1']:.3f} ("
                  + ", ".join(f"{o} {v['f1']:.3f}" for o, v in other["labels"].items()) + ")")
    print("confusions that cost most (phrase: studies):")
    for obs, c in res["confusions"].items():
        if not (c["false_positive_phrases"] or c["missed_negated_phrases"] or c["missed_unmentioned"]):
            continue
        print(f"  {obs}:")
        if c["false_positive_phrases"]:
            print("    fired wrongly: " + "; ".join(f"{p}: {n}" for p, n in c["false_positive_phrases"]))
        if c["missed_negated_phrases"]:
            print("    missed, read as negated or only possible: " + "; ".join(f"{p}: {n}" for p, n in c["missed_negated_phrases"]))
        if c["missed_unmentioned"]:
            print(f"    missed, no mention found: {len(c['missed_unmentioned'])} studies")
            for sid in c["missed_unmentioned"][:misses]:
                print(f"      {sid}: {' '.join(res['texts'][sid].split())[:300]}")
