"""The control: (broken, fixed) pairs made by corrupting correct programs mechanically, in exactly the recipe's
pair format, so they can be trained and evaluated like mined pairs. If training on them lifts the model as
much as the recipe's pairs do, the lift comes from repair-shaped data, not from the model's own mistakes.

A mutation changes one site of a program's functions (never module-level code, docstrings, annotations,
decorators or f-strings):

* ``arith_swap``: an arithmetic or bitwise operator for a sibling (``+``/``-``, ``*``/``//``, ``/``/``//``,
  ``%``/``//``, ``**``/``*``, ``<<``/``>>``, ``&``/``|``/``^``), in an expression or an augmented assignment;
* ``compare_swap``: one comparison operator (``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``in``/``not in``,
  ``is``/``is not``);
* ``bool_swap``: ``and``/``or``, ``True``/``False``;
* ``off_by_one``: an integer constant ``n`` -> ``n +- 1``, or a non-constant ``range()`` argument, slice bound
  or index ``e`` -> ``e +- 1``;
* ``wrong_constant``: a constant for a different one (``0``/``1``, another integer -> ``0``, ``1`` or twice
  it, a float -> ``0.0`` or twice it, a string -> ``""``, ``""`` -> ``" "``);
* ``return_swap``: ``return x`` -> ``return y``, ``y`` another local variable or argument of the function;
* ``drop_negation``: ``not x`` -> ``x``;
* ``call_swap``: a builtin or method for a look-alike (``min``/``max``, ``any``/``all``, ``sum``/``len``,
  ``.upper()``/``.lower()``, ``.startswith``/``.endswith``, ``.find``/``.rfind``, ``.append``/``.extend``, ...).

The mutant is the original source with only the mutated node's text replaced (``ast.unparse`` of the new
node, parenthesised where precedence needs it), so broken and fixed differ at that site and nowhere else;
where splicing cannot give the intended tree the whole module is unparsed instead. A mutant always differs
from the original in its AST (``ast.dump``, which ignores formatting and comments), not only in layout.

``control_pairs`` keeps mutants that fail the task's tests in the sandbox; one that still passes is an
equivalent mutant, counted and skipped.
"""

from __future__ import annotations

import ast
import copy
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from tinyforge.data.code import CodeTask
from tinyforge.mine.pairs import Pair, error_text
from tinyforge.mine.problems import Problem
from tinyforge.mine.seeded import Skipped, seeded_problems
from tinyforge.mine.solve import classify
from tinyforge.sandbox import Pool, TestJob, Verdict

__all__ = ["MUTATIONS", "FAILING", "control_pairs", "corrupt"]

# A site: the node to replace and how to build its replacement (the rng picks among choices).
Site = tuple[ast.AST, Callable[[random.Random], ast.AST]]
Finder = Callable[[ast.Module, list[ast.AST]], Iterator[Site]]  # (program, mutable region) -> sites

# Verdict statuses that count as "the mutant fails its tests". ``crashed`` (the worker died) says nothing
# about the program, so such a mutant is neither kept nor counted as equivalent.
FAILING = frozenset({"failed", "error", "timeout", "memory"})


# --- where a program may be mutated -------------------------------------------------------------------------

_SKIP_FIELDS = frozenset({"annotation", "returns", "decorator_list", "type_comment", "type_params"})


def _region(tree: ast.Module) -> list[ast.AST]:
    """The nodes of every function's body (methods included), docstrings, annotations, decorators and
    f-strings left out, in a fixed order."""
    out: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.JoinedStr):
            return
        out.append(node)
        for name, value in ast.iter_fields(node):
            if name in _SKIP_FIELDS:
                continue
            if name == "body" and isinstance(node, _DEFS):
                value = _without_docstring(value)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child)

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in _without_docstring(node.body):
                visit(stmt)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for stmt in _without_docstring(item.body):
                        visit(stmt)
    return out


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[1:]
    return body


# --- the mutation operators ---------------------------------------------------------------------------------

_ARITH: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.FloorDiv,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
}
_COMPARE: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


