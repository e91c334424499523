"""Scoring statistics: unbiased pass@k, Wilson intervals, an exact paired McNemar test and paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "mcnemar",
    "paired_bootstrap_ci",
    "paired_comparison",
    "pass_at_k",
    "pass_at_k_table",
    "wilson_interval",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Codex" paper).

    pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from
    the n include at least one correct one. The ratio is the product of (1 - k/i) for
    i = n-c+1 .. n, which never forms huge binomials. It averages over all k-subsets, unlike
    ``any(first k samples passed)``, which depends on sample order and is far noisier, and
    unlike the plug-in 1 - (1 - c/n)**k, which is biased low.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def _default_ks(n_min: int) -> list[int]:
    ks = []
    k = 1
    while k <= n_min:
        ks.append(k)
        k *= 2
    return sorted({*ks, n_min})


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Iterable[int] | None = None) -> dict[str, float]:
    """Mean pass@k over tasks given per-task (n, c).

    By default k runs over 1, 2, 4, 8, ... and the smallest n; a k (given or default) is
    reported only when every task has n >= k. Keys are "pass@1", "pass@2", ... in increasing k.
    """
    if not counts:
        return {}
    n_min = min(n for n, _ in counts)
    wanted = _default_ks(n_min) if ks is None else sorted(set(ks))
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
        for k in wanted
        if 1 <= k <= n_min
    }


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z=1.96: 95%). (0, 1) when total is 0."""
    if not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    z2 = z * z
    denom = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> dict[str, float | int]:
    """Exact (binomial) two-sided McNemar test on paired pass/fail outcomes.

    b = pairs that passed before and fail after, c = pairs that failed before and pass after.
    Under H0 (no change) the discordant pairs split Binomial(b+c, 1/2); the two-sided p-value is
    min(1, 2 * P[X <= min(b, c)]), computed exactly with integers. Returns
    {"b", "c", "n_discordant", "p_value"}; p_value is 1.0 when there are no discordant pairs.
    """
    if len(before) != len(after):
        raise ValueError(f"paired lists differ in length: {len(before)} vs {len(after)}")
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    p_value = min(1.0, 2 * tail / 2**m) if m else 1.0
    return {"b": b, "c": c, "n_discordant": m, "p_value": p_value}


def paired_comparison(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, Any]:
    """Two verdict maps (task id -> passed) compared on the tasks both have: counts, the change in the pass
    rate, 95% Wilson intervals of both rates and the exact McNemar test of the paired outcomes."""
    tasks = sorted(before.keys() & after.keys())
    b, a = [bool(before[t]) for t in tasks], [bool(after[t]) for t in tasks]
    n, nb, na = len(tasks), sum(b), sum(a)
    return {
        "tasks": n,
        "before": nb,
        "after": na,
        "delta": (na - nb) / n if n else 0.0,
        "before_ci95": list(wilson_interval(nb, n)),
        "after_ci95": list(wilson_interval(na, n)),
        "mcnemar": mcnemar(b, a),
    }


def paired_bootstrap_ci(
    before: Sequence[bool], after: Sequence[bool], reps: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(after) - mean(before) on paired outcomes: the tasks are drawn
    with replacement ``reps`` times (a fixed ``seed``: the same data give the same interval)."""
    import numpy as np

    if len(before) != len(after):
        raise ValueError(f"paired lists differ in length: {len(before)} vs {len(after)}")
    if not before:
        return -1.0, 1.0
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(reps, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
