"""Self-generated problems: parsing, rejection reasons, sandbox verification, duplicates, the solver's view."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import get_args

import pytest

from tinyforge.mine.problems import (
    Problem,
    Reason,
    Rejection,
    dedupe,
    normalized_hash,
    parse_problem,
    problem_prompt,
    verify_problems,
)
from tinyforge.sandbox import SandboxPool

GOOD = '''Here is a problem:

```python
import math


def hypotenuse_floor(a: int, b: int) -> int:
    """Return the floor of the length of the hypotenuse of a right triangle with legs a and b.

    Both legs are non-negative integers.
    """
    return math.isqrt(a * a + b * b)


assert hypotenuse_floor(3, 4) == 5
assert hypotenuse_floor(0, 0) == 0
assert hypotenuse_floor(1, 1) == 1

if __name__ == "__main__":
    print(hypotenuse_floor(5, 12))
```

It uses integer square roots.
'''


def _with_asserts(*asserts: str) -> str:
    head = GOOD.split("assert")[0]
    return head + "\n".join(asserts) + "\n```\n"


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


def test_a_good_answer_parses() -> None:
    p = parse_problem(GOOD, meta={"model": "m", "seed": 1})
    assert isinstance(p, Problem)
    assert p.entry_point == "hypotenuse_floor"
    assert p.signature == "def hypotenuse_floor(a: int, b: int) -> int:"
    assert p.docstring.startswith("Return the floor") and "non-negative" in p.docstring
    assert p.tests == (
        "assert hypotenuse_floor(3, 4) == 5",
        "assert hypotenuse_floor(0, 0) == 0",
        "assert hypotenuse_floor(1, 1) == 1",
    )
    assert p.imports == "import math"
    assert "print(" not in p.solution and "assert" not in p.solution  # no main guard, no tests
    assert p.meta == {"model": "m", "seed": 1}
    rec = p.record()
    assert rec["v"] == 1 and rec["id"] == p.id and rec["tests"] == list(p.tests)


def test_the_solver_never_sees_the_body() -> None:
    p = parse_problem(GOOD)
    assert isinstance(p, Problem)
    view = p.solver_prompt()
    assert "isqrt" not in view and "return" not in view.replace("Return", "")
    assert p.signature in view and all(t in view for t in p.tests) and "import math" in view
    ast.parse(view)  # a stub that parses: tests as comments, signature + docstring
    tree = ast.parse(view)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    assert len(fn.body) == 1 and ast.get_docstring(fn) == p.docstring.strip()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I cannot help with that.", "malformed"),
        ("```python\ndef f(x):\n    return x\n\nassert f(1) == 1\n```", "malformed"),  # no docstring
        (GOOD.split("assert")[0] + "```", "malformed"),  # no tests
        (
            _with_asserts("assert hypotenuse_floor(3, 4) == 5", "assert hypotenuse_floor(0, 0) == 0"),
            "few_tests",
        ),
        (
            _with_asserts("assert hypotenuse_floor(3, 4) == 5", "assert True", "assert 1 == 1"),
            "test_not_calling",
        ),
        (_with_asserts("assert hypotenuse_floor(3, 4) == hypotenuse_floor(3, 4)"), "tautology"),
        (_with_asserts("assert hypotenuse_floor(3, 4) == 5.0"), "float_equality"),
        (_with_asserts("assert hypotenuse_floor(3, 4) != -0.5"), "float_equality"),
    ],
)
def test_rejections(text: str, reason: str) -> None:
    r = parse_problem(text)
    assert isinstance(r, Rejection) and r.reason == reason, r


def test_a_cut_off_answer_keeps_what_parses() -> None:
    cut = GOOD.split("if __name__")[0] + "assert hypotenuse_floor(6, 8) =="  # the model ran out of tokens
    p = parse_problem(cut)
    assert isinstance(p, Problem) and len(p.tests) == 3


def test_verification_runs_the_solution_in_the_sandbox(pool: SandboxPool) -> None:
    good = parse_problem(GOOD)
    wrong = parse_problem(_with_asserts(
        "assert hypotenuse_floor(3, 4) == 5", "assert hypotenuse_floor(0, 0) == 0", "assert hypotenuse_floor(1, 1) == 2"
    ))  # fmt: skip
    cheat = parse_problem(
        GOOD.replace("    return math.isqrt", "    import sys; sys.exit(0)\n    return math.isqrt")
    )
    assert isinstance(good, Problem) and isinstance(wrong, Problem) and isinstance(cheat, Problem)
    out = verify_problems([good, wrong, cheat], pool)
    assert out[0] is good
    assert isinstance(out[1], Rejection) and out[1].reason == "unverified" and "failed" in out[1].detail
    assert isinstance(out[2], Rejection) and out[2].reason == "unverified"  # sys.exit does not pass


def test_duplicates_exact_and_near() -> None:
    a = parse_problem(GOOD)
    renamed = parse_problem(
        GOOD.replace("hypotenuse_floor", "hyp")
        .replace("a * a + b * b", "x * x + y * y")
        .replace("(a: int, b: int)", "(x: int, y: int)")
        .replace("(3, 4) == 5", "(6, 8) == 10")
    )  # the same problem up to names and numbers
    near = parse_problem(
        GOOD.replace(
            "assert hypotenuse_floor(1, 1) == 1",
            "assert hypotenuse_floor(1, 1) == 1\nassert hypotenuse_floor(5, 12) == 13",
        )
    )
    other = parse_problem('''```python
def count_vowels(s: str) -> int:
    """Return how many characters of s are vowels (a, e, i, o, u, either case)."""
    return sum(c in "aeiouAEIOU" for c in s)

assert count_vowels("") == 0
assert count_vowels("Hello") == 2
assert count_vowels("xyz") == 0
```''')
    problems = [a, renamed, near, other]
    assert all(isinstance(p, Problem) for p in problems)
    assert a.id != renamed.id  # ids name exact content; duplicates are found by shape
    shape = normalized_hash
    assert (
        shape(a.solution, a.tests)
        == shape(renamed.solution, renamed.tests)
        != shape(near.solution, near.tests)
    )
    kept, dropped = dedupe(problems)  # type: ignore[arg-type]
    assert kept == [a, other]
    assert [(p, twin) for p, twin in dropped] == [(renamed, a.id), (near, a.id)]


def test_problem_prompts() -> None:
    chat = problem_prompt("chat")
    assert isinstance(chat, list) and chat[0]["role"] == "user" and "assert" in chat[0]["content"]
    raw = problem_prompt("raw")
    assert isinstance(raw, str) and raw.startswith('"""')
    with pytest.raises(ValueError, match="unknown problem prompt format"):
        problem_prompt("xml")


