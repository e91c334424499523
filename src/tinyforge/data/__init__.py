"""Benchmark data: verified files and loaders that turn each benchmark into a list of ``CodeTask`` (code
benchmarks) or ``MathTask`` (math benchmarks).

Adding a benchmark is one loader module plus one line in ``BENCHMARKS``.
"""

from __future__ import annotations

import os
from functools import cache, partial
from pathlib import Path
from typing import Any

from tinyforge.data.bigcodebench import load_bigcodebench_hard, missing_libs
from tinyforge.data.code import Benchmark, CodeTask, task_number
from tinyforge.data.files import FILES, DataError, DataFile, benchmark_file, cache_dir, data_dir, offline
from tinyforge.data.humaneval import load_humaneval, load_humaneval_plus
from tinyforge.data.math import MathTask, load_aime, load_gsm8k, load_math500
from tinyforge.data.mbpp import (
    decode_mbpp_plus_inputs,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
    load_mbpp_train,
)

__all__ = [
    "BENCHMARKS",
    "FILES",
    "Benchmark",
    "CodeTask",
    "MathTask",
    "Task",
    "DataError",
    "DataFile",
    "benchmark_file",
    "cache_dir",
    "data_dir",
    "decode_mbpp_plus_inputs",
    "get_benchmark",
    "get_task",
    "load_benchmark",
    "missing_libs",
    "normalize_task_id",
    "offline",
]

Task = CodeTask | MathTask

_H, _M, _B = "HumanEval", "Mbpp", "BigCodeBench"
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("humaneval", "HumanEval: 164 Python functions from docstrings (OpenAI)",
                  ("HumanEval.jsonl.gz",), load_humaneval, _H, "HumanEval/{n}"),
        Benchmark("humaneval+", "HumanEval+ v0.1.0: HumanEval with ~125k extra EvalPlus inputs",
                  ("HumanEvalPlus-v0.1.0.jsonl.gz",), load_humaneval_plus, _H, "HumanEval/{n}", ("humanevalplus",)),
        Benchmark("mbpp", "MBPP full, test split: 500 basic Python problems (ids 11-510)",
                  ("mbpp.jsonl",), load_mbpp, _M, "{n}"),
        Benchmark("mbpp-sanitized", "MBPP sanitized, test split: 257 hand-checked problems (ids 11-510)",
                  ("sanitized-mbpp.json",), load_mbpp_sanitized, _M, "{n}", ("mbpp_sanitized",)),
        Benchmark("mbpp-train", "MBPP full, train split (ids 601-974): seeded problems and the control; never for evaluation claims",
                  ("mbpp.jsonl",), load_mbpp_train, _M, "{n}", ("mbpp_train",)),
        Benchmark("mbpp+", "MBPP+ v0.1.0: 399 sanitized MBPP problems with extra EvalPlus inputs",
                  ("MbppPlus-v0.1.0.jsonl",), load_mbpp_plus, _M, "Mbpp/{n}", ("mbppplus",)),
        Benchmark("bigcodebench-hard", "BigCodeBench-Hard: 148 library-heavy tasks with unittest suites",
                  ("bigcodebench_hard.json",), load_bigcodebench_hard, _B, "BigCodeBench/{n}", ("bigcodebench_hard",)),
        Benchmark("gsm8k", "GSM8K test: 1319 grade-school word problems (ids: 0-based line index)",
                  ("gsm8k_test.jsonl",), load_gsm8k, "gsm8k", "{n}", kind="math"),
        Benchmark("gsm8k-train", "GSM8K train: 7473 problems; few-shot examples and mining, never for evaluation claims",
                  ("gsm8k_train.jsonl",), partial(load_gsm8k, bench="gsm8k-train"), "gsm8k", "{n}",
                  ("gsm8k_train",), kind="math"),
        Benchmark("math500", "MATH-500: 500 competition problems with LaTeX answers (ids: unique_id)",
                  ("math500_test.jsonl",), load_math500, "", "", ("math-500", "math_500"), kind="math"),
        Benchmark("aime", "AIME 2022-2024: 90 problems, integer answers (ids like 2022-I-1)",
                  ("aime_2022_2024.jsonl",), load_aime, "", "", ("aime2022-2024", "aime_2022_2024"), kind="math"),
    ]
}  # fmt: skip
_ALIASES = {alias: b.name for b in BENCHMARKS.values() for alias in (b.name, *b.aliases)}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name`` (case-insensitive; aliases accepted)."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def normalize_task_id(bench: str, raw: str | int) -> str:
    """The benchmark's usual id for ``raw``: e.g. mbpp+ ``11``/``Mbpp_11`` -> ``Mbpp/11``, mbpp ``Mbpp/11`` -> ``11``;
    benchmarks with string ids (MATH-500, AIME) take them as they are."""
    b = get_benchmark(bench)
    text = str(raw).strip()
    if not b.id_format:
        return text
    prefix = text.rpartition("/")[0] or (text.rpartition("_")[0] if "_" in text else "")
    if prefix and prefix.lower() != b.id_prefix.lower():
        raise ValueError(f"{raw!r} is not a {b.name} task id (expected like {b.id_format.format(n=0)!r})")
    return b.id_format.format(n=task_number(text))


@cache
def _load(name: str, paths: tuple[Path, ...]) -> tuple[Any, ...]:
    return tuple(BENCHMARKS[name].load(*paths))


def load_benchmark(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Any]:
    """All tasks of a benchmark, from verified files (parsed once per process and file)."""
    b = get_benchmark(name)
    paths = tuple(benchmark_file(f, data_dir) for f in b.files)
    return list(_load(b.name, paths))


def get_task(bench: str, task_id: str | int, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """One task by id (any accepted alias of the id)."""
    want = normalize_task_id(bench, task_id)
    for task in load_benchmark(bench, data_dir):
        if task.task_id == want:
            return task
    raise KeyError(f"{bench} has no task {want}")
