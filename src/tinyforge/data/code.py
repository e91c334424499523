"""The record every code benchmark loads into, the benchmark spec, and small helpers shared by loaders."""

from __future__ import annotations

import ast
import gzip
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Benchmark", "CodeTask", "docstring_prompt", "numbered_jsonl", "read_jsonl", "task_number"]


@dataclass(frozen=True)
class CodeTask:
    """One code-generation task, normalised across benchmarks.

    ``canonical_solution`` is a whole program defining ``entry_point``; ``test`` is code that raises
    if it fails when run after a solution program. ``base_inputs``/``plus_inputs`` are lists of argument
    lists (EvalPlus differential testing, compared with tolerance ``atol``); ``extra`` keeps the file's
    other fields (original ids, contract, instruct_prompt, MBPP text, ...).
    """

    task_id: str
    bench: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    base_inputs: list[Any] | None = None
    plus_inputs: list[Any] | None = None
    atol: float = 0.0
    libs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: ``load`` turns the verified ``files`` (paths, in order) into tasks
    (``CodeTask`` for ``kind == "code"``, ``MathTask`` for ``kind == "math"``)."""

    name: str
    description: str
    files: tuple[str, ...]
    load: Callable[..., list[CodeTask]]
    id_prefix: str  # accepted in task ids, e.g. "HumanEval" in "HumanEval/0" or "HumanEval_0"
    id_format: str  # how ids are written, e.g. "HumanEval/{n}" or "{n}"; "" = the file's own string ids
    aliases: tuple[str, ...] = ()
    kind: str = "code"  # "code": CodeTask records scored by running tests; "math": MathTask, graded answers


def numbered_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file; a line that
    is not JSON is a one-line ``ValueError`` naming the file and line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` file, skipping blank lines."""
    return (rec for _, rec in numbered_jsonl(path))


def task_number(raw: str | int) -> int:
    """The integer at the end of an id like ``HumanEval/3``, ``HumanEval_3``, ``Mbpp/3``, ``3`` or 3."""
    m = re.fullmatch(r"(?:.*[/_])?(\d+)", str(raw).strip())
    if not m:
        raise ValueError(f"not a task id: {raw!r}")
    return int(m.group(1))


def docstring_prompt(text: str, example_test: str) -> str:
    """MBPP task shown as a module docstring with one example assert (the EvalPlus MBPP+ prompt format)."""
    return f'"""\n{text.strip()}\n{example_test.strip()}\n"""\n'


def called_definition(code: str, tests: list[str]) -> str:
    """The top-level function (or class) of ``code`` that ``tests`` call: MBPP has no entry_point field."""
    with warnings.catch_warnings():  # old MBPP code has invalid escape sequences like "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(code)
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    text = "\n".join(tests)
    called = {n: m.start() for n in names if (m := re.search(rf"\b{re.escape(n)}\s*\(", text))}
    if not called:
        raise ValueError(f"none of {names} is called by the tests")
    return min(called, key=called.__getitem__)
