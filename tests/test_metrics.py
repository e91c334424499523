import itertools
import math

import pytest

from tinyforge.evaluate.metrics import (
    mcnemar,
    paired_bootstrap_ci,
    paired_comparison,
    pass_at_k,
    pass_at_k_table,
    wilson_interval,
)


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration_of_subsets(n: int) -> None:
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(outcomes, k), abs=1e-12)


def test_pass_at_k_is_closed_form() -> None:
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10), rel=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k failures: every k-subset has a success


def test_any_of_first_k_is_not_pass_at_k() -> None:
    # One success out of 4 samples, drawn first: any(first k) says 1.0 for every k,
    # while the chance a random k-subset holds it is k/4.
    outcomes = [True, False, False, False]
    for k in (1, 2, 3):
        naive = float(any(outcomes[:k]))
        assert naive == 1.0
        assert pass_at_k(4, 1, k) == pytest.approx(k / 4)
        assert pass_at_k(4, 1, k) == pytest.approx(brute_pass_at_k(outcomes, k))
    # ... and the same samples in another order give the naive estimate 0.0 for k=1..3.
    assert not any([False, False, False, True][:3])


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (3, 4, 1), (3, -1, 1), (3, 1, 0)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_table_default_ks() -> None:
    counts = [(10, 3), (12, 0), (16, 16)]
    table = pass_at_k_table(counts)
    assert list(table) == ["pass@1", "pass@2", "pass@4", "pass@8", "pass@10"]
    for key, value in table.items():
        k = int(key.removeprefix("pass@"))
        assert value == pytest.approx(sum(pass_at_k(n, c, k) for n, c in counts) / 3)
    assert pass_at_k_table([(1, 1), (1, 0)]) == {"pass@1": 0.5}
    assert pass_at_k_table([(16, 4)]).keys() == {"pass@1", "pass@2", "pass@4", "pass@8", "pass@16"}
    assert pass_at_k_table([]) == {}


def test_pass_at_k_table_given_ks_are_filtered_by_smallest_n() -> None:
    assert pass_at_k_table([(10, 5), (20, 5)], ks=[1, 10, 20, 100]) == {
        "pass@1": pytest.approx(0.375),
        "pass@10": pytest.approx((1.0 + pass_at_k(20, 5, 10)) / 2),
    }


def test_wilson_known_values() -> None:
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, Wilson
    # score method without continuity correction, to the 4 decimals printed there.
    for (s, n), expected in {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }.items():
        assert wilson_interval(s, n) == pytest.approx(expected, abs=5e-5)
    # Closed forms at the edges: 0/n -> upper z^2/(n+z^2); n/n -> lower n/(n+z^2).
    z2 = 1.96**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(30, 100, z=2.576)
    assert low < wilson_interval(30, 100)[0] < 0.3 < wilson_interval(30, 100)[1] < high
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_hand_computed() -> None:
    # pairs: (T,F) x3 -> b=3, (F,T) x1 -> c=1, concordant pairs ignored.
    before = [True, True, True, False, True, False]
    after = [False, False, False, True, True, False]
    r = mcnemar(before, after)
    assert (r["b"], r["c"], r["n_discordant"]) == (3, 1, 4)
    # P[X <= 1] for Binomial(4, 1/2) = (1 + 4) / 16; two-sided doubles it.
    assert r["p_value"] == pytest.approx(10 / 16)


def test_mcnemar_extremes() -> None:
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    r = mcnemar([False] * 10, [True] * 10)  # c=10, b=0: 2 / 2**10
    assert (r["b"], r["c"]) == (0, 10)
    assert r["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)["p_value"] == 1.0
    assert mcnemar([False] * 200, [True] * 200)["p_value"] == pytest.approx(2.0**-199)
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_comparison_uses_the_tasks_both_sides_have() -> None:
    before = {"a": True, "b": False, "c": False, "d": True, "only-before": True}
    after = {"a": True, "b": True, "c": True, "d": False, "only-after": False}
    r = paired_comparison(before, after)
    assert (r["tasks"], r["before"], r["after"]) == (4, 2, 3)
    assert r["delta"] == pytest.approx(0.25)
    assert r["before_ci95"] == list(wilson_interval(2, 4)) and r["after_ci95"] == list(wilson_interval(3, 4))
    assert r["mcnemar"] == mcnemar([True, False, False, True], [True, True, True, False])
    empty = paired_comparison({"a": True}, {"b": True})
    assert (empty["tasks"], empty["delta"], empty["before_ci95"]) == (0, 0.0, [0.0, 1.0])


def test_paired_bootstrap_interval() -> None:
    before = [False] * 10 + [True] * 10
    after = [True] * 10 + [True] * 10  # +10 tasks of 20: mean difference 0.5
    lo, hi = paired_bootstrap_ci(before, after, reps=4000, seed=3)
    assert lo < 0.5 < hi and lo > 0.2 and hi < 0.8
    assert paired_bootstrap_ci(before, after, reps=4000, seed=3) == (lo, hi)  # seeded: the same interval
    assert paired_bootstrap_ci([True] * 5, [True] * 5) == (0.0, 0.0)  # no discordant pair: no spread
    assert paired_bootstrap_ci([], []) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([True], [True, False])
