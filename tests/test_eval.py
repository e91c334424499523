"""``tinyforge eval``: generation and verification overlapped, results re-scorable, runs resumable.

The pipeline's logic is checked with an engine that answers each prompt with the benchmark's canonical
solution (so the right score is known: 100%), the real sandbox and real benchmark files; the whole command
runs once with the real SmolLM2.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tinyforge.cli import app
from tinyforge.data import load_benchmark
from tinyforge.evaluate.run import evaluate
from tinyforge.evaluate.score import ScoreError, read_samples, score
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams
from tinyforge.generate.models import fetch_model
from tinyforge.generate.prompts import code_prompt
from tinyforge.sandbox import SandboxPool


class Canonical(Engine):
    """Answers each task's prompt with its canonical solution (chat: in a fenced block, after some prose;
    raw: the body that continues the prompt). ``delay`` seconds per completion; ``die_after`` raises like a
    kill after that many completions; ``wrong`` task ids get a wrong answer."""

    def __init__(
        self, bench: str, delay: float = 0.0, die_after: int | None = None, wrong: Sequence[str] = ()
    ):
        self.by_prompt: dict[str, Any] = {}
        for t in load_benchmark(bench):
            for fmt in ("raw", "chat"):
                self.by_prompt[self.render(code_prompt(t, fmt))] = (t, fmt)
        self.delay, self.die_after, self.wrong = delay, die_after, set(wrong)
        self.asked = 0
        self.yielded_at: list[float] = []

    def render(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt)

    def key(self) -> dict[str, Any]:
        return {"canonical": 1}

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        self.asked += len(requests)
        for i, r in enumerate(requests):
            if self.die_after is not None and len(self.yielded_at) == self.die_after:
                raise KeyboardInterrupt
            time.sleep(self.delay)
            task, fmt = self.by_prompt[self.render(r.prompt)]
            body = task.canonical_solution
            if task.task_id in self.wrong:
                body = "    return None\n"
            if fmt == "raw":
                text = body if task.canonical_solution.startswith((" ", "\t")) else body
            else:
                program = task.prompt + body if body.startswith((" ", "\t")) else body
                text = f"Here is the solution:\n```python\n{program}```\nIt works.\n"
            self.yielded_at.append(time.perf_counter())
            yield i, Completion(text, 10, 20, "stop")


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_canonical_answers_score_100(fmt: str, pool: SandboxPool, tmp_path: Path) -> None:
    engine = Canonical("humaneval", wrong=["HumanEval/3"])
    summary = evaluate(
        "humaneval", engine, out_dir=tmp_path / "out", fmt=fmt, limit=12, cache_dir=tmp_path / "c", pool=pool
    )
    assert summary["n_tasks"] == 12 and summary["n_tasks_solved"] == 11
    assert summary["pass@1"] == pytest.approx(11 / 12)
    assert summary["format"] == fmt and summary["model"] == {"backend": "Canonical", "canonical": 1}
    lo, hi = summary["wilson95_pass@1"]
    assert lo < 11 / 12 < hi
    recs = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").open()]
    assert [r["task_id"] for r in recs] == [f"HumanEval/{i}" for i in range(12)]
    assert [r["passed"] for r in recs] == [i != 3 for i in range(12)]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["pass@1"] == summary["pass@1"]


def test_samples_file_scores_the_same_again(pool: SandboxPool, tmp_path: Path) -> None:
    """samples.jsonl is in evalplus' format: scored again (here on HumanEval+), verdicts match eval's."""
    engine = Canonical("humaneval+", wrong=["HumanEval/1", "HumanEval/5"])
    summary = evaluate(
        "humaneval+",
        engine,
        out_dir=tmp_path / "out",
        fmt="chat",
        limit=8,
        cache_dir=tmp_path / "c",
        pool=pool,
    )
    assert summary["n_tasks_solved"] == 6 and "plus" in summary and "base" in summary
    samples = read_samples(tmp_path / "out" / "samples.jsonl")
    first = [s["passed"] for s in samples]
    tasks = load_benchmark("humaneval+")[:8]
    again, results = score("humaneval+", samples, pool=pool, tasks=tasks)
    assert [r.passed for r in results] == first
    assert again["pass@1"] == summary["pass@1"]


def test_verification_overlaps_generation(pool: SandboxPool, tmp_path: Path) -> None:
    """Verdicts arrive while the engine is still generating, not after it is done."""
    engine = Canonical("humaneval", delay=0.3)
    verdict_times: list[float] = []
    lock = threading.Lock()

    def progress(label: str, total: int):  # noqa: ANN202
        def tick(n: int = 1) -> None:
            if label == "verify":
                with lock:
                    verdict_times.append(time.perf_counter())

        return tick

    summary = evaluate(
        "humaneval", engine, out_dir=tmp_path / "o", fmt="raw", limit=10, cache_dir=tmp_path / "c",
        pool=pool, progress=progress,
    )  # fmt: skip
    assert summary["pass@1"] == 1.0
    last_generated = engine.yielded_at[-1]
    assert len(verdict_times) == 10
    assert sum(t < last_generated for t in verdict_times) >= 5
    assert summary["wall_s"] - summary["generation"]["wall_s"] < 2.0


class Peeking(Canonical):
    """``Canonical`` through ``run_peeking``, as vLLM shows samples still being generated: before each
    completion, its text so far at three points (the answer, then the answer and part of the prose a model
    writes after it). For ``wrong`` tasks the peeks show the right answer and the completion ends wrong (the
    program changed after it seemed settled)."""

    peeks = True
    prose = "\n\n\n# The function above handles every case.\n# Tested by hand.\n"

    def run_peeking(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Callable[[int, str], None]
    ) -> Iterator[tuple[int, Completion]]:
        for pos, c in self.run(requests, params):
            task, _ = self.by_prompt[self.render(requests[pos].prompt)]
            seen = task.canonical_solution + self.prose
            for cut in (len(task.canonical_solution), len(seen) - 25, len(seen) - 5):
                peek(pos, seen[:cut])
            yield pos, replace(c, text=c.text + self.prose)


def test_programs_that_settle_are_verified_ahead(pool: SandboxPool, tmp_path: Path) -> None:
    """On an engine that peeks, a sample whose program stops changing is verified before its completion
    comes; a program that changes after all gets its own verdict. The verdicts are those of an eval that
    does not look ahead."""
    params = SamplingParams(n=2, temperature=0.8)
    runs = {}
    for ahead in (True, False):
        engine = Peeking("humaneval", wrong=["HumanEval/2", "HumanEval/5"])
        out = tmp_path / str(ahead)
        runs[ahead] = evaluate(
            "humaneval", engine, out_dir=out, fmt="raw", params=params, limit=8, cache_dir=out / "c",
            pool=pool, verify_ahead=ahead,
        )  # fmt: skip
        runs[ahead]["verdicts"] = [r["passed"] for r in read_samples(out / "samples.jsonl")]
    with_, without = runs[True], runs[False]
    assert with_["verdicts"] == without["verdicts"] == [t not in (2, 5) for t in range(8) for _ in range(2)]
    # 16 samples, the 2 of a task the same program: 8 programs, each run once. Ahead, every sample was sent;
    # the wrong tasks' 4 were not the program after all, whose 2 runs were extra jobs.
    assert with_["verification"] == {"programs": 8, "sandbox_jobs": 10, "ahead": {"sent": 16, "used": 12}}
    assert without["verification"] == {"programs": 8, "sandbox_jobs": 8, "ahead": {"sent": 0, "used": 0}}


def test_killed_run_resumes_from_the_cache(pool: SandboxPool, tmp_path: Path) -> None:
    params = SamplingParams(n=3, temperature=0.8)
    dying = Canonical("humaneval", die_after=7)
    with pytest.raises(KeyboardInterrupt):
        evaluate("humaneval", dying, out_dir=tmp_path / "o", fmt="raw", params=params, limit=4,
                 cache_dir=tmp_path / "c", pool=pool)  # fmt: skip
    again = Canonical("humaneval")
    summary = evaluate("humaneval", again, out_dir=tmp_path / "o", fmt="raw", params=params, limit=4,
                       cache_dir=tmp_path / "c", pool=pool)  # fmt: skip
    assert again.asked == 12 - 7
    assert summary["generation"] | {"wall_s": 0} == summary["generation"] | {
        "samples": 12, "from_cache": 7, "generated": 5, "wall_s": 0,
    }  # fmt: skip
    assert summary["pass@3"] == 1.0 and summary["best_of_n"] == {"n": 3, "solved": 4, "rate": 1.0}
    third = Canonical("humaneval")
    evaluate("humaneval", third, out_dir=tmp_path / "o2", fmt="raw", params=params, limit=4,
             cache_dir=tmp_path / "c", pool=pool)  # fmt: skip
    assert third.asked == 0


def test_bad_options(pool: SandboxPool, tmp_path: Path) -> None:
    engine = Canonical("humaneval")
    with pytest.raises(ScoreError, match="identical samples"):
        evaluate("humaneval", engine, out_dir=tmp_path, params=SamplingParams(n=4), pool=pool)
    with pytest.raises(ScoreError, match="unknown prompt format"):
        evaluate("humaneval", engine, out_dir=tmp_path, fmt="markdown", pool=pool)


runner = CliRunner()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["--model", "no-such-model"], "no model 'no-such-model'"),
        (["--model", "smollm2-135m-instruct", "--n", "4"], "identical samples"),
        (["--model", "x", "--backend", "tpu"], "unknown backend"),
        (["--model", "x", "--base-url", "http://127.0.0.1:9/v1"], "cannot reach"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["eval", "--bench", "humaneval", "--out", str(tmp_path), *args])
        assert r.exit_code == 2, r.output
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.slow
def test_eval_with_the_real_model(tmp_path: Path) -> None:
    """The whole command on SmolLM2: greedy, chat format; then the same command again is served from the
    cache and gives the same verdicts."""
    fetch_model("smollm2-135m-instruct")
    args = ["eval", "--bench", "humaneval", "--model", "smollm2-135m-instruct", "--limit", "3",
            "--max-new-tokens", "160", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["format"] == "chat" and result["n_tasks"] == 3 and result["generation"]["generated"] == 3
    assert result["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert 0 < result["generation"]["completion_tokens"] <= 3 * 160
    recs = read_samples(tmp_path / "a" / "samples.jsonl")
    assert all(r["output"] and isinstance(r["solution"], str) for r in recs)
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "b" / "result.json").read_text())
    assert again["generation"]["from_cache"] == 3 and again["generation"]["generated"] == 0
    assert [r["passed"] for r in read_samples(tmp_path / "b" / "samples.jsonl")] == [
        r["passed"] for r in recs
    ]
