"""Seeded problems: benchmark tasks (MBPP's train split) turned into ``Problem`` records, for the variant of the
recipe that solves given problems instead of writing its own, and for the control (``mine.control``).

``seed_problem(task, source)`` maps one ``CodeTask``: the entry point and its ``def`` line(s) from the
canonical code, the task's text as the docstring, its asserts (one per item, as ``ast.unparse`` writes them),
the canonical program as the solution and its top-level imports. A task that cannot be said that way is a
``Skipped`` with a reason:

* ``no_function``: the entry point is not a top-level function of the canonical code (a class, or missing);
* ``not_assert``: a test item that is not a single ``assert`` statement;
* ``test_not_calling``: an assert that does not call the entry point;
* ``test_setup``: the task's setup code does more than import (MBPP 927 builds trees from the program's own
  class): a solver could not see it, and ``Problem`` has no place for it;
* ``needs_context``: the asserts use a name only the canonical program defines (MBPP 601 builds ``Pair``
  objects from the program's own class), so they would test code the solver was never shown.

Setup code made of imports only goes into the problem's imports and, where the canonical code lacks them,
in front of its solution, so the tests find them.
"""

from __future__ import annotations

import ast
import builtins
import io
import logging
import tokenize
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tinyforge.data.code import CodeTask
from tinyforge.mine.problems import Problem

__all__ = ["SkipReason", "Skipped", "seed_problem", "seeded_problems"]

log = logging.getLogger(__name__)

SkipReason = Literal["no_function", "not_assert", "test_not_calling", "test_setup", "needs_context"]


@dataclass(frozen=True)
class Skipped:
    """A task that could not become a problem, and why."""

    task_id: str
    reason: SkipReason
    detail: str = ""


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # old MBPP code has invalid escapes like "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def _signature(code: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The source of ``fn``'s decorators and ``def`` line(s) up to the header's colon: MBPP often writes
    the body on the same line (``def f(x): return x``), so this cuts at the colon, not at a line."""
    lines = code.splitlines(keepends=True)
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    body = fn.body[0]
    # Columns are UTF-8 byte offsets.
    last = lines[body.lineno - 1].encode()[: body.col_offset].decode()
    head = "".join(lines[first - 1 : body.lineno - 1]) + last
    colon = None
    for tok in tokenize.generate_tokens(io.StringIO(head).readline):
        if tok.type == tokenize.OP and tok.string == ":":
            colon = tok.end  # the header's colon is the last one: only comments and blanks follow it
    if colon is None:  # pragma: no cover - a parsed def always has its colon
        raise ValueError(f"no colon in the header of {fn.name}")
    head_lines = head.splitlines(keepends=True)
    row, col = colon
    return ("".join(head_lines[: row - 1]) + head_lines[row - 1][:col]).rstrip()


def _imports(tree: ast.Module) -> list[ast.stmt]:
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _bound_names(tree: ast.Module) -> set[str]:
    """Top-level names the program binds (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
        else:
            for t in ast.walk(n):
                if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
                    names.add(t.id)
    return names


def _loaded_names(node: ast.AST) -> set[str]:
    """Free names an expression reads (comprehension variables and lambda arguments left out)."""
    nodes = list(ast.walk(node))
    stored = {t.id for t in nodes if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    args = {t.arg for t in nodes if isinstance(t, ast.arg)}  # lambda arguments
    return {t.id for t in nodes if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Load)} - stored - args


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def seed_problem(task: CodeTask, source: str) -> Problem | Skipped:
    """One benchmark task as a ``Problem`` (``meta``: ``source`` and the task id), or why it cannot be one."""
    code = task.canonical_solution
    tree = _parse(code)
    fn = next(
        (
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == task.entry_point
        ),
        None,
    )
    if fn is None:
        return Skipped(task.task_id, "no_function", f"{task.entry_point} is not a top-level function")
    raw_tests = task.extra.get("test_list")
    if raw_tests is None:  # a loader without MBPP's fields: the test code's top-level asserts
        raw_tests = [ast.unparse(n) for n in _parse(task.test).body if isinstance(n, ast.Assert)]
    tests: list[str] = []
    for raw in raw_tests:
        body = _parse(raw.strip()).body
        if len(body) != 1 or not isinstance(body[0], ast.Assert):
            return Skipped(task.task_id, "not_assert", raw.strip())
        if not _calls(body[0].test, task.entry_point):
            return Skipped(task.task_id, "test_not_calling", raw.strip())
        tests.append(ast.unparse(body[0]))
    setup = task.extra.get("test_setup_code") or "\n".join(task.extra.get("test_imports") or [])
    setup_tree = _parse(setup.replace("\r\n", "\n"))
    if any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in setup_tree.body):
        return Skipped(task.task_id, "test_setup", " ".join(setup.split())[:200])
    # Names the tests read that only the program defines (other than the function under test and the
    # imports the solver is shown) would test code the solver never saw.
    own = _bound_names(tree) - {task.entry_point} - _bound_names(ast.Module(_imports(tree), []))
    used = set().union(*(_loaded_names(ast.parse(t)) for t in tests)) - set(dir(builtins))
    if hidden := sorted(used & own):
        return Skipped(task.task_id, "needs_context", ", ".join(hidden))
    have = {ast.unparse(n) for n in _imports(tree)}
    extra = [ast.unparse(n) for n in setup_tree.body if ast.unparse(n) not in have]
    solution = "".join(f"{s}\n" for s in extra) + code
    imports = [*extra, *(ast.unparse(n) for n in _imports(tree))]
    return Problem(
        entry_point=task.entry_point,
        signature=_signature(code, fn),
        docstring=str(task.extra.get("text") or task.extra.get("prompt") or task.prompt).strip(),
        tests=tuple(tests),
        solution=solution,
        imports="\n".join(imports),
        meta={"source": source, "task_id": task.task_id},
    )


def seeded_problems(
    tasks: Sequence[CodeTask], source: str, *, skipped: list[Skipped] | None = None
) -> list[Problem]:
    """The tasks that can be problems, in order; the others are appended to ``skipped`` (when given) and
    counted in the log."""
    out: list[Problem] = []
    dropped: list[Skipped] = []
    for t in tasks:
        p = seed_problem(t, source)
        if isinstance(p, Problem):
            out.append(p)
        else:
            dropped.append(p)
    if dropped:
        log.info(
            "%d of %d %s tasks skipped: %s",
            len(dropped),
            len(tasks),
            source,
            ", ".join(f"{s.task_id} ({s.reason})" for s in dropped),
        )
    if skipped is not None:
        skipped.extend(dropped)
    return out
