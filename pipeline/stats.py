"""Statistics of the evaluation: AUROC, and the patient-level bootstrap behind every interval.

Units of a figure (images, studies, ROI-phrase pairs, ...) of one patient are not independent, so a resample draws
patients with replacement and takes every unit of each drawn patient (a patient drawn twice counts twice). All
models are scored on the same resamples, which gives paired differences: the 95% interval of
stat_A(resample) - stat_B(resample) over the rounds, narrower and fairer than comparing two separate intervals.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties at one half (sklearn's roc_auc_score); NaN with one class. Written out because
    it runs inside every bootstrap round for every observation and run, where sklearn's per-call checks add up."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class PatientBootstrap:
    """`rounds` resamples of the patients, drawn once with `seed`; `indices(unit_patients)` turns them into unit
    indices for any kind of unit, so every figure and every model sees the same patients in round r."""

    def __init__(self, patients: list[str], rounds: int, seed: int):
        self.patients = sorted(set(patients))
        self.number = {p: i for i, p in enumerate(self.patients)}
        n = len(self.patients)
        self.draws = np.random.default_rng(seed).integers(0, n, (rounds, n)) if n else np.zeros((rounds, 0), int)
        self._cache: dict[tuple, list[np.ndarray]] = {}

    @property
    def rounds(self) -> int:
        return len(self.draws)

    def indices(self, unit_patients: list[str]) -> list[np.ndarray]:
        """Per round, the indices of the units whose patient was drawn (units: a list of patient ids)."""
        key = tuple(unit_patients)
        if key not in self._cache:
            owner = np.array([self.number[p] for p in unit_patients], dtype=np.int64)
            members = [np.flatnonzero(owner == p) for p in range(len(self.patients))]
            empty = np.zeros(0, np.int64)
            self._cache[key] = [np.concatenate([members[p] for p in draw] + [empty]) for draw in self.draws]
        return self._cache[key]

    def replicate(self, stat: Callable[[np.ndarray], float], unit_patients: list[str]) -> np.ndarray:
        """stat over each round's resample: (rounds,) float64, NaN where the resample leaves it undefined."""
        return np.array([stat(i) if len(i) else np.nan for i in self.indices(unit_patients)], dtype=np.float64)


def interval(replicates: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval of the finite replicates; NaN when there are none."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def figure(value: float, replicates: np.ndarray, n: int) -> dict:
    lo, hi = interval(replicates)
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "n": int(n)}


def paired(values_a: list[float], reps_a: list[np.ndarray], values_b: list[float], reps_b: list[np.ndarray],
           n: int) -> dict:
    """A - B pooled over seeds: the mean over seeds of A's value minus the mean of B's, with the interval of the
    same difference over the shared resamples (seed s of A and of B were scored on the same patients)."""
    diff = np.mean(reps_a, axis=0) - np.mean(reps_b, axis=0)
    return figure(float(np.mean(values_a) - np.mean(values_b)), diff, n)


TWO_LEVEL = "two-level bootstrap over seeds x patients, 95% percentile"


def seed_draws(seeds: int, rounds: int, seed: int) -> np.ndarray:
    """(rounds, seeds) seed indices drawn with replacement, from a stream of their own (`seed`, not the patients')."""
    return np.random.default_rng([seed, 1]).integers(0, seeds, (rounds, seeds)) if seeds else np.zeros((rounds, 0), int)


def two_level(values_a: list[float], reps_a: list[np.ndarray], values_b: list[float] | None = None,
              reps_b: list[np.ndarray] | None = None, n: int = 0, seed: int = 0) -> dict:
    """The mean over seeds of A (or of A - B, the seeds paired by index: seed s of A and of B trained with the same
    seed and scored on the same patient resamples) with a two-level bootstrap interval: round r draws the seeds
    with replacement (seed_draws) and takes round r's patient resample, whose figure of seed s is reps[s][r]; the
    round's statistic is the mean over the drawn seeds of A_s - B_s. The interval so holds training (seed) variance
    and patient variance; with one seed it is the patient bootstrap's."""
    d = np.asarray(reps_a, np.float64)
    value = float(np.mean(values_a))
    if reps_b is not None:
        d = d - np.asarray(reps_b, np.float64)
        value -= float(np.mean(values_b))
    seeds, rounds = d.shape
    draws = seed_draws(seeds, rounds, seed)
    replicates = d[draws, np.arange(rounds)[:, None]].mean(1)
    return {**figure(value, replicates, n), "interval": TWO_LEVEL, "seeds": int(seeds)}
