"""Diverse solving: k attempts per problem at temperature, each checked against the problem's tests in the
sandbox.

The solver is prompted exactly as for a benchmark task (``Problem.as_task`` + ``generate.prompts``): the
raw format continues the solver's view (tests as comments, signature, docstring) with a body, the chat
format asks for a script in a code block. Answers become programs through the one sanitizer
(``prompts.to_program``). Each attempt records its verdict and, when it fails, its failure class
(``classify``), which the miner and ``tinyforge pairs stats`` report.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tinyforge.generate.base import Completion, Engine, GenerationRequest, SamplingParams
from tinyforge.generate.prompts import code_prompt, stops, to_program
from tinyforge.generate.sanitize import is_stub
from tinyforge.mine.problems import Problem
from tinyforge.sandbox import Pool, TestJob, Verdict, then

__all__ = [
    "FAILURE_CLASSES",
    "FORMAT_ONLY",
    "Attempt",
    "FailureClass",
    "classify",
    "make_attempt",
    "solve",
]

SCHEMA_VERSION = 1

FailureClass = Literal["syntax", "format", "stub", "name", "type", "assertion", "timeout", "other"]
FAILURE_CLASSES: tuple[str, ...] = (
    "syntax",
    "format",
    "stub",
    "name",
    "type",
    "assertion",
    "timeout",
    "other",
)
# A broken attempt of this class has no code to repair (empty answer, chat residue, no function): a pair made
# from it teaches output format, not programming.
FORMAT_ONLY: frozenset[str] = frozenset({"format"})

_NAME_ERRORS = ("NameError", "UnboundLocalError", "ImportError", "ModuleNotFoundError")


@dataclass(frozen=True)
class Attempt:
    """One solution attempt: what the model wrote (``output``), the program taken from it, the verdict."""

    problem_id: str
    index: int  # sample index of this problem's attempts
    output: str
    program: str
    status: str  # the sandbox verdict's status ("passed", "failed", "error", "timeout", ...)
    detail: str
    finish_reason: str
    completion_tokens: int
    fclass: str | None = None  # failure class (FAILURE_CLASSES); None for a passing attempt

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Attempt:
        if rec.get("v") != SCHEMA_VERSION:
            raise ValueError(f"attempt record schema {rec.get('v')!r}, this tinyforge reads {SCHEMA_VERSION}")
        return cls(**{k: v for k, v in rec.items() if k != "v"})


def _entry_def(program: str, entry_point: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return next((d for d in defs if d.name == entry_point), None)


def classify(output: str, program: str, entry_point: str, verdict: Verdict) -> FailureClass | None:
    """The failure class of a failing attempt (None when it passed). In order: ``format`` (empty answer,
    or no definition of the function in it: nothing to repair), ``syntax`` (the program does not
    compile), ``stub`` (the function's body is only ``pass``, ``...``, a docstring or ``raise
    NotImplementedError``), then by the verdict: ``timeout``, ``assertion`` (a test's assert failed),
    ``name`` (NameError, UnboundLocalError, ImportError), ``type`` (TypeError), ``other``."""
    if verdict.passed:
        return None
    if not output.strip() or not program.strip():
        return "format"
    try:
        ast.parse(program)
    except SyntaxError:
        return "syntax"
    fn = _entry_def(program, entry_point)
    if fn is None:
        return "format"
    if is_stub(fn):
        return "stub"
    if verdict.status == "timeout":
        return "timeout"
    if verdict.status == "failed":
        return "assertion"
    detail = verdict.detail
    if detail.startswith(("SyntaxError", "IndentationError")):
        return "syntax"
    if detail.startswith(_NAME_ERRORS):
        return "name"
    if detail.startswith("TypeError"):
        return "type"
    return "other"


def solve_prompt(problem: Problem, fmt: str) -> str | list[dict[str, str]]:
    """The prompt asking for ``problem``'s solution in format ``fmt`` (raw, chat, chat+prefix)."""
    return code_prompt(problem.as_task(), fmt)


def make_attempt(
    problem: Problem, fmt: str, index: int, completion: Completion, verdict: Verdict, program: str
) -> Attempt:
    return Attempt(
        problem_id=problem.id,
        index=index,
        output=completion.text,
        program=program,
        status=verdict.status,
        detail=verdict.detail,
        finish_reason=completion.finish_reason,
        completion_tokens=completion.completion_tokens,
        fclass=classify(completion.text, program, problem.entry_point, verdict),
    )


def solve(
    problems: Sequence[Problem],
    engine: Engine,
    params: SamplingParams,
    pool: Pool,
    fmt: str,
    *,
    timeout: float = 5.0,
    done: Iterable[tuple[str, int]] = (),
    progress: Callable[[int], None] | None = None,
) -> Iterator[Attempt]:
    """``params.n`` attempts at each problem, each verified in the sandbox while the engine keeps writing.
    Yields attempts as their verdicts arrive (any order). ``done``: ``(problem id, index)`` pairs to skip
    (attempts a resumed run already has). They are still asked of the engine, which with a generation
    cache serves them from it: the engine then batches the rest as in a run that was never interrupted.
    A program is run once per problem: attempts with the same program share its verdict."""
    params = params if params.stop else SamplingParams(**{**asdict(params), "stop": tuple(stops(fmt))})
    skip = set(done)
    work = [(p, i) for p in problems for i in range(params.n)]
    requests = [GenerationRequest(solve_prompt(p, fmt), i) for p, i in work]
    pending: list[Future[Attempt]] = []
    runs: dict[tuple[str, str], Future[Any]] = {}  # (problem, program) -> its run in the sandbox
    for pos, c in engine.run(requests, params):
        p, i = work[pos]
        if (p.id, i) in skip:
            continue
        program = to_program(p.as_task(), fmt, c.text)
        if (run := runs.get((p.id, program))) is None:
            run = runs[p.id, program] = pool.submit(TestJob(program, p.test_code(), timeout))
        pending.append(then(run, lambda v, p=p, i=i, c=c, prog=program: make_attempt(p, fmt, i, c, v, prog)))
        while pending and pending[0].done():
            yield _advance(pending.pop(0), progress)
    for f in pending:
        yield _advance(f, progress)


def _advance(f: Future[Attempt], progress: Callable[[int], None] | None) -> Attempt:
    a = f.result()
    if progress:
        progress(1)
    return a
