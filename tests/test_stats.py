"""The two-level interval (seeds x patients) against an independent computation, and that it holds seed variance
where the patient bootstrap alone holds none."""

import numpy as np
import pytest

from pipeline import stats


def brute_force(a_values, b_values, boot, seed):
    """Round by round with plain loops: draw the seeds (the same stream stats.seed_draws documents), take the
    round's patients, average A_s - B_s over the drawn seeds."""
    s = len(a_values)
    draws = np.random.default_rng([seed, 1]).integers(0, s, (boot.rounds, s))
    out = []
    for r in range(boot.rounds):
        members = []
        for p in boot.draws[r]:
            members += [k for k, u in enumerate(UNITS) if u == boot.patients[p]]
        per_seed = []
        for j in range(s):
            k = draws[r, j]
            per_seed.append(np.mean([a_values[k][i] for i in members]) - np.mean([b_values[k][i] for i in members]))
        out.append(sum(per_seed) / s)
    return np.array(out)


UNITS = ["a", "a", "b", "c", "c", "c", "d", "e", "e", "f"]


def test_two_level_matches_a_brute_force_loop():
    rng = np.random.default_rng(5)
    a = [rng.random(len(UNITS)) for _ in range(3)]
    b = [rng.random(len(UNITS)) for _ in range(3)]
    boot = stats.PatientBootstrap(UNITS, rounds=300, seed=7)
    rep = lambda v: boot.replicate(lambda i: v[i].mean(), UNITS)  # noqa: E731
    f = stats.two_level([x.mean() for x in a], [rep(x) for x in a], [x.mean() for x in b], [rep(x) for x in b],
                        len(UNITS), seed=11)
    expected = brute_force(a, b, boot, 11)
    assert f["value"] == pytest.approx(np.mean([x.mean() for x in a]) - np.mean([x.mean() for x in b]))
    assert f["ci_low"] == pytest.approx(np.percentile(expected, 2.5))
    assert f["ci_high"] == pytest.approx(np.percentile(expected, 97.5))
    assert f["interval"] == "two-level bootstrap over seeds x patients, 95% percentile" and f["seeds"] == 3
    # one arm: the mean over seeds of A, the same rounds with B = 0
    one = stats.two_level([x.mean() for x in a], [rep(x) for x in a], n=len(UNITS), seed=11)
    zero = [np.zeros(len(UNITS))] * 3
    assert one["ci_low"] == pytest.approx(np.percentile(brute_force(a, zero, boot, 11), 2.5))


def test_seed_variance_widens_the_interval_where_patients_vary_not():
    # every patient alike within a seed (zero patient variance), seeds far apart: the difference is 0.1, 0.3 or 0.5
    boot = stats.PatientBootstrap(UNITS, rounds=400, seed=0)
    a = [np.full(len(UNITS), v) for v in (0.6, 0.8, 1.0)]
    b = [np.full(len(UNITS), 0.5)] * 3
    rep = lambda v: boot.replicate(lambda i: v[i].mean(), UNITS)  # noqa: E731
    args = ([x.mean() for x in a], [rep(x) for x in a], [x.mean() for x in b], [rep(x) for x in b], len(UNITS))
    patients_only = stats.paired(*args)
    assert patients_only["ci_low"] == pytest.approx(0.3) and patients_only["ci_high"] == pytest.approx(0.3)
    two = stats.two_level(*args, seed=1)
    assert two["value"] == pytest.approx(0.3)
    assert two["ci_low"] < 0.2 and two["ci_high"] > 0.4  # the seeds' spread, not a zero-width interval
    # one seed: the patient bootstrap's interval
    single = stats.two_level(args[0][:1], args[1][:1], args[2][:1], args[3][:1], len(UNITS), seed=1)
    paired = stats.paired(args[0][:1], args[1][:1], args[2][:1], args[3][:1], len(UNITS))
    assert (single["ci_low"], single["ci_high"]) == (paired["ci_low"], paired["ci_high"])


def test_seed_draws_are_seeded_and_in_range():
    d = stats.seed_draws(3, 50, 4)
    assert np.array_equal(d, stats.seed_draws(3, 50, 4)) and d.shape == (50, 3) and set(np.unique(d)) <= {0, 1, 2}
    assert not np.array_equal(d, stats.seed_draws(3, 50, 5))
