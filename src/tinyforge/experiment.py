"""Experiments: the paper's comparisons as declarative specs (``tinyforge experiment SPEC --out DIR``).

A spec (YAML) names a ``kind`` and the recipe it varies (``recipe``: a recipe YAML, relative to the spec,
or its settings inline; ``model`` on top). Every kind runs ``recipe.bootstrap`` in ``DIR/recipe`` (one
folder per model for ``boundary``: ``DIR/recipe-MODEL``) and adds its own arms in that run folder, so
they share the run's generation cache and records: a rerun, or another experiment on the same ``DIR``
and recipe, costs nothing for what was done, and a killed run resumes where it stopped. The experiment's
numbers go to ``DIR/KIND/result.json`` (``tinyforge report`` makes tables and plots of them).

Kinds:

- ``synergy``: A greedy before, B oracle best-of-N before (``n`` samples at ``temperature``; a task counts
  when any sample passes the benchmark's tests), C greedy after the recipe, D best-of-N after; synergy =
  D - B, with a paired bootstrap interval and McNemar test over tasks.
- ``pair_scaling``: a LoRA on the first n mined pairs for each n of ``pair_counts`` (``all``: every pair)
  and each training seed of ``seeds``, each scored greedily; per n the mean and range over seeds.
- ``control``: the recipe against the corrupted-MBPP control (``control: true``).
- ``rounds``: recursive rounds (``rounds``), each round's scores against the base.
- ``format``: raw and chat prompts, before and after.
- ``boundary``: the same recipe on each of ``models``; lift against the base score. A model whose run fails
  (no problem kept, no pair at the edge) is reported with its reason, not dropped.

Statistics on every number: Wilson 95% intervals of rates, McNemar tests of before/after on the same tasks,
mean and range over seeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from tinyforge import __version__
from tinyforge.evaluate.metrics import paired_bootstrap_ci, paired_comparison, wilson_interval
from tinyforge.generate.base import Engine, SamplingParams
from tinyforge.generate.models import model_slug
from tinyforge.mine.pairs import Pair, select_pairs
from tinyforge.recipe import (
    Log,
    Progress,
    RecipeConfig,
    RecipeError,
    Run,
    _Config,
    bootstrap,
    eval_all,
    read_settings,
    summarize,
    task_verdicts,
    train,
    validate_settings,
    write_json,
)
from tinyforge.report import write_report

__all__ = ["KINDS", "ExperimentSpec", "load_spec", "run_experiment"]

Kind = Literal["synergy", "pair_scaling", "control", "rounds", "format", "boundary"]
KINDS: tuple[str, ...] = get_args(Kind)


class ExperimentSpec(_Config):
    kind: Kind = Field(..., description="Which comparison.")
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="Recipe settings (a YAML file's, when the spec names one)."
    )
    model: str | None = Field(None, description="The recipe's model (boundary: ignored, see models).")
    models: list[str] = Field(default_factory=list, description="boundary: the models to run the recipe on.")
    n: int = Field(8, ge=2, description="synergy: samples per task for best-of-N.")
    temperature: float = Field(0.8, gt=0, description="synergy: sampling temperature of best-of-N.")
    top_p: float = Field(0.95, gt=0, le=1, description="synergy: nucleus of best-of-N.")
    pair_counts: list[Annotated[int, Field(ge=1)] | Literal["all"]] = Field(
        default_factory=lambda: [10, 21, 40, "all"], description="pair_scaling: how many pairs to train on."
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="pair_scaling: training seeds.")
    rounds: int = Field(3, ge=2, description="rounds: how many recursive rounds.")


def load_spec(path: str | os.PathLike[str], **overrides: Any) -> ExperimentSpec:
    """A spec from a YAML file; ``recipe`` may name a recipe YAML (relative to the spec's folder). Any
    problem is a one-line ``RecipeError``."""
    p = Path(path)
    data = read_settings(p, "an experiment spec", missing="experiment spec")
    if isinstance(data.get("recipe"), str):
        data["recipe"] = read_settings(
            p.parent / data["recipe"], f"recipe {data['recipe']} of {p}", "recipe file"
        )
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_settings(ExperimentSpec, "experiment", data)


def recipe_config(spec: ExperimentSpec, model: str | None = None) -> RecipeConfig:
    """The recipe settings of one of the spec's runs (``model``: boundary's model)."""
    data = dict(spec.recipe)
    if model or spec.model:
        data["model"] = model or spec.model
    if spec.kind == "control":
        data["control"] = True
    elif spec.kind == "rounds":
        data["rounds"] = spec.rounds
    elif spec.kind == "format":
        data["eval"] = {**data.get("eval", {}), "formats": ["raw", "chat"]}
    return validate_settings(RecipeConfig, "recipe", data)


def _rate(solved: int, tasks: int) -> dict[str, Any]:
    return {
        "solved": solved,
        "tasks": tasks,
        "rate": solved / tasks if tasks else 0.0,
        "ci95": list(wilson_interval(solved, tasks)),
    }


def _verdicts(run: Run, label: str, key: str) -> dict[str, bool]:
    bench, fmt = key.split("/")
    return task_verdicts(run.eval_dir(label, bench, fmt))


def _synergy(run: Run, spec: ExperimentSpec, result: dict[str, Any]) -> dict[str, Any]:
    c = run.config
    params = SamplingParams(
        n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_new_tokens=c.eval.max_new_tokens,
        seed=c.seed,
    )  # fmt: skip
    adapter = run.root / result["rounds"][0]["adapter"]
    best = f"bestof{spec.n}"
    eval_all(run, f"before-{best}", None, params)
    eval_all(run, f"round-1-{best}", adapter, params)
    out: dict[str, Any] = {}
    for key in result["before"]:
        arms = {
            "A": _verdicts(run, "before", key),
            "B": _verdicts(run, f"before-{best}", key),
            "C": _verdicts(run, "round-1", key),
            "D": _verdicts(run, f"round-1-{best}", key),
        }
        tasks = sorted(set.intersection(*(set(v) for v in arms.values())))
        b = [arms["B"][t] for t in tasks]
        d = [arms["D"][t] for t in tasks]
        out[key] = {
            "arms": {k: _rate(sum(v[t] for t in tasks), len(tasks)) for k, v in arms.items()},
            "synergy": (sum(d) - sum(b)) / len(tasks) if tasks else 0.0,
            "synergy_ci95": list(paired_bootstrap_ci(b, d, seed=c.seed)),
            "d_vs_b": paired_comparison(arms["B"], arms["D"]),
            "greedy_lift": paired_comparison(arms["A"], arms["C"]),
        }
    return {"n": spec.n, "temperature": spec.temperature, "top_p": spec.top_p, "by_eval": out}


def _evaluated(run: Run, label: str) -> bool:
    """Whether every configured benchmark and format has a recorded score for ``label``."""
    c = run.config
    return all(
        (run.eval_dir(label, bench, fmt) / "result.json").is_file()
        for bench in c.eval.benches
        for fmt in c.eval.formats
    )


def _pair_scaling(run: Run, spec: ExperimentSpec, result: dict[str, Any]) -> dict[str, Any]:
    from tinyforge.data.code import read_jsonl

    c = run.config
    pairs = select_pairs(
        [Pair.from_record(r) for r in read_jsonl(run.root / "round-1" / "pairs.jsonl")], c.mine.exclude
    )
    fmt = run.state["stages"]["round-1/solve"]["format"]
    points: list[dict[str, Any]] = []
    for want in spec.pair_counts:
        n = len(pairs) if want == "all" else int(want)
        if n > len(pairs):
            points.append({"pairs": n, "skipped": f"only {len(pairs)} pairs were mined"})
            continue
        runs: dict[str, dict[str, Any]] = {}
        for seed in spec.seeds:
            if n == len(pairs) and seed == c.train.seed:  # the recipe's own adapter
                label = "round-1"
            else:
                label = f"pairs-{n}-seed-{seed}"
                if not _evaluated(run, label):  # scores on record need no adapter (records may be trimmed)
                    adapter = train(
                        run, run.root / label, pairs[:n], fmt, c.train.model_copy(update={"seed": seed})
                    )
                    eval_all(run, label, adapter)
            runs[str(seed)] = {
                key: paired_comparison(_verdicts(run, "before", key), _verdicts(run, label, key))
                for key in result["before"]
            }
        summary = {}
        for key in result["before"]:
            first = next(iter(runs.values()))[key]
            tasks = first["tasks"]
            rates = [r[key]["after"] / tasks if tasks else 0.0 for r in runs.values()]
            summary[key] = {
                "tasks": tasks,
                "mean": sum(rates) / len(rates),
                "min": min(rates),
                "max": max(rates),
                "per_seed": dict(zip(runs, rates, strict=True)),
                "base": first["before"] / tasks if tasks else 0.0,
                "mcnemar_p": {s: r[key]["mcnemar"]["p_value"] for s, r in runs.items()},
            }
        points.append({"pairs": n, "seeds": spec.seeds, "by_eval": summary})
    return {"mined": len(pairs), "points": points}


def run_experiment(
    spec: ExperimentSpec,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    log: Log = lambda _: None,
    engine_factory: Callable[[str | None], Engine] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment ``spec`` in ``out``; returns what ``out/KIND/result.json`` holds."""
    root = Path(out)
    t0 = time.perf_counter()
    if spec.kind == "boundary":
        if not spec.models:
            raise RecipeError("a boundary experiment needs models: a list of the models to run the recipe on")
        per_model: dict[str, Any] = {}
        for model in spec.models:
            config = recipe_config(spec, model)
            folder = root / f"recipe-{model_slug(model)}"
            log(f"recipe on {model} in {folder}")
            try:
                result = bootstrap(config, folder, data_dir=data_dir, progress=progress, log=log)
            except RecipeError as e:  # a null result is a result: say why and go on
                per_model[model] = {"run": folder.name, "error": str(e)}
                continue
            per_model[model] = {"run": folder.name, **summarize(result)}
        data: dict[str, Any] = {"models": per_model}
        settings = recipe_config(spec, spec.models[0]).model_dump(mode="json")
    else:
        config = recipe_config(spec)
        folder = root / "recipe"
        # one Run (one model load) for the recipe and the experiment's own arms
        run = Run(
            config, folder, data_dir=data_dir, progress=progress, log=log, engine_factory=engine_factory
        )
        try:
            result = bootstrap(config, folder, data_dir=data_dir, progress=progress, log=log, run=run)
            data = {"run": folder.name, **summarize(result)}
            if spec.kind in ("synergy", "pair_scaling"):
                data[spec.kind] = (_synergy if spec.kind == "synergy" else _pair_scaling)(run, spec, result)
        finally:
            run.close()
        settings = config.model_dump(mode="json")
    out_result = {
        "tinyforge": __version__,
        "experiment": spec.kind,
        "date": time.strftime("%Y-%m-%d"),
        "spec": spec.model_dump(mode="json"),
        "recipe": settings,
        **data,
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
    }
    (root / spec.kind).mkdir(parents=True, exist_ok=True)
    write_json(root / spec.kind / "result.json", out_result)
    write_report([root / spec.kind], root / spec.kind, title=f"tinyforge experiment: {spec.kind}")
    return out_result
