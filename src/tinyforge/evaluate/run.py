"""``tinyforge eval``: generate completions for a benchmark (code or math) and score them, overlapping the two.

Each completion goes to the sandbox the moment the engine yields it (``Scorer.submit``), so verification
runs on the CPU while the model keeps writing, and the run ends shortly after the last completion.
Completions pass through the generation cache first: a killed run, run again, regenerates nothing that
was already written, and a rerun with the same seed is served from the cache alone (verdicts are
recomputed; they are cheap and depend on the harness, not the model).

Code samples are written in evalplus' format (``task_id`` + ``solution``, the whole program) plus what the
model wrote (``output``), its sample ``index`` and finish reason, so that ``tinyforge score`` and
evalplus can score the file again. Math samples carry the model's whole answer as ``completion`` (what
``tinyforge score`` grades) and the extracted ``answer``.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from tinyforge.data import cache_dir as data_cache_dir
from tinyforge.data import get_benchmark, load_benchmark
from tinyforge.evaluate.metrics import wilson_interval
from tinyforge.evaluate.score import SampleResult, ScoreError, make_scorer, write_results
from tinyforge.generate.base import Engine, GenerationRequest, SamplingParams
from tinyforge.generate.cache import CachedEngine, GenerationCache
from tinyforge.generate.prompts import FORMATS, MATH_FORMATS, math_shots, task_prompt, task_stops, to_program
from tinyforge.sandbox import Limits, Pool, make_pool

__all__ = ["check_format", "default_cache_dir", "eval_pool", "evaluate", "resolve_format"]

Progress = Callable[[str, int], Callable[[int], None]]


def default_cache_dir() -> Path:
    """Where completions are cached unless told otherwise: ``<tinyforge cache>/generations``."""
    return data_cache_dir() / "generations"


# An indented line followed (blank lines aside) by a line at column 0: a block of code has closed.
CLOSED_BLOCK = re.compile(r"^[ \t]+\S.*\n(?:[ \t]*\n)*(?=\S)", re.MULTILINE)


def eval_pool(workers: int | None = None) -> Pool:
    """The sandbox pool of an eval. Verdicts do not depend on CPU priority (time limits are seconds of wall
    clock, far above what a solution needs), so jobs run niced: the CPU side of generation (scheduling,
    detokenizing) goes first."""
    return make_pool(workers, Limits(nice=10))


def check_format(fmt: str, kind: str = "code") -> str:
    """``fmt`` if it is ``auto`` or a prompt format of benchmarks of ``kind`` (code, math); else a ScoreError."""
    known = MATH_FORMATS if kind == "math" else FORMATS
    if fmt != "auto" and fmt not in known:
        raise ScoreError(
            f"unknown prompt format {fmt!r} for a {kind} benchmark; known: auto, {', '.join(known)}"
        )
    return fmt


def resolve_format(fmt: str, engine: Engine, kind: str = "code") -> str:
    """``auto`` is ``chat`` for a model with a chat template (or a server, which applies its own), else
    ``raw``; other names are checked against the formats of the benchmark ``kind`` and returned."""
    if check_format(fmt, kind) == "auto":
        tokenizer = getattr(engine, "tokenizer", None)
        return "raw" if tokenizer is not None and not tokenizer.chat_template else "chat"
    return fmt


def evaluate(
    bench: str,
    engine: Engine,
    *,
    out_dir: str | os.PathLike[str],
    fmt: str = "auto",
    params: SamplingParams | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    pool: Pool | None = None,
    progress: Progress | None = None,
    meta: dict[str, Any] | None = None,
    verify_ahead: bool = True,
) -> dict[str, Any]:
    """Generate ``params.n`` samples per task of ``bench`` (the first ``limit`` tasks), verify each in the
    sandbox as it arrives, and write ``out_dir/result.json`` and ``out_dir/samples.jsonl``.

    ``verify_ahead``: on an engine that ``peeks`` (vLLM), the program of a code sample still being generated
    is verified each time a block of it closes (a line back at column 0 after indented ones: the function
    is written, and the model goes on with tests or prose the program leaves out). If the completion's
    program is that one, its verdict is already on the way. The verdicts are the same either way
    (``Scorer`` runs a program once per task); what is saved is the wait for programs that run long (a
    timeout is seconds) whose samples finish late.

    ``params.stop`` empty means the format's own stop strings. Returns the result summary: pass@1 (greedy
    when ``n == 1`` and temperature 0), unbiased pass@k, oracle best-of-n, the prompt format, the model's
    identity, the sampling settings and generation timings. ``meta`` is added to it as is (e.g. the
    command line)."""
    t0 = time.perf_counter()
    params = params or SamplingParams()
    b = get_benchmark(bench)
    name = b.name
    fmt = resolve_format(fmt, engine, b.kind)
    if params.greedy and params.n > 1:
        raise ScoreError(
            "greedy decoding (temperature 0) gives n identical samples: set a temperature for n > 1"
        )
    tasks = load_benchmark(name, data_dir)
    if not params.stop:
        params = replace(params, stop=tuple(task_stops(tasks[0], fmt)))
    shots = math_shots(name, data_dir) if b.kind == "math" and fmt == "raw" else ()
    if limit is not None:
        if limit < 1:
            raise ScoreError("--limit must be at least 1")
        tasks = tasks[:limit]
    own_pool = pool is None
    pool = pool or eval_pool(workers)
    cache = GenerationCache(cache_dir or default_cache_dir())
    cached = CachedEngine(engine, cache)
    try:
        scorer = make_scorer(name, pool, tasks=tasks, data_dir=data_dir, progress=progress)
        todo = [t for t in tasks if t.task_id not in scorer.skipped]
        requests = [GenerationRequest(task_prompt(t, fmt, shots), i) for t in todo for i in range(params.n)]
        samples: list[dict[str, Any]] = [{} for _ in requests]
        futures: list[Future[SampleResult] | None] = [None] * len(requests)
        generated = progress("generate", len(requests)) if progress else None
        verified = progress("verify", len(requests)) if progress else None
        finish: Counter[str] = Counter()
        tokens = 0
        ahead: dict[int, str] = {}  # position -> the program verified ahead of its completion
        closed: Counter[int] = Counter()  # position -> blocks closed in its text so far

        def peek(pos: int, text: str) -> None:
            lines = text[: text.rfind("\n") + 1]  # whole lines only
            if (n := len(CLOSED_BLOCK.findall(lines))) <= closed[pos]:
                return
            closed[pos] = n
            task = todo[pos // params.n]
            program = to_program(task, fmt, lines)
            if ahead.get(pos) != program:
                ahead[pos] = program
                scorer.submit({"task_id": task.task_id, "solution": program})

        peeking = verify_ahead and b.kind == "code" and cached.peeks
        t_gen = time.perf_counter()
        for pos, c in cached.run_peeking(requests, params, peek) if peeking else cached.run(requests, params):
            task = todo[pos // params.n]
            answer = (
                {"completion": c.text}
                if b.kind == "math"
                else {"solution": to_program(task, fmt, c.text), "output": c.text}
            )
            samples[pos] = {
                "task_id": task.task_id,
                "index": pos % params.n,
                **answer,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
            }
            finish[c.finish_reason] += 1
            tokens += c.completion_tokens
            futures[pos] = f = scorer.submit(dict(samples[pos]))
            if verified:
                f.add_done_callback(lambda _: verified(1))
            if generated:
                generated(1)
        gen_s = time.perf_counter() - t_gen
        results = [f.result() for f in futures if f is not None]
        tail_s = time.perf_counter() - t_gen - gen_s  # verification still running after the last completion
        if len(results) != len(requests):
            raise ScoreError(f"the engine returned {len(results)} of {len(requests)} completions")
        summary = scorer.summary(results)
        if b.kind == "code":
            summary["verification"] = {  # sandbox jobs above programs: programs sent ahead that changed after
                "programs": len({(s["task_id"], s.get("solution")) for s in samples}),
                "sandbox_jobs": scorer.jobs,
                "ahead": {
                    "sent": len(ahead),
                    "used": sum(samples[pos].get("solution") == prog for pos, prog in ahead.items()),
                },
            }
    finally:
        cache.close()
        if own_pool:
            pool.close()
    total_s = time.perf_counter() - t0
    solved = summary["n_tasks_solved"]
    n_tasks = summary["n_tasks"]
    summary.update(
        format=fmt,
        model={"backend": getattr(engine, "backend", type(engine).__name__), **engine.key()},
        sampling={"n": params.n, **params.key()},
        limit=limit,
        generation={
            "samples": len(requests),
            "from_cache": cached.hits,
            "generated": cached.misses,
            "completion_tokens": tokens,
            "finish_reasons": dict(finish),
            "wall_s": round(gen_s, 3),
            "tokens_per_s": round(tokens / gen_s, 1) if gen_s > 0 and cached.misses else None,
        },
        verify_tail_s=round(tail_s, 3),
        wall_s=round(total_s, 3),
    )
    if params.n > 1:  # oracle best-of-n: a task counts if any of its samples passes (the first one that does)
        summary["best_of_n"] = {"n": params.n, "solved": solved, "rate": solved / n_tasks if n_tasks else 0.0}
    if params.n > 1 and b.kind == "math":  # majority vote over all n samples of each task (no verifier)
        from tinyforge.evaluate.tts import sc_accuracy

        votes = [
            [(r.key, r.passed) for r in results[i : i + params.n]] for i in range(0, len(results), params.n)
        ]
        summary["self_consistency"] = {
            "n": params.n,
            "accuracy": sc_accuracy(votes, params.n) if votes else 0.0,
            "tie_rule": "most frequent answer; ties go to the answer of the earliest sample",
        }
    if params.n == 1 and n_tasks:  # one sample per task: pass@1 is a proportion of tasks
        summary["wilson95_pass@1"] = list(wilson_interval(solved, n_tasks))
    if meta:
        summary.update(meta)
    write_results(out_dir, summary, results, samples)
    return summary
