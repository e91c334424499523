"""Math benchmarks: GSM8K (test), MATH-500 and AIME 2022-2024, loaded into ``MathTask`` records.

Task ids are each benchmark's own: GSM8K has none, so its id is the 0-based line index of the test file
(``"0"`` .. ``"1318"``); MATH-500 uses PRM800K's ``unique_id`` (``"test/precalculus/807.json"``); AIME
its ``id`` (``"2022-I-1"``). ``answers`` are the accepted final answers as written by the benchmark
(LaTeX for MATH-500, digits for GSM8K and AIME): the grader wraps them so they parse as LaTeX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyforge.data.code import numbered_jsonl

__all__ = ["MathTask", "gsm8k_answer", "load_aime", "load_gsm8k", "load_math500"]


@dataclass(frozen=True)
class MathTask:
    """One math problem: the question as the benchmark states it and its accepted final answers."""

    task_id: str
    bench: str
    question: str
    answers: tuple[str, ...]
    solution: str = ""  # the benchmark's worked solution, where it has one (never shown to the model)
    extra: dict[str, Any] = field(default_factory=dict)


def gsm8k_answer(answer_field: str) -> str:
    """The final number of a GSM8K ``answer`` field (after ``####``), thousands separators removed."""
    head, sep, tail = answer_field.rpartition("####")
    if not sep or not tail.strip():
        raise ValueError("a GSM8K answer must end with '#### <number>'")
    return tail.strip().replace(",", "")


def _records(path: Path, need: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for i, rec in numbered_jsonl(path):
        missing = [k for k in need if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"{path}:{i}: record lacks {', '.join(missing)}")
        out.append((i, rec))
    return out


def load_gsm8k(path: Path, bench: str = "gsm8k") -> list[MathTask]:
    """GSM8K (test or train split): ids are 0-based line indices, the answer the number after ``####``."""
    tasks = []
    for n, (i, r) in enumerate(_records(path, ("question", "answer"))):
        try:
            gold = gsm8k_answer(r["answer"])
        except ValueError as e:
            raise ValueError(f"{path}:{i}: {e}") from None
        solution = re.sub(r"<<[^>]*>>", "", r["answer"].rpartition("####")[0]).strip()
        tasks.append(MathTask(str(n), bench, r["question"], (gold,), solution))
    return tasks


def load_math500(path: Path) -> list[MathTask]:
    """MATH-500 (PRM800K's test subset of MATH): LaTeX answers; subject and level kept in ``extra``."""
    return [
        MathTask(
            r["unique_id"],
            "math500",
            r["problem"],
            (r["answer"],),
            r.get("solution", ""),
            {"subject": r.get("subject"), "level": r.get("level")},
        )
        for _, r in _records(path, ("unique_id", "problem", "answer"))
    ]


def load_aime(path: Path) -> list[MathTask]:
    """AIME 2022-2024: integer answers 0-999; ``accepted_answers`` lists every accepted form (2022-II-8: 80
    or 81)."""
    return [
        MathTask(
            r["id"],
            "aime",
            r["problem"],
            tuple(r.get("accepted_answers") or [r["answer"]]),
            extra={"year": r.get("year"), "contest": r.get("contest"), "number": r.get("number")},
        )
        for _, r in _records(path, ("id", "problem", "answer"))
    ]
