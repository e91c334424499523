"""The math curriculum (`tinyforge curriculum`): parsing model answers into (question, program), the checks
on real sandbox runs, the difficulty moves, pairs from answers graded by the real math grader, the round
statistics, settings; and real runs on SmolLM2: the demo config end to end through the command line and
again from the generation cache, and the train/evaluate tail on a run folder whose first round is given."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyforge.curriculum import (
    REASONS,
    CurriculumConfig,
    MathAttempt,
    MathPair,
    MathProblem,
    Rejection,
    check_problems,
    curriculum,
    decide_move,
    load_config,
    mine_pairs,
    numeric_answer,
    parse_problem,
    question_key,
    rewrite_prompt,
    round_stats,
    take_new,
    write_prompt,
)
from tinyforge.evaluate.mathgrade import MathGrader
from tinyforge.generate.prompts import MATH_INSTRUCTION, math_shots
from tinyforge.recipe import RecipeError, write_json
from tinyforge.sandbox import SandboxPool

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "curriculum-demo.yaml"

APPLES = (
    "Tom has 3 boxes with 24 apples in each box. He gives away 10 apples. How many apples does he have left?"
)
GOOD = f"""Problem: {APPLES}

```python
def solution():
    boxes = 3
    per_box = 24
    total = boxes * per_box
    left = total - 10
    return left

print(solution())
```

