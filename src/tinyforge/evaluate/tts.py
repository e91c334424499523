"""Test-time sampling sweeps: oracle pass@N, self-consistency (majority vote) at N, and their plot.

A sweep draws N_max samples per task once and then reports, for every N in a list, what N samples would
have bought, without drawing again:

* **oracle pass@N**: the chance that N samples include a correct one, i.e. the accuracy of a perfect
  verifier picking among them. Unbiased estimate from the N_max samples (``metrics.pass_at_k``).
* **SC@N** (self-consistency): the accuracy of majority voting over the N samples' normalised final
  answers, i.e. what sampling buys with no verifier at all. It needs answer keys, so code benchmarks
  (correctness only) report oracle pass@N alone.
* **recovery**: the share of the greedy -> oracle gap that voting closes.

SC@N is averaged over N-subsets of the N_max samples, like pass@N, rather than read off the first N
samples: that would depend on sample order and be far noisier. Subsets keep sample-index order so the
vote's tie rule ("the earliest sample's answer wins") means the same thing at every N.

``sweep`` is ``tinyforge tts``: a greedy run and one run of N_max samples through ``evaluate`` (so both
are cached, resumable and scored like any eval), then the table, ``tts.json``, ``tts.md`` and ``tts.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tinyforge.data import get_benchmark
from tinyforge.evaluate.metrics import pass_at_k, wilson_interval
from tinyforge.generate.base import Engine, SamplingParams
from tinyforge.sandbox import Pool

__all__ = [
    "Sample",
    "check_sweep",
    "format_table",
    "majority_vote",
    "oracle_accuracy",
    "plot_tts",
    "recovery_ratio",
    "sc_accuracy",
    "sweep",
    "tabulate",
    "tts_table",
]

Sample = tuple[str | None, bool]
"""One sample: (normalised final answer or None when none was extracted, whether it is correct)."""

DEFAULT_SUBSETS = 200


def majority_vote(keys: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins a majority vote, or None when no sample has an answer.

    The most frequent non-None key wins; None keys (no answer extracted) never vote. Tie rule: among
    keys with the same top count, the one that appears first (lowest sample index) wins. The result is
    the index of the first sample carrying the winning key.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    winner = min(counts, key=lambda k: (-counts[k], first[k]))
    return first[winner]


def _vote_correct(samples: Sequence[Sample], indices: Sequence[int]) -> bool:
    """Whether the majority vote over ``samples[i] for i in indices`` picks a correct answer."""
    won = majority_vote([samples[i][0] for i in indices])
    return won is not None and samples[indices[won]][1]


def _task_sc(samples: Sequence[Sample], n: int, subsets: int, rng: random.Random) -> float:
    """Expected correctness of the vote over a uniform random n-subset of one task's samples."""
    m = len(samples)
    if math.comb(m, n) <= subsets:
        combos = list(itertools.combinations(range(m), n))
        return sum(_vote_correct(samples, c) for c in combos) / len(combos)
    draws = (sorted(rng.sample(range(m), n)) for _ in range(subsets))
    return sum(_vote_correct(samples, d) for d in draws) / subsets


def sc_accuracy(
    samples_per_task: Sequence[Sequence[Sample]],
    n: int,
    *,
    subsets: int = DEFAULT_SUBSETS,
    seed: int = 0,
) -> float:
    """Self-consistency accuracy at N, averaged over tasks.

    Per task: the expected correctness of the majority vote (``majority_vote``) over a uniformly random
    N-subset of its samples, kept in sample-index order; a vote with no winner (no answer in the subset)
    counts as wrong. Computed EXACTLY, by enumerating every N-subset, when the task has at most
    ``subsets`` distinct N-subsets (always for N = 1 with up to ``subsets`` samples, and for N = all
    samples: one subset); otherwise it is the Monte Carlo mean over ``subsets`` subsets drawn without
    replacement from one ``random.Random(seed)`` shared by the tasks in order (deterministic).
    """
    if not samples_per_task:
        raise ValueError("sc_accuracy needs at least one task")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    _check_n(n, min(len(s) for s in samples_per_task))
    rng = random.Random(seed)
    return sum(_task_sc(s, n, subsets, rng) for s in samples_per_task) / len(samples_per_task)


def oracle_accuracy(counts: Sequence[tuple[int, int]], n: int) -> float:
    """Oracle accuracy at N: mean unbiased pass@N over tasks, from per-task (n_samples, n_correct)."""
    if not counts:
        raise ValueError("oracle_accuracy needs at least one task")
    return sum(pass_at_k(total, correct, n) for total, correct in counts) / len(counts)


def recovery_ratio(sc: float, greedy: float, oracle: float) -> float | None:
    """(SC - greedy) / (oracle - greedy): the share of the greedy -> oracle gap that voting recovers.

    The oracle is what a perfect verifier would pick among the same samples, so this is how much of the
    verifier's benefit voting gets without one. It is negative when voting does worse than greedy and may
    exceed 1 when the oracle is barely above greedy. None when the oracle is not above greedy (within
    1e-12): there is no gap to recover (at small N, sampled answers can be worse than greedy ones).
    """
    gap = oracle - greedy
    if gap <= 1e-12:
        return None
    return (sc - greedy) / gap


