"""``tinyforge report DIR... --out OUT``: one Markdown report with PNG plots from the result files of runs.

Each DIR (or file) is searched for what tinyforge writes: ``result.json`` of ``bootstrap``, ``curriculum``,
``selfcorrect``, ``eval`` and ``experiment`` (``DIR/KIND/result.json``), and ``tts.json`` of ``tts``.
Every result gets a section (its run's own report, or a table) and, where a picture says it better, a plot:
before/after and control vs recipe bars with 95% Wilson intervals, recursive rounds, pair-count scaling
(mean and range over seeds), synergy bars (A-D), curriculum rounds, TTS curves; and across all recipe runs,
lift against the base score per model. Plots carry a title, axis labels with units and n.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tinyforge.evaluate.metrics import wilson_interval
from tinyforge.generate.models import model_slug

__all__ = ["ReportError", "find_results", "kind_of", "write_report"]


class ReportError(Exception):
    """A result that cannot be read, said in one line."""


def kind_of(data: dict[str, Any], name: str = "result.json") -> str | None:
    """What wrote a result file: an experiment's kind, bootstrap, curriculum, selfcorrect, eval or tts; None
    for anything else."""
    if name == "tts.json":
        return "tts" if isinstance(data.get("rows"), list) else None
    if "experiment" in data:
        return str(data["experiment"])
    if "mixes" in data and "models" in data:
        return "selfcorrect"
    if "stopped_early" in data and "rounds" in data:
        return "curriculum"
    if "rounds" in data and "before" in data and "settings" in data:
        return "bootstrap"
    if "pass@1" in data and "bench" in data:
        return "eval"
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a tinyforge result (a JSON object)")
    return data


def find_results(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, str, dict[str, Any]]]:
    """(file, kind, data) of every tinyforge result under ``paths`` (files or folders), in path order; an
    eval folder inside a run (``RUN/eval/...``) belongs to that run's report and is not listed again."""
    found: list[tuple[Path, str, dict[str, Any]]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p}: no such file or folder")
        files = [p] if p.is_file() else _result_files(p)
        for f in files:
            if f.resolve() in seen:  # given twice (a file and its folder)
                continue
            seen.add(f.resolve())
            data = _read(f)
            kind = kind_of(data, f.name)
            if kind is None and p.is_file():
                raise ReportError(f"{f}: not a result tinyforge writes")
            if kind is not None:
                found.append((f, kind, data))
    if not found:
        raise ReportError("no tinyforge result (result.json, tts.json) under " + ", ".join(map(str, paths)))
    return found


def _result_files(folder: Path) -> list[Path]:
    out = []
    for f in sorted([*folder.rglob("result.json"), *folder.rglob("tts.json")]):
        rel = f.relative_to(folder).parts[:-1]
        if "eval" in rel or "cache" in rel:
            continue  # a run's own evals, the generation cache
        if f.name == "result.json" and any(
            (folder.joinpath(*rel[:i]) / "tts.json").is_file() for i in range(len(rel) + 1)
        ):
            continue  # a TTS sweep's greedy/sampled evals (tts.json in the folder or above)
        out.append(f)
    return out


# --- plots ---------------------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.2) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _err(rates: Sequence[tuple[int, int]]) -> tuple[list[float], list[list[float]]]:
    """Bar heights (%) and asymmetric Wilson error bars for (solved, tasks) pairs."""
    heights, lo, hi = [], [], []
    for solved, n in rates:
        p = solved / n if n else 0.0
        a, b = wilson_interval(solved, n)
        heights.append(100 * p)
        lo.append(100 * (p - a))
        hi.append(100 * (b - p))
    return heights, [lo, hi]


def bar_plot(
    groups: dict[str, dict[str, tuple[int, int]]], path: Path, *, title: str, ylabel: str = "pass@1 (%)"
) -> Path:
    """Grouped bars: per group (e.g. a benchmark/format), one bar per arm with its 95% Wilson interval;
    each bar is labelled with solved/n."""
    fig = _figure(max(6.4, 1.6 + 1.3 * sum(len(a) for a in groups.values()) / 2))
    ax = fig.add_subplot()
    arms = list(dict.fromkeys(a for g in groups.values() for a in g))
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        xs = [i + (j - (len(arms) - 1) / 2) * width for i, g in enumerate(groups) if arm in groups[g]]
        vals = [groups[g][arm] for g in groups if arm in groups[g]]
        heights, err = _err(vals)
        bars = ax.bar(xs, heights, width, yerr=err, capsize=3, label=arm)
        ax.bar_label(bars, [f"{s}/{n}" for s, n in vals], padding=2, fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 125)  # room above 100% for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title + "\n(error bars: 95% Wilson intervals)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    return _save(fig, path)


