"""`tinyforge report` on the result files of real runs (docs/runs: the recipe, eval and TTS runs recorded in
docs/results.md), and its one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyforge.cli import app
from tinyforge.report import ReportError, bar_plot, find_results, kind_of, line_plot, write_report

RUNS = Path(__file__).resolve().parents[1] / "docs" / "runs"
PNG = b"\x89PNG\r\n\x1a\n"


def _images(report: Path) -> list[Path]:
    return [report.parent / m for m in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())]


def test_report_of_the_recorded_runs(tmp_path: Path) -> None:
    results = find_results([RUNS])
    kinds = [k for _, k, _ in results]
    assert {"bootstrap", "eval", "tts"} <= set(kinds)
    # An eval inside a run, or a TTS sweep's own evals, belong to that run's section.
    assert not any("eval" in f.relative_to(RUNS).parts[:-1] for f, _, _ in results)
    assert not any(f.parent.name in ("greedy", "sampled") for f, _, _ in results)

    path = write_report([RUNS], tmp_path / "rep", title="recorded runs")
    text = path.read_text()
    assert text.startswith("# recorded runs\n")
    assert text.count("\n## ") == len(results) + 1  # one section per result, and the lift plot
    images = _images(path)
    assert (tmp_path / "rep" / "figures" / "lift-vs-base.png") in images
    assert (
        len(images)
        == len(set(images))
        == 1
        + sum(kinds.count(k) for k in ("tts", "curriculum", "synergy", "pair_scaling"))
        + sum(1 for _, k, d in results if k == "bootstrap" and d["rounds"])
    )
    for image in images:
        assert image.read_bytes().startswith(PNG), image

    # The numbers in the tables are the runs' own.
    recipe = json.loads((RUNS / "recipe-qwen0.5b-h200" / "result.json").read_text())
    for key, v in recipe["rounds"][0]["vs_before"].items():
        assert (
            f"| {key} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} | {v['delta']:+.1%} |" in text
        )
    for key, v in recipe["control"]["vs_before"].items():
        assert f"| {key} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} |" in text
    exp = RUNS / "exp-qwen0.5b-h200"
    synergy = json.loads((exp / "synergy" / "result.json").read_text())["synergy"]["by_eval"]
    for key, v in synergy.items():
        a, b = v["arms"]["A"], v["arms"]["B"]
        assert f"| {key} | {a['solved']}/{a['tasks']} | {b['solved']}/{b['tasks']} |" in text
    scaling = json.loads((exp / "pair_scaling" / "result.json").read_text())["pair_scaling"]["points"]
    for point in scaling:
        for key, v in point["by_eval"].items():
            assert f"| {point['pairs']} | {key} | {100 * v['mean']:.1f}% |" in text
    tts = json.loads((RUNS / "tts-gemma270m-h200" / "gsm8k" / "tts.json").read_text())
    assert "## tts: gemma-3-270m" in text
    assert all(f"| {r['n']} | {100 * r['oracle']:.1f}% |" in text for r in tts["rows"])


def test_plots_are_pngs_with_what_they_show(tmp_path: Path) -> None:
    bars = bar_plot(
        {"humaneval/raw": {"base": (73, 164), "round 1": (79, 164)}, "humaneval/chat": {"base": (81, 164)}},
        tmp_path / "b.png",
        title="bars",
    )
    lines = line_plot(
        {"humaneval/raw": [(10, 40.0, 38.0, 43.0), (40, 45.0, 44.0, 47.5)]},
        tmp_path / "l.png",
        title="lines",
        xlabel="training pairs",
        base={"humaneval/raw": 44.5},
    )
    assert bars.read_bytes().startswith(PNG) and lines.read_bytes().startswith(PNG)


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file or folder"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no tinyforge result"):
        write_report([tmp_path / "empty"], tmp_path / "out")
    bad = tmp_path / "bad" / "result.json"
    bad.parent.mkdir()
    bad.write_text('{"rounds": [')
    with pytest.raises(ReportError, match="not valid JSON"):
        write_report([bad.parent], tmp_path / "out")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"accuracy": 0.5}')
    with pytest.raises(ReportError, match="not a result tinyforge writes"):
        write_report([foreign], tmp_path / "out")
    assert kind_of({"accuracy": 0.5}) is None

    # A corrupt file beside good ones: the error names it, and nothing is half-written.
    good = tmp_path / "runs"
    shutil.copytree(RUNS / "cpu-demo", good / "cpu-demo")
    (good / "broken").mkdir()
    (good / "broken" / "result.json").write_text("not json")
    r = CliRunner().invoke(app, ["report", str(good), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "broken/result.json: not valid JSON" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "report.md").exists()

    (good / "broken" / "result.json").unlink()
    r = CliRunner().invoke(app, ["report", str(good), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    demo = json.loads((RUNS / "cpu-demo" / "result.json").read_text())
    want = f"pass@1 {demo['pass@1']:.1%} ({demo['n_tasks_solved']}/{demo['n_tasks']};"
    assert want in (tmp_path / "out" / "report.md").read_text()
