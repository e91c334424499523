"""MBPP (Austin et al. 2021): full and sanitized test splits, the full train split (for seeded problems and
the control, never for evaluation claims), and MBPP+ (EvalPlus v0.1.0, 399 tasks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyforge.data.code import CodeTask, called_definition, docstring_prompt, read_jsonl, task_number

TEST_SPLIT = range(11, 511)  # ids 1-10 are few-shot prompts, 511-600 validation, 601-974 train
TRAIN_SPLIT = range(601, 975)


def _lines(s: str) -> str:
    return s.replace("\r\n", "\n")


def _mbpp_task(bench: str, r: dict[str, Any], text: str, setup: str, extra: dict[str, Any]) -> CodeTask:
    tests = [_lines(t) for t in r["test_list"]]
    code = _lines(r["code"])
    return CodeTask(
        task_id=str(r["task_id"]),
        bench=bench,
        prompt=docstring_prompt(text, tests[0]),
        entry_point=called_definition(code, tests),
        canonical_solution=code.rstrip() + "\n",
        test="".join(f"{s}\n" for s in [setup, *tests] if s.strip()),
        extra={"original_task_id": r["task_id"], "code": r["code"], **extra},
    )


def _load_full(path: Path, bench: str, split: range) -> list[CodeTask]:
    tasks = []
    for r in read_jsonl(path):
        if r["task_id"] in split:
            keep = ("text", "test_list", "test_setup_code", "challenge_test_list")
            extra = {k: r[k] for k in keep}
            tasks.append(_mbpp_task(bench, r, r["text"], _lines(r["test_setup_code"]), extra))
    return tasks


def load_mbpp(path: Path) -> list[CodeTask]:
    """Full MBPP, test split (ids 11-510); ``test`` runs ``test_setup_code`` then ``test_list``.

    ``challenge_test_list`` is not part of the standard metric and is only kept in ``extra``.
    """
    return _load_full(path, "mbpp", TEST_SPLIT)


def load_mbpp_train(path: Path) -> list[CodeTask]:
    """Full MBPP, train split (ids 601-974), in the same shape as ``load_mbpp``: the problems of the seeded
    variant and the canonical solutions the control corrupts. Never an evaluation set."""
    return _load_full(path, "mbpp-train", TRAIN_SPLIT)


def load_mbpp_sanitized(path: Path) -> list[CodeTask]:
    """Sanitized MBPP, test split (the 257 of its 427 tasks with ids 11-510); ``test`` runs ``test_imports`` first."""
    records = json.loads(path.read_text(encoding="utf-8"))
    tasks = []
    for r in records:
        if r["task_id"] in TEST_SPLIT:
            extra = {k: r[k] for k in ("prompt", "test_list", "test_imports", "source_file")}
            tasks.append(_mbpp_task("mbpp-sanitized", r, r["prompt"], "\n".join(r["test_imports"]), extra))
    return sorted(tasks, key=lambda t: int(t.task_id))


# MBPP+ stores inputs as JSON, which has no tuples, sets or complex numbers. EvalPlus restores them per task
# before running anything; these rules give the same values (every input is a list of arguments).
Decoder = Callable[[Any], Any]


def _deep_tuple(x: Any) -> Any:
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


def _each_arg(f: Decoder) -> Decoder:
    return lambda args: [f(a) for a in args]


def _tuples(xs: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(x) for x in xs]


def _sets_or_empty_dicts(xs: list[Any]) -> list[Any]:
    # EvalPlus turns a non-empty list into a set and anything else (empty list, dict) into an empty dict.
    return [set(x) if isinstance(x, list) and x else {} for x in xs]


_RULES: list[tuple[tuple[int, ...], Decoder]] = [
    (
        (
            2,
            116,
            132,
            143,
            222,
            261,
            273,
            394,
            399,
            421,
            424,
            429,
            470,
            560,
            579,
            596,
            616,
            630,
            726,
            740,
            744,
            809,
        ),
        _each_arg(tuple),
    ),  # fmt: skip
    ((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780), _each_arg(_tuples)),
    ((75, 413, 444, 753), lambda a: [_tuples(a[0]), a[1]]),
    ((106, 750), lambda a: [a[0], tuple(a[1])]),
    ((115,), lambda a: [_sets_or_empty_dicts(a[0])]),
    ((124,), lambda a: (float(a[0]), complex(a[1]))),
    ((250, 405, 446, 617, 720, 763, 808), lambda a: [tuple(a[0]), a[1]]),
    ((252,), lambda a: [complex(a[0])]),
    ((259, 401, 445), _each_arg(lambda x: tuple(_tuples(x)))),
    ((278,), lambda a: [tuple(tuple(i) if isinstance(i, list) else i for i in a[0])]),
    ((307,), lambda a: [tuple(a[0]), a[1], a[2]]),
    ((580, 615, 791), _deep_tuple),
    ((722,), lambda a: [{k: tuple(v) for k, v in a[0].items()}, *a[1:]]),
]
MBPP_PLUS_DECODERS: dict[int, Decoder] = {n: f for ids, f in _RULES for n in ids}


def decode_mbpp_plus_inputs(task_id: str | int, inputs: list[Any]) -> list[Any]:
    """MBPP+ inputs as Python values, the same as EvalPlus's ``mbpp_deserialize_inputs``."""
    decode = MBPP_PLUS_DECODERS.get(task_number(task_id))
    return inputs if decode is None else [decode(args) for args in inputs]


def load_mbpp_plus(path: Path) -> list[CodeTask]:
    """MBPP+ (ids ``Mbpp/N``); ``test`` is the file's ``assertion`` (the original MBPP asserts).

    A few assertions call ``math.isclose`` without importing math, so ``import math`` is put first there.
    """
    tasks = []
    for r in read_jsonl(path):
        n = task_number(r["task_id"])
        assertion = _lines(r["assertion"]).strip() + "\n"
        if "math." in assertion:
            assertion = "import math\n" + assertion
        tasks.append(
            CodeTask(
                task_id=f"Mbpp/{n}",
                bench="mbpp+",
                prompt=r["prompt"],
                entry_point=r["entry_point"],
                canonical_solution=r["prompt"] + r["canonical_solution"],
                test=assertion,
                base_inputs=decode_mbpp_plus_inputs(n, r["base_input"]),
                plus_inputs=decode_mbpp_plus_inputs(n, r["plus_input"]),
                atol=float(r["atol"]),
                extra={
                    "original_task_id": r["task_id"],
                    "canonical_body": r["canonical_solution"],
                    "contract": r["contract"],
                    "assertion": r["assertion"],
                },
            )
        )
    return tasks
