"""The control: mechanically corrupted MBPP-train programs as repair pairs, on the real MBPP file and sandbox."""

from __future__ import annotations

import ast
import random
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tinyforge.data import CodeTask, load_benchmark
from tinyforge.mine.control import MUTATIONS, control_pairs, corrupt
from tinyforge.mine.pairs import Pair, pair_stats
from tinyforge.mine.seeded import seeded_problems
from tinyforge.mine.solve import FAILURE_CLASSES
from tinyforge.sandbox import SandboxPool, TestJob

N_TASKS = 40


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def tasks() -> list[CodeTask]:
    return load_benchmark("mbpp-train")[:N_TASKS]


@pytest.fixture(scope="module")
def run(tasks: list[CodeTask], pool: SandboxPool) -> tuple[list[Pair], dict[str, Any]]:
    return control_pairs(tasks, pool, n_pairs=30, seed=0, timeout=3.0)


def _dump(code: str) -> str:
    with warnings.catch_warnings():  # old MBPP code has invalid escapes like "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.dump(ast.parse(code))


# One site (or more) for every mutation kind, with comments and odd layout that a splice must keep.
PROGRAM = '''\
def f(xs, k):  # keep me
    """Docstring: "text" 3 + 4 not touched."""
    total = 0
    for i in range(len(xs)):
        if xs[i] > k and not xs[i] == 7:   # odd   spacing
            total += xs[i] * 2
    flag = True
    name = "abc".upper()
    if k < 0:
        return name
    return total if flag else max(xs[:k])
'''


def test_every_kind_mutates_one_site() -> None:
    original = _dump(PROGRAM)
    for kind in MUTATIONS:
        got = corrupt(PROGRAM, random.Random(1), kinds=[kind])
        assert got, kind
        for k, mutant in got:
            assert k == kind and _dump(mutant) != original
            old, new = PROGRAM.splitlines(), mutant.splitlines()
            assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1, mutant
            assert "# keep me" in mutant and '"""Docstring: "text" 3 + 4 not touched."""' in mutant
        assert len({_dump(m) for _, m in got}) == len(got)  # no two candidates the same program


def test_mutations_on_real_canonicals(tasks: list[CodeTask]) -> None:
    seen = set()
    for t in tasks:
        original = _dump(t.canonical_solution)
        got = corrupt(t.canonical_solution, random.Random(0))
        assert got == corrupt(t.canonical_solution, random.Random(0))  # deterministic for the rng
        assert corrupt(t.canonical_solution, random.Random(0), limit=3) == got[:3]
        for kind, mutant in got:
            assert _dump(mutant) != original, (t.task_id, kind)
            seen.add(kind)
    assert seen >= set(MUTATIONS) - {"drop_negation"}  # `not` is rare in MBPP; PROGRAM covers it
    with pytest.raises(ValueError, match="unknown mutation"):
        corrupt(PROGRAM, random.Random(0), kinds=["nope"])


def test_control_pairs_fail_and_fixed_passes(
    run: tuple[list[Pair], dict[str, Any]], tasks: list[CodeTask], pool: SandboxPool
) -> None:
    pairs, stats = run
    assert len(pairs) == 30 == stats["pairs"]
    problems = {p.meta["task_id"]: p for p in seeded_problems(tasks, "x")}
    jobs = []
    for pair in pairs:
        prob = problems[pair.meta["task_id"]]
        assert pair.problem_id == prob.id and pair.entry_point == prob.entry_point
        assert pair.problem == prob.solver_prompt() and pair.fixed == prob.solution
        assert pair.source == "control:mbpp-train" and pair.meta["seed"] == 0
        assert pair.meta["mutation"] in MUTATIONS and pair.fclass in FAILURE_CLASSES and pair.error
        assert _dump(pair.broken) != _dump(pair.fixed)
        assert Pair.from_record(pair.record()) == pair and Pair.from_record(pair.record()).meta == pair.meta
        jobs += [TestJob(pair.broken, prob.test_code(), 3.0), TestJob(pair.fixed, prob.test_code(), 3.0)]
    verdicts = pool.map(jobs)
    assert not any(v.passed for v in verdicts[0::2])  # every broken program fails ...
    assert all(v.passed for v in verdicts[1::2])  # ... and its fixed program passes
    assert len({p.meta["task_id"] for p in pairs}) == 30  # per_task=1


def test_control_stats(run: tuple[list[Pair], dict[str, Any]]) -> None:
    pairs, stats = run
    by = stats["by_mutation"]
    assert set(by) == set(MUTATIONS)
    assert stats["tried"] == sum(v["tried"] for v in by.values()) >= len(pairs)
    assert stats["equivalent"] == sum(v["equivalent"] for v in by.values())
    assert sum(v["pairs"] for v in by.values()) == len(pairs)
    assert 0 <= stats["equivalent_rate"] < 0.5 and stats["unverified"] == []
    assert stats["tasks_used"] == 30 and stats["tasks"] == N_TASKS
    mix = pair_stats(pairs)
    assert mix["pairs"] == 30 and mix["by_source"] == {"control:mbpp-train": 30}
    assert mix["by_class"]["assertion"]["n"] > 0 and mix["format_only"] == 0
    assert mix["by_class"]["syntax"]["n"] == 0  # mutants always parse


def test_control_deterministic(
    run: tuple[list[Pair], dict[str, Any]], tasks: list[CodeTask], pool: SandboxPool
) -> None:
    pairs, stats = run
    again, stats2 = control_pairs(tasks, pool, n_pairs=30, seed=0, timeout=3.0)
    assert [p.record() for p in again] == [p.record() for p in pairs] and stats2 == stats
    fewer, _ = control_pairs(tasks, pool, n_pairs=8, seed=0, timeout=3.0)
    assert [p.record() for p in fewer] == [p.record() for p in pairs[:8]]  # the cap cuts, never reorders
    other, _ = control_pairs(tasks, pool, n_pairs=8, seed=1, timeout=3.0)
    assert [p.meta["task_id"] for p in other] != [p.meta["task_id"] for p in fewer]
    assert control_pairs(tasks, pool, n_pairs=0)[0] == []


def test_control_per_task(tasks: list[CodeTask], pool: SandboxPool) -> None:
    calls: list[int] = []
    pairs, stats = control_pairs(tasks[:8], pool, per_task=2, seed=3, timeout=3.0, progress=calls.append)
    assert sum(calls) == stats["tried"] + stats["tasks_tried"]  # every mutant plus each canonical program
    per: dict[str, list[Pair]] = {}
    for p in pairs:
        per.setdefault(p.meta["task_id"], []).append(p)
    assert all(len({p.broken for p in v}) == len(v) for v in per.values())
    ids = [t.task_id for t in tasks[:8] if t.task_id not in stats["skipped"]]
    for i in ids:  # two pairs each, fewer only where every candidate mutant was tried
        assert len(per.get(i, [])) == 2 or (i in stats["exhausted"] and len(per.get(i, [])) < 2)
    assert len(pairs) >= 8


def test_control_skips_wrong_canonical(pool: SandboxPool) -> None:
    wrong = CodeTask(
        "7", "mbpp-train", "", "f", "def f(x):\n    return x + 1\n", "assert f(1) == 3\n",
        extra={"text": "Add two.", "test_list": ["assert f(1) == 3"], "test_setup_code": ""},
    )  # fmt: skip
    pairs, stats = control_pairs([wrong], pool, timeout=3.0)
    assert pairs == [] and stats["unverified"] == ["7"]
