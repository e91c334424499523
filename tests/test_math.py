"""Math benchmarks: the loaders on the real files, answer grading with math-verify in the real sandbox
(table-driven tricky cases), `tinyforge score` / `selfcheck` / `eval` on GSM8K, MATH-500 and AIME."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tinyforge.cli import app
from tinyforge.data import get_task, load_benchmark, normalize_task_id
from tinyforge.data.math import gsm8k_answer, load_gsm8k
from tinyforge.evaluate import mathgrade
from tinyforge.evaluate.mathgrade import MathGradeError, MathGrader
from tinyforge.evaluate.run import evaluate
from tinyforge.evaluate.score import score
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams
from tinyforge.generate.models import fetch_model
from tinyforge.generate.prompts import math_prompt, math_shots
from tinyforge.sandbox import SandboxPool

runner = CliRunner()


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def grader(pool: SandboxPool) -> MathGrader:
    return MathGrader(pool)


# --- data ---------------------------------------------------------------------------------------------


def test_loaders_read_the_real_files() -> None:
    gsm, math500, aime = load_benchmark("gsm8k"), load_benchmark("math500"), load_benchmark("aime")
    assert (len(gsm), len(math500), len(aime)) == (1319, 500, 90)
    assert gsm[0].task_id == "0" and gsm[0].answers == ("18",) and "<<" not in gsm[0].solution
    assert math500[0].task_id == "test/precalculus/807.json" and math500[0].extra["level"] == 2
    assert get_task("aime", "2022-II-8").answers == ("80", "81")  # accepts 080 or 081
    assert (
        get_task("gsm8k", "gsm8k/3").task_id == "3"
        and normalize_task_id("math500", " test/x.json ") == "test/x.json"
    )
    assert len(load_benchmark("gsm8k-train")) == 7473
    assert all("," not in t.answers[0] for t in gsm)  # "#### 1,000" -> "1000"
    assert gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"


def test_corrupt_math_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "q", "answer": "no final number"}\n')
    with pytest.raises(ValueError, match=r"gsm.jsonl:1: a GSM8K answer must end with '#### <number>'"):
        load_gsm8k(bad)
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="record lacks answer"):
        load_gsm8k(bad)


# --- grading -----------------------------------------------------------------------------------------

# (accepted answers, model text, expected status). Gold answers are written as the benchmarks write them.
CASES: list[tuple[Sequence[str], str, str]] = [
    # fractions vs decimals
    (["\\frac{1}{2}"], "So the answer is $\\boxed{0.5}$.", "correct"),
    (["0.5"], "The answer is $\\boxed{\\frac12}$", "correct"),
    (["\\frac{3}{4}"], "\\boxed{\\dfrac{3}{4}}", "correct"),
    (["\\frac{1}{3}"], "\\boxed{0.33}", "wrong"),
    # 4 vs 4 sqrt 2
    (["4"], "The answer is $\\boxed{4\\sqrt{2}}$.", "wrong"),
    (["4\\sqrt{2}"], "\\boxed{\\sqrt{32}}", "correct"),
    # intervals and sets
    (["[2,5)"], "The domain is $\\boxed{[2,5)}$.", "correct"),
    (["(2,5]"], "The domain is $\\boxed{[2,5)}$.", "wrong"),
    (["\\{1,2\\}"], "\\boxed{\\{2, 1\\}}", "correct"),
    (["\\left( 3, \\frac{\\pi}{2} \\right)"], "\\boxed{(3, \\frac{\\pi}{2})}", "correct"),
    # degrees and percentages
    (["30^\\circ"], "\\boxed{30}", "correct"),
    (["30"], "The angle is \\boxed{30^\\circ}.", "correct"),
    (["50\\%"], "\\boxed{50}", "correct"),
    # AIME 2022-II-8 accepts 080 or 081
    (["80", "81"], "\\boxed{080}", "correct"),
    (["80", "81"], "so the answer is \\boxed{081}", "correct"),
    (["80", "81"], "\\boxed{82}", "wrong"),
    # GSM8K: commas, currency, units, the raw few-shot ending, the dataset's own "####"
    (["1234"], "The answer is 1,234.", "correct"),
    (["1234"], "So she pays \\$1,234.", "correct"),
    (["18"], "She makes 9 * 2 = $18 every day.\nThe answer is 18.", "correct"),
    (["18"], "#### 18", "correct"),
    (["25"], "The final answer is 25 dollars.", "correct"),
    (["1000"], "The answer is \\boxed{1000 \\text{ meters}}", "correct"),
    (["-3"], "The answer is $\\boxed{-3}$.", "correct"),
    # the boxed answer counts, not the last number
    (["7"], "The answer is $\\boxed{7}$. Check: 3 + 4 = 7, and 2 * 5 = 10.", "correct"),
    # nothing to extract
    (["25"], "I don't know.", "no_answer"),
    (["25"], "", "no_answer"),
]


def test_grading_tricky_cases(grader: MathGrader) -> None:
    futures = [grader.submit(golds, text) for golds, text, _ in CASES]
    got = [(golds, text, f.result().status) for (golds, text, _), f in zip(CASES, futures, strict=True)]
    wrong = [(g, t, s, want) for (g, t, s), (_, _, want) in zip(got, CASES, strict=True) if s != want]
    assert not wrong, wrong


def test_grade_carries_the_answer_and_a_vote_key(grader: MathGrader) -> None:
    half = [grader.grade(["1/2"], t) for t in ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.50}")]
    assert [g.correct for g in half] == [True, True, True]
    assert {g.key for g in half} == {"1/2"}  # one vote, whatever the spelling
    g = grader.grade(["4"], "\\boxed{4\\sqrt{2}}")
    assert g.answer == "4\\sqrt{2}" and g.key == "4*sqrt(2)" and not g.correct


def test_model_text_is_evaluated_only_inside_the_sandbox(grader: MathGrader, tmp_path: Path) -> None:
    """math-verify's expression parser evaluates Python: grading happens in the sandbox, so a hostile
    answer cannot touch the host."""
    target = tmp_path / "pwned"
    text = f"\\boxed{{__import__('pathlib').Path('{target}').write_text('x')}}"
    g = grader.grade(["1"], text)
    assert not target.exists()
    assert not g.correct


def test_a_hanging_grade_times_out(pool: SandboxPool) -> None:
    """The sandbox's per-input timer bounds a grade (math-verify's own signal.alarm is off)."""
    g = MathGrader(pool, timeout=1.0).grade(["1"], "\\boxed{9**9**9**9}")
    assert g.status in ("timeout", "wrong", "error"), g
    assert not g.correct


def test_missing_symbolic_layer_fails_loudly(pool: SandboxPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mathgrade, "GRADER", "import no_such_latex_parser\n" + mathgrade.GRADER)
    with pytest.raises(MathGradeError, match=r"math grading does not work here .*pip install 'math-verify"):
        MathGrader(pool).grade(["1"], "\\boxed{1}")


# --- scoring and eval --------------------------------------------------------------------------------


@pytest.mark.parametrize("bench", ["aime", "math500"])
def test_selfcheck_scores_the_worked_solutions_100(bench: str, tmp_path: Path) -> None:
    """MATH-500's own worked solutions (answer in \\boxed{}) and AIME's answers all grade correct."""
    r = runner.invoke(app, ["selfcheck", "--bench", bench, "--out", str(tmp_path), "--workers", "2"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["pass@1"] == 1.0 and result["n_tasks"] == {"aime": 90, "math500": 500}[bench]
    assert result["harness"]["math_verify"] == "0.9.0"


def test_score_cli_on_gsm8k(tmp_path: Path) -> None:
    tasks = load_benchmark("gsm8k")[:6]
    samples = []
    for i, t in enumerate(tasks):
        for j in range(2):  # two samples per task: right, then right only for even tasks
            answer = t.answers[0] if j == 0 or i % 2 == 0 else "99999"
            samples.append(
                {"task_id": f"gsm8k/{t.task_id}", "completion": f"Thinking...\nThe answer is {answer}."}
            )
    samples.append({"task_id": "5", "completion": "no idea"})
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    r = runner.invoke(
        app, ["score", "--bench", "gsm8k", "--samples", str(path), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    # 1319 tasks count; 6 have samples; pass@1 per task = (2/2, 1/2, 2/2, 1/2, 2/2, 1/3) over 1319 (others 0)
    assert result["n_tasks"] == 1319 and len(result["missing_tasks"]) == 1313
    assert result["pass@1"] == pytest.approx((1 + 0.5 + 1 + 0.5 + 1 + 1 / 3) / 1319)
    assert result["status_counts"] == {"passed": 9, "failed": 3, "no_answer": 1}
    out = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").open()]
    assert out[0]["task_id"] == "0" and out[0]["answer"] == "18" and out[0]["answer_key"] == "18"
    assert out[-1]["status"] == "no_answer" and out[-1]["answer"] is None


def test_score_rejects_samples_without_text(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "2022-I-1", "solution": "print(116)"}) + "\n")
    r = runner.invoke(app, ["score", "--bench", "aime", "--samples", str(path), "--out", str(tmp_path / "o")])
    assert (
        r.exit_code == 2 and "no 'completion' string" in r.output and len(r.output.strip().splitlines()) == 1
    )
    path.write_text(json.dumps({"task_id": "2031-I-1", "completion": "1"}) + "\n")
    r = runner.invoke(app, ["score", "--bench", "aime", "--samples", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a task of aime" in r.output


class Gold(Engine):
    """Answers each math prompt with its gold answer (chat: in \\boxed{}; raw: "The answer is X."), except
    the ``wrong`` task ids."""

    def __init__(self, bench: str, wrong: Sequence[str] = ()) -> None:
        shots = math_shots(bench)
        self.answer: dict[str, tuple[str, str]] = {}
        for t in load_benchmark(bench):
            for fmt in ("raw", "chat"):
                a = "0" if t.task_id in wrong else t.answers[0]
                self.answer[self.render(math_prompt(t, fmt, shots))] = (fmt, a)
        self.seen: list[str] = []

    def render(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt)

    def key(self) -> dict[str, Any]:
        return {"gold": 1}

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        for i, r in enumerate(requests):
            self.seen.append(self.render(r.prompt))
            fmt, a = self.answer[self.render(r.prompt)]
            text = (
                f" 3 + 4 = 7.\nThe answer is {a}.\n"
                if fmt == "raw"
                else f"So the answer is $\\boxed{{{a}}}$."
            )
            yield i, Completion(text, 10, 12, "stop")


@pytest.mark.parametrize(("bench", "fmt"), [("gsm8k", "raw"), ("math500", "chat"), ("aime", "raw")])
def test_eval_on_math_benchmarks(bench: str, fmt: str, pool: SandboxPool, tmp_path: Path) -> None:
    tasks = load_benchmark(bench)[:5]
    engine = Gold(bench, wrong=[tasks[1].task_id])
    summary = evaluate(
        bench, engine, out_dir=tmp_path / "o", fmt=fmt, limit=5, cache_dir=tmp_path / "c", pool=pool
    )
    assert summary["n_tasks"] == 5 and summary["n_tasks_solved"] == 4 and summary["format"] == fmt
    recs = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").open()]
    assert [r["task_id"] for r in recs] == [t.task_id for t in tasks]
    assert [r["passed"] for r in recs] == [True, False, True, True, True]
    assert all(isinstance(r["completion"], str) and r["answer"] for r in recs)
    if fmt == "raw":  # few-shot: worked examples first, the task's question last
        prompt = engine.seen[0]
        assert (
            prompt.count("Question: " if bench == "gsm8k" else "Problem:\n") == {"gsm8k": 9, "aime": 5}[bench]
        )
        assert prompt.rstrip().endswith("Answer:" if bench == "gsm8k" else "Solution:")
    # the samples file re-scores to the same verdicts
    again, results = score(bench, recs, pool=pool, tasks=tasks)
    assert [r.passed for r in results] == [r["passed"] for r in recs] and again["pass@1"] == summary["pass@1"]


def test_math_formats_are_checked(pool: SandboxPool, tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["eval", "--bench", "gsm8k", "--model", "x", "--format", "chat+prefix", "--out", str(tmp_path)]
    )
    assert r.exit_code == 2 and "unknown prompt format 'chat+prefix' for a math benchmark" in r.output


@pytest.mark.slow
def test_eval_gsm8k_with_the_real_model(tmp_path: Path) -> None:
    """SmolLM2 on the first GSM8K problems, chat format: answers are extracted and graded; the rerun is
    served from the cache."""
    fetch_model("smollm2-135m-instruct")
    args = ["eval", "--bench", "gsm8k", "--model", "smollm2-135m-instruct", "--limit", "2",
            "--max-new-tokens", "96", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["format"] == "chat" and result["n_tasks"] == 2 and result["generation"]["generated"] == 2
    recs = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").open()]
    assert all(r["completion"] and r["status"] in ("passed", "failed", "no_answer") for r in recs)
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b" / "result.json").read_text())["generation"]["from_cache"] == 2


# --- test-time sampling ------------------------------------------------------------------------------


class Voter(Engine):
    """Greedy: a wrong answer (7). Sampled, per task: samples 0 and 3 give the gold answer, 1 and 2 give 7
    (a 2-2 tie that the earliest sample, the gold one, wins), and later samples give no answer."""

    def __init__(self, bench: str) -> None:
        self.gold = {self.render(math_prompt(t, "chat")): t.answers[0] for t in load_benchmark(bench)}

    def render(self, prompt: Prompt) -> str:
        return json.dumps(prompt)

    def key(self) -> dict[str, Any]:
        return {"voter": 1}

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        for i, r in enumerate(requests):
            gold = self.gold[self.render(r.prompt)]
            a = "7" if params.greedy else {0: gold, 3: gold, 1: "7", 2: "7"}.get(r.index)
            yield i, Completion(f"\\boxed{{{a}}}" if a else "no idea", 5, 5, "stop")


def test_sweep_tables_oracle_and_majority_vote(pool: SandboxPool, tmp_path: Path) -> None:
    from tinyforge.evaluate.tts import sweep

    result = sweep(
        "gsm8k",
        Voter("gsm8k"),
        [1, 2, 4, 6],
        out_dir=tmp_path,
        fmt="chat",
        limit=4,
        cache_dir=tmp_path / "c",
        pool=pool,
    )
    rows = {r["n"]: r for r in result["rows"]}
    assert result["greedy_pass@1"] == 0.0 and result["tasks"] == 4  # the greedy 7 is never right
    # pass@1 = 2/6; pass@6 = 1; pass@2 = 1 - C(4,2)/C(6,2) = 1 - 6/15
    assert rows[1]["oracle"] == pytest.approx(2 / 6) and rows[6]["oracle"] == 1.0
    assert rows[2]["oracle"] == pytest.approx(1 - 6 / 15)
    # all 6 samples: gold 2 votes, 7 2 votes, tie -> the earliest (gold, sample 0): SC@6 = 1, recovery 1
    assert rows[6]["sc"] == 1.0 and rows[6]["recovery"] == 1.0
    # one sample: right iff it is sample 0 or 3 (a sample without an answer votes for nothing): 2/6
    assert rows[1]["sc"] == pytest.approx(2 / 6)
    assert (tmp_path / "tts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 6 | 100.0% | 100.0% | 100.0% |" in (tmp_path / "tts.md").read_text()
    sampled = json.loads((tmp_path / "sampled" / "result.json").read_text())
    assert sampled["self_consistency"]["accuracy"] == 1.0 and sampled["best_of_n"]["solved"] == 4


def test_tts_cli_errors(tmp_path: Path) -> None:
    for args, message in [
        (["--n", "1,x"], "--n takes sample counts"),
        (["--n", "0,2"], "at least 1"),
        (["--temperature", "0"], "set a temperature above 0"),
    ]:
        r = runner.invoke(
            app,
            ["tts", "--bench", "gsm8k", "--model", "smollm2-135m-instruct", "--out", str(tmp_path), *args],
        )
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