def _with(node: ast.AST, **changes: Any) -> ast.AST:
    """A shallow copy of ``node`` with some fields replaced (children shared with the original)."""
    new = copy.copy(node)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _int(v: int) -> ast.expr:
    """An integer as the parser writes it: a negative one is ``-`` applied to a positive constant."""
    return ast.UnaryOp(ast.USub(), ast.Constant(-v)) if v < 0 else ast.Constant(v)


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _arith_swap(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if isinstance(n, (ast.BinOp, ast.AugAssign)) and type(n.op) in _ARITH:
            yield n, lambda _rng, n=n: _with(n, op=_ARITH[type(n.op)]())


def _compare_swap(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if isinstance(n, ast.Compare):
            for i, op in enumerate(n.ops):
                if type(op) in _COMPARE:
                    ops = [*n.ops[:i], _COMPARE[type(op)](), *n.ops[i + 1 :]]
                    yield n, lambda _rng, n=n, ops=ops: _with(n, ops=ops)


def _bool_swap(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if isinstance(n, ast.BoolOp):
            op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
            yield n, lambda _rng, n=n, op=op: _with(n, op=op)
        elif isinstance(n, ast.Constant) and isinstance(n.value, bool):
            yield n, lambda _rng, n=n: ast.Constant(not n.value)


def _plus_minus_one(e: ast.expr, rng: random.Random) -> ast.expr:
    return ast.BinOp(e, ast.Add() if rng.random() < 0.5 else ast.Sub(), ast.Constant(1))


def _off_by_one(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    bounds: list[ast.expr] = []
    for n in region:
        if isinstance(n, ast.Constant) and _is_int(n):
            yield n, lambda rng, n=n: _int(n.value + rng.choice((1, -1)))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "range":
            bounds += n.args
        elif isinstance(n, ast.Slice):
            bounds += [b for b in (n.lower, n.upper) if b is not None]
        elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Name):
            bounds.append(n.slice)
    for b in bounds:
        if not isinstance(b, (ast.Constant, ast.Starred)) and not (
            isinstance(b, ast.UnaryOp) and isinstance(b.operand, ast.Constant)
        ):  # constants are the cases above
            yield b, lambda rng, b=b: _plus_minus_one(b, rng)


def _other_constant(value: int | float | str, rng: random.Random) -> ast.expr:
    if isinstance(value, str):
        return ast.Constant("" if value else " ")
    if isinstance(value, int):
        if value in (0, 1):
            return ast.Constant(1 - value)
        return _int(rng.choice([c for c in (0, 1, 2 * value) if c != value]))
    return ast.Constant(rng.choice([c for c in (0.0, 1.0, 2 * value) if c != value]))


def _wrong_constant(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if isinstance(n, ast.Constant) and type(n.value) in (int, float, str):
            yield n, lambda rng, n=n: _other_constant(n.value, rng)


def _shallow_walk(fn: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function, not descending into nested scopes (functions, lambdas, classes,
    comprehensions): their names are not the function's locals."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        n = todo.pop(0)
        yield n
        if not isinstance(n, _SCOPES):
            todo.extend(ast.iter_child_nodes(n))


_SCOPES = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
)  # fmt: skip


def _return_swap(tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    inside = {id(n) for n in region}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nodes = list(_shallow_walk(fn))
        names = sorted(
            {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
            | {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        )
        for r in nodes:
            if isinstance(r, ast.Return) and isinstance(r.value, ast.Name) and id(r) in inside:
                others = [x for x in names if x != r.value.id]
                if others:
                    yield r, lambda rng, others=others: ast.Return(ast.Name(rng.choice(others), ast.Load()))


_CALLS = {"min": "max", "max": "min", "any": "all", "all": "any", "sum": "len", "len": "sum"}
_METHODS = {
    "upper": "lower",
    "lower": "upper",
    "startswith": "endswith",
    "endswith": "startswith",
    "keys": "values",
    "values": "keys",
    "find": "rfind",
    "rfind": "find",
    "index": "count",
    "count": "index",
    "append": "extend",
    "extend": "append",
    "split": "rsplit",
    "rsplit": "split",
    "strip": "lstrip",
    "lstrip": "rstrip",
    "rstrip": "lstrip",
    "isupper": "islower",
    "islower": "isupper",
}


def _call_swap(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if isinstance(f, ast.Name) and f.id in _CALLS:
            yield f, lambda _rng, f=f: ast.Name(_CALLS[f.id], ast.Load())
        elif isinstance(f, ast.Attribute) and f.attr in _METHODS:
            yield f, lambda _rng, f=f: _with(f, attr=_METHODS[f.attr])


def _drop_negation(_tree: ast.Module, region: list[ast.AST]) -> Iterator[Site]:
    for n in region:
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            yield n, lambda _rng, n=n: n.operand


MUTATIONS: dict[str, Finder] = {
    "arith_swap": _arith_swap,
    "compare_swap": _compare_swap,
    "bool_swap": _bool_swap,
    "off_by_one": _off_by_one,
    "wrong_constant": _wrong_constant,
    "return_swap": _return_swap,
    "drop_negation": _drop_negation,
    "call_swap": _call_swap,
}


# --- applying one ---------------------------------------------------------------------------------------------


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # old MBPP code has invalid escapes like "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def _dump(code: str) -> str | None:
    try:
        return ast.dump(_parse(code))
    except (SyntaxError, ValueError):
        return None


class _Tree:
    """A parsed program that can swap one node for another in place (and back) and splice the swap into the
    source text."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.tree = _parse(code)
        self.dump = ast.dump(self.tree)
        self.parent: dict[int, tuple[ast.AST, str, int | None]] = {}
        for node in ast.walk(self.tree):
            for name, value in ast.iter_fields(node):
                if isinstance(value, list):
                    for i, child in enumerate(value):
                        if isinstance(child, ast.AST):
                            self.parent[id(child)] = (node, name, i)
                elif isinstance(value, ast.AST):
                    self.parent[id(value)] = (node, name, None)
        lines = code.splitlines(keepends=True)
        self.lines = lines
        self.starts = [0]
        for line in lines:
            self.starts.append(self.starts[-1] + len(line))

    def _put(self, old: ast.AST, new: ast.AST) -> None:
        """Put ``new`` where ``old`` sits in the tree (``old`` itself puts it back)."""
        parent, name, i = self.parent[id(old)]
        if i is None:
            setattr(parent, name, new)
        else:
            getattr(parent, name)[i] = new

    def _offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + len(self.lines[line - 1].encode()[:col].decode())  # col: UTF-8 bytes

    def mutate(self, old: ast.AST, new: ast.AST) -> str | None:
        """The source with ``old`` replaced by ``new``: spliced where that gives the intended tree, else the
        whole module unparsed; None when the result is the original program."""
        self._put(old, new)
        try:
            want = ast.dump(self.tree)
            if want == self.dump:
                return None
            start = self._offset(old.lineno, old.col_offset)  # type: ignore[attr-defined]
            end = self._offset(old.end_lineno, old.end_col_offset)  # type: ignore[attr-defined]
            text = ast.unparse(new)
            for piece in (text, f"({text})") if isinstance(new, ast.expr) else (text,):
                spliced = self.code[:start] + piece + self.code[end:]
                if _dump(spliced) == want:
                    return spliced
            return ast.unparse(self.tree)
        finally:
            self._put(old, old)


def _mutants(code: str, rng: random.Random, kinds: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Single-site mutants of ``code``, lazily: the kinds in an rng order taken in turn, each kind's sites in
    an rng order, programs that repeat an earlier one (or the original) dropped. Deterministic for the rng's
    state, however many are taken."""
    t = _Tree(code)
    region = _region(t.tree)
    names = list(dict.fromkeys(kinds))
    for k in names:
        if k not in MUTATIONS:
            raise ValueError(f"unknown mutation {k!r}; known: {', '.join(MUTATIONS)}")
    rng.shuffle(names)
    queues: list[tuple[str, list[Site]]] = []
    for k in names:
        sites = list(MUTATIONS[k](t.tree, region))
        rng.shuffle(sites)
        if sites:
            queues.append((k, sites))
    seen = {t.dump}
    while queues:
        for k, sites in list(queues):
            old, build = sites.pop()
            if not sites:
                queues.remove((k, sites))
            mutant = t.mutate(old, build(rng))
            if mutant is None:
                continue
            d = _dump(mutant)
            if d is None or d in seen:
                continue
            seen.add(d)
            yield k, mutant


def corrupt(
    code: str, rng: random.Random, kinds: Iterable[str] = MUTATIONS, *, limit: int | None = None
) -> list[tuple[str, str]]:
    """Candidate corruptions of ``code``: (mutation kind, mutated program), each one mutation at one site,
    each differing from ``code`` and from the others in its AST. Kinds alternate (in an order the rng picks),
    so the first few candidates cover several kinds; ``limit``: at most this many."""
    return list(islice(_mutants(code, rng, kinds), limit))


# --- control pairs --------------------------------------------------------------------------------------------


@dataclass
class _Task:
    problem: Problem
    mutants: Iterator[tuple[str, str]]
    tries_left: int
    verified: bool | None = None
    pairs: list[Pair] = field(default_factory=list)
    done: bool = False
    exhausted: bool = False

    def next_mutant(self) -> tuple[str, str] | None:
        if self.tries_left <= 0:
            return None
        self.tries_left -= 1
        return next(self.mutants, None)


def _pair(p: Problem, kind: str, mutant: str, v: Verdict, source: str, seed: int) -> Pair:
    return Pair(
        problem_id=p.id,
        entry_point=p.entry_point,
        problem=p.solver_prompt(),
        broken=mutant,
        error=error_text(v.status, v.detail),
        fixed=p.solution,
        fclass=classify(mutant, mutant, p.entry_point, v) or "other",
        source=source,
        meta={"mutation": kind, "seed": seed, "task_id": p.meta.get("task_id")},
    )


def control_pairs(
    tasks: Sequence[CodeTask],
    pool: Pool,
    *,
    n_pairs: int | None = None,
    per_task: int = 1,
    seed: int = 0,
    timeout: float = 5.0,
    kinds: Iterable[str] = MUTATIONS,
    max_tries: int = 30,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Pair], dict[str, Any]]:
    """Control pairs from benchmark tasks: for each task (in an order the seed shuffles), the first
    ``per_task`` mutants of its canonical program (``corrupt``, at most ``max_tries`` tried) that fail its
    tests in the sandbox, each paired with the canonical program. Stops at ``n_pairs`` (default: every task).

    The tests are the seeded problem's (``seeded.seed_problem``), whose asserts name themselves when they
    fail; a task whose canonical program does not pass them gives nothing. Mutants are checked in waves on
    all of the pool's workers; the result is the same as checking them one by one in order, so it depends
    only on the tasks, ``seed`` and the verdicts (not on the pool's size). Returns the pairs and stats: tasks
    skipped, used and unverified, mutants tried, equivalent (still passing) and crashed, and counts per
    mutation kind."""
    kinds = tuple(dict.fromkeys(kinds))
    bench = tasks[0].bench if tasks else "none"
    source = f"control:{bench}"
    skipped: list[Skipped] = []
    order = seeded_problems(tasks, source, skipped=skipped)
    random.Random(seed).shuffle(order)
    want = len(order) * per_task if n_pairs is None else max(0, n_pairs)
    states: list[_Task] = []
    tried: Counter[str] = Counter()
    equivalent: Counter[str] = Counter()
    crashed: Counter[str] = Counter()
    waves = 0
    while True:
        have = sum(len(s.pairs) for s in states)
        pending = sum(per_task - len(s.pairs) for s in states if not s.done)
        while len(states) < len(order) and have + pending < want:  # only as many tasks as may be needed
            p = order[len(states)]
            rng = random.Random(f"{seed}:{p.meta.get('task_id')}:{p.id}")
            states.append(_Task(p, _mutants(p.solution, rng, kinds), max_tries))
            pending += per_task
        jobs: list[tuple[_Task, tuple[str, str] | None]] = []
        for s in (s for s in states if not s.done):
            if s.verified is None:
                jobs.append((s, None))  # the canonical program itself
            queued = 0
            for _ in range(per_task - len(s.pairs)):
                m = s.next_mutant()
                if m is None:
                    break
                jobs.append((s, m))
                queued += 1
            if not queued and s.verified is not None:
                s.done = s.exhausted = True
        if not jobs:
            break
        waves += 1
        verdicts = pool.map(
            [TestJob(m[1] if m else s.problem.solution, s.problem.test_code(), timeout) for s, m in jobs],
            progress=progress,
        )
        for (s, m), v in zip(jobs, verdicts, strict=True):
            assert isinstance(v, Verdict)
            if m is None:
                s.verified = v.passed
                s.done = s.done or not v.passed
                continue
            kind, mutant = m
            tried[kind] += 1
            if v.passed:
                equivalent[kind] += 1
            elif v.status not in FAILING:
                crashed[kind] += 1
            elif s.verified and len(s.pairs) < per_task:
                s.pairs.append(_pair(s.problem, kind, mutant, v, source, seed))
            if len(s.pairs) >= per_task:
                s.done = True
    pairs = [p for s in states for p in s.pairs][:want]
    made = Counter(p.meta["mutation"] for p in pairs)
    n_tried = sum(tried.values())
    stats: dict[str, Any] = {
        "source": source,
        "seed": seed,
        "per_task": per_task,
        "pairs": len(pairs),
        "tasks": len(tasks),
        "skipped": {s.task_id: s.reason for s in skipped},
        "tasks_tried": len(states),
        "tasks_used": len({p.meta["task_id"] for p in pairs}),
        "unverified": [s.problem.meta.get("task_id") for s in states if s.verified is False],
        "exhausted": [s.problem.meta.get("task_id") for s in states if s.exhausted and s.verified],
        "tried": n_tried,
        "equivalent": sum(equivalent.values()),
        "equivalent_rate": sum(equivalent.values()) / n_tried if n_tried else 0.0,
        "crashed": sum(crashed.values()),
        "waves": waves,
        "by_mutation": {k: {"tried": tried[k], "equivalent": equivalent[k], "pairs": made[k]} for k in kinds},
    }
    return pairs, stats
