"""Self-correction training for math (`tinyforge selfcorrect`): traces from graded answers, the split at the
marker, the mixes, the metrics, settings and errors; and a real run of the demo config on SmolLM2 (real
model, real sandbox, real grader), run again to check that nothing is generated twice."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tinyforge.cli import app
from tinyforge.data import MathTask
from tinyforge.evaluate.mathgrade import STATUSES, MathGrader
from tinyforge.evaluate.metrics import wilson_interval
from tinyforge.generate.models import fetch_model
from tinyforge.generate.prompts import math_prompt
from tinyforge.recipe import RecipeError, Run
from tinyforge.sandbox import SandboxPool
from tinyforge.selfcorrect import (
    MARKER,
    SelfCorrectConfig,
    Trace,
    TraceConfig,
    choose_mixes,
    correction_metrics,
    grade_parts,
    load_config,
    mine_traces,
    mix_size,
    select_mix,
    split_answer,
    split_size,
    train_problems,
)

runner = CliRunner()
MODEL = "smollm2-135m-instruct"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "selfcorrect-demo.yaml"


def task(tid: str, gold: str = "7") -> MathTask:
    return MathTask(tid, "gsm8k-train", f"Question {tid}?", (gold,))


def attempt(tid: str, which: str, status: str, text: str, finish: str = "stop") -> dict[str, Any]:
    """An attempts.jsonl record as ``sample_answers`` writes it; ``which`` is "greedy" or a sample index."""
    grade = {"status": status, "answer": None if status == "no_answer" else text[-1], "key": None}
    greedy = which == "greedy"
    return {"v": 1, "task_id": tid, "greedy": greedy, "index": 0 if greedy else int(which), "text": text,
            "finish_reason": finish, "completion_tokens": 5, "markers": 0, "first": grade, "final": grade}  # fmt: skip


# Problem a: greedy wrong, sample 0 right, sample 1 without an answer.
# Problem b: greedy right, samples 0 and 1 the same wrong text.
# Problem c: wrong, and right only when cut off at the token budget (not used by default).
# Problem d: only a no-answer output and a right sample.
ATTEMPTS = [
    attempt("a", "greedy", "wrong", "so it is 5"),
    attempt("a", "0", "correct", "so it is 7"),
    attempt("a", "1", "no_answer", "I do not know"),
    attempt("b", "1", "wrong", "b: it is 6"),  # out of order on purpose: traces do not depend on it
    attempt("b", "greedy", "correct", "b: it is 7"),
    attempt("b", "0", "wrong", "b: it is 6"),
    attempt("c", "greedy", "wrong", "c: 1"),
    attempt("c", "0", "wrong", "c: 2"),
    attempt("c", "1", "correct", "c: 7 and then", finish="length"),
    attempt("d", "greedy", "no_answer", "d: hmm"),
    attempt("d", "0", "correct", "d: 7"),
]
TASKS = [task(t) for t in "abcd"]


def mined(fixes_per_problem: int = 1, complete_only: bool = True) -> list[Trace]:
    return mine_traces(TASKS, ATTEMPTS, model="m", seed=3, fmt="chat", fixes_per_problem=fixes_per_problem,
                       complete_only=complete_only)  # fmt: skip


def test_traces_from_graded_attempts() -> None:
    traces = mined()
    got = [(t.problem_id, t.kind, t.target) for t in traces]
    assert got == [
        ("a", "wrong_fixed", "so it is 5" + MARKER + "so it is 7"),
        ("a", "no_answer_fixed", "I do not know" + MARKER + "so it is 7"),
        ("b", "right_right", "b: it is 7"),  # the right greedy answer as is, no marker
        ("b", "wrong_fixed", "b: it is 6" + MARKER + "b: it is 7"),
        ("d", "no_answer_fixed", "d: hmm" + MARKER + "d: 7"),
    ]
    assert MARKER == "\n\nWait, let me reconsider.\n\n"
    a_fix = traces[0]
    assert (a_fix.model, a_fix.seed, a_fix.fixed) == ("m", 3, "so it is 7")
    assert a_fix.meta == {"format": "chat", "first_from": "greedy", "fixed_from": "sample-0",
                          "first_answer": "5", "fixed_answer": "7"}  # fmt: skip
    assert traces[3].meta["first_from"] == "sample-0"  # the earliest of two equal wrong answers
    # Two equal wrong texts are one wrong answer: still one fix for b with more fixes allowed.
    assert [t.kind for t in mined(fixes_per_problem=3)].count("wrong_fixed") == 2
    # The cut-off right answer of c makes a fix only when cut-off answers are allowed.
    assert [(t.problem_id, t.target) for t in mined(complete_only=False) if t.problem_id == "c"] == [
        ("c", "c: 1" + MARKER + "c: 7 and then")
    ]
    # A trace stands alone: its record reads back equal, with its id and target; its prompt is the eval's.
    for t in traces:
        rec = json.loads(json.dumps(t.record()))
        assert Trace.from_record(rec) == t and rec["target"] == t.target and rec["id"] == t.id
        assert rec["v"] == 1 and {"problem_id", "kind", "model", "seed"} <= rec.keys()
    assert traces[0].prompt("chat") == math_prompt(TASKS[0], "chat")
    with pytest.raises(ValueError, match="schema"):
        Trace.from_record({**traces[0].record(), "v": 99})


def test_several_fixes_per_problem_take_the_right_answers_in_turn() -> None:
    tasks = [task("e")]
    attempts = [attempt("e", "greedy", "correct", "R0"), attempt("e", "0", "wrong", "W0"),
                attempt("e", "1", "correct", "R1"), attempt("e", "2", "wrong", "W1"),
                attempt("e", "3", "wrong", "W2")]  # fmt: skip
    traces = mine_traces(tasks, attempts, model="m", seed=0, fmt="raw", fixes_per_problem=3)
    fixes = [(t.first, t.fixed) for t in traces if t.kind == "wrong_fixed"]
    assert fixes == [("W0", "R0"), ("W1", "R1"), ("W2", "R0")]


def test_no_answer_fixes_are_counted_but_not_trained_on(tmp_path: Path) -> None:
    """With the defaults only wrong -> fixed and right -> right traces are trained on; a mix that would get
    nothing is a one-line error that says what there was."""
    traces = mined()
    config = SelfCorrectConfig(model="m", mixes=[0.0, 0.5], workers=1)
    run = Run(config, tmp_path, data_dir=None, progress=None, log=print)  # type: ignore[arg-type]
    try:
        mixes = choose_mixes(run, traces, ATTEMPTS)
        # pools: 2 wrong -> fixed (a, b), 1 right -> right (b). Size: mix 0.0 fits 2, mix 0.5 fits 2
        # (1 fix + floor(0.5 * 2 + 0.5) = 1 right); a third would need 2 right ones. So 2 each.
        assert [(s, sorted(t.kind for t in chosen)) for s, chosen in mixes] == [
            (0.0, ["wrong_fixed", "wrong_fixed"]),
            (0.5, ["right_right", "wrong_fixed"]),
        ]
        # Format repairs included (a, d), wrong -> fixed only: all 4 fixes.
        run.config = config.model_copy(update={"mixes": [0.0], "traces": TraceConfig(include_no_answer=True)})
        ((_, chosen),) = choose_mixes(run, traces, ATTEMPTS)
        assert sorted(t.kind for t in chosen) == ["no_answer_fixed"] * 2 + ["wrong_fixed"] * 2
        run.config = config
        only_c = [a for a in ATTEMPTS if a["task_id"] == "c"]
        with pytest.raises(RecipeError) as e:
            choose_mixes(run, mine_traces(TASKS, only_c, model="m", seed=0, fmt="chat"), only_c)
        msg = str(e.value)
        assert msg.startswith("no traces to train on: mix 0.0, 0.5 gets no example from 0 fix and 0 right")
        assert "3 answers to 1 problems: 1 right, 2 wrong, 0 without an answer, greedy right on 0; " in msg
        assert "1 cut off at max_new_tokens (not used): " in msg
        assert "\n" not in msg
        # Right answers but no right greedy one: mix 0.0 trains, mix 0.5 cannot, and says so.
        no_greedy = [a for a in ATTEMPTS if a["task_id"] == "a"]
        with pytest.raises(RecipeError, match=r"no traces to train on: mix 0.5 gets no example from 1 fix"):
            choose_mixes(run, mine_traces(TASKS, no_greedy, model="m", seed=0, fmt="chat"), no_greedy)
    finally:
        run.close()


def test_split_at_the_marker() -> None:
    assert split_answer("x = 3, so \\boxed{3}") == ("x = 3, so \\boxed{3}", None)
    w, r = "It is 5.", "No: 3 + 4 = 7. The answer is 7."
    assert split_answer(w + MARKER + r) == (w, r)
    # Any whitespace around the marker; several markers: the first answer before the first, the final
    # answer after the last.
    assert split_answer("A 1 Wait, let me reconsider. B 2\nWait, let me reconsider.\nC 3") == ("A 1", "C 3")
    assert split_answer("A 1\n\nWait, let me reconsider.") == ("A 1", "")


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(workers=2) as p:
        yield p


def test_both_parts_are_graded_in_the_sandbox(pool: SandboxPool) -> None:
    grader = MathGrader(pool)
    text = "3 + 3 = 6, so $\\boxed{6}$." + MARKER + "No: 3 + 4 = 7, so $\\boxed{7}$."
    first, final = (f.result() for f in grade_parts(grader, ["7"], text))
    assert (first.status, first.answer, final.status, final.answer) == ("wrong", "6", "correct", "7")
    (only,) = grade_parts(grader, ["7"], "It is $\\boxed{7}$.")
    assert only.result().correct
    # A marker with nothing after it: the final answer has no answer, the first one is still graded.
    first, final = (f.result() for f in grade_parts(grader, ["7"], "$\\boxed{7}$" + MARKER))
    assert (first.status, final.status) == ("correct", "no_answer")


def test_mix_sizes() -> None:
    # share 0.5 of 3: floor(1.5 + 0.5) = 2 right (half rounds up), 1 fix; of 4: 2 and 2.
    assert split_size(3, 0.5) == (1, 2) and split_size(4, 0.5) == (2, 2) and split_size(5, 0.0) == (5, 0)
    assert split_size(4, 0.25) == (3, 1) and split_size(2, 1.0) == (0, 2)
    # 5 fixes, 2 right: mix 0.0 fits 5; mix 0.5 fits 4 (2 + 2; 5 would need 3 right). One size: 4.
    assert mix_size(5, 2, [0.0]) == 5 and mix_size(5, 2, [0.5]) == 4 and mix_size(5, 2, [0.0, 0.5]) == 4
    assert mix_size(5, 2, [0.0, 0.5], cap=3) == 3 and mix_size(5, 2, [0.0, 0.5], cap=9) == 4
    assert mix_size(0, 9, [0.0, 0.5]) == 0  # nothing to fix: mix 0.0 gets nothing
    assert mix_size(9, 0, [0.5]) == 0  # size 1 of share 0.5 is already 1 right one
    assert mix_size(9, 0, [0.25]) == 1  # size 1: floor(0.75) = 0 right; size 2: floor(1.0) = 1 right


def test_mix_selection_is_seeded_nested_and_order_free() -> None:
    def traces(kind: str, n: int) -> list[Trace]:
        return [Trace(f"p{i}", kind, "m", 0, "q", ("1",), f"{kind} {i}") for i in range(n)]

    fixes, rights = traces("wrong_fixed", 20), traces("right_right", 20)
    a = select_mix(fixes, rights, 0.5, 10, seed=1)
    assert [t.kind for t in a] == ["wrong_fixed"] * 5 + ["right_right"] * 5 and len({t.id for t in a}) == 10
    shuffled_input = random.Random(7).sample(fixes, len(fixes))
    assert select_mix(shuffled_input, rights, 0.5, 10, seed=1) == a  # same traces, same seed: same set
    assert select_mix(fixes, rights, 0.5, 10, seed=2) != a
    only_fixes = select_mix(fixes, rights, 0.0, 10, seed=1)
    assert only_fixes[:5] == a[:5]  # mixes take prefixes of one shuffle: they share their fixes
    with pytest.raises(ValueError, match="a mix of 0 fixes and 21 right"):
        select_mix(fixes, rights, 1.0, 21, seed=1)


def graded(first: str, final: str | None = None) -> dict[str, Any]:
    """An eval record: the first answer's status and, when it waited, the final answer's."""
    return {
        "first": {"status": first},
        "final": {"status": final or first},
        "markers": int(final is not None),
    }


def test_metric_arithmetic() -> None:
    records = [
        graded("correct"),  # 1: right, did not wait
        graded("correct", "wrong"),  # 2: right, waited, talked out of it (over-correction)
        graded("correct", "correct"),  # 3: right, waited, kept it
        graded("wrong", "correct"),  # 4: wrong, waited, fixed
        graded("wrong", "wrong"),  # 5: wrong, waited, still wrong
        graded("no_answer", "correct"),  # 6: no answer first, waited, fixed (counts as first not right)
        graded("wrong"),  # 7: wrong, did not wait
        graded("correct"),  # 8: right, did not wait
    ]
    m = correction_metrics(records)
    assert m["answers"] == 8
    assert (m["final"]["count"], m["final"]["rate"]) == (5, 5 / 8)  # 1, 3, 4, 6, 8
    assert m["final"]["ci95"] == list(wilson_interval(5, 8))
    assert (m["first"]["count"], m["first"]["rate"]) == (4, 0.5)  # 1, 2, 3, 8
    assert (m["wait"]["count"], m["wait"]["of"]) == (5, 8)  # 2-6
    assert m["over_correction"] == {"count": 1, "of": 2, "rate": 0.5}  # of 2, 3 (right and waited): 2
    assert m["over_correction_all"] == {"count": 1, "of": 4, "rate": 0.25}  # of 1, 2, 3, 8: 2
    assert m["fix"] == {"count": 2, "of": 3, "rate": 2 / 3}  # of 4, 5, 6 (not right, waited): 4, 6
    none = correction_metrics([graded("wrong")])
    assert none["over_correction"]["rate"] is None and none["fix"]["rate"] is None  # nothing to divide by


def test_configs_and_one_line_errors(tmp_path: Path) -> None:
    demo = load_config(DEMO, model="m", seed=None)
    assert demo.sample.problems <= 5 and 2 <= demo.sample.k <= 4 and demo.train.epochs == 1
    assert demo.eval.limit is not None and demo.eval.limit <= 5 and demo.mixes == [0.0, 0.5]
    gpu = load_config(CONFIGS / "selfcorrect.yaml", model="m", seed=4)
    assert (gpu.sample.problems, gpu.sample.k, gpu.sample.temperature, gpu.eval.limit, gpu.seed) == (
        500, 8, 0.8, None, 4)  # fmt: skip

    def error(text: str | None) -> str:
        path = tmp_path / ("c.yaml" if text is not None else "missing.yaml")
        if text is not None:
            path.write_text(text)
        with pytest.raises(RecipeError) as e:
            load_config(path, model="m")
        return str(e.value)

    cases = {
        "mixes: [0.0, 1.5]\n": r"^bad selfcorrect setting mixes: .*from 0.0 to 1.0$",
        "mixes: [0.5, 0.5]\n": r"^bad selfcorrect setting mixes: .*listed twice$",
        "sample: {k: 0}\n": r"^bad selfcorrect setting sample\.k: ",
        "smaple: {k: 2}\n": r"^bad selfcorrect setting smaple: ",
        "format: chat+prefix\n": r"^bad selfcorrect setting format: ",
        "- 1\n": r"c\.yaml: a selfcorrect config is a mapping of settings$",
        "k: [1\n": r"c\.yaml: not valid YAML \(",
        None: r"^config file not found: .*missing\.yaml$",
    }
    for text, pattern in cases.items():
        msg = error(text)
        assert re.search(pattern, msg) and "\n" not in msg, (text, msg)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["selfcorrect", "--model", "m", "--config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "error: config file not found" in r.output
    # A run folder keeps its settings: another seed is refused before any model is loaded.
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(load_config(DEMO, model=MODEL).model_dump(mode="json")))
    r = runner.invoke(
        app, ["selfcorrect", "--model", MODEL, "--config", str(DEMO), "--out", str(out), "--seed", "9"]
    )
    assert r.exit_code == 2 and "holds a run with other settings (seed: 0 -> 9)" in r.output
    assert len(r.output.strip().splitlines()) == 1


# --- a real run ---------------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_demo_run_on_smollm2_then_rerun_generates_nothing(tmp_path: Path) -> None:
    """The demo config end to end on SmolLM2 through the command. SmolLM2-135M gets GSM8K almost never right:
    if its answers give a mix nothing to train on, the run must stop with the one-line "no traces" error
    after writing its answers and traces; if they do, it must train and evaluate every mix. Either way the
    records must agree with each other, and a second run (after the answers file is lost, as if killed while
    grading) must take every completion from the cache."""
    fetch_model(MODEL)
    run = tmp_path / "run"
    args = ["selfcorrect", "--model", MODEL, "--config", str(DEMO), "--out", str(run)]
    first = runner.invoke(app, args)
    cfg = load_config(DEMO, model=MODEL)
    p, k = cfg.sample.problems, cfg.sample.k

    attempts = _records(run / "attempts.jsonl")
    assert len(attempts) == p * (k + 1) and sum(a["greedy"] for a in attempts) == p
    problems = train_problems(cfg, None)
    assert sorted({a["task_id"] for a in attempts}) == sorted(t.task_id for t in problems)
    for a in attempts:
        assert a["text"] and a["final"]["status"] in STATUSES and a["v"] == 1
        assert a["markers"] > 0 or a["first"] == a["final"]
    stage = json.loads((run / "state.json").read_text())["stages"]["sample"]
    assert stage["format"] == "chat"
    assert stage["generation"] == {
        "greedy": {"answers": p, "generated": p, "from_cache": 0},
        "sampled": {"answers": p * k, "generated": p * k, "from_cache": 0},
    }
    statuses = [a["final"]["status"] for a in attempts]
    traces = [Trace.from_record(r) for r in _records(run / "traces.jsonl")]
    assert traces == mine_traces(problems, attempts, model=MODEL, seed=cfg.seed, fmt="chat")
    n_fix = sum(t.kind == "wrong_fixed" for t in traces)
    n_right = sum(t.kind == "right_right" for t in traces)
    size = mix_size(n_fix, n_right, cfg.mixes)
    print(f"SmolLM2 demo: answers {dict((s, statuses.count(s)) for s in STATUSES)}, traces "
          f"{[t.kind for t in traces]}, mix size {size}, exit {first.exit_code}")  # fmt: skip

    if size == 0:  # what SmolLM2 does at these settings (see the report): it stops, saying why
        assert first.exit_code == 2, first.output
        line = first.output.strip().splitlines()[-1]  # the last line, after the log ("loading ...")
        assert line.startswith("error: no traces to train on: mix ") and first.output.count("error:") == 1
        assert f"{len(attempts)} answers to {p} problems: {statuses.count('correct')} right, " in line
        assert f"{statuses.count('wrong')} wrong, {statuses.count('no_answer')} without an answer" in line
        cut = sum(a["finish_reason"] == "length" for a in attempts)
        assert f"; {cut} cut off at max_new_tokens (not used): " in line
        assert not (run / "result.json").exists() and not (run / "eval").exists()
    else:
        assert first.exit_code == 0, first.output
        result = json.loads((run / "result.json").read_text())
        assert result["traces"]["wrong_fixed"] == n_fix and result["traces"]["right_right"] == n_right
        assert [m["label"] for m in result["mixes"]] == ["mix-0.0", "mix-0.5"]
        assert list(result["models"]) == ["base", "mix-0.0", "mix-0.5"]
        for m, share in zip(result["mixes"], cfg.mixes, strict=True):
            chosen = json.loads((run / f"train-mix-{share}" / "examples.json").read_text())
            n_f, n_r = split_size(size, share)
            assert m["size"] == size == len(chosen["traces"]) and set(chosen["traces"]) <= {
                t.id for t in traces
            }
            assert chosen["kinds"].get("right_right", 0) == n_r and m["steps"] >= 1
            assert (run / f"train-mix-{share}" / "adapter" / "adapter_config.json").is_file()
        for label, m in result["models"].items():
            samples = _records(run / "eval" / label / "samples.jsonl")
            assert len(samples) == cfg.eval.limit
            assert {k: m[k] for k in correction_metrics(samples)} == json.loads(
                json.dumps(correction_metrics(samples))
            )
            assert label == "base" or m["vs_base"]["tasks"] == cfg.eval.limit
        report = (run / "report.md").read_text()
        assert report.startswith(f"# tinyforge selfcorrect: {MODEL}") and "| mix-0.5 |" in report
        (run / "eval" / "mix-0.5" / "result.json").unlink()  # evaluated again: from the cache

    lines = (run / "cache" / "completions.jsonl").read_text().count("\n")
    (run / "attempts.jsonl").unlink()
    (run / "traces.jsonl").unlink()
    second = runner.invoke(app, args)
    assert second.exit_code == first.exit_code, second.output
    assert (run / "cache" / "completions.jsonl").read_text().count("\n") == lines  # nothing generated
    assert _records(run / "attempts.jsonl") == attempts  # the same texts, graded the same
    assert [Trace.from_record(r) for r in _records(run / "traces.jsonl")] == traces
    stage = json.loads((run / "state.json").read_text())["stages"]["sample"]
    assert stage["generation"] == {
        "greedy": {"answers": p, "generated": 0, "from_cache": p},
        "sampled": {"answers": p * k, "generated": 0, "from_cache": p * k},
    }
    if size:
        again = json.loads((run / "eval" / "mix-0.5" / "result.json").read_text())
        assert again["generation"] == {
            "answers": cfg.eval.limit,
            "generated": 0,
            "from_cache": cfg.eval.limit,
        }


@pytest.mark.slow
def test_train_and_evaluate_tail_on_given_answers(tmp_path: Path) -> None:
    """A run folder whose answers are on record (graded by the real grader; SmolLM2 itself gets GSM8K-train
    right too rarely to train) is resumed with SmolLM2: traces are mined, a LoRA is trained per mix (both of
    one size), the base and both adapters answer GSM8K test (2 tasks) and are compared, and a rerun only
    reads the records back."""
    cfg = load_config(DEMO, model=MODEL)
    problems = train_problems(cfg, None)
    assert len(problems) == 2 and cfg.sample.k == 2
    a, b = problems
    said = {  # (which, text): problem a right greedily, b only in a sample
        a.task_id: [("greedy", f"So the answer is \\boxed{{{a.answers[0]}}}."), ("0", "\\boxed{-1}"),
                    ("1", f"It is {a.answers[0]}: \\boxed{{{a.answers[0]}}}")],
        b.task_id: [("greedy", "\\boxed{-2}"), ("0", f"\\boxed{{{b.answers[0]}}}"), ("1", "no idea")],
    }  # fmt: skip
    attempts = []
    with SandboxPool(2) as pool:
        grader = MathGrader(pool)
        for t in problems:
            for which, text in said[t.task_id]:
                g = grader.grade(list(t.answers), text)
                rec = attempt(t.task_id, which, g.status, text)
                rec["first"] = rec["final"] = {"status": g.status, "answer": g.answer, "key": g.key}
                attempts.append(rec)
    assert [r["final"]["status"] for r in attempts] == ["correct", "wrong", "correct"] + [
        "wrong", "correct", "no_answer"]  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    (run / "attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in attempts))

    result = runner.invoke(app, ["selfcorrect", "--model", MODEL, "--config", str(DEMO), "--out", str(run)])
    assert result.exit_code == 0, result.output
    out = json.loads((run / "result.json").read_text())
    assert out["format"] == "chat"
    # b's answer-less sample makes a no-answer fix, not trained on (format repair, not a correction).
    assert out["traces"] == {
        "wrong_fixed": 2,
        "no_answer_fixed": 1,
        "right_right": 1,
        "excluded_no_answer": 1,
    }
    # Two fixes and one right -> right trace: both mixes hold 2 examples (0.5 of 2 is 1 right -> right).
    assert [(m["label"], m["size"], m["kinds"]) for m in out["mixes"]] == [
        ("mix-0.0", 2, {"wrong_fixed": 2}),
        ("mix-0.5", 2, {"wrong_fixed": 1, "right_right": 1}),
    ]
    traces = {t.id: t for t in (Trace.from_record(r) for r in _records(run / "traces.jsonl"))}
    fix = next(t for t in traces.values() if t.kind == "wrong_fixed" and t.problem_id == b.task_id)
    assert fix.target == "\\boxed{-2}" + MARKER + f"\\boxed{{{b.answers[0]}}}"
    for m in out["mixes"]:
        assert (run / m["adapter"] / "adapter_config.json").is_file() and m["steps"] >= 1
    assert list(out["models"]) == ["base", "mix-0.0", "mix-0.5"]
    for label, m in out["models"].items():
        samples = _records(run / "eval" / label / "samples.jsonl")
        assert len(samples) == cfg.eval.limit == m["answers"]
        assert m["final"]["count"] == sum(s["final"]["status"] == "correct" for s in samples)
        assert label == "base" or m["vs_base"]["tasks"] == cfg.eval.limit
    report = (run / "report.md").read_text()
    assert "| mix-0.0 |" in report and "| mix-0.5 |" in report

    cache = (run / "cache" / "completions.jsonl").read_text()
    again = runner.invoke(app, ["selfcorrect", "--model", MODEL, "--config", str(DEMO), "--out", str(run)])
    assert again.exit_code == 0, again.output
    assert (run / "cache" / "completions.jsonl").read_text() == cache
    assert json.loads((run / "result.json").read_text())["models"] == out["models"]
