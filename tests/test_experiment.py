"""Experiments (`tinyforge experiment`): the built-in specs, one-line errors, and synergy and pair-count
scaling run for real (Qwen2.5-Coder-0.5B on seeded MBPP-train problems, small counts) sharing one recipe
run, resumed for free, and reported."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from tinyforge.cli import app
from tinyforge.experiment import ExperimentSpec, load_spec, recipe_config, run_experiment
from tinyforge.recipe import MACHINE_SETTINGS, RecipeError
from tinyforge.report import write_report

if TYPE_CHECKING:
    from conftest import SmallRecipe

SPECS = Path(__file__).resolve().parents[1] / "configs" / "experiments"
MODEL = "qwen2.5-coder-0.5b-instruct"


def test_builtin_specs_load_with_their_recipes() -> None:
    specs = {p.stem: load_spec(p, model=MODEL) for p in sorted(SPECS.glob("*.yaml"))}
    assert {s.kind for s in specs.values()} == {
        "synergy", "pair_scaling", "control", "rounds", "format", "boundary"
    }  # fmt: skip
    paper = recipe_config(specs["synergy"])
    assert (paper.model, paper.problems, paper.solve.k, paper.eval.formats) == (
        MODEL,
        200,
        8,
        ["raw", "chat"],
    )
    assert recipe_config(specs["control"]).control is True
    assert recipe_config(specs["rounds"]).rounds == specs["rounds"].rounds == 3
    assert recipe_config(specs["format"]).eval.formats == ["raw", "chat"]
    assert specs["pair-scaling"].pair_counts == [10, 21, 40, "all"]
    boundary = specs["boundary"]
    assert len(boundary.models) == 3
    assert {recipe_config(boundary, m).model for m in boundary.models} == set(boundary.models)
    assert recipe_config(specs["synergy-demo"]).problems == 8


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("kind: sinergy\n", r"bad experiment setting kind"),
        ("kind: synergy\nn: 1\n", r"bad experiment setting n: Input should be greater than or equal to 2"),
        ("kind: synergy\nrecipe: nowhere.yaml\n", r"recipe file not found: .*nowhere.yaml"),
        ("kind: [synergy\n", r"not valid YAML"),
        ("- synergy\n", r"a mapping of settings"),
        ("kind: synergy\nrecipe: {problems: 0}\n", r"bad recipe setting problems"),
        ("kind: pair_scaling\npair_counts: [10, 0]\n", r"bad experiment setting pair_counts\.1"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match) as e:
        recipe_config(load_spec(path, model=MODEL))
    assert "\n" not in str(e.value)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["experiment", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "experiment spec not found" in r.output
    assert len(r.output.strip().splitlines()) == 1
    spec = tmp_path / "b.yaml"
    spec.write_text("kind: boundary\n")
    r = CliRunner().invoke(app, ["experiment", str(spec), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "needs models" in r.output
    assert not (tmp_path / "o").exists()  # nothing started


def _spec(tmp_path: Path, name: str, text: str, small: SmallRecipe) -> ExperimentSpec:
    """An experiment of kind ``text`` on the small recipe's settings (conftest.py)."""
    recipe = f"seed: {small.seed}\n{small.config.read_text()}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + "recipe:\n" + textwrap.indent(recipe, "  "))
    return load_spec(path, model=small.model)


