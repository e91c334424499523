"""Attempts and pair mining: failure classes from real sandbox verdicts, at-edge selection, single and multi
mode, the pair's training view, the class mix."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams
from tinyforge.mine.pairs import Pair, error_text, mine_pairs, pair_stats, select_pairs
from tinyforge.mine.problems import Problem, parse_problem
from tinyforge.mine.solve import FAILURE_CLASSES, Attempt, make_attempt, solve, solve_prompt
from tinyforge.sandbox import Job, SandboxPool, TestJob

PROBLEM = '''```python
def clamp(x: int, lo: int, hi: int) -> int:
    """Return x limited to the range [lo, hi]."""
    return max(lo, min(x, hi))


assert clamp(5, 0, 10) == 5
assert clamp(-3, 0, 10) == 0
assert clamp(42, 0, 10) == 10
```'''

RIGHT = "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n"
RIGHT_2 = "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n"
WRONG = {
    "format": "",
    "syntax": "def clamp(x, lo, hi):\n    return max(lo, min(x, hi)\n",
    "stub": 'def clamp(x, lo, hi):\n    """Clamp."""\n    pass\n',
    "name": "def clamp(x, lo, hi):\n    return maximum(lo, min(x, hi))\n",
    "type": "def clamp(x, lo, hi):\n    return max(lo, min(x, hi), key=1)\n",
    "assertion": "def clamp(x, lo, hi):\n    return min(lo, max(x, hi))\n",
    "timeout": "def clamp(x, lo, hi):\n    while True:\n        pass\n",
    "other": "def clamp(x, lo, hi):\n    return [lo, hi][x]\n",
}


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def problem() -> Problem:
    p = parse_problem(PROBLEM)
    assert isinstance(p, Problem)
    return p


def attempt(pool: SandboxPool, problem: Problem, program: str, index: int) -> Attempt:
    verdict = pool.run(TestJob(program, problem.test_code(), timeout=2.0))
    completion = Completion(f"```python\n{program}```" if program else "", 10, 5, "stop")
    return make_attempt(problem, "chat", index, completion, verdict, program)


@pytest.mark.parametrize("fclass", list(WRONG))
def test_failure_classes_from_real_verdicts(pool: SandboxPool, problem: Problem, fclass: str) -> None:
    a = attempt(pool, problem, WRONG[fclass], 0)
    assert not a.passed and a.fclass == fclass, (a.status, a.detail)


def test_a_passing_attempt_has_no_class(pool: SandboxPool, problem: Problem) -> None:
    a = attempt(pool, problem, RIGHT, 0)
    assert a.passed and a.fclass is None
    assert Attempt.from_record(a.record()) == a


def test_every_class_is_named() -> None:
    assert set(WRONG) == set(FAILURE_CLASSES)


def test_the_solver_prompt_shows_no_body(problem: Problem) -> None:
    chat = solve_prompt(problem, "chat")
    raw = solve_prompt(problem, "raw")
    assert isinstance(chat, list) and isinstance(raw, str)
    for text in (chat[0]["content"], raw):
        assert "max(lo, min(x, hi))" not in text and "assert clamp(42, 0, 10) == 10" in text
    assert raw.rstrip().endswith('"""')  # a base model continues with the body


def test_all_pass_and_all_fail_give_no_pairs(pool: SandboxPool, problem: Problem) -> None:
    passing = [attempt(pool, problem, RIGHT, i) for i in range(3)]
    failing = [attempt(pool, problem, WRONG["assertion"], i) for i in range(3)]
    assert mine_pairs(problem, passing) == [] and mine_pairs(problem, failing) == []


def test_single_and_multi_mode(pool: SandboxPool, problem: Problem) -> None:
    programs = [
        WRONG["assertion"],
        RIGHT,
        WRONG["assertion"].replace("x, hi", "x,  hi"),  # the same broken code again: a near duplicate
        WRONG["name"],
        RIGHT_2,
        WRONG["other"],
        RIGHT,  # the same fix again: not a new target
        WRONG["type"],
    ]
    attempts = [attempt(pool, problem, prog, i) for i, prog in enumerate(programs)]
    shuffled = attempts[::-1]  # verdicts arrive in any order: mining does not depend on it

    (single,) = mine_pairs(problem, shuffled, "single")
    assert single.meta == {"broken_index": 0, "fixed_index": 1}
    assert single.broken == WRONG["assertion"] and single.fixed == RIGHT and single.fclass == "assertion"
    assert single.error.startswith("AssertionError: clamp(")

    multi = mine_pairs(problem, shuffled, "multi", max_pairs=4, meta={"model": "m", "seed": 3})
    assert [p.meta["broken_index"] for p in multi] == [0, 3, 5, 7]  # index 2 is a near duplicate of 0
    assert [p.meta["fixed_index"] for p in multi] == [1, 4, 1, 4]  # distinct fixes taken in turn
    assert [p.fclass for p in multi] == ["assertion", "name", "other", "type"]
    assert all(p.meta["model"] == "m" and p.meta["seed"] == 3 for p in multi)
    assert len(mine_pairs(problem, shuffled, "multi", max_pairs=2)) == 2
    assert len({p.id for p in multi}) == 4


