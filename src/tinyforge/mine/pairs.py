"""Mining (broken, fixed) pairs from attempts "at the edge": problems some attempts pass and some fail.

``mine_pairs(problem, attempts, mode)``:

* ``single``: one pair per at-edge problem, its first failing attempt and its first passing one;
* ``multi`` (the paper's N=8 at T=0.8 setting): up to ``max_pairs`` pairs, failing attempts that are near
  duplicates of an earlier one (token similarity of their code >= ``near``; names and numbers are kept,
  as two bugs often differ only there) removed, each
  paired with a passing attempt taken in turn from the distinct passing programs, so fixed targets differ
  where the model found several solutions.

All-pass and all-fail problems give nothing. A pair holds everything training needs, so it stands alone:
the solver's view of the problem (never its reference body), the broken program, its runtime error
(trimmed), the fixed program, the broken attempt's failure class, and where it came from (problem id,
model, seed, round, source). ``Pair.prompt(fmt)`` / ``Pair.target(fmt)`` are the training input and
target; ``pair_stats`` is the class mix ``tinyforge pairs stats`` prints, with the format-only share
(pairs whose broken side had no code to repair) said out loud.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tinyforge.data.code import numbered_jsonl
from tinyforge.generate.prompts import is_chat
from tinyforge.mine.problems import Problem, code_tokens, normalized_hash, similar
from tinyforge.mine.solve import FAILURE_CLASSES, FORMAT_ONLY, Attempt

__all__ = [
    "SCHEMA_VERSION",
    "Pair",
    "error_text",
    "mine_pairs",
    "pair_stats",
    "read_pairs",
    "select_pairs",
]

SCHEMA_VERSION = 1
ERROR_CHARS = 300  # runtime errors are trimmed to this many characters in the pair's input

Mode = Literal["single", "multi"]

REPAIR_INSTRUCTION = (
    "The Python function below fails its tests. Here is the problem, the failing attempt and the error it "
    "raised. Write a corrected, self-contained version in a markdown code block."
)


def error_text(status: str, detail: str, limit: int = ERROR_CHARS) -> str:
    """A failing verdict as the model is shown it: the exception line (an assertion failure names the
    assert), trimmed to ``limit`` characters."""
    if status == "failed":
        text = f"AssertionError: {detail.removeprefix('AssertionError').lstrip(': ') or 'a test failed'}"
    elif status == "timeout":
        text = f"Timeout: {detail or 'the tests did not finish in time'}"
    else:
        text = detail or status
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Pair:
    """One training pair. ``problem``: the solver's view (tests as comments, signature, docstring)."""

    problem_id: str
    entry_point: str
    problem: str
    broken: str
    error: str
    fixed: str
    fclass: str  # the broken attempt's failure class (tinyforge.mine.solve.FAILURE_CLASSES)
    source: str = "generated"  # "generated", "seeded:<bench>", "control:<bench>"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # model, seed, round, attempt indices

    @property
    def id(self) -> str:
        text = json.dumps([self.problem_id, self.broken, self.fixed])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def format_only(self) -> bool:
        return self.fclass in FORMAT_ONLY

    def prompt(self, fmt: str) -> str | list[dict[str, str]]:
        """The training input in prompt format ``fmt``: chat messages, or commented text for a base model."""
        if is_chat(fmt):
            content = (
                f"{REPAIR_INSTRUCTION}\n\nProblem:\n```python\n{self.problem.rstrip()}\n```\n\n"
                f"Failing attempt:\n```python\n{self.broken.rstrip()}\n```\n\nError: {self.error}\n"
            )
            return [{"role": "user", "content": content}]

        def comment(text: str) -> str:
            return "".join(f"# {line}".rstrip() + "\n" for line in text.rstrip().splitlines())

        return (
            "# Fix the function so that it passes its tests.\n# Problem:\n" + comment(self.problem)
            + "# Failing attempt:\n" + comment(self.broken or "(empty)")
            + f"# Error: {self.error}\n# Corrected program:\n"
        )  # fmt: skip

    def target(self, fmt: str) -> str:
        """The training target: the fixed program (in a code block for chat formats)."""
        code = self.fixed.rstrip() + "\n"
        return f"```python\n{code}```" if is_chat(fmt) else code

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "id": self.id, **asdict(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Pair:
        if rec.get("v") != SCHEMA_VERSION:
            raise ValueError(f"pair record schema {rec.get('v')!r}, this tinyforge reads {SCHEMA_VERSION}")
        return cls(**{k: v for k, v in rec.items() if k not in ("v", "id")})


def _distinct_failures(fails: Sequence[Attempt], near: float) -> list[Attempt]:
    kept: list[tuple[Attempt, list[str]]] = []
    for a in fails:
        toks = code_tokens(a.program or a.output, normalize=False)  # bugs differ in names and numbers
        if not any(similar(toks, t, near) for _, t in kept):
            kept.append((a, toks))
    return [a for a, _ in kept]


def _distinct_passes(passes: Sequence[Attempt]) -> list[Attempt]:
    seen: set[str] = set()
    out = []
    for a in passes:
        try:
            h = normalized_hash(a.program, ())
        except SyntaxError:  # cannot happen for a passing program; keep it rather than guess
            h = a.program
        if h not in seen:
            seen.add(h)
            out.append(a)
    return out


def mine_pairs(
    problem: Problem,
    attempts: Iterable[Attempt],
    mode: Mode = "multi",
    *,
    max_pairs: int = 4,
    near: float = 0.95,
    meta: dict[str, Any] | None = None,
) -> list[Pair]:
    """The (broken, fixed) pairs of one problem's attempts (see the module docstring); none unless the
    problem is at the edge. Attempts are taken in sample-index order, so the result does not depend on the
    order verdicts arrived in."""
    ordered = sorted(attempts, key=lambda a: a.index)
    fails = [a for a in ordered if not a.passed]
    passes = [a for a in ordered if a.passed]
    if not fails or not passes:
        return []
    if mode == "single":
        chosen, targets = fails[:1], passes[:1]
    elif mode == "multi":
        chosen, targets = _distinct_failures(fails, near)[:max_pairs], _distinct_passes(passes)
    else:
        raise ValueError(f"unknown mining mode {mode!r}; known: single, multi")
    view = problem.solver_prompt()
    return [
        Pair(
            problem_id=problem.id,
            entry_point=problem.entry_point,
            problem=view,
            broken=b.program,
            error=error_text(b.status, b.detail),
            fixed=f.program,
            fclass=b.fclass or "other",
            meta={**(meta or {}), "broken_index": b.index, "fixed_index": f.index},
        )
        for b, f in zip(chosen, (targets[j % len(targets)] for j in range(len(chosen))), strict=True)
    ]


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Pairs from a JSONL file; a bad line is a one-line ``ValueError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pairs file not found: {p}")
    out = []
    for i, rec in numbered_jsonl(p):
        try:
            out.append(Pair.from_record(rec))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{p}:{i}: not a pair record ({e})") from None
    return out


def select_pairs(pairs: Iterable[Pair], exclude: Iterable[str] = FORMAT_ONLY) -> list[Pair]:
    """The pairs to train on: those whose failure class is not in ``exclude`` (default: format-only)."""
    drop = set(exclude)
    unknown = drop - set(FAILURE_CLASSES)
    if unknown:
        raise ValueError(f"unknown failure class(es) {sorted(unknown)}; known: {', '.join(FAILURE_CLASSES)}")
    return [p for p in pairs if p.fclass not in drop]


def pair_stats(pairs: Sequence[Pair]) -> dict[str, Any]:
    """The class mix of ``pairs``: count and share per failure class (every class listed, zeros included),
    the format-only share, and how many problems and sources they come from."""
    n = len(pairs)
    counts = Counter(p.fclass for p in pairs)
    return {
        "pairs": n,
        "problems": len({p.problem_id for p in pairs}),
        "by_class": {
            c: {"n": counts.get(c, 0), "share": counts.get(c, 0) / n if n else 0.0} for c in FAILURE_CLASSES
        },
        "format_only": sum(p.format_only for p in pairs),
        "format_only_share": sum(p.format_only for p in pairs) / n if n else 0.0,
        "by_source": dict(Counter(p.source for p in pairs)),
    }
