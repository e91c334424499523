"""Self-generated problems: ask the model for a function with a docstring and ``assert`` tests, parse what
it writes, keep only problems that can teach something.

``parse_problem(text)`` turns one model answer into a ``Problem`` or a ``Rejection`` with a reason:

* ``malformed``: no Python that parses, no top-level function with a docstring, or no top-level asserts;
* ``few_tests``: fewer than ``min_tests`` asserts;
* ``test_not_calling``: an assert that does not call the function (``assert True``, ``assert 1 == 1``);
* ``tautology``: an assert whose two sides are the same expression (``assert f(x) == f(x)``);
* ``float_equality``: an assert comparing with ``==`` / ``!=`` against a float literal (the model's own
  rounding decides it; such tests should use ``math.isclose``).

``verify_problems`` then runs each problem's own solution against its own tests in the sandbox
(``unverified`` when it fails), and ``dedupe`` drops exact duplicates (the same function and tests up to
identifier names, string contents and numbers: a normalised-AST hash) and near duplicates (token
similarity of the normalised source at or above a threshold).

The solver never sees the body: ``Problem.solver_prompt`` is built from the signature, the docstring and
the tests alone.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import io
import json
import textwrap
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tinyforge.data.code import CodeTask
from tinyforge.generate.sanitize import code_blocks, longest_parsable_prefix
from tinyforge.sandbox import Pool, TestJob

__all__ = [
    "SCHEMA_VERSION",
    "Problem",
    "Rejection",
    "dedupe",
    "parse_problem",
    "problem_prompt",
    "verify_problems",
]

SCHEMA_VERSION = 1

Reason = Literal[
    "malformed", "few_tests", "test_not_calling", "tautology", "float_equality", "unverified", "duplicate"
]

REQUEST = (
    "Write one new, self-contained Python programming problem: a single function with a clear docstring "
    "that says what it must return, a correct implementation, and at least three `assert` tests that call "
    "the function with concrete arguments and check its exact result; write the asserts at the top level of "
    "the module, after the function. Use only the standard library. "
    "Answer with one Python code block and nothing else."
)


def problem_prompt(fmt: str) -> str | list[dict[str, str]]:
    """The request for one problem: chat messages (``chat``), or the start of a module to continue (``raw``,
    for base models)."""
    if fmt == "chat":
        return [{"role": "user", "content": REQUEST}]
    if fmt == "raw":
        return f'"""{REQUEST}"""\n\n'
    raise ValueError(f"unknown problem prompt format {fmt!r}; known: raw, chat")


@dataclass(frozen=True)
class Problem:
    """A function to write: ``solution`` is the model's whole program (imports, helpers, the function),
    ``tests`` its top-level asserts, one per item."""

    entry_point: str
    signature: str  # the ``def`` line(s), decorators included, up to the colon
    docstring: str
    tests: tuple[str, ...]
    solution: str
    imports: str = ""  # the program's top-level imports, shown to the solver with the signature
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # model, seed, sample index...

    @property
    def id(self) -> str:
        """A hash of the problem's exact content (signature, docstring, solution, tests). ``dedupe`` compares
        shapes instead (``normalized_hash``: names, strings and numbers normalised away)."""
        text = json.dumps([self.signature, self.docstring, self.solution, list(self.tests)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def solver_prompt(self) -> str:
        """What a solver is shown: the tests (as comments), imports, signature and docstring; never the body.

        It ends with the docstring, so a base model continues it with the body (the raw format), and it is
        the code block of the chat format (``as_task`` + ``generate.prompts.code_prompt``)."""
        text = self.docstring.strip().replace('"""', r"\"\"\"")
        doc = textwrap.indent(f'"""{text}\n"""', "    ") + "\n"
        tests = "".join(f"# {t}\n" for t in self.tests)
        head = f"{self.imports}\n\n\n" if self.imports else ""
        return f"# Tests it must pass:\n{tests}\n{head}{self.signature}\n{doc}"

    def test_code(self) -> str:
        """The tests as a script; each assert carries its own source as message, so a failure says which."""
        return "".join(_labelled(t) + "\n" for t in self.tests)

    def as_task(self) -> CodeTask:
        """The problem as a benchmark task (``bench`` "generated"), so the benchmark prompt formats and the
        completion handling apply to it unchanged: ``prompt`` is the solver's view, ``test`` the tests."""
        return CodeTask(
            task_id=self.id,
            bench="generated",
            prompt=self.solver_prompt(),
            entry_point=self.entry_point,
            canonical_solution=self.solution,
            test=self.test_code(),
        )

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Problem:
        if rec.get("v") != SCHEMA_VERSION:
            raise ValueError(f"problem record schema {rec.get('v')!r}, this tinyforge reads {SCHEMA_VERSION}")
        fields = {k: rec[k] for k in ("entry_point", "signature", "docstring", "solution", "imports", "meta")}
        return cls(tests=tuple(rec["tests"]), **fields)

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "id": self.id, **asdict(self), "tests": list(self.tests)}


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str = ""


