"""Math answer grading: extract the final answer from a model's text and check it against the accepted
answers with math-verify, inside the sandbox.

Why the sandbox: math-verify turns answer text into sympy objects, and its plain-expression extraction
goes through sympy's ``parse_expr``, which calls ``eval``: ``parse("\\boxed{(lambda: 7)()}")`` returns 7.
Grading model text in-process would run model-written Python outside the sandbox, so ``MathGrader``
sends each (gold answers, text) pair to a sandbox worker as an I/O job whose program is ``GRADER`` below;
only plain data (status, extracted answer, vote key) comes back. The worker's zygote imports the sympy
stack once (``IOJob.preload``), so a grade costs a fork, not a sympy import.

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works on a main thread and would
cancel the sandbox's per-input timer; they are turned off (``parsing_timeout=None``,
``timeout_seconds=None``) and the sandbox's per-input timer (``setitimer`` on the job's main thread)
bounds the whole grade instead, whatever threads the host uses.

Gold answers are wrapped as ``$...$`` so that they parse as LaTeX, and come first in ``verify`` (it is
not symmetric). A gold answer that does not parse is an ``error``, never a silent string comparison.
No fallback when the symbolic layer is missing: the first grade of a ``MathGrader`` checks known cases
(1/2 == 0.5, 4 != 4*sqrt(2)) and raises ``MathGradeError`` naming the fix when they do not come out.

An escaped dollar (``\\$18``) is currency, never a math delimiter: it is dropped before extraction
(math-verify finds no answer in "The answer is \\$18." otherwise).

The vote key (for self-consistency) is the parsed answer printed by sympy, numbers made exact rationals
first (``sympy.nsimplify(rational=True)``), so ``0.5``, ``0.50`` and ``\\frac{1}{2}`` share the key
``1/2``. Answers equal only after simplification (``2\\sqrt{2}`` vs ``\\sqrt{8}``) may keep distinct
keys and then split a vote.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from tinyforge.sandbox import IOJob, IOResult, Pool, then

__all__ = ["GRADER", "Grade", "MathGradeError", "MathGrader", "gold_latex"]

STATUSES = ("correct", "wrong", "no_answer", "timeout", "error")
FIX = "install math-verify with its LaTeX parser: pip install 'math-verify[antlr4_11_0]==0.9.0'"

# The program each grading job runs in the sandbox. Trusted code; the model's text is only its input.
GRADER = r"""
import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_GOLD = [LatexExtractionConfig(), ExprExtractionConfig()]


def _key(value):
    if isinstance(value, sympy.Basic) and value.is_number:
        try:
            value = sympy.nsimplify(value, rational=True)
        except (TypeError, ValueError, AttributeError):
            pass
    return str(value).strip()


def grade(golds, text):
    gold = [parse(g, extraction_config=_GOLD, parsing_timeout=None) for g in golds]
    if not all(gold):
        bad = [g for g, p in zip(golds, gold) if not p]
        return {"status": "error", "detail": "gold answer does not parse: " + repr(bad[0])[:200]}
    pred = parse(text.replace("\\$", ""), parsing_timeout=None)
    if not pred:
        return {"status": "no_answer"}
    ok = any(verify(g, pred, timeout_seconds=None) for g in gold)
    answer = pred[-1] if isinstance(pred[-1], str) else str(pred[-1])
    return {"status": "correct" if ok else "wrong", "answer": answer[:500], "key": _key(pred[0])[:500]}
"""
PRELOAD = ("sympy", "latex2sympy2_extended", "math_verify")

# (gold, text, expected status): what a working symbolic layer must get right before anything is graded.
SELF_CHECK = (
    ("\\frac{1}{2}", "So the answer is $\\boxed{0.5}$.", "correct"),
    ("4", "The answer is $\\boxed{4\\sqrt{2}}$.", "wrong"),
)


class MathGradeError(Exception):
    """The symbolic layer (math-verify, sympy, the ANTLR LaTeX parser) is missing or broken: one line."""


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer: ``status`` is one of ``STATUSES``; ``answer`` the extracted final answer
    (None when there is none); ``key`` its normalised form for majority votes."""

    status: str
    answer: str | None = None
    key: str | None = None
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"


def gold_latex(answer: str) -> str:
    """A benchmark's answer as math-verify should read it: LaTeX in ``$...$`` (plain numbers included)."""
    a = answer.strip()
    return a if a.startswith("$") and a.endswith("$") and len(a) > 1 else f"${a}$"


class MathGrader:
    """Grades answers in ``pool``'s sandbox workers; thread-safe; ``submit`` returns at once.

    ``timeout`` bounds one grade (extraction and every comparison) in seconds of wall clock."""

    def __init__(self, pool: Pool, timeout: float = 10.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self._checked = False
        self._lock = threading.Lock()

    def _job(self, golds: Sequence[str], text: str) -> IOJob:
        return IOJob(
            GRADER,
            "grade",
            [[[gold_latex(g) for g in golds], text]],
            [self.timeout],
            timeout=self.timeout + 30.0,  # the first job of a worker also imports sympy in its zygote
            preload=PRELOAD,
        )

    def _check(self) -> None:
        with self._lock:
            if self._checked:
                return
            for gold, text, want in SELF_CHECK:
                got = _grade_of(self.pool.run(self._job([gold], text)))
                if got.status != want:
                    why = got.detail or f"{gold!r} vs {text!r} graded {got.status}, expected {want}"
                    raise MathGradeError(f"math grading does not work here ({why}); {FIX}")
            self._checked = True

    def submit(self, golds: Sequence[str], text: str) -> Future[Grade]:
        """The grade of ``text`` against the accepted answers ``golds`` (plain or LaTeX strings)."""
        if not golds:
            raise ValueError("no accepted answers to grade against")
        self._check()
        return then(self.pool.submit(self._job(golds, text)), _grade_of)

    def grade(self, golds: Sequence[str], text: str) -> Grade:
        return self.submit(golds, text).result()


def _grade_of(r: object) -> Grade:
    assert isinstance(r, IOResult)
    if r.statuses and r.statuses[0] == "ok" and isinstance(r.outputs[0], dict):
        out = r.outputs[0]
        status = out.get("status")
        if status in STATUSES:
            answer, key = out.get("answer"), out.get("key")
            return Grade(
                status,
                answer if isinstance(answer, str) else None,
                key if isinstance(key, str) else None,
                str(out.get("detail", "")),
            )
        return Grade("error", detail=f"grader returned {out!r}"[:300])
    if r.statuses:
        st = r.statuses[0]
        return Grade(
            "timeout" if st == "timeout" else "error", detail=(r.details[0] if r.details else st)[:300]
        )
    return Grade("timeout" if r.status == "timeout" else "error", detail=(r.detail or r.status)[:300])
