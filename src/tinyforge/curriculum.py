"""The auto-difficulty math curriculum, end to end: ``curriculum(config, out)`` (``tinyforge curriculum``).

The model writes grade-school math word problems, each with a Python function ``solution()`` that computes
its answer; the program runs in the sandbox, and its result is the problem's answer (nobody writes one by
hand). Rounds 1..R then move the pool of problems toward the model's edge:

1. pool: round 1 asks the model for problems (``write_prompt``); round r > 1 is made from round r-1 (below).
   Each answer is parsed (``parse_problem``: a problem statement and a ``solution()`` with no required
   arguments, taken out of the text by the one sanitizer) and run in the sandbox (``SandboxPool`` I/O job:
   ``solution()`` called once, with a time limit); a problem is kept when ``solution()`` returns a finite
   number or a numeric string (``numeric_answer``) and its question is not a duplicate (same words, case and
   punctuation aside) of a problem kept before, in this or any earlier pool. Everything else goes to
   ``rejections.jsonl`` with a reason (``REASONS``).
2. solve: each problem once greedily and ``k`` times at temperature, posed exactly as a GSM8K task in the
   evaluation's prompt format (chat: the question and "Please reason step by step, and put your final answer
   within \\boxed{}."; raw, for base models: GSM8K's 8-shot prompt); every answer graded against the
   program's answer by the math grader (``evaluate.mathgrade``: math-verify, in the sandbox).
3. moves (``decide_move``): solved greedily -> ``amplify``; no sampled attempt right -> ``simplify``; else
   (greedy wrong, some sampled attempts right) -> ``edge``, and (wrong, right) pairs are mined from it
   (``mine_pairs``).
4. statistics per round (``round_stats``): pool size and make-up, greedy solve rate, mean pass rate over the
   k attempts, moves, mean "steps" (statements in ``solution``'s body) and arithmetic operations, pairs.

The next pool (round r+1) is exactly: for each problem of round r's pool, in its order, the problem itself if
it was at the edge (it is solved again with round r+1's seed: new samples, the same greedy answer), or, if
it was amplified or simplified, the first of ``rewrite.samples`` rewrites by the model ("requiring one more
step" / "an easier version", ``rewrite_prompt``) that passes the same parse and sandbox checks and is not a
duplicate of any problem seen so far (its parent included). A problem whose rewrites all fail leaves the
pool, so pools never grow. The last round's moves are recorded, not carried out (no round solves them).
Rounds end early when a pool comes out empty.

5. train: one LoRA from the base model (``train.lora.train_lora``) on the pairs of all rounds.
6. evaluate: GSM8K (``eval.benches``) greedily before and after, in the same prompt format
   (``recipe.eval_all``), compared with Wilson intervals and an exact McNemar test on the per-task verdicts
   (``recipe.compare``).

Training pairs. A pair keeps both sides (the problem, a wrong attempt with its extracted answer, a right
attempt), and ``MathPair.example(style)`` makes the training example; the target is always the right
attempt's text as the model wrote it. ``mine.prompt: problem`` (the default) trains on the problem alone,
in the evaluation's exact prompt: GSM8K is scored on single-turn greedy answers, and conditioning the target
on anything the model will not see then (its own wrong attempt, a "that answer is wrong" turn) teaches a
second-turn repair that the measurement never asks for, while what is learned from the problem alone is
the behaviour measured. The wrong attempt still decides which problems train (only edge problems, where
the model is right sometimes and wrong sometimes, give pairs) and how many examples a problem gives (one
per distinct wrong attempt, ``max_pairs`` at most; identical examples are dropped). ``mine.prompt:
feedback`` trains the repair instead: the problem, the wrong attempt as the model's turn, then "That answer
is wrong..." and the right attempt as the answer.

The run folder: ``RUN/config.json``, ``RUN/round-R/{pool,rejections,attempts,pairs}.jsonl``,
``RUN/round-R/stats.json``, ``RUN/train/`` (``adapter/``, ``train.json``), ``RUN/eval/{before,after}-
gsm8k-FORMAT/``, ``RUN/result.json``, ``RUN/report.md``, the generation cache ``RUN/cache`` and
``RUN/state.json`` (stage timings). It is resumable like the code recipe's (``tinyforge.recipe``, whose
``Run``, stage timing and evaluation helpers this module uses): run the same command again. A stage whose
file exists is read back; one that was killed is redone from the generation cache (nothing is generated
twice; grades and sandbox checks are recomputed, they are cheap); stage files are written whole and renamed;
training continues from its last checkpoint.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tinyforge import __version__
from tinyforge.data import MathTask
from tinyforge.data.code import read_jsonl
from tinyforge.evaluate.mathgrade import Grade, MathGrader
from tinyforge.evaluate.run import resolve_format
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams
from tinyforge.generate.prompts import math_prompt, math_shots, task_stops
from tinyforge.generate.sanitize import sanitize
from tinyforge.recipe import (
    EvalConfig,
    Log,
    Progress,
    RecipeError,
    Run,
    RunConfig,
    _Config,
    _round_seed,
    check_settings,
    compare,
    eval_all,
    load_settings,
    write_json,
    write_jsonl,
)
from tinyforge.sandbox import IOJob, IOResult, Pool, then
from tinyforge.train.lora import LoraConfig

__all__ = [
    "MOVES",
    "REASONS",
    "CurriculumConfig",
    "MathAttempt",
    "MathPair",
    "MathProblem",
    "Rejection",
    "check_problems",
    "curriculum",
    "decide_move",
    "load_config",
    "mine_pairs",
    "numeric_answer",
    "parse_problem",
    "question_key",
    "report",
    "rewrite_prompt",
    "round_stats",
    "take_new",
    "write_prompt",
]

SCHEMA_VERSION = 1
BENCH = "gsm8k"  # problems are posed as GSM8K tasks: the evaluation's prompt formats, shots and stops
MIN_WORDS = 6  # a problem statement shorter than this is no word problem ("2^125", "18")

Reason = Literal["malformed", "error", "timeout", "non_numeric", "duplicate"]
REASONS: tuple[str, ...] = ("malformed", "error", "timeout", "non_numeric", "duplicate")
Move = Literal["amplify", "simplify", "edge"]
MOVES: tuple[str, ...] = ("amplify", "simplify", "edge")

WRITE = (
    "Write a new grade-school math word problem that takes a few steps to solve and whose answer is a single "
    "number. Then write a Python function `solution()` with no arguments that works out the answer step by "
    "step, one line per step, and returns it as a number.\n\n"
    'Give the problem after "Problem:", then the function in one Python code block.'
)
REWRITE = {
    "amplify": "Rewrite this problem so that solving it requires one more step: keep its story and add one more "
    "quantity or operation that the answer depends on. Then rewrite `solution()` to compute the new answer.",
    "simplify": "Write an easier version of this problem, one that takes fewer steps to solve. Then rewrite "
    "`solution()` to compute the new answer.",
}
ANSWER_FORM = 'Give the new problem after "Problem:", then the function in one Python code block.'
FEEDBACK = (
    "That answer is wrong. Please solve the problem again: reason step by step, and put your final answer "
    "within \\boxed{}."
)
RAW_FEEDBACK = "\nThat answer is wrong. Let's solve it again.\nAnswer:"


# --- settings ----------------------------------------------------------------------------------------------


class _Sampled(_Config):
    temperature: float = Field(0.8, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(384, ge=16, description="Token budget of one answer.")


class WriteConfig(_Sampled):
    format: str = Field(
        "auto",
        description="Prompt format for writing and rewriting problems: auto (chat+prefix with a chat "
        "template, else raw), raw, chat or chat+prefix (the answer opened with 'Problem:').",
    )
    samples_per_problem: float = Field(
        4.0, gt=0, description="Round 1: problem answers drawn per problem asked for (many are rejected)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for writing problems.")
    timeout: float = Field(5.0, gt=0, description="Seconds for solution() to return its answer.")


class RewriteConfig(_Sampled):
    samples: int = Field(2, ge=1, description="Rewrites drawn per amplified or simplified problem.")


class SolveConfig(_Config):
    format: str = Field("auto", description="Prompt format for solving: auto, raw (GSM8K 8-shot) or chat.")
    k: int = Field(8, ge=2, description="Sampled attempts per problem (besides the greedy one).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of attempts.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of attempts.")
    max_new_tokens: int = Field(512, ge=16, description="Token budget of one attempt.")
    grade_timeout: float = Field(10.0, gt=0, description="Seconds to grade one attempt.")


class MineConfig(_Config):
    max_pairs: int = Field(4, ge=1, description="Most pairs per edge problem (distinct wrong attempts).")
    prompt: Literal["problem", "feedback"] = Field(
        "problem",
        description="Training input: the problem alone (the evaluation's prompt), or the problem, the wrong "
        "attempt and 'That answer is wrong' (self-correction). The target is the right attempt.",
    )


class MathEvalConfig(EvalConfig):
    benches: list[str] = Field(default_factory=lambda: [BENCH], description="Benchmarks before and after.")


class CurriculumConfig(RunConfig):
    problems: int = Field(50, ge=1, description="Problems in round 1's pool.")
    rounds: int = Field(3, ge=1, description="Rounds of solving and moving the pool.")
    write: WriteConfig = Field(default_factory=WriteConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    solve: SolveConfig = Field(default_factory=SolveConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    train: LoraConfig = Field(default_factory=LoraConfig)
    eval: MathEvalConfig = Field(default_factory=MathEvalConfig)


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> CurriculumConfig:
    """A config from a YAML file (or defaults) with ``overrides`` (the command line's options) on top."""
    return load_settings(CurriculumConfig, "curriculum", path, overrides)


# --- records -----------------------------------------------------------------------------------------------


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _from_record(cls: Any, rec: dict[str, Any]) -> Any:
    if rec.get("v") != SCHEMA_VERSION:
        raise ValueError(
            f"{cls.__name__} record schema {rec.get('v')!r}, this tinyforge reads {SCHEMA_VERSION}"
        )
    return cls(**{k: v for k, v in rec.items() if k not in ("v", "id")})


@dataclass(frozen=True)
class MathProblem:
    """A word problem and the program that computes its answer. ``answer``: what ``solution()`` returned, as
    the grader's gold string; ``steps``: statements in ``solution``'s body (loops and branches counted with
    their contents), ``ops``: its arithmetic operations, two proxies of how many steps the problem takes."""

    question: str
    program: str
    answer: str
    steps: int
    ops: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # round, origin, parent, index, seed...

    @property
    def id(self) -> str:
        return _hash(self.question, self.program)

    def task(self) -> MathTask:
        """The problem as a GSM8K task, so that it is prompted exactly like the evaluation's tasks."""
        return MathTask(self.id, BENCH, self.question, (self.answer,))

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "id": self.id, **asdict(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> MathProblem:
        return _from_record(cls, rec)


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str = ""


@dataclass(frozen=True)
class MathAttempt:
    """One answer to a problem: the greedy one, or sampled attempt ``index``; ``status`` is the grade's
    (correct, wrong, no_answer, timeout, error) and ``answer`` the final answer found in the text."""

    problem_id: str
    greedy: bool
    index: int
    text: str
    status: str
    answer: str | None
    finish_reason: str
    completion_tokens: int

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    @property
    def wrong(self) -> bool:
        """Graded and not right: a wrong final answer, or none (grader timeouts and errors are neither)."""
        return self.status in ("wrong", "no_answer")

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> MathAttempt:
        return _from_record(cls, rec)


@dataclass(frozen=True)
class MathPair:
    """A (wrong, right) pair of attempts at one problem; ``example`` makes the training example."""

    problem_id: str
    question: str
    gold: str
    wrong: str
    wrong_answer: str | None
    right: str
    round: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # attempt indices, model, seed

    @property
    def id(self) -> str:
        return _hash(self.problem_id, self.wrong, self.right)

    def example(
        self, fmt: str, style: str = "problem", shots: Sequence[tuple[str, str]] = ()
    ) -> tuple[Prompt, str]:
        """``(prompt, completion)`` for ``train_lora`` in solve format ``fmt`` (``shots``: the raw format's
        worked examples): the problem alone (``problem``) or with the wrong attempt and feedback
        (``feedback``), and the right attempt as the target (see the module docstring)."""
        prompt = math_prompt(MathTask(self.problem_id, BENCH, self.question, (self.gold,)), fmt, shots)
        if style == "feedback" and isinstance(prompt, str):
            prompt = prompt + self.wrong.rstrip() + RAW_FEEDBACK
        elif style == "feedback":
            turns = [
                {"role": "assistant", "content": self.wrong.strip()},
                {"role": "user", "content": FEEDBACK},
            ]
            prompt = [*prompt, *turns]
        elif style != "problem":
            raise ValueError(f"unknown pair prompt {style!r}; known: problem, feedback")
        return prompt, self.right.rstrip()

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "id": self.id, **asdict(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> MathPair:
        return _from_record(cls, rec)


# --- prompts -----------------------------------------------------------------------------------------------


def _writer_prompt(text: str, fmt: str) -> Prompt:
    """A request in writer format ``fmt``: chat, chat with the answer opened at "Problem:" (small instruct
    models otherwise tend to skip the problem statement and write only code), or raw text to continue."""
    if fmt == "raw":
        return f"{text}\n\nProblem:"
    if fmt not in ("chat", "chat+prefix"):
        raise ValueError(f"unknown problem prompt format {fmt!r}; known: raw, chat, chat+prefix")
    chat = [{"role": "user", "content": text}]
    return [*chat, {"role": "assistant", "content": "Problem:"}] if fmt == "chat+prefix" else chat


def _writer_stops(fmt: str) -> tuple[str, ...]:
    """A continued "Problem:" ends at the next one; a plain chat answer may itself start with one."""
    return () if fmt == "chat" else ("\nProblem:",)


def write_prompt(fmt: str) -> Prompt:
    """The request for one new problem with its ``solution()``, in writer format ``fmt``."""
    return _writer_prompt(WRITE, fmt)


def rewrite_prompt(problem: MathProblem, move: str, fmt: str) -> Prompt:
    """The request to rewrite ``problem`` (``amplify``: one more step; ``simplify``: easier)."""
    if move not in REWRITE:
        raise ValueError(f"no rewrite for move {move!r}; known: {', '.join(REWRITE)}")
    shown = f"Problem: {problem.question}\n\n```python\n{problem.program.rstrip()}\n```"
    return _writer_prompt(f"{shown}\n\n{REWRITE[move]}\n\n{ANSWER_FORM}", fmt)


# --- parsing and checking ----------------------------------------------------------------------------------

_CODE_START = re.compile(r"^(?:[ \t]*(?:`{3}|~{3})|(?:def|class|import|from)\s)", re.M)
_LABEL = re.compile(
    r"^[\s#*>_]*(?:(?:new|rewritten|easier|harder|math|word)\s+)*(?:problem|question)\s*\d*\s*[*_]*\s*:[*_\s]*",
    re.I,
)


def _question_of(text: str) -> str:
    """The problem statement: the prose before the first code, its "Problem:" label and trailing lead-in
    lines ("Solution:", "Here is the function:") removed."""
    m = _CODE_START.search(text)
    lines = _LABEL.sub("", text[: m.start()] if m else text, count=1).strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].rstrip(" *_").endswith(":")):
        lines.pop()
    return "\n".join(lines).strip().strip("*_ ").strip()


def parse_problem(text: str) -> tuple[str, str] | Rejection:
    """One model answer -> ``(question, program)``, or a ``malformed`` rejection: no problem statement (fewer
    than ``MIN_WORDS`` words), no ``solution`` function (the program is what the sanitizer takes out of the
    text for the entry point ``solution``: it and what it needs), or one that needs arguments."""
    program = sanitize(text, "solution", mode="chat")
    fn = next(
        (n for n in ast.parse(program).body if isinstance(n, ast.FunctionDef) and n.name == "solution"), None
    )
    if fn is None:
        return Rejection("malformed", "no solution() function")
    a = fn.args
    if len(a.posonlyargs) + len(a.args) > len(a.defaults) or any(d is None for d in a.kw_defaults):
        return Rejection("malformed", "solution() takes arguments")
    question = _question_of(text)
    if len(re.findall(r"[A-Za-z]+", question)) < MIN_WORDS:
        return Rejection("malformed", f"no problem statement ({question[:60]!r})")
    return question, program


def numeric_answer(value: Any) -> str | None:
    """``solution()``'s value as a gold answer string, or None when it is no finite number: ints as they are,
    floats to 12 significant digits without an exponent or spurious digits (0.1 + 0.2 -> "0.3", 12.0 ->
    "12"), numeric strings ("18", "$1,200", "3/4", "2.50") read as numbers. Booleans are not numbers."""
    if isinstance(value, str):
        s = value.strip().replace(",", "").removeprefix("$").strip()
        try:
            frac = Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
        if frac.denominator == 1 or "/" in s:
            return str(frac)
        value = float(frac)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return None
    return str(int(value)) if value.is_integer() else format(Decimal(f"{value:.12g}"), "f")


def _answer_of(result: IOResult) -> str | Rejection:
    status = result.statuses[0] if result.statuses else result.status
    if status == "timeout":
        return Rejection("timeout", "solution() did not return in time")
    if status != "ok":
        return Rejection("error", (result.details[0] if result.statuses else result.detail) or status)
    value = result.outputs[0]
    answer = numeric_answer(value)
    return answer if answer is not None else Rejection("non_numeric", f"solution() returned {value!r}"[:200])


def _steps(program: str) -> tuple[int, int]:
    fn = next(n for n in ast.parse(program).body if isinstance(n, ast.FunctionDef) and n.name == "solution")
    body = fn.body[1:] if ast.get_docstring(fn) else fn.body
    nodes = [n for stmt in body for n in ast.walk(stmt)]
    return sum(isinstance(n, ast.stmt) for n in nodes), sum(
        isinstance(n, (ast.BinOp, ast.AugAssign)) for n in nodes
    )


def question_key(question: str) -> str:
    """What two questions share when they are duplicates: their words and numbers, lower case."""
    return " ".join(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", question.lower()))


def check_problems(
    texts: Sequence[str], pool: Pool, timeout: float = 5.0, metas: Sequence[dict[str, Any]] = ()
) -> list[MathProblem | Rejection]:
    """Each model answer parsed and its ``solution()`` run once in the sandbox: a problem with the answer
    it computes, or a rejection (malformed, error, timeout, non_numeric). Duplicates are the caller's."""
    out: list[MathProblem | Rejection | tuple[str, str]] = [parse_problem(t) for t in texts]
    todo = [(i, p) for i, p in enumerate(out) if isinstance(p, tuple)]
    jobs = [IOJob(program, "solution", [[]], [timeout], timeout=timeout + 10) for _, (_, program) in todo]
    for (i, (question, program)), result in zip(todo, pool.map(jobs), strict=True):
        assert isinstance(result, IOResult)
        answer = _answer_of(result)
        meta = dict(metas[i]) if metas else {}
        out[i] = (
            answer
            if isinstance(answer, Rejection)
            else MathProblem(question, program, answer, *_steps(program), meta)
        )
    return out  # type: ignore[return-value]  # every tuple was replaced


# --- moves and pairs ---------------------------------------------------------------------------------------


def decide_move(attempts: Sequence[MathAttempt]) -> Move:
    """``amplify`` when the greedy answer is right; else ``simplify`` when no sampled attempt is; else
    ``edge`` (greedy wrong, some samples right: where pairs are mined)."""
    if any(a.greedy and a.correct for a in attempts):
        return "amplify"
    if not any(a.correct for a in attempts if not a.greedy):
        return "simplify"
    return "edge"


def _distinct(attempts: Sequence[MathAttempt]) -> list[MathAttempt]:
    """The first attempt of each text (whitespace at the ends aside)."""
    first: dict[str, MathAttempt] = {}
    for a in attempts:
        first.setdefault(a.text.strip(), a)
    return list(first.values())


def mine_pairs(
    problem: MathProblem,
    attempts: Sequence[MathAttempt],
    rnd: int,
    max_pairs: int = 4,
    meta: dict[str, Any] | None = None,
) -> list[MathPair]:
    """(wrong, right) pairs of one problem: up to ``max_pairs`` distinct wrong attempts (the greedy one
    first, then by sample index), each with a distinct right attempt taken in turn (by sample index).
    None unless some attempt is wrong and some right; attempts the grader could not grade take no part."""
    ordered = sorted(attempts, key=lambda a: (not a.greedy, a.index))
    wrong = _distinct([a for a in ordered if a.wrong])[:max_pairs]
    right = _distinct([a for a in ordered if a.correct])
    if not right:
        return []
    return [
        MathPair(
            problem_id=problem.id,
            question=problem.question,
            gold=problem.answer,
            wrong=w.text,
            wrong_answer=w.answer,
            right=r.text,
            round=rnd,
            meta={**(meta or {}), "wrong": "greedy" if w.greedy else w.index, "right": r.index},
        )
        for w, r in zip(wrong, (right[j % len(right)] for j in range(len(wrong))), strict=True)
    ]


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def round_stats(
    rnd: int,
    pool: Sequence[MathProblem],
    attempts: Sequence[MathAttempt],
    moves: dict[str, str],
    pairs: Sequence[MathPair],
) -> dict[str, Any]:
    """A round's pool difficulty: size and make-up, greedy solve rate, mean pass rate over the sampled
    attempts, moves, mean steps and operations (and how rewrites changed them against their parents),
    pairs; and one row per problem."""
    by_problem: dict[str, list[MathAttempt]] = {}
    for a in attempts:
        by_problem.setdefault(a.problem_id, []).append(a)
    rows = []
    for p in pool:
        got = by_problem.get(p.id, [])
        sampled = [a for a in got if not a.greedy]
        rows.append({
            "id": p.id, "origin": p.meta.get("origin"), "steps": p.steps, "ops": p.ops,
            "greedy": any(a.correct for a in got if a.greedy),
            "passed": sum(a.correct for a in sampled), "k": len(sampled), "move": moves.get(p.id),
        })  # fmt: skip
    delta = {
        move: _mean([p.steps - p.meta["parent_steps"] for p in pool if p.meta.get("origin") == move])
        for move in ("amplify", "simplify")
    }
    return {
        "round": rnd,
        "pool": len(pool),
        "origins": dict(Counter(r["origin"] for r in rows)),
        "greedy_solve_rate": _mean([r["greedy"] for r in rows]),
        "mean_pass_rate": _mean([r["passed"] / r["k"] for r in rows if r["k"]]),
        "moves": {m: sum(r["move"] == m for r in rows) for m in MOVES},
        "mean_steps": _mean([p.steps for p in pool]),
        "mean_ops": _mean([p.ops for p in pool]),
        "steps_vs_parent": delta,
        "pairs": len(pairs),
        "grades": dict(Counter(a.status for a in attempts)),
        "problems": rows,
    }


# --- stages ------------------------------------------------------------------------------------------------


def _texts(
    run: Run, label: str, requests: list[GenerationRequest], params: SamplingParams, info: dict
) -> list[Completion]:
    """Completions of ``requests`` in order, through the run's cache; counts of generated and cached ones go
    to the stage's ``info``."""
    done, counts = run.complete(None, requests, params, label)
    info.update(counts)
    return done


def _writer_format(run: Run) -> str:
    fmt = run.config.write.format
    resolved = resolve_format(fmt, run.engine(None))
    return "chat+prefix" if fmt == "auto" and resolved == "chat" else resolved


def _writer_params(run: Run, rnd: int, n: int, fmt: str, rewrite: bool) -> SamplingParams:
    s = run.config.rewrite if rewrite else run.config.write
    return SamplingParams(
        n=n, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
        stop=_writer_stops(fmt), seed=_round_seed(run.config.seed, rnd),
    )  # fmt: skip


def _reject_record(i: int, r: Rejection, text: str, **extra: Any) -> dict[str, Any]:
    return {"index": i, "reason": r.reason, "detail": r.detail, "output": text, **extra}


def take_new(
    checked: Sequence[MathProblem | Rejection], seen: set[str], limit: int
) -> tuple[list[MathProblem], list[tuple[int, Rejection]]]:
    """The first ``limit`` problems of ``checked`` whose question is new (not in ``seen``, the question keys
    of problems kept before, nor in an earlier one kept here; ``seen`` is updated), and the rejections by
    position: those of the checks, and ``duplicate`` for a repeated question. Valid problems past the limit
    are neither (spares)."""
    kept: list[MathProblem] = []
    rejected: list[tuple[int, Rejection]] = []
    for i, p in enumerate(checked):
        if isinstance(p, MathProblem) and question_key(p.question) in seen:
            p = Rejection("duplicate", "the same question as a problem kept before")
        if isinstance(p, Rejection):
            rejected.append((i, p))
        elif len(kept) < limit:
            kept.append(p)
            seen.add(question_key(p.question))
    return kept, rejected


def first_pool(run: Run, info: dict[str, Any]) -> tuple[list[MathProblem], list[dict[str, Any]]]:
    """Round 1's pool: ``problems`` of the model's answers to ``write_prompt`` that pass the checks."""
    c = run.config
    fmt = _writer_format(run)
    n = math.ceil(c.problems * c.write.samples_per_problem)
    params = _writer_params(run, 1, n, fmt, rewrite=False)
    done = _texts(
        run,
        "round 1: write problems",
        [GenerationRequest(write_prompt(fmt), i) for i in range(n)],
        params,
        info,
    )
    metas = [
        {"round": 1, "origin": "generated", "index": i, "seed": params.seed, "format": fmt} for i in range(n)
    ]
    checked = check_problems([d.text for d in done], run.pool, c.write.timeout, metas)
    pool, rejected = take_new(checked, set(), c.problems)
    info.update(format=fmt, samples=n, valid=n - len(rejected), kept=len(pool))
    return pool, [_reject_record(i, r, done[i].text) for i, r in rejected]


def next_pool(
    run: Run, rnd: int, prev: list[MathProblem], moves: dict[str, str], seen: set[str], info: dict[str, Any]
) -> tuple[list[MathProblem], list[dict[str, Any]]]:
    """Round ``rnd``'s pool from round ``rnd - 1``'s (see the module docstring): edge problems carried over,
    amplified and simplified ones replaced by their first rewrite that passes the checks and is new
    (``seen``: question keys of every problem so far)."""
    c = run.config
    fmt = _writer_format(run)
    todo = [p for p in prev if moves[p.id] != "edge"]
    n = c.rewrite.samples
    params = _writer_params(run, rnd, n, fmt, rewrite=True)
    requests = [GenerationRequest(rewrite_prompt(p, moves[p.id], fmt), j) for p in todo for j in range(n)]
    done = _texts(run, f"round {rnd}: rewrite problems", requests, params, info)
    metas = [
        {"round": rnd, "origin": moves[p.id], "parent": p.id, "parent_steps": p.steps, "index": j,
         "seed": params.seed, "format": fmt}
        for p in todo for j in range(n)
    ]  # fmt: skip
    checked = check_problems([d.text for d in done], run.pool, c.write.timeout, metas)
    chosen: dict[str, MathProblem] = {}
    rejected: list[dict[str, Any]] = []
    for j, parent in enumerate(todo):  # each parent's rewrites in sample order: the first new one is kept
        kept, bad = take_new(checked[j * n : (j + 1) * n], seen, 1)
        chosen.update((parent.id, p) for p in kept)
        extra = {"parent": parent.id, "move": moves[parent.id]}
        rejected += [_reject_record(i, r, done[j * n + i].text, **extra) for i, r in bad]
    pool = [chosen.get(p.id, p) for p in prev if p.id in chosen or moves[p.id] == "edge"]
    info.update(format=fmt, rewrites=len(requests), carried=len(prev) - len(todo), replaced=len(chosen),
                dropped=len(todo) - len(chosen))  # fmt: skip
    return pool, rejected


def make_pool(
    run: Run, rnd: int, prev: tuple[list[MathProblem], dict[str, str]] | None, seen: set[str]
) -> list[MathProblem]:
    """Round ``rnd``'s pool (``pool.jsonl`` and ``rejections.jsonl``): written once, then read back."""
    folder = run.root / f"round-{rnd}"
    out = folder / "pool.jsonl"
    if out.is_file():
        return [MathProblem.from_record(r) for r in read_jsonl(out)]
    folder.mkdir(parents=True, exist_ok=True)
    with run.stage(f"round-{rnd}/pool") as info:
        pool, rejected = first_pool(run, info) if prev is None else next_pool(run, rnd, *prev, seen, info)
        info["rejected"] = dict(Counter(r["reason"] for r in rejected))
        write_jsonl(folder / "rejections.jsonl", rejected)
    write_jsonl(out, [p.record() for p in pool])  # after state.json: a pool that is there has its stats
    return pool


def _attempt(problem_id: str, greedy: bool, index: int, c: Completion, g: Grade) -> MathAttempt:
    return MathAttempt(
        problem_id, greedy, index, c.text, g.status, g.answer, c.finish_reason, c.completion_tokens
    )


def solve_pool(run: Run, rnd: int, pool: list[MathProblem]) -> list[MathAttempt]:
    """Round ``rnd``'s attempts (``attempts.jsonl``): one greedy and ``k`` sampled per problem, each graded
    against the problem's answer as it arrives."""
    c, folder = run.config, run.root / f"round-{rnd}"
    out = folder / "attempts.jsonl"
    if out.is_file():
        return [MathAttempt.from_record(r) for r in read_jsonl(out)]
    with run.stage(f"round-{rnd}/solve") as info:
        fmt = resolve_format(c.solve.format, run.engine(None), "math")
        shots = math_shots(BENCH, run.data_dir) if fmt == "raw" else ()
        grader = MathGrader(run.pool, c.solve.grade_timeout)
        engine = run.cached(None)
        base = SamplingParams(
            max_new_tokens=c.solve.max_new_tokens, stop=tuple(task_stops(pool[0].task(), fmt))
        )
        sampled = replace(base, n=c.solve.k, temperature=c.solve.temperature, top_p=c.solve.top_p,
                          seed=_round_seed(c.seed, rnd))  # fmt: skip
        prompts = [math_prompt(p.task(), fmt, shots) for p in pool]
        bar = run.progress(f"round {rnd}: solve", len(pool) * (c.solve.k + 1)) if run.progress else None
        futures = []
        for params in (base, sampled):
            requests = [GenerationRequest(q, i) for q in prompts for i in range(params.n)]
            for pos, comp in engine.run(requests, params):
                p, i = pool[pos // params.n], pos % params.n
                made = partial(_attempt, p.id, params.greedy, i, comp)
                futures.append(then(grader.submit([p.answer], comp.text), made))
                if bar:
                    futures[-1].add_done_callback(lambda _: bar(1))
        order = {p.id: j for j, p in enumerate(pool)}
        attempts = sorted(
            (f.result() for f in futures), key=lambda a: (order[a.problem_id], not a.greedy, a.index)
        )
        info.update(format=fmt, attempts=len(attempts), correct=sum(a.correct for a in attempts),
                    generated=engine.misses, from_cache=engine.hits)  # fmt: skip
    write_jsonl(out, [a.record() for a in attempts])
    return attempts


def mine_round(
    run: Run, rnd: int, pool: list[MathProblem], attempts: list[MathAttempt]
) -> tuple[dict[str, str], list[MathPair], dict[str, Any]]:
    """Round ``rnd``'s moves, pairs (``pairs.jsonl``) and statistics (``stats.json``): a pure function of its
    pool and attempts, recomputed (and the same files written again) whenever the run goes through it."""
    c, folder = run.config, run.root / f"round-{rnd}"
    by_problem: dict[str, list[MathAttempt]] = {}
    for a in attempts:
        by_problem.setdefault(a.problem_id, []).append(a)
    moves: dict[str, str] = {p.id: decide_move(by_problem.get(p.id, [])) for p in pool}
    meta = {"model": c.model, "seed": _round_seed(c.seed, rnd)}
    pairs = [
        pair
        for p in pool
        if moves[p.id] == "edge"
        for pair in mine_pairs(p, by_problem.get(p.id, []), rnd, c.mine.max_pairs, meta)
    ]
    stats = round_stats(rnd, pool, attempts, moves, pairs)
    made = run.state["stages"].get(f"round-{rnd}/pool", {})  # how the pool was made (not cache counts, time)
    stats["made"] = {k: v for k, v in made.items() if k not in ("generated", "from_cache", "wall_s")}
    write_jsonl(folder / "pairs.jsonl", [p.record() for p in pairs])
    write_json(folder / "stats.json", stats)
    return moves, pairs, stats


def _examples(run: Run, pairs: list[MathPair], fmt: str) -> list[tuple[Prompt, str]]:
    shots = math_shots(BENCH, run.data_dir) if fmt == "raw" else ()
    unique: dict[str, tuple[Prompt, str]] = {}
    for p in pairs:
        ex = p.example(fmt, run.config.mine.prompt, shots)
        unique.setdefault(json.dumps(ex), ex)
    return list(unique.values())


def _no_problems(run: Run) -> RecipeError:
    info = run.state["stages"].get("round-1/pool", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(info.get("rejected", {}).items())) or "none"
    return RecipeError(
        f"no problems in round 1: none of the model's {info.get('samples', '?')} answers passed the checks "
        f"(rejected: {reasons}; see {run.root / 'round-1' / 'rejections.jsonl'}); ask for more problems "
        "(--problems, write.samples_per_problem) or use a stronger model"
    )


def curriculum(
    config: CurriculumConfig,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    log: Log = lambda _: None,
    engine_factory: Callable[[str | None], Engine] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the curriculum in ``out``; returns what ``RUN/result.json`` holds. A ``RecipeError``
    (one line) when round 1 keeps no problem or no round mines a pair. ``engine_factory(adapter_or_None)``
    overrides how models are loaded (default: ``make_engine`` with the config's settings)."""
    root = Path(out)
    if (root / "config.json").is_file():
        old = json.loads((root / "config.json").read_text()).get("rounds")
        if old != config.rounds:
            raise RecipeError(
                f"{root} holds a run of {old} round(s): the LoRA is trained on the pairs of every round, so "
                "the number of rounds of a run cannot change; give another --out"
            )
    check_settings(root, config)
    t0 = time.perf_counter()
    run = Run(config, root, data_dir=data_dir, progress=progress, log=log, engine_factory=engine_factory)
    rounds: list[dict[str, Any]] = []
    mined: dict[str, MathPair] = {}  # by id: a pair mined again in a later round counts once
    stopped = None
    try:
        seen: set[str] = set()
        prev: tuple[list[MathProblem], dict[str, str]] | None = None
        for rnd in range(1, config.rounds + 1):
            pool = make_pool(run, rnd, prev, seen)
            seen.update(question_key(p.question) for p in pool)
            if not pool:
                if rnd == 1:
                    raise _no_problems(run)
                stopped = f"round {rnd}'s pool is empty: every rewrite of round {rnd - 1} was rejected"
                log(stopped)
                break
            attempts = solve_pool(run, rnd, pool)
            moves, new, stats = mine_round(run, rnd, pool, attempts)
            rounds.append(stats)
            mined.update((p.id, p) for p in new if p.id not in mined)
            prev = (pool, moves)
        pairs = list(mined.values())
        if not pairs:
            raise RecipeError(
                f"no pairs to train on: no problem was at the edge in {len(rounds)} round(s) (moves: "
                + "; ".join(f"round {r['round']} {r['moves']}" for r in rounds)
                + "); ask for more problems or attempts (--problems, solve.k)"
            )
        fmt = resolve_format(config.solve.format, run.engine(None), "math")  # the attempts' format
        before = eval_all(run, "before", None)
        examples = _examples(run, pairs, fmt)
        with run.stage("train") as info:
            res = run.train(examples, root / "train", config.train)
            info.update(examples=len(examples), format=fmt, steps=res["steps"], final_loss=res["final_loss"])
        after = eval_all(run, "after", root / "train" / "adapter")
        vs = compare(run, "before", "after")
    finally:
        run.close()
    result = {
        "tinyforge": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": config.model,
        "settings": config.model_dump(mode="json"),
        "complete": True,
        "rounds": [{k: v for k, v in r.items() if k != "problems"} for r in rounds],
        "stopped_early": stopped,
        "pairs": {
            "mined": len(pairs),
            "by_round": dict(Counter(str(p.round) for p in pairs)),
            "problems": len({p.problem_id for p in pairs}),
            "prompt": config.mine.prompt,
            "examples": len(examples),
        },
        "train": {k: res[k] for k in ("examples", "used", "steps", "final_loss")},
        "before": {k: v["pass@1"] for k, v in before.items()},
        "after": {k: v["pass@1"] for k, v in after.items()},
        "vs_before": vs,
        "stages": run.state["stages"],
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
    }
    write_json(root / "result.json", result)
    (root / "report.md").write_text(report(result))
    return result


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def report(result: dict[str, Any]) -> str:
    """A short Markdown report of a curriculum run's result."""
    s = result["settings"]
    lines = [
        f"# tinyforge curriculum: {result['model']}",
        "",
        f"tinyforge {result['tinyforge']}, {result['date']}, seed {s['seed']}; k={s['solve']['k']} at "
        f"T={s['solve']['temperature']}, {len(result['rounds'])} of {s['rounds']} round(s)"
        + (f" ({result['stopped_early']})" if result["stopped_early"] else "") + ".",
        "",
        "| round | pool | greedy solved | mean pass rate | amplify | simplify | edge | mean steps | mean ops | pairs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rounds"]:
        m = r["moves"]
        lines.append(
            f"| {r['round']} | {r['pool']} | {_rate(r['greedy_solve_rate'])} | {_rate(r['mean_pass_rate'])} | "
            f"{m['amplify']} | {m['simplify']} | {m['edge']} | {r['mean_steps']:.1f} | {r['mean_ops']:.1f} | "
            f"{r['pairs']} |"
        )
    p = result["pairs"]
    lines += [
        "",
        f"Pairs: {p['mined']} from {p['problems']} problems; {p['examples']} training examples (prompt: "
        f"{p['prompt']}); LoRA {result['train']['steps']} steps, final loss {result['train']['final_loss']:.3f}.",
        "",
        "| benchmark/format | tasks | before (95% CI) | after (95% CI) | McNemar b/c, p |",
        "|---|---|---|---|---|",
    ]
    for k, v in result["vs_before"].items():
        ci = [f"{lo:.0%}-{hi:.0%}" for lo, hi in (v["before_ci95"], v["after_ci95"])]
        mc = v["mcnemar"]
        lines.append(
            f"| {k} | {v['tasks']} | {v['before']} ({ci[0]}) | {v['after']} ({ci[1]}) | "
            f"{mc['b']}/{mc['c']}, {mc['p_value']:.3f} |"
        )
    lines += ["", "## Time per stage (s)", ""]
    lines += [f"- {k}: {v.get('wall_s')}" for k, v in result["stages"].items()]
    return "\n".join(lines) + "\n"