def _code_of(text: str) -> str:
    """The Python in a model answer: its python (or untagged) fenced blocks joined, else the whole text."""
    blocks, _ = code_blocks(text)
    code = [b.code for b in blocks if b.is_python or not b.lang]
    return "\n".join(code) if code else text


def _calls(node: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def _is_float(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, float)


def _check_assert(test: ast.Assert, entry: str) -> Rejection | None:
    src = ast.unparse(test)
    if not _calls(test.test, entry):
        return Rejection("test_not_calling", src)
    t = test.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1:
        left, right = t.left, t.comparators[0]
        if ast.dump(left) == ast.dump(right):
            return Rejection("tautology", src)
        if isinstance(t.ops[0], (ast.Eq, ast.NotEq)) and (_is_float(left) or _is_float(right)):
            return Rejection("float_equality", src)
    return None


def parse_problem(text: str, min_tests: int = 3, meta: dict[str, Any] | None = None) -> Problem | Rejection:
    """One model answer -> a ``Problem``, or a ``Rejection`` saying why not (see the module docstring)."""
    code = longest_parsable_prefix(_code_of(text))
    try:
        tree = ast.parse(code)
    except SyntaxError as e:  # longest_parsable_prefix gives parsable code; this is only a safety net
        return Rejection("malformed", f"syntax error: {e.msg}")
    # Tests written as a function of asserts (``def check(): assert f(1) == 2 ...``) count as top-level
    # asserts: the function and the calls to it are dropped from the program, its asserts hoisted.
    wrappers = {n.name: n for n in tree.body if _is_test_wrapper(n)}
    defs = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and ast.get_docstring(n) and n.name not in wrappers
    ]
    asserts = [n for n in tree.body if isinstance(n, ast.Assert)]
    asserts += [s for w in wrappers.values() for s in w.body if isinstance(s, ast.Assert)]
    if not defs:
        return Rejection("malformed", "no top-level function with a docstring")
    if not asserts:
        return Rejection("malformed", "no top-level assert")
    # The function under test: the documented one the asserts call most.
    fn = max(defs, key=lambda d: sum(_calls(a, d.name) for a in asserts))
    for a in asserts:
        if (why := _check_assert(a, fn.name)) is not None:
            return why
    if len(asserts) < min_tests:
        return Rejection("few_tests", f"{len(asserts)} assert(s), need {min_tests}")
    lines = code.splitlines()
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    body_start = fn.body[0].lineno  # the docstring
    signature = "\n".join(lines[first - 1 : body_start - 1]).rstrip()
    program = [
        n
        for n in tree.body
        if not isinstance(n, ast.Assert) and not _is_main_guard(n) and not _is_wrapper_or_call(n, wrappers)
    ]
    imports = [n for n in program if isinstance(n, (ast.Import, ast.ImportFrom))]
    return Problem(
        entry_point=fn.name,
        signature=signature,
        docstring=ast.get_docstring(fn) or "",
        tests=tuple(ast.unparse(a) for a in asserts),
        solution="\n\n".join(ast.get_source_segment(code, n) or ast.unparse(n) for n in program) + "\n",
        imports="\n".join(ast.unparse(n) for n in imports),
        meta=dict(meta or {}),
    )


def _labelled(test: str) -> str:
    node = ast.parse(test).body[0]
    if isinstance(node, ast.Assert) and node.msg is None:
        node.msg = ast.Constant(ast.unparse(node.test))
    return ast.unparse(node)