@pytest.mark.slow
def test_real_model_answers_are_parsed_or_rejected_with_a_reason(pool: SandboxPool) -> None:
    """SmolLM2 writes 8 problems at T=0.8: each is a Problem or a Rejection with a known reason, and every
    Problem that survives verification really passes its own tests."""
    from tinyforge.generate.base import SamplingParams
    from tinyforge.generate.hf import HFEngine
    from tinyforge.generate.models import fetch_model

    fetch_model("smollm2-135m-instruct")
    engine = HFEngine("smollm2-135m-instruct", device="cpu", dtype="float32")
    (outs,) = engine.generate(
        [problem_prompt("chat")], SamplingParams(n=8, temperature=0.8, max_new_tokens=256)
    )
    parsed = [parse_problem(c.text) for c in outs]
    assert len(parsed) == 8
    assert all(isinstance(p, Problem) or p.reason in get_args(Reason) for p in parsed)
    problems = [p for p in parsed if isinstance(p, Problem)]
    for p, v in zip(problems, verify_problems(problems, pool), strict=True):
        if isinstance(v, Problem):
            assert pool.run_tests(p.solution, p.test_code()).passed


def test_asserts_in_a_test_function_are_hoisted() -> None:
    # The most common shape small models write: the tests wrapped in a function that is then called.
    text = GOOD.split("assert")[0] + (
        "def check():\n"
        "    assert hypotenuse_floor(3, 4) == 5, 'case 1'\n"
        "    assert hypotenuse_floor(0, 0) == 0\n"
        "    assert hypotenuse_floor(1, 1) == 1\n"
        "    print('all passed')\n\n"
        "check()\n```\n"
    )
    p = parse_problem(text)
    assert isinstance(p, Problem), p
    assert p.entry_point == "hypotenuse_floor" and len(p.tests) == 3
    assert "check" not in p.solution and "print" not in p.solution
    assert (
        p.test_code().splitlines()[1] == "assert hypotenuse_floor(0, 0) == 0, 'hypotenuse_floor(0, 0) == 0'"
    )
