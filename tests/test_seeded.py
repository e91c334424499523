"""MBPP's train split and the seeded problems made from it, on the real MBPP file and the real sandbox."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator

import pytest

from tinyforge.data import CodeTask, get_benchmark, load_benchmark
from tinyforge.mine.problems import Problem, verify_problems
from tinyforge.mine.seeded import Skipped, seed_problem, seeded_problems
from tinyforge.sandbox import SandboxPool


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def train() -> list[CodeTask]:
    return load_benchmark("mbpp-train")


def _task(code: str, tests: list[str], setup: str = "", entry: str = "f") -> CodeTask:
    return CodeTask(
        "1", "mbpp-train", "", entry, code, setup + "\n" + "\n".join(tests),
        extra={"text": "Do the thing.", "test_list": tests, "test_setup_code": setup},
    )  # fmt: skip


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # old MBPP code has invalid escapes like "\w" in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def test_train_split(train: list[CodeTask]) -> None:
    assert len(train) == 374
    assert (train[0].task_id, train[-1].task_id) == ("601", "974")
    assert {t.bench for t in train} == {"mbpp-train"}
    assert not {t.task_id for t in train} & {t.task_id for t in load_benchmark("mbpp")}
    b = get_benchmark("mbpp_train")
    assert b.name == "mbpp-train" and b.files == ("mbpp.jsonl",) and "never for evaluation" in b.description
    for t in train:
        assert t.entry_point and f"def {t.entry_point}" in t.canonical_solution and t.extra["text"]


def test_seeded_problems_of_mbpp_train(train: list[CodeTask]) -> None:
    skipped: list[Skipped] = []
    problems = seeded_problems(train, "seeded:mbpp-train", skipped=skipped)
    # 601's asserts build the program's own Pair class; 927's setup builds trees from its own Node class.
    assert {(s.task_id, s.reason) for s in skipped} == {("601", "needs_context"), ("927", "test_setup")}
    assert len(problems) == 372
    by_id = {t.task_id: t for t in train}
    for p in problems:
        t = by_id[p.meta["task_id"]]
        assert p.meta == {"source": "seeded:mbpp-train", "task_id": t.task_id}
        assert p.entry_point == t.entry_point and p.solution.endswith(t.canonical_solution)
        assert p.docstring == t.extra["text"].strip()
        assert p.signature.rstrip().endswith(":") and f"def {p.entry_point}" in p.signature
        assert len(p.tests) == len(t.extra["test_list"])
        for test in p.tests:
            (node,) = ast.parse(test).body
            assert isinstance(node, ast.Assert) and p.entry_point in test


def test_solver_view_leaks_no_body(train: list[CodeTask]) -> None:
    for p in seeded_problems(train, "seeded:mbpp-train"):
        view = p.solver_prompt()
        fn = ast.parse(view).body[-1]
        assert isinstance(fn, ast.FunctionDef) and fn.name == p.entry_point
        assert len(fn.body) == 1 and ast.get_docstring(fn) is not None  # the docstring, nothing else
        (canon,) = (n for n in _parse(p.solution).body if getattr(n, "name", "") == p.entry_point)
        assert isinstance(canon, ast.FunctionDef)
        for stmt in canon.body:
            for line in (ast.get_source_segment(p.solution, stmt) or "").splitlines():
                assert len(line.strip()) < 12 or line.strip() not in view, (p.meta, line)


def test_signature_and_setup() -> None:
    code = "import math\n\n@staticmethod\ndef f(a,\n      b): return math.floor(a) + b  # sum\n"
    p = seed_problem(_task(code, ["assert f(1.5, 2) == 3"], setup="import re\nimport math"), "s")
    assert isinstance(p, Problem)
    assert p.signature == "@staticmethod\ndef f(a,\n      b):"
    assert p.imports == "import re\nimport math"  # the setup's imports the program lacks, then its own
    assert p.solution == "import re\n" + code
    assert "math.floor" not in p.solver_prompt()
    p2 = seed_problem(_task("def f(x) -> int:  # note\n    # why\n    return x\n", ["assert f(1) == 1"]), "s")
    assert isinstance(p2, Problem) and p2.signature == "def f(x) -> int:"


@pytest.mark.parametrize(
    ("code", "tests", "setup", "entry", "reason"),
    [
        ("class f:\n    pass\n", ["assert f()"], "", "f", "no_function"),
        ("def f(x):\n    return x\n", ["x = f(1)"], "", "f", "not_assert"),
        ("def f(x):\n    return x\n", ["assert f(1) == 1", "assert 1 == 1"], "", "f", "test_not_calling"),
        ("def f(x):\n    return x\n", ["assert f(y) == 1"], "y = 1", "f", "test_setup"),
        ("K = 2\ndef f(x):\n    return x * K\n", ["assert f(1) == K"], "", "f", "needs_context"),
    ],
)
def test_skips(code: str, tests: list[str], setup: str, entry: str, reason: str) -> None:
    got = seed_problem(_task(code, tests, setup, entry), "s")
    assert isinstance(got, Skipped) and got.reason == reason and got.task_id == "1"


def test_mbpp_train_canonicals_verify(train: list[CodeTask], pool: SandboxPool) -> None:
    problems = seeded_problems(train, "seeded:mbpp-train")
    verdicts = verify_problems(problems, pool)
    failing = [(p.meta["task_id"], v) for p, v in zip(problems, verdicts, strict=True) if v is not p]
    assert failing == []