def _is_test_wrapper(node: ast.stmt) -> bool:
    """A function of no arguments whose body holds asserts: the model's way of writing a test suite."""
    if not isinstance(node, ast.FunctionDef) or node.args.args or node.args.vararg or node.args.kwarg:
        return False
    return any(isinstance(s, ast.Assert) for s in node.body)


def _is_wrapper_or_call(node: ast.stmt, wrappers: dict[str, ast.FunctionDef]) -> bool:
    if isinstance(node, ast.FunctionDef):
        return node.name in wrappers
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        return isinstance(f, ast.Name) and f.id in wrappers
    return False


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


# --- duplicates ---------------------------------------------------------------------------------------------


class _Normalize(ast.NodeTransformer):
    """Names -> ``v``, strings -> ``s``, numbers -> ``0``, docstrings dropped: what is left is the shape."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Name("v", node.ctx), node)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg, node.annotation = "v", None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name, node.returns = "f", None
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value: Any = node.value
        if isinstance(value, str):
            value = "s"
        elif isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            value = 0
        return ast.copy_location(ast.Constant(value), node)


def _normalized(solution: str, tests: Iterable[str]) -> str:
    tree = ast.parse(solution + "\n" + "\n".join(tests))
    return ast.unparse(_Normalize().visit(tree))


def normalized_hash(solution: str, tests: Iterable[str]) -> str:
    return hashlib.sha256(_normalized(solution, tests).encode()).hexdigest()[:16]


def _tokens(src: str) -> list[str]:
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return [
        t.string
        for t in toks
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)
    ]


def code_tokens(code: str, normalize: bool = True) -> list[str]:
    """The tokens of ``code`` (comments and layout left out), with names, strings and numbers normalised
    away when ``normalize``. Code that does not parse gives its raw tokens, or its words when it does not
    even tokenize."""
    try:
        return _tokens(ast.unparse(_Normalize().visit(ast.parse(code))) if normalize else code)
    except (SyntaxError, ValueError, tokenize.TokenError, IndentationError):
        try:
            return _tokens(code)
        except (tokenize.TokenError, IndentationError, SyntaxError):
            return code.split()


def similar(a: Sequence[str], b: Sequence[str], near: float) -> bool:
    """Whether two token sequences are near duplicates: difflib similarity ratio at or above ``near``."""
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (
        m.real_quick_ratio() >= near and m.quick_ratio() >= near and m.ratio() >= near
    )  # cheap bounds first


def dedupe(problems: Sequence[Problem], near: float = 0.9) -> tuple[list[Problem], list[tuple[Problem, str]]]:
    """The problems to keep (first of each group, in order), and the dropped ones with the id they
    duplicate. ``near``: token-sequence similarity (difflib ratio, 0-1) of the normalised sources (docstrings
    left out) at or above which two problems count as the same; checked against every kept problem."""
    kept: list[Problem] = []
    kept_tokens: list[list[str]] = []
    seen: dict[str, str] = {}
    dropped: list[tuple[Problem, str]] = []
    for p in problems:
        shape = normalized_hash(p.solution, p.tests)
        if shape in seen:
            dropped.append((p, seen[shape]))
            continue
        toks = _tokens(_normalized(p.solution, p.tests)) + p.docstring.split()  # prose: words, not tokens
        twin = next((k for k, kt in zip(kept, kept_tokens, strict=True) if similar(toks, kt, near)), None)
        if twin is not None:
            dropped.append((p, twin.id))
            continue
        seen[shape] = p.id
        kept.append(p)
        kept_tokens.append(toks)
    return kept, dropped


# --- verification -------------------------------------------------------------------------------------------


def verify_problems(
    problems: Sequence[Problem], pool: Pool, timeout: float = 5.0
) -> list[Problem | Rejection]:
    """Each problem's own solution against its own tests, in the sandbox: the problem, or ``unverified``
    with the sandbox's status and detail."""
    verdicts = pool.map([TestJob(p.solution, p.test_code(), timeout) for p in problems])
    return [
        p if v.passed else Rejection("unverified", f"{v.status}: {v.detail}".strip(": "))
        for p, v in zip(problems, verdicts, strict=True)
    ]