def _check_n(n: int, n_min: int) -> None:
    if not 1 <= n <= n_min:
        raise ValueError(f"N={n} is outside 1..{n_min} (the fewest samples any task has)")


def _check_shapes(
    correct: Sequence[Sequence[bool]],
    keys: Sequence[Sequence[str | None]] | None,
    greedy: Sequence[bool] | None,
) -> None:
    if not correct:
        raise ValueError("tts_table needs at least one task")
    if keys is not None and [len(k) for k in keys] != [len(c) for c in correct]:
        raise ValueError("keys and correct must have the same tasks and samples per task")
    if greedy is not None and len(greedy) != len(correct):
        raise ValueError(f"greedy has {len(greedy)} tasks, the samples have {len(correct)}")


def tts_table(
    correct: Sequence[Sequence[bool]],
    ns: Sequence[int],
    *,
    keys: Sequence[Sequence[str | None]] | None = None,
    greedy: Sequence[bool] | None = None,
    subsets: int = DEFAULT_SUBSETS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per N (sorted, duplicates dropped) of a test-time sampling sweep.

    ``correct[t][i]``: whether sample i of task t is correct; ``keys[t][i]``: its normalised final answer
    (None: none extracted; such a sample counts as wrong for the oracle too). ``keys=None`` (code
    benchmarks) omits SC. ``greedy[t]``: the greedy result of task t, if any. Every N must be at most
    the fewest samples any task has (ValueError otherwise).

    Each row is self-contained (greedy is repeated so a row can be written or plotted alone):
    ``n``, ``oracle`` (mean pass@N), ``sc`` (SC@N, see ``sc_accuracy``; None without keys),
    ``greedy`` (fraction of tasks greedy solved; None without greedy), ``greedy_ci`` (its Wilson 95%
    interval over tasks, or None) and ``recovery`` (``recovery_ratio``; None when SC or greedy is
    missing or undefined). All accuracies are fractions in [0, 1].
    """
    _check_shapes(correct, keys, greedy)
    n_min = min(len(c) for c in correct)
    wanted = sorted(set(ns))
    for n in wanted:
        _check_n(n, n_min)
    samples = None
    if keys is not None:
        samples = [list(zip(ks, cs, strict=True)) for ks, cs in zip(keys, correct, strict=True)]
        correct = [[c and k is not None for k, c in task] for task in samples]
    counts = [(len(cs), sum(map(bool, cs))) for cs in correct]
    solved = None if greedy is None else sum(map(bool, greedy))
    greedy_acc = None if solved is None else solved / len(correct)
    greedy_ci = None if solved is None else wilson_interval(solved, len(correct))
    rows = []
    for n in wanted:
        oracle = oracle_accuracy(counts, n)
        sc = None if samples is None else sc_accuracy(samples, n, subsets=subsets, seed=seed)
        recovery = None if sc is None or greedy_acc is None else recovery_ratio(sc, greedy_acc, oracle)
        row = {"n": n, "oracle": oracle, "sc": sc, "greedy": greedy_acc, "greedy_ci": greedy_ci}
        rows.append({**row, "recovery": recovery})
    return rows


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of ``tts_table`` as a Markdown table (N | oracle pass@N | SC@N | recovery), in percent.

    When the rows carry a greedy accuracy, a line under the table gives it with its Wilson 95% interval.
    """
    lines = ["| N | oracle pass@N | SC@N | recovery |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['n']} | {_pct(r['oracle'])} | {_pct(r['sc'])} | {_pct(r['recovery'])} |" for r in rows]
    if rows and rows[0].get("greedy") is not None:
        line = f"\nGreedy: {_pct(rows[0]['greedy'])}"
        if rows[0].get("greedy_ci") is not None:
            lo, hi = rows[0]["greedy_ci"]
            line += f" (95% Wilson interval {_pct(lo)} to {_pct(hi)})"
        lines.append(line)
    return "\n".join(lines)


def plot_tts(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    title: str,
    greedy: float | None = None,
) -> Path:
    """Plot accuracy (%) against N (log2 axis, ticks at the Ns) and save it as a PNG at ``path``.

    Lines: oracle pass@N and, when the rows have it, SC@N; a dashed horizontal line at the greedy
    accuracy (``greedy`` as a fraction, else the rows' own). Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    greedy = rows[0].get("greedy") if greedy is None and rows else greedy
    ns = [r["n"] for r in rows]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(ns, [100 * r["oracle"] for r in rows], marker="o", label="oracle pass@N")
    if rows and all(r.get("sc") is not None for r in rows):
        ax.plot(ns, [100 * r["sc"] for r in rows], marker="s", label="SC@N (majority vote)")
    if greedy is not None:
        ax.axhline(100 * greedy, linestyle="--", color="grey", label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    top = max([100 * r["oracle"] for r in rows] + [100 * (greedy or 0.0)], default=0.0)
    ax.set_ylim(0, min(100.0, max(10.0, 1.15 * top)))
    ax.set_xlabel("N (samples per task)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _per_task(samples_file: Path) -> dict[str, list[dict[str, Any]]]:
    """The scored samples of an eval, grouped by task in file order, each task's in sample-index order."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    with samples_file.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            tasks.setdefault(rec["task_id"], []).append(rec)
    for recs in tasks.values():
        recs.sort(key=lambda r: r.get("index", 0))
    return tasks


def check_sweep(ns: Sequence[int], temperature: float) -> None:
    """A ValueError (one line) unless ``ns`` are sample counts >= 1 and ``temperature`` samples."""
    if not ns or min(ns) < 1:
        raise ValueError("--n needs sample counts of at least 1, e.g. 1,2,4,8")
    if temperature <= 0:
        raise ValueError("a sweep samples: set a temperature above 0")


def sweep(
    bench: str,
    engine: Engine,
    ns: Sequence[int],
    *,
    out_dir: str | os.PathLike[str],
    fmt: str = "auto",
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_new_tokens: int = 768,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    pool: Pool | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    meta: dict[str, Any] | None = None,
    label: str = "",
) -> dict[str, Any]:
    """A test-time sampling sweep of ``engine`` on ``bench``: ``out_dir/greedy`` (one greedy sample per
    task) and ``out_dir/sampled`` (max(ns) samples per task at ``temperature``) are ordinary eval folders;
    the table over ``ns`` goes to ``out_dir/tts.json``, ``tts.md`` and ``tts.png`` (titled with ``label``,
    e.g. the model's name). Returns tts.json's content. Code benchmarks get oracle pass@N only (no answers
    to vote on)."""
    from tinyforge.evaluate.run import eval_pool, evaluate

    check_sweep(ns, temperature)
    b = get_benchmark(bench)
    out = Path(out_dir)
    own_pool = pool is None
    pool = pool or eval_pool(workers)
    common: dict[str, Any] = dict(
        limit=limit, cache_dir=cache_dir, data_dir=data_dir, pool=pool, progress=progress, meta=meta
    )
    try:
        greedy = evaluate(
            b.name, engine, out_dir=out / "greedy", fmt=fmt,
            params=SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed), **common,
        )  # fmt: skip
        evaluate(
            b.name, engine, out_dir=out / "sampled", fmt=greedy["format"],
            params=SamplingParams(
                n=max(ns), temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
            ),
            **common,
        )  # fmt: skip
    finally:
        if own_pool:
            pool.close()
    return tabulate(out, ns, seed=seed, label=label, meta={"limit": limit, **(meta or {})})