This function computes the answer step by step."""


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


def _answer(question: str, body: str, lead: str = "Problem:") -> str:
    return f"{lead} {question}\n\n```python\ndef solution():\n{body}\n```\n"


# --- parsing -----------------------------------------------------------------------------------------------


def test_parse_a_chat_answer_into_question_and_program() -> None:
    got = parse_problem(GOOD)
    assert isinstance(got, tuple)
    question, program = got
    assert question == APPLES
    assert program.startswith("def solution():") and "return left" in program
    assert "print(" not in program and "This function" not in program  # prose and calls are not the program


@pytest.mark.parametrize(
    "text",
    [
        f"**Problem:** {APPLES}\n\n```python\ndef solution():\n    return 62\n```",  # markdown label
        f" {APPLES}\n\nSolution:\n```python\ndef solution():\n    return 62\n```",  # continued "Problem:"
        f"Problem 1: {APPLES}\n\ndef solution():\n    return 62\n",  # no fence at all
        f"New problem: {APPLES}\nHere is the function:\n```py\nimport math\n\ndef solution():\n    return math.floor(62.5)\n```",
    ],
)
def test_parse_finds_the_statement_whatever_the_label(text: str) -> None:
    got = parse_problem(text)
    assert isinstance(got, tuple) and got[0] == APPLES, got
    assert "def solution():" in got[1]


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (f"Problem: {APPLES}\n\n```python\ndef answer():\n    return 62\n```", "no solution() function"),
        (f"Problem: {APPLES}\n\n```python\ndef solution(n):\n    return n\n```", "takes arguments"),
        ("Problem: 2^125\n\n```python\ndef solution():\n    return 2 ** 125\n```", "no problem statement"),
        (f"Problem: {APPLES}\nThe answer is 62.", "no solution() function"),
        (
            "```python\ndef solution():\n    return 1\n```\nA question after the code is not read.",
            "statement",
        ),
    ],
)
def test_parse_rejects_malformed_answers(text: str, detail: str) -> None:
    got = parse_problem(text)
    assert isinstance(got, Rejection) and got.reason == "malformed" and detail in got.detail


def test_a_solution_with_default_arguments_is_callable() -> None:
    got = parse_problem(_answer(APPLES, "    def helper(x=3):\n        return x\n    return helper() * 20"))
    assert isinstance(got, tuple)
    got = parse_problem(
        f"Problem: {APPLES}\n```python\ndef solution(total=72, away=10):\n    return total - away\n```"
    )
    assert isinstance(got, tuple)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (62, "62"),
        (62.0, "62"),
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333333333"),
        (12.5, "12.5"),
        (-4, "-4"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "0.00000015"),
        ("18", "18"),
        (" $1,200 ", "1200"),
        ("3/4", "3/4"),
        ("2.50", "2.5"),
        ("1e3", "1000"),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
        ("ten", None),
        ("The answer is 10", None),
        (None, None),
        ([62], None),
        ("1/0", None),
    ],
)
def test_numeric_answer(value: object, want: str | None) -> None:
    assert numeric_answer(value) == want


# --- checks in the sandbox ---------------------------------------------------------------------------------


def test_rejection_reasons_on_real_sandbox_runs(pool: SandboxPool) -> None:
    texts = [
        GOOD,
        _answer(APPLES, "    raise ValueError('no apples')"),
        _answer(APPLES, "    n = 0\n    while True:\n        n += 1"),
        _answer(APPLES, "    return 'sixty-two'"),
        _answer(APPLES, "    return '62'"),  # a numeric string is a number
        _answer(APPLES, "    return undefined_name * 2"),
        _answer(APPLES, "    return float('inf')"),
        "Problem: no code here, only words about apples and boxes.",
        "```python\nimport os\nos._exit(3)\n\ndef solution():\n    return 1\n```\nSome words",
    ]
    got = check_problems(texts, pool, timeout=1.0, metas=[{"index": i} for i in range(len(texts))])
    ok = got[0]
    assert isinstance(ok, MathProblem) and ok.answer == "62" and ok.meta == {"index": 0}
    assert (ok.steps, ok.ops) == (5, 2)  # four assignments and the return; one product, one difference
    assert ok.task().answers == ("62",) and ok.task().question == APPLES
    assert MathProblem.from_record(json.loads(json.dumps(ok.record()))) == ok
    reasons = [g.reason if isinstance(g, Rejection) else g.answer for g in got]
    assert reasons == [
        "62", "error", "timeout", "non_numeric", "62", "error", "non_numeric", "malformed", "malformed",
    ]  # fmt: skip
    details = [g.detail for g in got if isinstance(g, Rejection)]
    assert "ValueError: no apples" in details[0] and "NameError" in details[3]
    assert "'sixty-two'" in details[2] and "inf" in details[4]
    assert set(reasons) - {"62"} <= set(REASONS)


def test_duplicates_are_rejected_against_the_run_and_each_other(pool: SandboxPool) -> None:
    same = APPLES.upper().replace("?", " ?")  # case, spacing and punctuation do not make a new question
    other = (
        "Sara reads 12 pages a day for 5 days, then 8 pages a day for 2 days. How many pages did she read?"
    )
    texts = [
        _answer(APPLES, "    return 62"),
        _answer(same, "    return 3 * 24 - 10"),
        _answer(other, "    return 12 * 5 + 8 * 2"),
        _answer(
            "A question seen in an earlier round: how many days are there in three weeks?", "    return 21"
        ),
        _answer(APPLES, "    raise ValueError"),
    ]
    checked = check_problems(texts, pool, timeout=2.0)
    seen = {question_key("A question seen in an earlier round: how many days are there in three weeks?")}
    kept, rejected = take_new(checked, seen, limit=5)
    assert [p.answer for p in kept] == ["62", "76"]
    assert [(i, r.reason) for i, r in rejected] == [(1, "duplicate"), (3, "duplicate"), (4, "error")]
    assert question_key(APPLES) in seen and question_key(other) in seen
    kept, rejected = take_new(checked, set(), limit=1)  # past the limit, valid problems are spares
    assert len(kept) == 1 and [i for i, _ in rejected] == [1, 4]


def test_prompts() -> None:
    chat = write_prompt("chat+prefix")
    assert isinstance(chat, list) and chat[-1] == {"role": "assistant", "content": "Problem:"}
    assert "solution()" in chat[0]["content"]
    raw = write_prompt("raw")
    assert isinstance(raw, str) and raw.endswith("\n\nProblem:")
    p = MathProblem(APPLES, "def solution():\n    return 62\n", "62", 1, 0)
    up, down = rewrite_prompt(p, "amplify", "chat"), rewrite_prompt(p, "simplify", "chat")
    assert isinstance(up, list) and len(up) == 1 and APPLES in up[0]["content"]
    assert "one more step" in up[0]["content"] and "easier" in down[0]["content"]  # type: ignore[index]
    with pytest.raises(ValueError, match="no rewrite"):
        rewrite_prompt(p, "edge", "chat")


# --- moves, pairs, statistics ------------------------------------------------------------------------------


def _att(greedy: bool, index: int, status: str, text: str = "", pid: str = "p") -> MathAttempt:
    return MathAttempt(pid, greedy, index, text or f"{status} {index}", status, None, "stop", 10)


@pytest.mark.parametrize(
    ("greedy", "sampled", "move"),
    [
        ("correct", ["wrong", "wrong"], "amplify"),  # greedy solved: harder, whatever the samples say
        ("correct", ["correct", "correct"], "amplify"),
        ("wrong", ["wrong", "no_answer"], "simplify"),  # all k fail: easier
        ("wrong", ["error", "timeout"], "simplify"),  # ungradable attempts are not right either
        ("no_answer", ["wrong", "correct"], "edge"),  # in between: mine pairs
        ("wrong", ["correct", "correct"], "edge"),
    ],
)
def test_the_difficulty_move(greedy: str, sampled: list[str], move: str) -> None:
    attempts = [_att(True, 0, greedy), *(_att(False, i, s) for i, s in enumerate(sampled))]
    assert decide_move(attempts) == move


def test_pairs_from_attempts_graded_by_the_real_grader(pool: SandboxPool) -> None:
    grader = MathGrader(pool)
    [prob] = check_problems([_answer(APPLES, "    return 3 * 24 - 10")], pool)
    assert isinstance(prob, MathProblem)
    texts = {
        (True, 0): "3 boxes of 24 is 72, minus 10 is 60. The answer is $\\boxed{60}$.",
        (False, 0): "3 * 24 = 72 apples; 72 - 10 = 62. So he has \\boxed{62} apples left.",
        (False, 1): "He has many apples left.",
        (
            False,
            2,
        ): "3 boxes of 24 is 72, minus 10 is 60. The answer is $\\boxed{60}$.",  # the greedy text again
        (False, 3): "24 * 3 = 72, and 72 - 10 = 62: \\boxed{62}",
        (False, 4): "72 - 10 = 61, so \\boxed{61}.",
    }
    attempts = []
    for (greedy, i), text in texts.items():
        g = grader.grade([prob.answer], text)
        attempts.append(MathAttempt(prob.id, greedy, i, text, g.status, g.answer, "stop", 20))
    assert [a.status for a in attempts] == ["wrong", "correct", "no_answer", "wrong", "correct", "wrong"]
    assert decide_move(attempts) == "edge"

    pairs = mine_pairs(prob, attempts[::-1], rnd=2, max_pairs=4, meta={"model": "m"})  # order does not matter
    # Distinct wrong texts, the greedy one first; right attempts taken in turn.
    assert [(p.meta["wrong"], p.meta["right"]) for p in pairs] == [("greedy", 0), (1, 3), (4, 0)]
    assert [p.wrong_answer for p in pairs] == ["60", None, "61"]
    assert all(p.gold == "62" and p.round == 2 and p.question == APPLES for p in pairs)
    assert len(mine_pairs(prob, attempts, rnd=2, max_pairs=2)) == 2
    assert mine_pairs(prob, [a for a in attempts if not a.correct], rnd=2) == []
    assert MathPair.from_record(json.loads(json.dumps(pairs[0].record()))) == pairs[0]
    assert MathAttempt.from_record(attempts[0].record()) == attempts[0]

    # Training examples: the target is the right attempt as written; the prompt the evaluation's own
    # (problem), or the problem with the wrong attempt and feedback.
    prompt, target = pairs[0].example("chat")
    assert (
        prompt == [{"role": "user", "content": f"{APPLES}\n{MATH_INSTRUCTION}"}]
        and target == texts[(False, 0)]
    )
    fb, target = pairs[0].example("chat", "feedback")
    assert [m["role"] for m in fb] == ["user", "assistant", "user"] and fb[1]["content"] == texts[(True, 0)]
    assert "That answer is wrong" in fb[2]["content"] and target == texts[(False, 0)]
    raw, _ = pairs[0].example("raw", "problem", math_shots("gsm8k"))
    assert (
        isinstance(raw, str) and raw.endswith(f"Question: {APPLES}\nAnswer:") and raw.count("Question:") == 9
    )
    with pytest.raises(ValueError, match="unknown pair prompt"):
        pairs[0].example("chat", "hint")


def test_round_stats_add_up() -> None:
    def prob(q: str, steps: int, **meta: object) -> MathProblem:
        return MathProblem(
            q, f"def solution():\n    return {steps}\n", str(steps), steps, steps - 1, dict(meta)
        )

    pool = [
        prob("a", 3, origin="edge"),
        prob("b", 5, origin="amplify", parent_steps=3),
        prob("c", 2, origin="simplify", parent_steps=4),
        prob("d", 4, origin="amplify", parent_steps=2),
    ]
    ids = [p.id for p in pool]
    plan = {ids[0]: ("wrong", ["correct", "wrong"]), ids[1]: ("correct", ["correct", "correct"]),
            ids[2]: ("wrong", ["wrong", "wrong"]), ids[3]: ("correct", ["wrong", "correct"])}  # fmt: skip
    attempts = [
        a
        for pid, (g, s) in plan.items()
        for a in [_att(True, 0, g, pid=pid), *(_att(False, i, x, pid=pid) for i, x in enumerate(s))]
    ]
    by = {pid: [a for a in attempts if a.problem_id == pid] for pid in ids}
    moves = {pid: decide_move(by[pid]) for pid in ids}
    pairs = mine_pairs(pool[0], by[ids[0]], rnd=3)
    stats = round_stats(3, pool, attempts, moves, pairs)
    assert (
        stats["pool"] == 4 and stats["round"] == 3 and stats["pairs"] == len(pairs) == 2
    )  # the greedy and sample 1
    assert stats["moves"] == {"amplify": 2, "simplify": 1, "edge": 1}
    assert sum(stats["moves"].values()) == stats["pool"] == sum(stats["origins"].values())
    assert stats["origins"] == {"edge": 1, "amplify": 2, "simplify": 1}
    assert stats["greedy_solve_rate"] == 0.5
    assert stats["mean_pass_rate"] == pytest.approx((0.5 + 1 + 0 + 0.5) / 4)
    assert stats["mean_steps"] == 3.5 and stats["mean_ops"] == 2.5
    assert stats["steps_vs_parent"] == {"amplify": 2.0, "simplify": -2.0}
    assert stats["grades"] == {"wrong": 6, "correct": 6}
    assert [r["move"] for r in stats["problems"]] == ["edge", "amplify", "simplify", "amplify"]
    assert sum(r["k"] for r in stats["problems"]) + len(pool) == len(attempts)


# --- settings ----------------------------------------------------------------------------------------------


def test_configs_and_one_line_errors(tmp_path: Path) -> None:
    demo = load_config(DEMO, model=MODEL, rounds=None)
    assert demo.solve.k == 2 and demo.eval.benches == ["gsm8k"] and demo.eval.limit == 4
    gpu = load_config(ROOT / "configs" / "curriculum.yaml", model="m", seed=7)
    assert (gpu.problems, gpu.solve.k, gpu.solve.temperature, gpu.rounds, gpu.seed) == (200, 8, 0.8, 3, 7)
    assert load_config(None, model="m").eval.benches == ["gsm8k"]
    bad = tmp_path / "bad.yaml"
    for text, match in [("solve: {k: 1}\n", r"bad curriculum setting solve\.k"), ("roundz: 2\n", "roundz"),
                        ("problems: [1\n", "not valid YAML"), ("- 1\n", "a mapping")]:  # fmt: skip
        bad.write_text(text)
        with pytest.raises(RecipeError, match=match) as e:
            load_config(bad, model="m")
        assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="not found"):
        load_config(tmp_path / "missing.yaml", model="m")


def test_a_run_folder_keeps_its_settings(tmp_path: Path) -> None:
    cfg = CurriculumConfig(model=MODEL, problems=2, rounds=2)
    write_json(tmp_path / "config.json", cfg.model_dump(mode="json"))  # a run started with these
    with pytest.raises(RecipeError, match=r"a run of 2 round\(s\).*cannot change"):
        curriculum(cfg.model_copy(update={"rounds": 3}), tmp_path)
    with pytest.raises(RecipeError, match=r"other settings \(problems: 2 -> 3\)"):
        curriculum(cfg.model_copy(update={"problems": 3}), tmp_path)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tinyforge.cli import app

    base = ["curriculum", "--model", MODEL, "--out", str(tmp_path / "run")]
    for args, match in [
        (["--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["--rounds", "0"], "bad curriculum setting rounds"),
    ]:
        r = CliRunner().invoke(app, [*base, *args])
        assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output


# --- real runs on SmolLM2 ----------------------------------------------------------------------------------

STAGE_FILES = ("pool.jsonl", "rejections.jsonl", "attempts.jsonl", "pairs.jsonl", "stats.json")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): p.read_text() for p in sorted(run.glob("round-*/*")) if p.name in STAGE_FILES
    }


def _cli(run: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tinyforge.cli", "curriculum", "--model", MODEL, "--out", str(run),
           "--config", str(DEMO), "--seed", "0", "--problems", "2"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_demo_end_to_end_and_again_from_the_cache(tmp_path: Path) -> None:
    """The demo config through the command line, with 2 problems asked for (8 drawn). SmolLM2 is weak: the
    run may end early with a one-line error (no problems, or no pairs); whatever happened must be on record
    and add up, and running again from the generation cache alone must give the same records. (Seen: 2 of
    8 answers kept, 6 malformed; all 6 attempts wrong, both problems simplified; both rewrites rejected, so
    round 2's pool is empty; "no pairs to train on".)"""
    run = tmp_path / "run"
    first = _cli(run)
    state = json.loads((run / "state.json").read_text())["stages"]
    made = state["round-1/pool"]
    rejections = _records(run / "round-1" / "rejections.jsonl")
    pool = _records(run / "round-1" / "pool.jsonl")
    assert made["samples"] == 8 and made["generated"] == 8 and made["kept"] == len(pool) <= 2
    assert len(rejections) + made["valid"] == 8 and sum(made["rejected"].values()) == len(rejections)
    assert all(r["reason"] in REASONS and r["output"] for r in rejections)
    lines = first.stderr.strip().splitlines()
    if first.returncode != 0:
        error = lines[-1]
        assert error.startswith("error: no ") and "ask for more" in error, first.stderr[-2000:]
        assert not (run / "result.json").exists()
    if not pool:
        assert "no problems in round 1" in error and "rejected: " in error
    rounds = sorted(run.glob("round-*/stats.json"))
    for path in rounds:
        stats = json.loads(path.read_text())
        folder = path.parent
        n = stats["pool"]
        attempts = _records(folder / "attempts.jsonl")
        assert n == len(_records(folder / "pool.jsonl")) > 0
        assert len(attempts) == n * (1 + 2) and sum(a["greedy"] for a in attempts) == n  # k=2 and greedy
        assert sum(stats["moves"].values()) == n == sum(stats["origins"].values())
        assert stats["pairs"] == len(_records(folder / "pairs.jsonl"))
        assert sum(stats["grades"].values()) == len(attempts)
        assert (
            stats["greedy_solve_rate"] == sum(a["greedy"] and a["status"] == "correct" for a in attempts) / n
        )
        assert stats["mean_steps"] > 0
    if len(rounds) == 1 and (run / "round-2").is_dir():  # round 2 was made from round 1's moves but is empty
        r2 = state["round-2/pool"]
        moved = sum(v for k, v in json.loads(rounds[0].read_text())["moves"].items() if k != "edge")
        assert (
            r2["rewrites"] == moved and r2["replaced"] == 0 and not _records(run / "round-2" / "pool.jsonl")
        )
        assert all(
            r["parent"] and r["move"] in ("amplify", "simplify")
            for r in _records(run / "round-2" / "rejections.jsonl")
        )
    if first.returncode == 0:
        result = json.loads((run / "result.json").read_text())
        assert result["pairs"]["mined"] == sum(r["pairs"] for r in result["rounds"]) >= 1
        assert (run / "train" / "adapter" / "adapter_config.json").is_file()
        assert {"gsm8k/auto"} == set(result["vs_before"]) and "p_value" in result["vs_before"]["gsm8k/auto"][
            "mcnemar"
        ]
        assert (run / "report.md").read_text().startswith(f"# tinyforge curriculum: {MODEL}")

    # Again, as if killed after generating: every stage file gone, the cache kept. Nothing is generated,
    # and the records come out the same.
    before = _snapshot(run)
    cached = (run / "cache" / "completions.jsonl").read_text()
    for folder in run.glob("round-*"):
        shutil.rmtree(folder)
    for name in ("result.json", "report.md"):
        (run / name).unlink(missing_ok=True)
    second = _cli(run)
    assert second.returncode == first.returncode and second.stderr.strip().splitlines()[-1:] == lines[-1:]
    assert _snapshot(run) == before
    assert (run / "cache" / "completions.jsonl").read_text() == cached
    again = json.loads((run / "state.json").read_text())["stages"]
    generating = [k for k in again if k.endswith(("/pool", "/solve"))]
    assert generating and all(again[k]["generated"] == 0 and again[k]["from_cache"] > 0 for k in generating)


@pytest.mark.slow
def test_the_train_and_evaluate_tail_on_a_given_round(tmp_path: Path, pool: SandboxPool) -> None:
    """A run folder whose round 1 is on record (a problem at the edge, one solved greedily; the attempts
    graded by the real grader) is resumed with SmolLM2: pairs are mined, GSM8K (2 tasks) is scored before
    and after a LoRA trained on them, and a rerun changes nothing."""
    other = (
        "Sara reads 12 pages a day for 5 days, then 8 pages a day for 2 days. How many pages did she read?"
    )
    texts = [_answer(APPLES, "    return 3 * 24 - 10"), _answer(other, "    return 12 * 5 + 8 * 2")]
    metas = [{"round": 1, "origin": "generated", "index": i} for i in range(2)]
    problems = check_problems(texts, pool, metas=metas)
    assert all(isinstance(p, MathProblem) for p in problems)
    grader = MathGrader(pool)
    said = {
        0: ["The answer is \\boxed{60}.", "3 * 24 - 10 = 62, so \\boxed{62}.", "Many apples."],
        1: ["60 + 16 = 76 pages: \\boxed{76}.", "\\boxed{76}", "\\boxed{70}"],
    }
    attempts = []
    for j, p in enumerate(problems):
        assert isinstance(p, MathProblem)
        for i, text in enumerate(said[j]):
            g = grader.grade([p.answer], text)
            attempts.append(MathAttempt(p.id, i == 0, max(i - 1, 0), text, g.status, g.answer, "stop", 9))
    folder = tmp_path / "round-1"
    folder.mkdir()
    (folder / "pool.jsonl").write_text("".join(json.dumps(p.record()) + "\n" for p in problems))  # type: ignore[union-attr]
    (folder / "rejections.jsonl").write_text("")
    (folder / "attempts.jsonl").write_text("".join(json.dumps(a.record()) + "\n" for a in attempts))
    cfg = load_config(DEMO, model=MODEL, rounds=1, problems=2)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": 2, "max_new_tokens": 48})})

    result = curriculum(cfg, tmp_path)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["moves"] == {"amplify": 1, "simplify": 0, "edge": 1} and stats["greedy_solve_rate"] == 0.5
    pairs = _records(folder / "pairs.jsonl")
    assert [(p["wrong_answer"], p["meta"]["wrong"]) for p in pairs] == [("60", "greedy"), (None, 1)]
    # Two pairs, one training example: in the "problem" format both are the problem and the right answer.
    assert result["pairs"] == {
        "mined": 2,
        "by_round": {"1": 2},
        "problems": 1,
        "prompt": "problem",
        "examples": 1,
    }
    train = json.loads((tmp_path / "train" / "train.json").read_text())
    assert (
        train["examples"] == result["train"]["examples"] == 1 and train["steps"] == result["train"]["steps"]
    )
    assert (tmp_path / "train" / "adapter" / "adapter_config.json").is_file()
    for label in ("before", "after"):
        samples = _records(tmp_path / "eval" / f"{label}-gsm8k-auto" / "samples.jsonl")
        assert [s["task_id"] for s in samples] == ["0", "1"]
        assert result[label]["gsm8k/auto"] == sum(s["passed"] for s in samples) / 2
    vs = result["vs_before"]["gsm8k/auto"]
    assert vs["tasks"] == 2 and len(vs["before_ci95"]) == len(vs["after_ci95"]) == 2
    assert set(vs["mcnemar"]) == {"b", "c", "n_discordant", "p_value"}
    assert [r["round"] for r in result["rounds"]] == [1] and result["stopped_early"] is None
    assert set(result["stages"]) == {"train", "eval/before-gsm8k-auto", "eval/after-gsm8k-auto"}
    report = (tmp_path / "report.md").read_text()
    assert report.startswith(f"# tinyforge curriculum: {MODEL}") and "| gsm8k/auto | 2 |" in report

    again = curriculum(cfg, tmp_path)  # everything on record: the same result
    drop = ("date", "wall_s_this_invocation", "stages")
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in result.items() if k not in drop
    }
