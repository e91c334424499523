"""The recipe end to end (`tinyforge bootstrap`): settings, and a real run (Qwen2.5-Coder-0.5B, the small
recipe of conftest.py) killed with SIGKILL at several points and resumed, which must end with the same
records as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tinyforge.recipe import RecipeConfig, RecipeError, bootstrap, load_config

if TYPE_CHECKING:
    from conftest import SmallRecipe

MODEL = "smollm2-135m-instruct"


def test_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("problems: 7\nsolve: {k: 8, temperature: 0.8}\nmine: {mode: multi}\n")
    cfg = load_config(path, model="m", seed=3, problems=None)
    assert cfg.problems == 7 and cfg.seed == 3 and cfg.model == "m"
    assert cfg.solve.k == 8 and cfg.solve.temperature == 0.8 and cfg.mine.mode == "multi"
    assert cfg.train.r == 16 and cfg.train.alpha == 32 and cfg.train.grad_accum == 4  # the paper's defaults
    assert cfg.mine.exclude == ["format"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("solve: {k: 1}\n", r"bad recipe setting solve\.k"),
        ("sovle: {k: 4}\n", r"bad recipe setting sovle"),
        ("problems: [1\n", "not valid YAML"),
        ("- 1\n- 2\n", "a mapping"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match) as e:
        load_config(path, model="m")
    assert "\n" not in str(e.value)
    with pytest.raises(RecipeError, match="not found"):
        load_config(tmp_path / "missing.yaml", model="m")


def test_a_run_folder_keeps_its_settings(tmp_path: Path) -> None:
    cfg = RecipeConfig(model=MODEL, problems=2, seeded="mbpp-train")
    bootstrap(cfg, tmp_path, stop_after="problems")  # no model needed: seeded problems
    assert len((tmp_path / "round-1" / "problems.jsonl").read_text().splitlines()) == 2
    with pytest.raises(RecipeError, match=r"other settings \(problems: 2 -> 3\)"):
        bootstrap(cfg.model_copy(update={"problems": 3}), tmp_path, stop_after="problems")
    # More rounds or the control only add work: the run may be continued with them.
    bootstrap(cfg.model_copy(update={"rounds": 3, "control": True}), tmp_path, stop_after="problems")
    assert json.loads((tmp_path / "config.json").read_text())["rounds"] == 3
    with pytest.raises(RecipeError, match=r"rounds: 3 -> 2"):
        bootstrap(cfg.model_copy(update={"rounds": 2, "control": True}), tmp_path, stop_after="problems")


def _run_until(cmd: list[str], ready: Callable[[], bool], timeout: float = 900) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``ready()``; True if it was killed, False if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return False


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_bootstrap_killed_and_resumed_matches_an_uninterrupted_run(
    small_recipe: SmallRecipe, tmp_path: Path
) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    shutil.copytree(small_recipe.run, ref)  # the uninterrupted run (conftest.py); round 2 goes on from it

    r1 = run / "round-1"
    kill_points = [
        ("while solving", lambda: _lines(r1 / "attempts.jsonl") >= 20),
        ("while training", lambda: any((r1 / "train" / "checkpoint").glob("step-*"))),
        ("while evaluating after", lambda: (run / "eval" / "before-humaneval-auto" / "result.json").is_file()
         and (r1 / "train" / "adapter").is_dir()),
    ]  # fmt: skip
    killed = [name for name, ready in kill_points if _run_until(small_recipe.cli(run), ready)]
    assert "while solving" in killed  # the first kill always lands: solving takes most of a minute
    _run_until(small_recipe.cli(run), lambda: False)  # and the last run finishes

    for name in ("problems.jsonl", "pairs.jsonl"):
        assert (r1 / name).read_text() == (ref / "round-1" / name).read_text(), name
    got = _records(r1 / "attempts.jsonl")
    want = _records(ref / "round-1" / "attempts.jsonl")
    key = lambda a: (a["problem_id"], a["index"])  # noqa: E731
    assert len(got) == len({key(a) for a in got}) == len(want)  # none lost, none twice
    assert sorted(got, key=key) == sorted(want, key=key)
    pairs = _records(r1 / "pairs.jsonl")
    assert pairs, "no at-edge problem: the test needs a few pairs"

    from safetensors.torch import load_file

    a = load_file(r1 / "train" / "adapter" / "adapter_model.safetensors")
    b = load_file(ref / "round-1" / "train" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    result, want_result = _records_json(run / "result.json"), _records_json(ref / "result.json")
    assert result["complete"] and result["before"] == want_result["before"]
    assert result["rounds"][0]["scores"] == want_result["rounds"][0]["scores"]
    assert result["rounds"][0]["pairs"] == want_result["rounds"][0]["pairs"]
    assert (run / "report.md").read_text().startswith(f"# tinyforge bootstrap: {small_recipe.model}")
    ctrl = result["control"]
    assert ctrl == want_result["control"]
    assert ctrl["pairs"]["pairs"] == result["rounds"][0]["trained_on"]  # as many control pairs as real ones
    assert ctrl["pairs"]["by_source"] == {"control:mbpp-train": ctrl["pairs"]["pairs"]}

    # A second round on the finished run: new problems, solved with round 1's adapter; a fresh LoRA on the
    # pairs of both rounds; round 1's records untouched.
    subprocess.run(
        small_recipe.cli(ref, "--rounds", "2"), check=True, capture_output=True, text=True, timeout=1200
    )
    two = _records_json(ref / "result.json")
    assert [r["round"] for r in two["rounds"]] == [1, 2] and two["rounds"][0] == want_result["rounds"][0]
    ids = [{p["id"] for p in _records(ref / f"round-{r}" / "problems.jsonl")} for r in (1, 2)]
    assert len(ids[1]) == 8 and not ids[0] & ids[1]
    r2 = _records(ref / "round-2" / "pairs.jsonl")
    assert two["rounds"][1]["pairs_cumulative"] == len(pairs) + len(r2)
    assert json.loads((ref / "round-2" / "train" / "train.json").read_text())["examples"] == len(pairs) + len(
        r2
    )
    assert (ref / "eval" / "round-2-humaneval-auto" / "result.json").is_file()


def _records_json(path: Path) -> dict:
    return json.loads(path.read_text())
