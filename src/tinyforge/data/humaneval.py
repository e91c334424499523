"""HumanEval (OpenAI, 164 tasks) and HumanEval+ (EvalPlus v0.1.0: same tasks, ~125k extra inputs)."""

from __future__ import annotations

from pathlib import Path

from tinyforge.data.code import CodeTask, read_jsonl, task_number


def _check_test(test: str, entry_point: str) -> str:
    """HumanEval's ``check(candidate)`` function followed by the call that runs it."""
    return f"{test}\n\ncheck({entry_point})\n"


def load_humaneval(path: Path) -> list[CodeTask]:
    """HumanEval as published: the completion continues ``prompt``."""
    return [
        CodeTask(
            task_id=f"HumanEval/{task_number(r['task_id'])}",
            bench="humaneval",
            prompt=r["prompt"],
            entry_point=r["entry_point"],
            canonical_solution=r["prompt"] + r["canonical_solution"],
            test=_check_test(r["test"], r["entry_point"]),
            extra={"original_task_id": r["task_id"], "canonical_body": r["canonical_solution"]},
        )
        for r in read_jsonl(path)
    ]


def load_humaneval_plus(path: Path) -> list[CodeTask]:
    """HumanEval+: the file says ``HumanEval_N``; its canonical solutions are EvalPlus's rewrites.

    As in EvalPlus, expected outputs come from running ``prompt + canonical_solution`` on the inputs;
    the ``contract`` (input-validity asserts, used only to generate inputs) is kept in ``extra``.
    """
    return [
        CodeTask(
            task_id=f"HumanEval/{task_number(r['task_id'])}",
            bench="humaneval+",
            prompt=r["prompt"],
            entry_point=r["entry_point"],
            canonical_solution=r["prompt"] + r["canonical_solution"],
            test=_check_test(r["test"], r["entry_point"]),
            base_inputs=r["base_input"],
            plus_inputs=r["plus_input"],
            atol=float(r["atol"]),
            extra={
                "original_task_id": r["task_id"],
                "canonical_body": r["canonical_solution"],
                "contract": r["contract"],
            },
        )
        for r in read_jsonl(path)
    ]