def tabulate(
    out_dir: str | os.PathLike[str],
    ns: Sequence[int],
    *,
    seed: int = 0,
    label: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep's table from its two eval folders (``out_dir/greedy``, ``out_dir/sampled``), written to
    ``out_dir/tts.json``, ``tts.md`` and ``tts.png``; returns tts.json's content. Rerunnable on a copied
    run folder (no model needed)."""
    out = Path(out_dir)
    greedy = json.loads((out / "greedy" / "result.json").read_text())
    sampled = json.loads((out / "sampled" / "result.json").read_text())
    b = get_benchmark(sampled["bench"])
    temperature = sampled["sampling"]["temperature"]
    drawn = _per_task(out / "sampled" / "samples.jsonl")
    first = {tid: recs[0]["passed"] for tid, recs in _per_task(out / "greedy" / "samples.jsonl").items()}
    ids = list(drawn)
    math_bench = b.kind == "math"
    rows = tts_table(
        [[r["passed"] for r in drawn[t]] for t in ids],
        ns,
        keys=[[r.get("answer_key") for r in drawn[t]] for t in ids] if math_bench else None,
        greedy=[first.get(t, False) for t in ids],
        seed=seed,
    )
    result = {
        "bench": b.name,
        "format": greedy["format"],
        "model": sampled["model"],
        "tasks": len(ids),
        "sampling": sampled["sampling"],
        "ns": sorted(set(ns)),
        "greedy_pass@1": greedy["pass@1"],
        "rows": rows,
        "sc_tie_rule": "most frequent answer; ties go to the answer of the earliest sample"
        if math_bench
        else None,
        "sc_subsets": f"exact where <= {DEFAULT_SUBSETS} subsets, else {DEFAULT_SUBSETS} random subsets (seed {seed})",
        "wall_s": {"greedy": greedy["wall_s"], "sampled": sampled["wall_s"]},
        **(meta or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tts.json").write_text(json.dumps(result, indent=2) + "\n")
    title = ", ".join(x for x in (b.name, label, f"T={temperature}") if x)
    (out / "tts.md").write_text(f"# Test-time sampling: {title}\n\n{format_table(rows)}\n")
    plot_tts(rows, out / "tts.png", title=title)
    return result
