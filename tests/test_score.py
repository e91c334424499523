"""`tinyforge score` (CLI, in-process via CliRunner or as a subprocess) and the `score()` API, on the real
benchmark files and the real sandbox."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tinyforge import __version__
from tinyforge.cli import app
from tinyforge.data import get_task, load_benchmark, missing_libs
from tinyforge.evaluate.metrics import pass_at_k
from tinyforge.evaluate.score import score
from tinyforge.sandbox import SandboxPool


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_cli(args: list[str]) -> tuple[Any, list[logging.LogRecord]]:
    """`tinyforge ARGS` in-process; the result and what the tinyforge loggers logged."""
    handler = _Records()
    logger = logging.getLogger("tinyforge")
    logger.addHandler(handler)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        logger.removeHandler(handler)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result, handler.records


def base_only(task_id: str) -> str:
    """A HumanEval+ solution right on the base inputs (a lookup that calls the canonical) and wrong elsewhere."""
    task = get_task("humaneval+", task_id)
    keys = sorted(repr(list(args)) for args in task.base_inputs)
    ep = task.entry_point
    return (
        f"{task.canonical_solution}\n\n_canonical = {ep}\n_BASE = set({keys!r})\n\n\n"
        f"def {ep}(*args):\n    if repr(list(args)) in _BASE:\n        return _canonical(*args)\n"
        f"    return 'not computed'\n"
    )


def canonical_body(task_id: str) -> str:
    return get_task("humaneval", task_id).extra["canonical_body"]


def program(task_id: str, completion: str) -> str:
    return get_task("humaneval", task_id).prompt + completion


# --- HumanEval: order, multiple samples per task, pass@k, missing tasks, completion vs solution --------------

# (note, task_id as written, sample fields, expected verdict). Every task has 4 samples but HumanEval/3 (6);
# HumanEval/2 is given in non-adjacent places and once under its alias id.
H0, H1, H2, H3 = (f"HumanEval/{i}" for i in range(4))
HUMANEVAL_SAMPLES: list[tuple[str, str, dict[str, str], bool]] = [
    ("a", H0, {"completion": canonical_body(H0)}, True),
    ("b", H1, {"solution": program(H1, canonical_body(H1))}, True),
    ("c", "HumanEval_2", {"completion": "    return 0.0\n"}, False),
    ("d", H0, {"solution": program(H0, "    return True\n")}, False),
    ("e", H3, {"completion": canonical_body(H3)}, True),
    ("f", H1, {"completion": ""}, False),
    ("g", H2, {"solution": program(H2, canonical_body(H2))}, True),
    ("h", H0, {"completion": "I think the answer is to loop over the list."}, False),
    ("i", H3, {"solution": program(H3, "    return False\n")}, False),
    ("j", H1, {"completion": canonical_body(H1)}, True),
    ("k", H2, {"completion": canonical_body(H2)}, True),
    ("l", H3, {"completion": canonical_body(H3)}, True),
    ("m", H0, {"solution": program(H0, canonical_body(H0))}, True),
    ("n", H3, {"completion": "    return True\n"}, False),
    ("o", H1, {"solution": "def separate_paren_groups(s):\n    return []\n"}, False),
    ("p", H2, {"completion": "    return number\n"}, False),
    ("q", H3, {"solution": program(H3, canonical_body(H3))}, True),
    ("r", H3, {"completion": "    pass\n"}, False),
]


@pytest.fixture(scope="module")
def humaneval_run(tmp_path_factory: pytest.TempPathFactory, fresh_cache: Path) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("humaneval-run")
    inputs = [{"note": note, "task_id": tid, **fields} for note, tid, fields, _ in HUMANEVAL_SAMPLES]
    samples = write_jsonl(d / "samples.jsonl", inputs)
    out = d / "out"
    result, logs = run_cli(
        ["score", "--bench", "humaneval", "--samples", str(samples), "--out", str(out), "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    return {
        "inputs": inputs,
        "summary": json.loads((out / "result.json").read_text()),
        "lines": read_jsonl(out / "samples.jsonl"),
        "logs": logs,
        "stdout": result.stdout,
    }


def test_samples_jsonl_is_one_line_per_sample_in_input_order(humaneval_run: dict[str, Any]) -> None:
    lines, inputs = humaneval_run["lines"], humaneval_run["inputs"]
    assert len(lines) == len(inputs) == len(HUMANEVAL_SAMPLES)
    for line, sample, (note, tid, fields, verdict) in zip(lines, inputs, HUMANEVAL_SAMPLES, strict=True):
        assert line["note"] == note
        assert line["task_id"] == tid.replace("_", "/")  # the alias HumanEval_2 comes back as HumanEval/2
        for key, value in fields.items():
            assert line[key] == value, (note, key)
        assert line["passed"] is verdict, (note, line)
        assert line["status"] == ("passed" if verdict else line["status"])
        assert line["status"] in ("passed", "failed", "error")
        if not verdict:
            assert line["status"] != "passed" and isinstance(line.get("detail"), str) and line["detail"], line
        assert set(line) - set(sample) <= {"passed", "status", "detail"}


def test_completion_and_solution_samples_both_work(humaneval_run: dict[str, Any]) -> None:
    by_kind: dict[tuple[str, bool], set[bool]] = defaultdict(set)
    for (_, _, fields, verdict), line in zip(HUMANEVAL_SAMPLES, humaneval_run["lines"], strict=True):
        by_kind[(next(iter(fields)), verdict)].add(line["passed"])
    # Right and wrong code, in both forms, get the right verdicts.
    assert by_kind == {("completion", True): {True}, ("completion", False): {False},
                       ("solution", True): {True}, ("solution", False): {False}}  # fmt: skip
    statuses = {line["note"]: line["status"] for line in humaneval_run["lines"]}
    assert statuses["h"] == "error"  # prose after the prompt does not even compile
    assert statuses["d"] == "failed"  # an assertion of the tests fails


def test_pass_at_k_keys_and_values(humaneval_run: dict[str, Any]) -> None:
    summary = humaneval_run["summary"]
    per_task: dict[str, list[bool]] = defaultdict(list)
    for _, tid, _, verdict in HUMANEVAL_SAMPLES:
        per_task[tid.replace("_", "/")].append(verdict)
    assert sorted(len(v) for v in per_task.values()) == [4, 4, 4, 6]
    # The fewest samples per task is 4: pass@1, @2 and @4, no more (HumanEval/3's 6 samples allow no pass@6).
    assert sorted(k for k in summary if k.startswith("pass@")) == ["pass@1", "pass@2", "pass@4"]
    n_tasks = len(load_benchmark("humaneval"))
    for k in (1, 2, 4):
        # Every other task has no sample: it counts as failed (pass@k 0), and the mean is over all tasks.
        want = sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / n_tasks
        assert summary[f"pass@{k}"] == pytest.approx(want, rel=1e-12, abs=0), k
    assert summary["pass@1"] == pytest.approx((2 / 4 + 2 / 4 + 2 / 4 + 3 / 6) / 164)


def test_result_json_fields(humaneval_run: dict[str, Any]) -> None:
    summary = humaneval_run["summary"]
    assert summary["bench"] == "humaneval"
    assert summary["n_tasks"] == 164
    assert summary["n_samples"] == len(HUMANEVAL_SAMPLES)
    assert summary["tinyforge_version"] == __version__
    assert summary["harness"]["test_timeout_s"] == 3.0
    counts = summary["status_counts"]
    assert sum(counts.values()) == len(HUMANEVAL_SAMPLES)
    assert counts["passed"] == sum(v for *_, v in HUMANEVAL_SAMPLES)
    assert "base" not in summary and "plus" not in summary and "skipped_tasks" not in summary
    assert "humaneval: 164 tasks, 18 samples" in humaneval_run["stdout"]


def test_missing_tasks_count_as_failed_and_warn(humaneval_run: dict[str, Any]) -> None:
    assert humaneval_run["summary"]["missing_tasks"] == [f"HumanEval/{i}" for i in range(4, 164)]
    assert humaneval_run["summary"]["n_tasks_solved"] == 4
    warnings = [r for r in humaneval_run["logs"] if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "160 task(s)" in warnings[0].getMessage(), [
        r.getMessage() for r in warnings
    ]
    assert "HumanEval/4" in warnings[0].getMessage()


def test_api_missing_task_in_a_subset(score_pool: SandboxPool, caplog: pytest.LogCaptureFixture) -> None:
    tasks = [get_task("humaneval", H0), get_task("humaneval", H1)]
    samples = [{"task_id": H0, "completion": canonical_body(H0)}, {"task_id": H0, "completion": ""}]
    with caplog.at_level(logging.WARNING, logger="tinyforge"):
        summary, results = score("humaneval", samples, pool=score_pool, tasks=tasks)
    assert [r.passed for r in results] == [True, False]
    assert summary["missing_tasks"] == [H1]
    assert summary["n_tasks"] == 2
    # H0: pass@1 1/2, pass@2 1; H1 has no sample: 0.
    assert summary["pass@1"] == pytest.approx(0.25) and summary["pass@2"] == pytest.approx(0.5)
    assert any(r.levelno == logging.WARNING and H1 in r.getMessage() for r in caplog.records), caplog.text


# --- bad input: a one-line error, exit code 2 ------------------------------------------------------------------


def _tinyforge() -> list[str]:
    script = Path(sys.executable).with_name("tinyforge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tinyforge.cli"]


def _bad_inputs(d: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (arguments, fragments the error must contain)."""
    good = {"task_id": H0, "completion": canonical_body(H0)}
    malformed = d / "malformed.jsonl"
    malformed.write_text(json.dumps(good) + "\n" + '{"task_id": "HumanEval/1", "completion": \n')
    unknown_task = write_jsonl(
        d / "unknown-task.jsonl", [good, {"task_id": "HumanEval/999", "completion": ""}]
    )
    ok = write_jsonl(d / "ok.jsonl", [good])
    missing = d / "does-not-exist.jsonl"
    return {
        "malformed_line": (["--bench", "humaneval", "--samples", str(malformed)], [f"{malformed}:2", "JSON"]),
        "unknown_task_id": (["--bench", "humaneval", "--samples", str(unknown_task)], ["HumanEval/999"]),
        "unknown_bench": (
            ["--bench", "humaneval-x", "--samples", str(ok)],
            ["humaneval-x", "unknown benchmark"],
        ),
        "missing_samples_file": (
            ["--bench", "humaneval", "--samples", str(missing)],
            [str(missing), "not found"],
        ),
    }


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory, fresh_cache: Path) -> dict[str, Any]:
    """Each bad input through the installed `tinyforge` command, stdout/stderr pipes, no COLUMNS."""
    d = tmp_path_factory.mktemp("bad-input")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    runs = {}
    for case, (args, fragments) in _bad_inputs(d).items():
        out = d / f"out-{case}"
        p = subprocess.run(
            [*_tinyforge(), "score", *args, "--out", str(out), "--workers", "1"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        runs[case] = {"proc": p, "fragments": fragments, "out": out}
    return runs


@pytest.mark.parametrize(
    "case", ["malformed_line", "unknown_task_id", "unknown_bench", "missing_samples_file"]
)
def test_bad_input_is_an_error_with_exit_code_2(bad_runs: dict[str, Any], case: str) -> None:
    run = bad_runs[case]
    p = run["proc"]
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    # The message, with any line breaks the terminal width put in removed, names what is wrong.
    message = p.stderr.replace("\n", "")
    for fragment in run["fragments"]:
        assert fragment in message, (fragment, p.stderr)
    assert not (run["out"] / "result.json").exists()


def test_bad_input_error_is_a_single_line(bad_runs: dict[str, Any]) -> None:
    lines = {case: run["proc"].stderr.rstrip("\n").split("\n") for case, run in bad_runs.items()}
    assert {case: len(v) for case, v in lines.items()} == dict.fromkeys(bad_runs, 1), lines


# --- HumanEval+: base and plus -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval_plus_run(tmp_path_factory: pytest.TempPathFactory, fresh_cache: Path) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("humaneval-plus-run")
    h0 = get_task("humaneval+", H0)
    inputs = [
        {"task_id": H0, "solution": h0.canonical_solution},
        {"task_id": H2, "solution": base_only(H2)},
        {"task_id": H0, "solution": base_only(H0)},
        {"task_id": H2, "completion": ""},
    ]
    samples = write_jsonl(d / "samples.jsonl", inputs)
    out = d / "out"
    result, _ = run_cli(
        ["score", "--bench", "humaneval+", "--samples", str(samples), "--out", str(out), "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    return {
        "summary": json.loads((out / "result.json").read_text()),
        "lines": read_jsonl(out / "samples.jsonl"),
    }


@pytest.mark.slow
def test_humaneval_plus_base_and_plus(humaneval_plus_run: dict[str, Any]) -> None:
    summary, lines = humaneval_plus_run["summary"], humaneval_plus_run["lines"]
    assert [(x["passed"], x["base_passed"]) for x in lines] == [
        (True, True),
        (False, True),
        (False, True),
        (False, False),
    ]
    for x in lines[1:3]:  # right on every base input, wrong on the plus inputs
        assert x["status"] == "failed" and "plus input" in x["detail"], x
    # H0: 2 samples, base 2 right, plus 1; H2: base 1 of 2, plus 0; 162 tasks missing.
    assert summary["base"]["pass@1"] == pytest.approx((1 + 1 / 2) / 164)
    assert summary["plus"]["pass@1"] == pytest.approx((1 / 2) / 164)
    assert summary["base"]["pass@2"] == pytest.approx(2 / 164)
    assert summary["plus"]["pass@2"] == pytest.approx(1 / 164)
    assert summary["pass@1"] == summary["plus"]["pass@1"]
    assert summary["bench"] == "humaneval+" and summary["n_tasks"] == 164
    assert "evalplus" in summary["harness"]["semantics"]


# --- BigCodeBench-Hard: tasks whose libraries are missing are skipped, by name -----------------------------------


@pytest.fixture(scope="module")
def bigcodebench_run(tmp_path_factory: pytest.TempPathFactory, fresh_cache: Path) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("bcb-run")
    tasks = {t.task_id: t for t in load_benchmark("bigcodebench-hard")}
    runnable, skipped = "BigCodeBench/19", "BigCodeBench/34"
    assert not missing_libs(tasks[runnable]) and missing_libs(tasks[skipped])
    inputs = [
        {"task_id": skipped, "solution": tasks[skipped].canonical_solution},
        {"task_id": runnable, "solution": tasks[runnable].canonical_solution},
    ]
    samples = write_jsonl(d / "samples.jsonl", inputs)
    out = d / "out"
    result, _ = run_cli(
        ["score", "--bench", "bigcodebench-hard", "--samples", str(samples), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return {
        "tasks": tasks,
        "summary": json.loads((out / "result.json").read_text()),
        "lines": read_jsonl(out / "samples.jsonl"),
        "stdout": result.stdout,
    }


@pytest.mark.slow
def test_bigcodebench_missing_libraries_are_skipped_by_name(bigcodebench_run: dict[str, Any]) -> None:
    tasks, summary, lines = bigcodebench_run["tasks"], bigcodebench_run["summary"], bigcodebench_run["lines"]
    skipped = summary["skipped_tasks"]
    assert skipped, "some BigCodeBench-Hard libraries are expected to be missing here"
    assert skipped == {tid: missing_libs(t) for tid, t in tasks.items() if missing_libs(t)}
    for tid, libs in skipped.items():
        assert libs and all(importlib.util.find_spec(lib) is None for lib in libs), (tid, libs)
    # Every declared library of a task that runs can be imported.
    aliases = {
        "scikit-learn": "sklearn",
        "pillow": "PIL",
        "python-dateutil": "dateutil",
        "beautifulsoup4": "bs4",
    }
    for tid, t in tasks.items():
        if tid not in skipped:
            assert all(importlib.util.find_spec(aliases.get(x.lower(), x)) for x in t.libs), (tid, t.libs)
    assert "wordcloud" in skipped["BigCodeBench/34"]
    assert summary["n_tasks"] == len(tasks) - len(skipped)
    assert not set(summary["missing_tasks"]) & set(skipped)
    assert f"skipped {len(skipped)} task(s)" in bigcodebench_run["stdout"]
    assert (
        lines[0]["status"] == "skipped" and lines[0]["passed"] is False and "wordcloud" in lines[0]["detail"]
    )
    assert lines[1]["status"] == "passed" and lines[1]["passed"] is True, lines[1]
    assert summary["status_counts"] == {"skipped": 1, "passed": 1}