def line_plot(
    series: dict[str, list[tuple[float, float, float, float]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str = "pass@1 (%)",
    base: dict[str, float] | None = None,
) -> Path:
    """Lines of (x, y, y_low, y_high) points (y in %) with their range as error bars; ``base``: dashed
    horizontal reference lines."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, pts in series.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        if base and name in base:
            ax.axhline(
                base[name], linestyle="--", color=line[0].get_color(), alpha=0.6, label=f"{name}: base"
            )
    xs = sorted({p[0] for pts in series.values() for p in pts})
    if xs and all(float(x).is_integer() for x in xs):  # counts and rounds: a tick at each
        ax.set_xticks(xs, [str(int(x)) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def lift_plot(points: list[tuple[str, float, float, int]], path: Path, *, title: str) -> Path:
    """Lift (after - before, points of pass@1) against the base score, one labelled point per model/eval."""
    fig = _figure()
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for i, (label, base, lift, n) in enumerate(points):  # a legend, not labels: points may coincide
        ax.scatter(
            [100 * base], [100 * lift], marker=markers[i // 10 % len(markers)], label=f"{label} (n={n})"
        )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.set_xlim(0, 100)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("base pass@1 (%)")
    ax.set_ylabel("lift after the recipe (points of pass@1)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- sections ------------------------------------------------------------------------------------------------


def _vs_rows(vs: dict[str, Any], after: str) -> list[str]:
    lines = [f"| eval | before | {after} | delta | McNemar p |", "|---|---|---|---|---|"]
    for k, v in vs.items():
        lines.append(
            f"| {k} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} | {v['delta']:+.1%} | "
            f"{v['mcnemar']['p_value']:.3f} |"
        )
    return lines


def _recipe_arms(summary: dict[str, Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per eval: base, each round and the control as (solved, tasks)."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    for r in summary["rounds"]:
        for k, v in r["vs_before"].items():
            groups.setdefault(k, {"base": (v["before"], v["tasks"])})[f"round {r['round']}"] = (
                v["after"],
                v["tasks"],
            )
    for k, v in (summary.get("control") or {}).items():
        groups.setdefault(k, {"base": (v["before"], v["tasks"])})["control"] = (v["after"], v["tasks"])
    return groups


def _model_of(data: dict[str, Any]) -> str:
    """The model a result is of, as the user named it: runs record it as given; an eval or tts result names
    it in ``model_name`` or its command (older ones), else by its engine key."""
    model = data.get("model") or (data.get("recipe") or {}).get("model")
    if isinstance(model, str):
        return model
    if data.get("model_name"):
        return str(data["model_name"])
    words = str(data.get("command", "")).split()
    if "--model" in words[:-1]:
        return words[words.index("--model") + 1]
    if isinstance(model, dict):
        return str(model.get("name") or model.get("sha256", "?")[:12])
    return "?"


def _section(shown: str, kind: str, data: dict[str, Any], figs: Path, name: str) -> list[str]:
    """Markdown lines (and plots in ``figs``, named after ``name``) of one result, from the file ``shown``."""
    lines = [f"## {kind}: {_model_of(data)}", "", f"`{shown}` ({data.get('date', 'no date')})", ""]
    img: list[Path] = []
    if kind == "bootstrap":
        from tinyforge.recipe import report, summarize

        lines += _demote(report(data))
        summary = summarize(data)
        if summary["rounds"]:
            img.append(
                bar_plot(_recipe_arms(summary), figs / f"{name}.png", title=f"recipe on {_model_of(data)}")
            )
    elif kind == "curriculum":
        from tinyforge.curriculum import report

        lines += _demote(report(data))
        rounds = data["rounds"]
        series = {
            "greedy solve rate": [
                (
                    r["round"],
                    100 * r["greedy_solve_rate"],
                    100 * r["greedy_solve_rate"],
                    100 * r["greedy_solve_rate"],
                )
                for r in rounds
            ],
            "mean pass rate (k samples)": [
                (r["round"], 100 * r["mean_pass_rate"], 100 * r["mean_pass_rate"], 100 * r["mean_pass_rate"])
                for r in rounds
            ],
        }
        pool = ", ".join(f"round {r['round']}: {r['pool']}" for r in rounds)
        img.append(
            line_plot(
                series,
                figs / f"{name}.png",
                title=f"curriculum on {_model_of(data)}: how hard the pool is\n(problems per round: {pool})",
                xlabel="round",
                ylabel="share of the pool solved (%)",
            )
        )
    elif kind == "selfcorrect":
        from tinyforge.selfcorrect import report

        lines += _demote(report(data))
    elif kind == "tts":
        from tinyforge.evaluate.tts import format_table, plot_tts

        rows = data["rows"]
        lines += format_table(rows).splitlines()
        title = f"{data.get('bench', '')} {data.get('model', '')}: accuracy vs samples (n={data.get('tasks', '?')} tasks)"
        img.append(plot_tts(rows, figs / f"{name}.png", title=title.strip()))
    elif kind == "eval":
        n, solved = data.get("n_tasks", 0), data.get("n_tasks_solved", 0)
        lo, hi = wilson_interval(solved, n) if n else (0.0, 1.0)
        lines += [
            f"- {data['bench']} ({data.get('format')}): pass@1 {data['pass@1']:.1%} ({solved}/{n}; 95% CI {lo:.1%}-{hi:.1%})"
        ]
    else:
        lines += _experiment(kind, data, figs, name, img)
    lines.append("")
    lines += [f"![{p.stem}]({p.parent.name}/{p.name})" for p in img]
    return lines + [""]


def _experiment(kind: str, data: dict[str, Any], figs: Path, name: str, img: list[Path]) -> list[str]:
    model = _model_of(data)
    lines: list[str] = []
    if kind == "boundary":
        lines += ["| model | eval | base | after round 1 | lift | McNemar p |", "|---|---|---|---|---|---|"]
        for m, r in data["models"].items():
            if "error" in r:
                lines.append(f"| {m} | - | - | - | - | no result: {r['error']} |")
                continue
            for k, v in r["rounds"][0]["vs_before"].items() if r["rounds"] else []:
                lines.append(
                    f"| {m} | {k} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} | {v['delta']:+.1%} | {v['mcnemar']['p_value']:.3f} |"
                )
        return lines
    if kind in ("control", "rounds", "format"):
        for r in data["rounds"]:
            lines += [
                f"Round {r['round']} (trained on {r['trained_on']} pairs):",
                "",
                *_vs_rows(r["vs_before"], f"round {r['round']}"),
                "",
            ]
        if data.get("control"):
            lines += ["Control (corrupted MBPP-train pairs):", "", *_vs_rows(data["control"], "control"), ""]
        groups = _recipe_arms(data)
        if kind == "rounds":
            series = {}
            for k, arms in groups.items():
                pts = []
                for i, (s, n) in enumerate(v for a, v in arms.items() if a != "control"):
                    lo, hi = wilson_interval(s, n)
                    pts.append((float(i), 100 * s / n if n else 0.0, 100 * lo, 100 * hi))
                series[f"{k} (n={n})"] = pts
            img.append(
                line_plot(
                    series,
                    figs / f"{name}.png",
                    title=f"recursive rounds on {model} (round 0: base; bars: 95% Wilson)",
                    xlabel="round",
                )
            )
        else:
            img.append(
                bar_plot(
                    groups,
                    figs / f"{name}.png",
                    title=f"{'control vs recipe' if kind == 'control' else 'prompt format'}: {model}",
                )
            )
        return lines
    if kind == "synergy":
        syn = data["synergy"]
        lines += [
            f"Best-of-{syn['n']} at temperature {syn['temperature']} (oracle: a task counts when any sample passes its tests).",
            "",
            "| eval | A greedy | B best-of-N | C recipe greedy | D recipe + best-of-N | synergy D-B (95% CI) | McNemar p (D vs B) |",
            "|---|---|---|---|---|---|---|",
        ]
        groups = {}
        for k, v in syn["by_eval"].items():
            a = v["arms"]
            cell = lambda x: f"{x['solved']}/{x['tasks']}"  # noqa: E731
            lo, hi = v["synergy_ci95"]
            lines.append(
                f"| {k} | {cell(a['A'])} | {cell(a['B'])} | {cell(a['C'])} | {cell(a['D'])} | {v['synergy']:+.1%} ({lo:+.1%}, {hi:+.1%}) | {v['d_vs_b']['mcnemar']['p_value']:.3f} |"
            )
            names = {
                "A": "A greedy",
                "B": f"B best-of-{syn['n']}",
                "C": "C recipe",
                "D": f"D recipe + best-of-{syn['n']}",
            }
            groups[k] = {names[arm]: (x["solved"], x["tasks"]) for arm, x in a.items()}
        img.append(
            bar_plot(
                groups,
                figs / f"{name}.png",
                title=f"synergy on {model} (best-of-{syn['n']} at T={syn['temperature']})",
                ylabel="tasks solved (%)",
            )
        )
        return lines
    if kind == "pair_scaling":
        ps = data["pair_scaling"]
        lines += [
            f"{ps['mined']} pairs mined; seeds per point as listed.",
            "",
            "| pairs | eval | mean | range | per seed | base |",
            "|---|---|---|---|---|---|",
        ]
        series: dict[str, list[tuple[float, float, float, float]]] = {}
        base: dict[str, float] = {}
        for p in ps["points"]:
            if "skipped" in p:
                lines.append(f"| {p['pairs']} | - | - | - | {p['skipped']} | - |")
                continue
            for k, v in p["by_eval"].items():
                per = ", ".join(f"{s}: {x:.1%}" for s, x in v["per_seed"].items())
                lines.append(
                    f"| {p['pairs']} | {k} | {v['mean']:.1%} | {v['min']:.1%}-{v['max']:.1%} | {per} | {v['base']:.1%} |"
                )
                label = f"{k} (n={v['tasks']})"
                series.setdefault(label, []).append(
                    (p["pairs"], 100 * v["mean"], 100 * v["min"], 100 * v["max"])
                )
                base[label] = 100 * v["base"]
        if series:
            seeds = len(next(p for p in ps["points"] if "seeds" in p)["seeds"])
            img.append(
                line_plot(
                    series,
                    figs / f"{name}.png",
                    title=f"pair-count scaling on {model}\n(mean over {seeds} training seeds, bars: min-max)",
                    xlabel="training pairs",
                    base=base,
                )
            )
        return lines
    return [f"(no section for experiment kind {kind!r})"]


def _demote(markdown: str) -> list[str]:
    """A run's own report inside this one: its headings one level down, its title dropped."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("# "):
            continue
        out.append("#" + line if line.startswith("#") else line)
    return out


def _lift_points(results: list[tuple[Path, str, dict[str, Any]]]) -> list[tuple[str, float, float, int]]:
    points = []
    for f, kind, data in results:
        where = f"{f.parent.parent.name}/{f.parent.name}"  # which run: two models' runs may share a model
        runs: list[tuple[str, dict[str, Any]]] = []
        if kind == "bootstrap" and data["rounds"]:
            runs.append((f"{_model_of(data)} [{where}]", data["rounds"][0]["vs_before"]))
        elif kind == "boundary":
            runs += [
                (f"{m} [{f.parent.parent.name}]", r["rounds"][0]["vs_before"])
                for m, r in data["models"].items()
                if r.get("rounds")
            ]
        for model, vs in runs:
            for k, v in vs.items():
                if v["tasks"]:
                    points.append((f"{model} {k}", v["before"] / v["tasks"], v["delta"], v["tasks"]))
    return points


def write_report(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], title: str = "tinyforge report"
) -> Path:
    """Build ``out/report.md`` and ``out/figures/*.png`` from the results under ``paths``; returns the
    report's path. A ``ReportError`` (one line) for a missing, unreadable or foreign file."""
    results = find_results(paths)
    out = Path(out)
    figs = out / "figures"
    lines = [
        f"# {title}",
        "",
        f"{len(results)} result(s): " + ", ".join(sorted({k for _, k, _ in results})) + ".",
        "",
    ]
    points = _lift_points(results)
    if len(points) > 1:
        p = lift_plot(points, figs / "lift-vs-base.png", title="lift vs base score across models (round 1)")
        lines += ["## Lift vs base score", "", f"![lift vs base]({p.parent.name}/{p.name})", ""]
    names: dict[str, int] = {}
    for f, kind, data in results:
        given = next((Path(p) for p in paths if f.is_relative_to(Path(p))), f.parent)
        shown = f.relative_to(given.parent)
        # A plot is named after the folder of its result (runs/recipe-qwen/result.json -> runs-recipe-qwen).
        stem = model_slug("-".join(shown.parent.parts) or kind)
        names[stem] = names.get(stem, 0) + 1
        name = stem if names[stem] == 1 else f"{stem}-{names[stem]}"
        lines += _section(shown.as_posix(), kind, data, figs, name)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
