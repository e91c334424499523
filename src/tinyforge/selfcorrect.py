"""Self-correction training for math: ``selfcorrect(config, out)`` (``tinyforge selfcorrect``).

The model answers GSM8K *train* problems, its answers are graded, and two kinds of traces are mined from
them, with no human-written solution anywhere:

* wrong -> fixed: a wrong answer W of a problem, then ``MARKER`` ("Wait, let me reconsider."), then a
  right answer R of the same problem (sampled or greedy). Target ``W.rstrip() + MARKER + R.strip()``;
* right -> right: the greedy answer when it is right, as is, with no marker.

"Wrong" means graded ``wrong``: an answer was extracted and it is not the accepted one. An output with no
extractable answer (``no_answer``) followed by a right one is a ``no_answer_fixed`` trace: it teaches to
write an answer at all (format repair), not to find a mistake, so it is counted and reported on its own
and not trained on unless ``traces.include_no_answer``. Only answers that ended on their own are used
(``traces.complete_only``): an answer cut off at ``max_new_tokens`` that the grader calls right only
ended on the right number mid-way, and one called wrong was not finished.

Stages, each a function of this module over the library's parts:

1. sample: for each of P train problems one greedy answer and k sampled ones (``SamplingParams.seed``),
   prompted like the evaluation (``math_prompt``: chat, or few-shot raw text for a model without a chat
   template), through the run's generation cache; each graded as it arrives (``MathGrader``, in the
   sandbox) -> ``attempts.jsonl``;
2. traces: ``mine_traces`` -> ``traces.jsonl``;
3. train: one LoRA from the base per mix (``mixes``: the share of right -> right traces in the training
   set; 0.0 is wrong -> fixed only) -> ``train-mix-S/`` (``examples.json``: the traces chosen; the adapter);
4. eval: the base and every adapter, greedy, on GSM8K test with the same prompt; each answer is split at
   the marker into its first answer (before the first marker) and its final answer (after the last), both
   graded -> ``eval/LABEL/{samples.jsonl,result.json}``;

then ``result.json`` and ``report.md``. Mining and evaluation go through one function (``answer_all``):
generate, split at the marker, grade both parts. In the mining stage an answer counts by its final part
(the base model rarely writes the marker; if it does, what it settled on is its answer).

Mix sizes: every mix trains on the same number of examples, the largest that each mix can fill from the
two pools (``mix_size``), capped by ``train_size``: a mix of share s and size N takes ``floor(s*N + 0.5)``
right -> right traces and the rest wrong -> fixed. The pools are shuffled once with the run's seed
(``shuffled``) and each mix takes a prefix of each, so mixes share their traces as far as they can. A mix
that cannot hold a single example stops the run with "no traces to train on: ...".

Metrics per model (``correction_metrics``): final accuracy (Wilson 95% interval), first-answer accuracy,
the wait rate (answers with the marker), over-correction P(final wrong | first right, marker) and
P(final wrong | first right) over all first-right answers, and the fix rate P(final right | first not
right, marker). "Not right" includes first answers with no extractable answer. Each adapter is compared
with the base on final correctness by an exact McNemar test.

Resuming: run the same command again. Finished stages are read back from their files (each written whole
under a temporary name and renamed); a killed stage is redone with every completion it had made served
from the cache; training continues from its last checkpoint (``train_lora``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tinyforge import __version__
from tinyforge.data import MathTask, load_benchmark
from tinyforge.data.code import read_jsonl
from tinyforge.evaluate.mathgrade import Grade, MathGrader
from tinyforge.evaluate.metrics import paired_comparison, wilson_interval
from tinyforge.evaluate.run import resolve_format
from tinyforge.generate.base import Completion, Engine, GenerationRequest, SamplingParams
from tinyforge.generate.prompts import GSM8K_SHOTS, math_prompt, math_shots, task_stops
from tinyforge.recipe import (
    Log,
    Progress,
    RecipeError,
    Run,
    RunConfig,
    _Config,
    check_settings,
    load_settings,
    write_json,
    write_jsonl,
)
from tinyforge.train.lora import LoraConfig

__all__ = [
    "KINDS",
    "MARKER",
    "SCHEMA_VERSION",
    "SelfCorrectConfig",
    "Trace",
    "TraceConfig",
    "answer_all",
    "attempt_stats",
    "choose_mixes",
    "correction_metrics",
    "grade_parts",
    "load_config",
    "mine_traces",
    "mix_size",
    "report",
    "select_mix",
    "selfcorrect",
    "split_answer",
    "split_size",
    "train_problems",
]

SCHEMA_VERSION = 1  # of attempts.jsonl and traces.jsonl records
MARKER = "\n\nWait, let me reconsider.\n\n"  # between the wrong answer and the right one in a trace
MARK = MARKER.strip()  # what is looked for in an answer (whatever whitespace the model puts around it)
TRAIN_BENCH, EVAL_BENCH = "gsm8k-train", "gsm8k"
KINDS: tuple[str, ...] = ("wrong_fixed", "no_answer_fixed", "right_right")
# A fix trace's kind -> the grade of its first answer.
FIX_KINDS = {"wrong_fixed": "wrong", "no_answer_fixed": "no_answer"}


# --- settings ----------------------------------------------------------------------------------------------


class SampleConfig(_Config):
    problems: int = Field(50, ge=1, description="GSM8K-train problems to answer (P).")
    k: int = Field(4, ge=1, description="Sampled answers per problem, besides the greedy one.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the k answers.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of the k answers.")
    max_new_tokens: int = Field(512, ge=16, description="Token budget of one answer.")


class TraceConfig(_Config):
    fixes_per_problem: int = Field(
        1,
        ge=1,
        description="Most wrong -> fixed traces per problem (distinct wrong answers, right ones in turn).",
    )
    include_no_answer: bool = Field(
        False, description="Also train on no_answer -> fixed traces (format repair; counted either way)."
    )
    complete_only: bool = Field(
        True, description="Use only answers that ended on their own, not cut off at max_new_tokens."
    )


class CorrectionEvalConfig(_Config):
    limit: int | None = Field(None, ge=1, description="Only the first N GSM8K test problems.")
    max_new_tokens: int = Field(1024, ge=16, description="Token budget of one greedy answer (room to wait).")


class SelfCorrectConfig(RunConfig):
    seed: int = Field(0, description="Seed of the sampled answers, the problem draw and the mix selection.")
    format: Literal["auto", "chat", "raw"] = Field(
        "auto", description="Prompt format: chat, raw (few-shot), auto (chat if the model has a template)."
    )
    mixes: list[float] = Field(
        default_factory=lambda: [0.0, 0.5],
        min_length=1,
        description="Share of right -> right traces in each training set (0.0: wrong -> fixed only).",
    )
    train_size: int | None = Field(
        None, ge=1, description="Examples per mix (default: the most that every mix can be filled with)."
    )
    sample: SampleConfig = Field(default_factory=SampleConfig)
    traces: TraceConfig = Field(default_factory=TraceConfig)
    train: LoraConfig = Field(default_factory=LoraConfig)
    eval: CorrectionEvalConfig = Field(default_factory=CorrectionEvalConfig)

    @field_validator("mixes")
    @classmethod
    def _shares(cls, mixes: list[float]) -> list[float]:
        if any(not 0.0 <= s <= 1.0 for s in mixes):
            raise ValueError("a mix is a share of right -> right traces, from 0.0 to 1.0")
        if len(set(mixes)) < len(mixes):
            raise ValueError("a mix is listed twice")
        return mixes


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> SelfCorrectConfig:
    """Settings from a YAML file (or defaults) with ``overrides`` (the command line's options) on top."""
    return load_settings(SelfCorrectConfig, "selfcorrect", path, overrides)


# --- answers: split at the marker, graded ------------------------------------------------------------------


def split_answer(text: str) -> tuple[str, str | None]:
    """``(first answer, final answer)``: the text before the first marker and after the last one; the final
    answer is None when the text has no marker (the first answer is then the whole text)."""
    if MARK not in text:
        return text, None
    return text.partition(MARK)[0].strip(), text.rpartition(MARK)[2].strip()


def grade_parts(grader: MathGrader, answers: Sequence[str], text: str) -> list[Future[Grade]]:
    """Grades of an answer's parts: its first answer, and its final answer when it has the marker."""
    return [grader.submit(answers, part) for part in split_answer(text) if part is not None]


def _grade_record(g: Grade) -> dict[str, Any]:
    return {
        "status": g.status,
        "answer": g.answer,
        "key": g.key,
        **({"detail": g.detail} if g.detail else {}),
    }


def _bar(run: Run, label: str, what: str, total: int) -> Callable[[int], None] | None:
    return run.progress(f"{label}: {what}", total) if run.progress else None


def answer_all(
    run: Run,
    adapter: Path | None,
    tasks: Sequence[MathTask],
    params: SamplingParams,
    fmt: str,
    label: str,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``params.n`` answers per task from the model (with ``adapter``) through the run's cache, each split at
    the marker and both parts graded in the sandbox as soon as the answer arrives. Returns the records (in
    task order, then sample index) and the generation counts."""
    grader = MathGrader(run.pool)
    shots = math_shots(EVAL_BENCH, run.data_dir) if fmt == "raw" else ()
    requests = [GenerationRequest(math_prompt(t, fmt, shots), i) for t in tasks for i in range(params.n)]
    records: list[dict[str, Any]] = [{} for _ in requests]
    grades: list[list[Future[Grade]]] = [[] for _ in requests]
    graded = _bar(run, label, "grade", len(requests))

    def arrived(pos: int, c: Completion) -> None:
        task = tasks[pos // params.n]
        records[pos] = {
            "task_id": task.task_id,
            "index": pos % params.n,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "completion_tokens": c.completion_tokens,
            "markers": c.text.count(MARK),
        }
        grades[pos] = grade_parts(grader, task.answers, c.text)
        if graded:
            grades[pos][-1].add_done_callback(lambda _: graded(1))

    _, counts = run.complete(adapter, requests, params, f"{label}: generate", arrived)
    for rec, futures in zip(records, grades, strict=True):
        parts = [_grade_record(f.result()) for f in futures]
        rec["first"], rec["final"] = parts[0], parts[-1]
    return records, {"answers": len(requests), **counts}


def _status(rec: dict[str, Any]) -> str:
    return str(rec["final"]["status"])


# --- traces ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """One training trace: the problem as the model sees it, the first answer, and for a fix the right
    answer that follows the marker. ``meta``: prompt format, which attempts, their extracted answers."""

    problem_id: str
    kind: str  # one of KINDS
    model: str
    seed: int
    question: str
    answers: tuple[str, ...]  # the accepted final answers (for the record; never shown to the model)
    first: str  # W (a fix) or the right greedy answer (right -> right)
    fixed: str | None = None  # R, after the marker; None for right -> right
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def target(self) -> str:
        """The training target: ``W + MARKER + R`` for a fix, the right answer as is otherwise."""
        return self.first if self.fixed is None else self.first.rstrip() + MARKER + self.fixed.strip()

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps([self.problem_id, self.kind, self.target]).encode()).hexdigest()[:16]

    def prompt(self, fmt: str, shots: Sequence[tuple[str, str]] = ()) -> str | list[dict[str, str]]:
        """The training prompt: the evaluation's prompt for this problem in format ``fmt``."""
        return math_prompt(MathTask(self.problem_id, TRAIN_BENCH, self.question, self.answers), fmt, shots)

    def record(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "id": self.id, **asdict(self), "target": self.target}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Trace:
        if rec.get("v") != SCHEMA_VERSION:
            raise ValueError(f"trace record schema {rec.get('v')!r}, this tinyforge reads {SCHEMA_VERSION}")
        fields = {k: v for k, v in rec.items() if k not in ("v", "id", "target")}
        return cls(**{**fields, "answers": tuple(fields["answers"])})


def _which(rec: dict[str, Any]) -> str:
    return "greedy" if rec["greedy"] else f"sample-{rec['index']}"


def mine_traces(
    tasks: Sequence[MathTask],
    attempts: Iterable[dict[str, Any]],
    *,
    model: str,
    seed: int,
    fmt: str,
    fixes_per_problem: int = 1,
    complete_only: bool = True,
) -> list[Trace]:
    """The traces of graded attempts (``attempts.jsonl`` records: ``task_id``, ``greedy``, ``index``,
    ``text``, ``final.status``). A problem's attempts are taken greedy first, then by sample index:
    right -> right from a right greedy answer; for each fix kind, its first ``fixes_per_problem`` distinct
    first answers (by text), each followed by the problem's right answers taken in turn. A problem without
    a right answer gives no fix. With ``complete_only``, answers cut off at the token budget
    (``finish_reason`` "length") are left out."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        by_task[a["task_id"]].append(a)
    traces = []
    for task in tasks:
        got = sorted(by_task.get(task.task_id, []), key=lambda a: (not a["greedy"], a["index"]))
        got = [a for a in got if a["finish_reason"] == "stop" or not complete_only]
        rights = [a for a in got if _status(a) == "correct"]
        common = dict(problem_id=task.task_id, model=model, seed=seed, question=task.question)
        common["answers"] = tuple(task.answers)
        greedy = next((a for a in got if a["greedy"]), None)
        if greedy is not None and _status(greedy) == "correct":
            meta = {"format": fmt, "first_from": "greedy", "first_answer": greedy["final"]["answer"]}
            traces.append(Trace(kind="right_right", first=greedy["text"], meta=meta, **common))
        for kind, status in FIX_KINDS.items():
            distinct: dict[str, dict[str, Any]] = {}  # first answers by text, the earliest of equal ones
            for a in got:
                if _status(a) == status:
                    distinct.setdefault(a["text"], a)
            for j, w in enumerate(list(distinct.values())[:fixes_per_problem] if rights else []):
                r = rights[j % len(rights)]
                meta = {"format": fmt, "first_from": _which(w), "fixed_from": _which(r)}
                meta.update(first_answer=w["final"]["answer"], fixed_answer=r["final"]["answer"])
                traces.append(Trace(kind=kind, first=w["text"], fixed=r["text"], meta=meta, **common))
    return traces


def attempt_stats(attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Answer statuses (greedy and sampled apart), answers cut off at the token budget, and how many
    problems have a right answer, a wrong one, both (where wrong -> fixed traces come from), or a right
    greedy answer (cut-off answers included)."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        by_task[a["task_id"]].append(a)
    statuses = {s: [_status(a) for a in got] for s, got in by_task.items()}
    return {
        "problems": len(by_task),
        "answers": len(attempts),
        "greedy": dict(Counter(_status(a) for a in attempts if a["greedy"])),
        "sampled": dict(Counter(_status(a) for a in attempts if not a["greedy"])),
        "cut_off": sum(a["finish_reason"] == "length" for a in attempts),
        "problems_with_right": sum("correct" in s for s in statuses.values()),
        "problems_with_wrong": sum("wrong" in s for s in statuses.values()),
        "problems_right_and_wrong": sum("correct" in s and "wrong" in s for s in statuses.values()),
        "greedy_right": sum(_status(a) == "correct" for a in attempts if a["greedy"]),
    }


# --- mixes -------------------------------------------------------------------------------------------------


def split_size(size: int, share: float) -> tuple[int, int]:
    """``(fix traces, right -> right traces)`` of a training set of ``size`` with ``share`` right -> right:
    ``floor(share * size + 0.5)`` of them (half rounds up, not to even), the rest fixes."""
    n_right = math.floor(share * size + 0.5)
    return size - n_right, n_right


def mix_size(n_fix: int, n_right: int, shares: Iterable[float], cap: int | None = None) -> int:
    """The one training-set size of every mix: the largest N that each share can fill from pools of
    ``n_fix`` and ``n_right`` traces, at most ``cap``. Both parts of ``split_size`` grow with N one step at a
    time, so the sizes a share can fill are 0..its largest, and the smallest largest fits all."""

    def largest(share: float) -> int:
        return next(
            n
            for n in range(n_fix + n_right, -1, -1)
            if split_size(n, share)[0] <= n_fix and split_size(n, share)[1] <= n_right
        )

    return min([largest(s) for s in shares] + ([cap] if cap is not None else []))


def shuffled(traces: Iterable[Trace], seed: int) -> list[Trace]:
    """``traces`` in an order that depends only on which traces they are and ``seed``."""
    out = sorted(traces, key=lambda t: t.id)
    random.Random(seed).shuffle(out)
    return out


def select_mix(
    fixes: Sequence[Trace], rights: Sequence[Trace], share: float, size: int, seed: int
) -> list[Trace]:
    """A training set of ``size`` traces, ``share`` of them right -> right (``split_size``): a seeded prefix
    of each pool, so mixes of one run share as many traces as they can."""
    n_fix, n_right = split_size(size, share)
    if n_fix > len(fixes) or n_right > len(rights):
        raise ValueError(
            f"a mix of {n_fix} fixes and {n_right} right traces from {len(fixes)} and {len(rights)}"
        )
    return shuffled(fixes, seed)[:n_fix] + shuffled(rights, seed)[:n_right]


# --- metrics -----------------------------------------------------------------------------------------------


def _rate(count: int, of: int) -> dict[str, Any]:
    return {"count": count, "of": of, "rate": count / of if of else None}


def correction_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and self-correction rates of graded answers (``first``/``final`` grades, ``markers``)."""
    first = [r["first"]["status"] == "correct" for r in records]
    final = [r["final"]["status"] == "correct" for r in records]
    waited = [r["markers"] > 0 for r in records]
    rows = list(zip(first, final, waited, strict=True))
    n, n_final = len(records), sum(final)
    return {
        "answers": n,
        "final": {**_rate(n_final, n), "ci95": list(wilson_interval(n_final, n))},
        "first": _rate(sum(first), n),
        "wait": _rate(sum(waited), n),
        # P(final wrong | first right, marker): a right answer talked out of
        "over_correction": _rate(sum(f and not g for f, g, w in rows if w), sum(f and w for f, _, w in rows)),
        # the same over every first-right answer (without a marker the final answer is the first)
        "over_correction_all": _rate(sum(f and not g for f, g, _ in rows), sum(first)),
        # P(final right | first not right, marker)
        "fix": _rate(sum(g for f, g, w in rows if w and not f), sum(w and not f for f, _, w in rows)),
    }


# --- the run -----------------------------------------------------------------------------------------------


def train_problems(config: SelfCorrectConfig, data_dir: str | os.PathLike[str] | None) -> list[MathTask]:
    """P GSM8K-train problems drawn with the seed; never the raw prompt's worked examples (its first ones)."""
    tasks: list[MathTask] = load_benchmark(TRAIN_BENCH, data_dir)[GSM8K_SHOTS:]
    random.Random(config.seed).shuffle(tasks)
    return tasks[: config.sample.problems]


def sample_answers(run: Run, problems: list[MathTask]) -> list[dict[str, Any]]:
    """One greedy and k sampled answers per problem, graded (``attempts.jsonl``)."""
    c, out = run.config, run.root / "attempts.jsonl"
    if out.is_file():
        return list(read_jsonl(out))
    with run.stage("sample") as info:
        fmt = resolve_format(c.format, run.engine(None), "math")
        greedy = SamplingParams(
            max_new_tokens=c.sample.max_new_tokens, stop=tuple(task_stops(problems[0], fmt))
        )
        sampled = replace(
            greedy, n=c.sample.k, temperature=c.sample.temperature, top_p=c.sample.top_p, seed=c.seed
        )
        attempts: list[dict[str, Any]] = []
        generation = {}
        for name, params in (("greedy", greedy), ("sampled", sampled)):
            records, generation[name] = answer_all(run, None, problems, params, fmt, f"{name} answers")
            attempts += [{"v": SCHEMA_VERSION, **r, "greedy": params.greedy} for r in records]
        info.update(format=fmt, generation=generation, **attempt_stats(attempts))
    write_jsonl(out, attempts)  # after state.json: a file that is there has its stats
    return attempts


def make_traces(run: Run, problems: list[MathTask], attempts: list[dict[str, Any]], fmt: str) -> list[Trace]:
    """The traces of the graded answers (``traces.jsonl``), a pure function of them."""
    c, out = run.config, run.root / "traces.jsonl"
    if out.is_file():
        return [Trace.from_record(r) for r in read_jsonl(out)]
    with run.stage("traces") as info:
        traces = mine_traces(
            problems,
            attempts,
            model=c.model,
            seed=c.seed,
            fmt=fmt,
            fixes_per_problem=c.traces.fixes_per_problem,
            complete_only=c.traces.complete_only,
        )
        info.update(Counter(t.kind for t in traces))
    write_jsonl(out, [t.record() for t in traces])
    return traces


def trace_counts(traces: Sequence[Trace], include_no_answer: bool) -> dict[str, int]:
    counts = Counter(t.kind for t in traces)
    return {
        **{k: counts.get(k, 0) for k in KINDS},
        "excluded_no_answer": 0 if include_no_answer else counts.get("no_answer_fixed", 0),
    }


def choose_mixes(
    run: Run, traces: list[Trace], attempts: list[dict[str, Any]]
) -> list[tuple[float, list[Trace]]]:
    """Every configured mix's training traces, all of one size (``mix_size``); a one-line "no traces to
    train on" error when a mix would get none."""
    c = run.config
    fix_kinds = {"wrong_fixed", *(["no_answer_fixed"] if c.traces.include_no_answer else [])}
    fixes = [t for t in traces if t.kind in fix_kinds]
    rights = [t for t in traces if t.kind == "right_right"]
    size = mix_size(len(fixes), len(rights), c.mixes, c.train_size)
    if size == 0:
        empty = ", ".join(str(s) for s in c.mixes if mix_size(len(fixes), len(rights), [s]) == 0)
        excluded = trace_counts(traces, c.traces.include_no_answer)["excluded_no_answer"]
        st, got = attempt_stats(attempts), Counter(_status(a) for a in attempts)
        raise RecipeError(
            f"no traces to train on: mix {empty} gets no example from {len(fixes)} fix and {len(rights)} "
            f"right -> right traces ({excluded} no-answer fixes excluded); {st['answers']} answers to "
            f"{st['problems']} problems: {got['correct']} right, {got['wrong']} wrong, {got['no_answer']} "
            f"without an answer, greedy right on {st['greedy_right']}; {st['cut_off']} cut off at "
            f"max_new_tokens{' (not used)' if c.traces.complete_only else ''}: sample more problems or "
            "answers, give them more tokens, or take a stronger model"
        )
    return [(s, select_mix(fixes, rights, s, size, c.seed)) for s in c.mixes]


def _label(share: float) -> str:
    return f"mix-{share}"


def _progress(run: Run, label: str) -> Progress | None:
    return (lambda what, n: run.progress(f"{label}: {what}", n)) if run.progress else None


def train_mix(run: Run, share: float, traces: list[Trace], fmt: str) -> tuple[Path, dict[str, Any]]:
    """A fresh LoRA from the base on one mix's traces, in ``train-mix-S/``."""
    c, label = run.config, _label(share)
    folder = run.root / f"train-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {"share": share, "size": len(traces), "kinds": dict(Counter(t.kind for t in traces))}
    write_json(folder / "examples.json", {**chosen, "traces": [t.id for t in traces]})
    shots = math_shots(EVAL_BENCH, run.data_dir) if fmt == "raw" else ()
    examples = [(t.prompt(fmt, shots), t.target) for t in traces]
    with run.stage(f"train-{label}") as info:
        res = run.train(examples, folder, c.train, progress=_progress(run, label))
        info.update(examples=len(examples), steps=res["steps"], final_loss=res["final_loss"])
    return folder / "adapter", {**chosen, "steps": res["steps"], "final_loss": res["final_loss"]}


def eval_model(run: Run, label: str, adapter: Path | None, fmt: str) -> dict[str, Any]:
    """Greedy answers of the model (with ``adapter``) to GSM8K test, graded before and after the marker
    (``eval/LABEL/``)."""
    c, folder = run.config, run.root / "eval" / label
    if (folder / "result.json").is_file():
        return dict(json.loads((folder / "result.json").read_text()))
    tasks: list[MathTask] = load_benchmark(EVAL_BENCH, run.data_dir)[: c.eval.limit]
    params = SamplingParams(max_new_tokens=c.eval.max_new_tokens, stop=tuple(task_stops(tasks[0], fmt)))
    with run.stage(f"eval/{label}") as info:
        records, generation = answer_all(run, adapter, tasks, params, fmt, label)
        metrics = correction_metrics(records)
        info.update(final_accuracy=metrics["final"]["rate"], wait_rate=metrics["wait"]["rate"])
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "samples.jsonl", records)
    summary = {
        "label": label,
        "adapter": str(adapter.relative_to(run.root)) if adapter else None,
        "bench": EVAL_BENCH,
        "format": fmt,
        "sampling": params.key(),
        "generation": generation,
        **metrics,
    }
    write_json(folder / "result.json", summary)
    return summary


def _finals(run: Run, label: str) -> dict[str, bool]:
    path = run.root / "eval" / label / "samples.jsonl"
    return {r["task_id"]: r["final"]["status"] == "correct" for r in read_jsonl(path)}


def compare(run: Run, before: str, after: str) -> dict[str, Any]:
    """Final correctness of ``after`` against ``before`` on the tasks both answered (``paired_comparison``)."""
    return paired_comparison(_finals(run, before), _finals(run, after))


def selfcorrect(
    config: SelfCorrectConfig,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    engine_factory: Callable[[str | None], Engine] | None = None,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Run (or resume) self-correction training in the run folder ``out``; returns what
    ``out/result.json`` holds.

    Raises ``RecipeError`` ("no traces to train on: ...") when the model's answers give a mix nothing to
    train on; ``attempts.jsonl`` and ``traces.jsonl`` are written by then. ``engine_factory`` as in
    ``recipe.bootstrap``."""
    root = Path(out)
    check_settings(root, config)
    t0 = time.perf_counter()
    run = Run(config, root, data_dir=data_dir, progress=progress, log=log, engine_factory=engine_factory)
    try:
        problems = train_problems(config, data_dir)
        attempts = sample_answers(run, problems)
        fmt = run.state["stages"].get("sample", {}).get("format") or resolve_format(
            config.format, run.engine(None), "math"
        )  # the answers' format (as recorded when they were made)
        traces = make_traces(run, problems, attempts, fmt)
        mixes = choose_mixes(run, traces, attempts)
        models = {"base": eval_model(run, "base", None, fmt)}
        trained = []
        for share, chosen in mixes:
            adapter, info = train_mix(run, share, chosen, fmt)
            label = _label(share)
            models[label] = {**eval_model(run, label, adapter, fmt), "vs_base": compare(run, "base", label)}
            trained.append({"label": label, "adapter": str(adapter.relative_to(root)), **info})
    finally:
        run.close()
    result = _result(
        config,
        run,
        t0,
        format=fmt,
        answers=attempt_stats(attempts),
        traces=trace_counts(traces, config.traces.include_no_answer),
        mixes=trained,
        models=models,
    )
    write_json(root / "result.json", result)
    (root / "report.md").write_text(report(result))
    return result


def _result(config: SelfCorrectConfig, run: Run, t0: float, **body: Any) -> dict[str, Any]:
    """``result.json``: what ran (version, date, model, settings), ``body``, and the time per stage."""
    what = {"tinyforge": __version__, "date": time.strftime("%Y-%m-%d"), "model": config.model}
    timing = {"stages": run.state["stages"], "wall_s_this_invocation": round(time.perf_counter() - t0, 1)}
    return {**what, "settings": config.model_dump(mode="json"), **body, **timing}


# --- report ------------------------------------------------------------------------------------------------


def _pct(r: dict[str, Any]) -> str:
    return f"{r['count']}/{r['of']} ({r['rate']:.1%})" if r["rate"] is not None else f"0/{r['of']} (-)"


def report(result: dict[str, Any]) -> str:
    """A short Markdown report of a run's result: what was mined and a table base vs each mix."""
    a, t, s = result["answers"], result["traces"], result["settings"]
    lines = [
        f"# tinyforge selfcorrect: {result['model']}",
        "",
        f"tinyforge {result['tinyforge']}, {result['date']}, seed {s['seed']}, format {result['format']}.",
        "",
        f"- answers: {a['answers']} to {a['problems']} GSM8K-train problems (greedy + {s['sample']['k']} at "
        f"T={s['sample']['temperature']}); greedy {a['greedy']}, sampled {a['sampled']}",
        f"- problems with a right answer {a['problems_with_right']}, with right and wrong "
        f"{a['problems_right_and_wrong']}, greedy right {a['greedy_right']}; answers cut off at the token "
        f"budget {a['cut_off']}" + (" (not used for traces)" if s["traces"]["complete_only"] else ""),
        f"- traces: wrong -> fixed {t['wrong_fixed']}, right -> right {t['right_right']}, no-answer -> fixed "
        f"{t['no_answer_fixed']} ({t['excluded_no_answer']} excluded from training)",
        "- mixes: " + "; ".join(f"{m['label']}: {m['size']} examples {m['kinds']}" for m in result["mixes"]),
        "",
        "Over-correction: P(final wrong | first right, waited) and over all first-right answers; fix: "
        "P(final right | first not right, waited). McNemar: final correctness against the base.",
        "",
        "| model | final (95% CI) | first | wait | over-corr. (waited) | over-corr. (all) | fix | delta "
        "| McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in result["models"].items():
        lo, hi = m["final"]["ci95"]
        vs = m.get("vs_base")
        cmp = f"{vs['delta']:+.1%} | {vs['mcnemar']['p_value']:.3f}" if vs else "- | -"
        lines.append(
            f"| {label} | {_pct(m['final'])} [{lo:.1%}, {hi:.1%}] | {_pct(m['first'])} | {_pct(m['wait'])} | "
            f"{_pct(m['over_correction'])} | {_pct(m['over_correction_all'])} | {_pct(m['fix'])} | {cmp} |"
        )
    lines += ["", "## Time per stage (s)", ""] + [
        f"- {k}: {v.get('wall_s')}" for k, v in result["stages"].items()
    ]
    return "\n".join(lines) + "\n"