def test_the_pair_view(pool: SandboxPool, problem: Problem) -> None:
    attempts = [attempt(pool, problem, WRONG["name"], 0), attempt(pool, problem, RIGHT, 1)]
    (pair,) = mine_pairs(problem, attempts, "single")
    for fmt in ("chat", "raw"):
        prompt = pair.prompt(fmt)
        text = prompt[0]["content"] if isinstance(prompt, list) else prompt
        assert (
            "maximum(lo, min(x, hi))" in text
            and "NameError" in text
            and "assert clamp(5, 0, 10) == 5" in text
        )
        assert "return max(lo, min(x, hi))" not in text  # neither the problem's body nor the fix
    assert pair.target("chat") == f"```python\n{RIGHT}```" and pair.target("raw") == RIGHT
    assert Pair.from_record(pair.record()) == pair


def test_stats_and_selection(pool: SandboxPool, problem: Problem) -> None:
    attempts = [attempt(pool, problem, p, i) for i, p in enumerate([WRONG["format"], WRONG["stub"], RIGHT])]
    pairs = mine_pairs(problem, attempts, "multi")
    stats = pair_stats(pairs)
    assert stats["pairs"] == 2 and stats["problems"] == 1
    assert stats["by_class"]["format"]["n"] == 1 and stats["by_class"]["stub"]["n"] == 1
    assert stats["format_only"] == 1 and stats["format_only_share"] == 0.5
    assert set(stats["by_class"]) == set(FAILURE_CLASSES)
    assert [p.fclass for p in select_pairs(pairs)] == ["stub"]
    assert [p.fclass for p in select_pairs(pairs, ["format", "stub"])] == []
    with pytest.raises(ValueError, match="unknown failure class"):
        select_pairs(pairs, ["formatting"])


def test_error_text_is_trimmed() -> None:
    assert error_text("failed", "AssertionError: f(1) == 2") == "AssertionError: f(1) == 2"
    assert error_text("failed", "AssertionError") == "AssertionError: a test failed"
    assert error_text("timeout", "exceeded 5.0 s") == "Timeout: exceeded 5.0 s"
    long = error_text("error", "ValueError: " + "x" * 1000)
    assert len(long) == 300 and long.endswith("...")


def test_pairs_stats_command(pool: SandboxPool, problem: Problem, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tinyforge.cli import app

    attempts = [attempt(pool, problem, p, i) for i, p in enumerate([WRONG["format"], WRONG["name"], RIGHT])]
    path = tmp_path / "run" / "round-1" / "pairs.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(p.record()) + "\n" for p in mine_pairs(problem, attempts)))
    res = CliRunner().invoke(app, ["pairs", "stats", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["pairs"] == 2 and stats["format_only"] == 1 and stats["by_class"]["name"]["n"] == 1
    table = CliRunner().invoke(app, ["pairs", "stats", str(path)])
    assert table.exit_code == 0 and "format-only (nothing to repair): 1 (50.0%)" in table.output
    path.write_text(path.read_text() + '{"v": 1, "problem_id": "x"}\n')
    bad = CliRunner().invoke(app, ["pairs", "stats", str(path)])
    assert bad.exit_code == 2 and "pairs.jsonl:3: not a pair record" in bad.output


class Answers(Engine):
    """Answers sample ``i`` of any prompt with ``programs[i]`` in a fenced block."""

    def __init__(self, programs: Sequence[str]) -> None:
        self.programs = programs

    def render(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt)

    def key(self) -> dict[str, Any]:
        return {"answers": list(self.programs)}

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        for pos, r in enumerate(requests):
            yield pos, Completion(f"```python\n{self.programs[r.index]}```", 10, 5, "stop")


class CountingPool(SandboxPool):
    def __init__(self) -> None:
        super().__init__(workers=2)
        self.jobs: list[Job] = []

    def submit(self, job: Job) -> Any:
        self.jobs.append(job)
        return super().submit(job)


def test_solve_runs_each_program_once(problem: Problem) -> None:
    """Attempts with the same program share one sandbox run and its verdict."""
    programs = [RIGHT, RIGHT, WRONG["assertion"], RIGHT_2, WRONG["assertion"]]
    with CountingPool() as pool:
        params = SamplingParams(n=len(programs), temperature=0.8)
        attempts = sorted(solve([problem], Answers(programs), params, pool, "chat"), key=lambda a: a.index)
    assert [a.passed for a in attempts] == [True, True, False, True, False]
    assert [a.fclass for a in attempts] == [None, None, "assertion", None, "assertion"]
    assert len(pool.jobs) == 3