def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_synergy_and_pair_scaling_share_one_recipe_run(small_recipe: SmallRecipe, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    # The recipe run of the same settings (conftest.py) is the experiment's own: read back, not redone.
    shutil.copytree(small_recipe.run, out / "recipe")
    synergy = run_experiment(_spec(tmp_path, "syn", "kind: synergy\nn: 3\n", small_recipe), out)
    recipe = json.loads((out / "recipe" / "result.json").read_text())
    assert recipe["rounds"][0]["pairs"]["pairs"] > 0
    syn = synergy["synergy"]["by_eval"]["humaneval/auto"]
    a, b, c, d = (syn["arms"][k] for k in "ABCD")
    vs = recipe["rounds"][0]["vs_before"]["humaneval/auto"]
    assert (a["solved"], c["solved"], a["tasks"]) == (vs["before"], vs["after"], vs["tasks"]) and a[
        "tasks"
    ] == 2
    for arm, label in ((b, "before-bestof3"), (d, "round-1-bestof3")):
        samples = _samples(out / "recipe" / "eval" / f"{label}-humaneval-auto")
        assert len(samples) == 2 * 3  # n samples per task
        solved = {s["task_id"] for s in samples if s["passed"]}
        assert arm["solved"] == len(solved)
    assert syn["synergy"] == pytest.approx((d["solved"] - b["solved"]) / 2)
    lo, hi = syn["synergy_ci95"]
    assert lo <= syn["synergy"] <= hi
    assert (out / "synergy" / "report.md").read_text().startswith("# tinyforge experiment: synergy")

    # Pair-count scaling on the same folder: the recipe run is read back, not redone.
    attempts = out / "recipe" / "round-1" / "attempts.jsonl"
    before = attempts.stat().st_mtime_ns
    spec = _spec(
        tmp_path, "ps", "kind: pair_scaling\npair_counts: [1, all, 999]\nseeds: [0, 1]\n", small_recipe
    )
    scaling = run_experiment(spec, out)
    assert attempts.stat().st_mtime_ns == before
    mined = scaling["pair_scaling"]["mined"]
    assert mined == recipe["rounds"][0]["trained_on"]
    one, every, too_many = scaling["pair_scaling"]["points"]
    assert too_many == {"pairs": 999, "skipped": f"only {mined} pairs were mined"}
    assert every["pairs"] == mined
    # All pairs with the recipe's own training seed (0) is round 1's adapter; the rest are trained.
    trained = sorted(p.name for p in (out / "recipe").glob("pairs-*"))
    assert trained == sorted({"pairs-1-seed-0", "pairs-1-seed-1", f"pairs-{mined}-seed-1"})
    w0 = (out / "recipe" / "pairs-1-seed-0" / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    w1 = (out / "recipe" / "pairs-1-seed-1" / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert w0 != w1  # the seed changes the LoRA
    for point in (one, every):
        v = point["by_eval"]["humaneval/auto"]
        assert set(v["per_seed"]) == {"0", "1"}
        assert v["min"] <= v["mean"] <= v["max"] and v["base"] == a["solved"] / 2
    assert every["by_eval"]["humaneval/auto"]["per_seed"]["0"] == c["solved"] / 2

    # Run again: nothing is trained or generated again, the numbers are the same.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "recipe").rglob("adapter_model.safetensors")}
    again = run_experiment(spec, out)
    assert again["pair_scaling"] == scaling["pair_scaling"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "recipe").rglob("adapter_model.safetensors")}

    # One report of both experiments, with their plots.
    report = write_report([out], tmp_path / "report")
    text = report.read_text()
    assert "## synergy: " in text and "## pair_scaling: " in text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {Path(i).name for i in images} >= {"exp-synergy.png", "exp-pair_scaling.png", "exp-recipe.png"}
    assert all((report.parent / i).read_bytes().startswith(b"\x89PNG") for i in images)


RECORDED = Path(__file__).resolve().parents[1] / "docs" / "runs" / "exp-qwen0.5b-h200"


@pytest.mark.parametrize("spec_file", ["synergy.yaml", "pair-scaling-2seeds.yaml"])
def test_recorded_gpu_experiment_rebuilds_from_its_records(tmp_path: Path, spec_file: str) -> None:
    """The recorded GPU experiment (docs/runs, samples trimmed, adapters and cache left out) rebuilds its
    own result from the recorded stages and scores: nothing is generated or trained, the numbers match."""

    def no_engine(adapter: str | None):  # a rebuild must not need the model
        raise AssertionError(f"a model was loaded (adapter {adapter})")

    work = tmp_path / "exp"
    shutil.copytree(RECORDED, work)
    spec = load_spec(work / spec_file)
    recorded = json.loads((RECORDED / spec.kind / "result.json").read_text())
    rebuilt = run_experiment(spec, work, engine_factory=no_engine)
    skip = {"date", "wall_s_this_invocation"}

    def results(r: dict) -> dict:  # settings added since the record say how work is spread, not what it is
        r = {k: v for k, v in r.items() if k not in skip}
        r["recipe"] = {k: v for k, v in r["recipe"].items() if k not in MACHINE_SETTINGS}
        return r

    assert results(rebuilt) == results(recorded)
    assert rebuilt["recipe"]["replicas"] == 1
