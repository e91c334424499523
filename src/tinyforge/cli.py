"""The `tinyforge` command: a thin layer over the Python API (each command composes library calls)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tinyforge import __version__

app = typer.Typer(
    name="tinyforge",
    help="Self-improvement of open language models at code and math, measured honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder with the benchmark files (default: TINYFORGE_DATA_DIR, a shared/data/"
        "benchmarks folder above the working directory, else a download cache).",
    ),
]

# Options shared by the commands that generate (eval, tts).
BenchOpt = Annotated[str, typer.Option("--bench", help="Benchmark name (see `tinyforge benchmarks`).")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="An embedded model (smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, ...), a local "
        "folder or .gguf file, a hub id; with --base-url, the server's model name.",
    ),
]
AdapterOpt = Annotated[Path | None, typer.Option("--adapter", help="A peft LoRA adapter folder.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Prompt format: code: raw (continue the code), chat, chat+prefix; math: raw (few-shot), chat "
        "(answer in \\boxed{}); auto: chat if the model has a chat template.",
    ),
]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Per completion.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Only the first K tasks.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed (sample i of a prompt is fixed).")]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="auto, hf (transformers), vllm, openai (a server).")
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; several, comma-separated, make a pool.",
    ),
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32 or bfloat16 (default: bf16 on GPU, fp32 on CPU).")
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option("--batch-size", help="hf: rows per batch; openai: requests in flight per server."),
]
CacheDirOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Generation cache (default: the user cache).")
]
WorkersOpt = Annotated[int | None, typer.Option(help="Sandbox workers (default: one per core).")]
ReplicasOpt = Annotated[
    int,
    typer.Option(
        "--replicas", help="Copies of the model, each in its own process on its own GPU(s) (data parallel)."
    ),
]
TensorParallelOpt = Annotated[
    int, typer.Option("--tensor-parallel", help="vllm: GPUs per copy of the model (tensor parallel).")
]


def fail(msg: str) -> None:
    """A one-line error for the user, exit code 2."""
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields `start(label, total) -> advance(n)`; bars draw on stderr and vanish on a non-terminal."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as p:

        def start(label: str, total: int) -> Callable[[int], None]:
            task = p.add_task(label, total=total)
            return lambda n=1: p.advance(task, n)

        yield start


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More logging.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    if version:
        print(__version__)
        raise typer.Exit()


@app.command()
def benchmarks() -> None:
    """List the benchmarks tinyforge knows."""
    from tinyforge.data import BENCHMARKS

    table = Table("name", "aliases", "description")
    for b in BENCHMARKS.values():
        table.add_row(b.name, ", ".join(b.aliases), b.description)
    Console().print(table)


@app.command()
def score(
    bench: Annotated[str, typer.Option("--bench", help="Benchmark name (see `tinyforge benchmarks`).")],
    samples: Annotated[
        Path,
        typer.Option(
            "--samples",
            help="JSONL: task_id + solution (whole program) "
            "or completion (appended to the prompt); any number per task.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder: result.json and samples.jsonl.")],
    data_dir: DataDirOpt = None,
    workers: Annotated[int | None, typer.Option(help="Sandbox workers (default: one per core).")] = None,
) -> None:
    """Score pre-generated samples (evalplus format) and write DIR/result.json and DIR/samples.jsonl."""
    from tinyforge.data import DataError, get_benchmark
    from tinyforge.evaluate.score import ScoreError, read_samples, write_results
    from tinyforge.evaluate.score import score as score_samples
    from tinyforge.sandbox import make_pool

    try:
        name = get_benchmark(bench).name
        recs = read_samples(samples)
        if not recs:
            fail(f"{samples}: no samples")
        originals = [dict(r) for r in recs]
        with make_pool(workers) as pool, progress_bars() as bars:
            summary, results = score_samples(name, recs, data_dir=data_dir, pool=pool, progress=bars)
        summary["samples_file"] = str(samples)
        path = write_results(out, summary, results, originals)
    except (DataError, ScoreError, KeyError) as e:
        fail(str(e).strip("'\""))
    _print_summary(summary)
    console.print(f"wrote {path} and {path.parent / 'samples.jsonl'}")


def _print_summary(summary: dict[str, Any]) -> None:
    keys = [k for k in summary if k.startswith("pass@") and isinstance(summary[k], float)]
    line = ", ".join(f"{k} {100 * summary[k]:.1f}%" for k in keys)
    extra = ""
    if "base" in summary:
        extra = f" (base pass@1 {100 * summary['base']['pass@1']:.1f}%)"
    print(f"{summary['bench']}: {summary['n_tasks']} tasks, {summary['n_samples']} samples: {line}{extra}")
    if summary.get("skipped_tasks"):
        print(f"skipped {len(summary['skipped_tasks'])} task(s) with missing libraries")


@app.command()
def selfcheck(
    bench: Annotated[str, typer.Option("--bench", help="Benchmark name.")] = "humaneval",
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/selfcheck"),
    data_dir: DataDirOpt = None,
    workers: Annotated[int | None, typer.Option(help="Sandbox workers (default: one per core).")] = None,
) -> None:
    """Score the benchmark's own canonical solutions (math: its worked solutions, or the answer in
    \\boxed{} where it has none): a harness that works gives 100%."""
    from tinyforge.data import DataError, MathTask, load_benchmark

    try:
        tasks = load_benchmark(bench, data_dir)
    except (DataError, KeyError) as e:
        fail(str(e).strip("'\""))
    out.mkdir(parents=True, exist_ok=True)
    samples = out / "canonical.jsonl"
    with samples.open("w") as f:
        for t in tasks:
            if isinstance(t, MathTask):
                text = (
                    t.solution
                    if "\\boxed" in t.solution
                    else f"{t.solution}\nThe answer is $\\boxed{{{t.answers[0]}}}$."
                )
                rec = {"task_id": t.task_id, "completion": text.strip()}
            else:
                rec = {"task_id": t.task_id, "solution": t.canonical_solution}
            f.write(json.dumps(rec) + "\n")
    score(bench=bench, samples=samples, out=out, data_dir=data_dir, workers=workers)
    failed = [json.loads(line) for line in (out / "samples.jsonl").open()]
    failed = [r for r in failed if not r["passed"]]
    for r in failed:
        print(f"  canonical fails: {r['task_id']}: {r['status']} {r.get('detail', '')}")


def _engine(
    model: str,
    backend: str,
    adapter: Path | None,
    base_url: str | None,
    dtype: str | None,
    batch_size: int | None,
    replicas: int,
    tensor_parallel: int,
    limit: int | None,
) -> Any:
    """The engine that `eval` and `tts` sample from, once their options are checked."""
    from tinyforge.generate.engines import make_engine

    if limit is not None and limit < 1:
        fail("--limit must be at least 1")
    return make_engine(
        model, backend, adapter=adapter, base_url=base_url, dtype=dtype, batch_size=batch_size,
        replicas=replicas, tensor_parallel=tensor_parallel,
    )  # fmt: skip


@app.command("eval")
def eval_(
    bench: BenchOpt,
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder: result.json and samples.jsonl.")],
    adapter: AdapterOpt = None,
    fmt: FormatOpt = "auto",
    n: Annotated[int, typer.Option("--n", help="Samples per task.")] = 1,
    temperature: Annotated[float, typer.Option(help="0 is greedy decoding.")] = 0.0,
    top_p: TopPOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 768,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    backend: BackendOpt = "auto",
    base_url: BaseUrlOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = None,
    replicas: ReplicasOpt = 1,
    tensor_parallel: TensorParallelOpt = 1,
    cache_dir: CacheDirOpt = None,
    data_dir: DataDirOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Generate with a model and score: greedy pass@1, or with --n and --temperature unbiased pass@k and
    oracle best-of-n. Writes DIR/result.json and DIR/samples.jsonl (evalplus format); resumes from the
    generation cache."""
    from tinyforge.data import DataError, get_benchmark
    from tinyforge.evaluate.run import check_format, evaluate
    from tinyforge.evaluate.score import ScoreError
    from tinyforge.generate.base import SamplingParams
    from tinyforge.generate.models import ModelError

    try:
        name = get_benchmark(bench).name
        check_format(fmt, get_benchmark(bench).kind)
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        if params.greedy and n > 1:
            fail("greedy decoding (temperature 0) gives n identical samples: set --temperature for --n > 1")
        engine = _engine(
            model, backend, adapter, base_url, dtype, batch_size, replicas, tensor_parallel, limit
        )  # fmt: skip
        with progress_bars() as bars:
            summary = evaluate(
                name,
                engine,
                out_dir=out,
                fmt=fmt,
                params=params,
                limit=limit,
                cache_dir=cache_dir,
                data_dir=data_dir,
                workers=workers,
                progress=bars,
                meta={"command": " ".join(["tinyforge", *sys.argv[1:]]), "model_name": model},
            )
    except (DataError, ScoreError, ModelError, ValueError, KeyError) as e:
        fail(str(e).strip("'\""))
    _print_summary(summary)
    gen = summary["generation"]
    speed = f", {gen['tokens_per_s']:.0f} tok/s" if gen["tokens_per_s"] else ""
    print(
        f"format {summary['format']}; {gen['generated']} generated, {gen['from_cache']} from cache"
        f"{speed}; {summary['wall_s']:.1f} s in all"
    )
    if "best_of_n" in summary:
        b = summary["best_of_n"]
        print(f"oracle best-of-{b['n']}: {b['solved']}/{summary['n_tasks']} ({100 * b['rate']:.1f}%)")
    if "self_consistency" in summary:
        sc = summary["self_consistency"]
        print(f"self-consistency (majority of {sc['n']}): {100 * sc['accuracy']:.1f}%")
    console.print(f"wrote {out / 'result.json'} and {out / 'samples.jsonl'}")


@app.command()
def tts(
    bench: BenchOpt,
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder: tts.json, tts.md, tts.png, the evals.")],
    n: Annotated[
        str, typer.Option("--n", help="Sample counts to report, e.g. 1,2,4,8,16,32,64.")
    ] = "1,2,4,8",
    temperature: Annotated[float, typer.Option(help="Sampling temperature (above 0).")] = 0.8,
    adapter: AdapterOpt = None,
    fmt: FormatOpt = "auto",
    top_p: TopPOpt = 1.0,
    max_new_tokens: MaxNewTokensOpt = 768,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    backend: BackendOpt = "auto",
    base_url: BaseUrlOpt = None,
    dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = None,
    replicas: ReplicasOpt = 1,
    tensor_parallel: TensorParallelOpt = 1,
    cache_dir: CacheDirOpt = None,
    data_dir: DataDirOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Test-time sampling sweep: draws max(N) samples per task once (plus a greedy run) and reports oracle
    pass@N (unbiased) and, on math benchmarks, self-consistency SC@N and the recovery ratio for every N, as
    a table (DIR/tts.md, DIR/tts.json) and a plot (DIR/tts.png)."""
    from tinyforge.data import DataError, get_benchmark
    from tinyforge.evaluate.run import check_format
    from tinyforge.evaluate.score import ScoreError
    from tinyforge.evaluate.tts import check_sweep, format_table, sweep
    from tinyforge.generate.models import ModelError

    try:
        ns = [int(x) for x in n.split(",") if x.strip()]
    except ValueError:
        fail(f"--n takes sample counts separated by commas, e.g. 1,2,4,8 (got {n!r})")
    try:
        b = get_benchmark(bench)
        check_format(fmt, b.kind)
        check_sweep(ns, temperature)
        engine = _engine(
            model, backend, adapter, base_url, dtype, batch_size, replicas, tensor_parallel, limit
        )  # fmt: skip
        with progress_bars() as bars:
            result = sweep(
                b.name, engine, ns, out_dir=out, fmt=fmt, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, seed=seed, limit=limit, cache_dir=cache_dir, data_dir=data_dir,
                workers=workers, progress=bars, label=model,
                meta={"command": " ".join(["tinyforge", *sys.argv[1:]]), "model_name": model},
            )  # fmt: skip
    except (DataError, ScoreError, ModelError, ValueError, KeyError) as e:
        fail(str(e).strip("'\""))
    print(f"{result['bench']}, {result['tasks']} tasks, format {result['format']}, T={temperature}")
    print(format_table(result["rows"]))
    console.print(f"wrote {out / 'tts.md'}, {out / 'tts.json'}, {out / 'tts.png'} and the evals in {out}")


@app.command()
def bootstrap(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="An embedded model name, a .gguf file, a transformers folder or a hub id."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder (rerun the same command to resume).")] = Path(
        "runs/bootstrap"
    ),
    problems: Annotated[int | None, typer.Option("--problems", help="Problems to keep per round.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of sampling, shuffles and training.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A recipe YAML file (every other setting; see configs/).")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Recursive rounds.")] = None,
    control: Annotated[
        bool | None, typer.Option("--control/--no-control", help="Also run the corrupted-MBPP control.")
    ] = None,
    seeded: Annotated[
        str | None, typer.Option("--seeded", help="Take problems from this benchmark (mbpp-train).")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, hf or vllm.")] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", help="Copies of the model on their own GPUs (data parallel).")
    ] = None,
    stop_after: Annotated[
        str, typer.Option("--stop-after", help="Stop after this stage: problems, solve, mine, train, eval.")
    ] = "eval",
    data_dir: DataDirOpt = None,
) -> None:
    """The self-bootstrap recipe end to end: the model writes problems, solves them k times, (broken, fixed)
    pairs are mined at the edge, a LoRA is trained on them, and the benchmarks are scored before and after.
    Writes RUN/result.json, RUN/report.md and every stage's records; rerun to resume."""
    from tinyforge.data import DataError
    from tinyforge.evaluate.score import ScoreError
    from tinyforge.generate.models import ModelError
    from tinyforge.recipe import RecipeError, load_config
    from tinyforge.recipe import bootstrap as run_bootstrap

    try:
        cfg = load_config(
            config, model=model, problems=problems, seed=seed, rounds=rounds, control=control, seeded=seeded,
            backend=backend, replicas=replicas,
        )  # fmt: skip
        with progress_bars() as bars:
            run_bootstrap(
                cfg,
                out,
                data_dir=data_dir,
                progress=bars,
                log=lambda m: console.print(m),
                stop_after=stop_after,
            )
    except (RecipeError, DataError, ScoreError, ModelError, ValueError) as e:
        fail(str(e).strip("'\""))
    print((out / "report.md").read_text())
    console.print(f"wrote {out / 'result.json'}, {out / 'report.md'} and the stage records in {out}")


@app.command()
def curriculum(
    model: Annotated[str | None, typer.Option("--model", help="The model (as for bootstrap).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder; rerun resumes.")] = Path("runs/curriculum"),
    config: Annotated[Path | None, typer.Option("--config", help="A curriculum YAML (see configs/).")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Rounds of solving and moving.")] = None,
    problems: Annotated[int | None, typer.Option("--problems", help="Problems in round 1's pool.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of sampling and training.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, hf or vllm.")] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", help="Copies of the model on their own GPUs (data parallel).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The auto-difficulty math curriculum: the model writes word problems with a solution() program (run in
    the sandbox for the answer), solves them k times, problems it solves are made harder and those it never
    solves easier, (wrong, right) pairs at the edge train a LoRA, GSM8K is scored before and after."""
    from tinyforge.curriculum import curriculum as run_curriculum
    from tinyforge.curriculum import load_config as load_curriculum

    opts = {
        "model": model,
        "rounds": rounds,
        "problems": problems,
        "seed": seed,
        "backend": backend,
        "replicas": replicas,
    }
    run_staged(
        lambda **kw: run_curriculum(load_curriculum(config, **opts), out, data_dir=data_dir, **kw),
        out,
        "the round records",
    )


def run_staged(start: Callable[..., Any], out: Path, records: str = "the stage records") -> None:
    """Run a staged command's library call, ``start(progress=, log=)``, with progress bars and one-line
    errors, then print the run's report (``out/report.md``)."""
    from tinyforge.data import DataError
    from tinyforge.evaluate.mathgrade import MathGradeError
    from tinyforge.evaluate.score import ScoreError
    from tinyforge.generate.models import ModelError
    from tinyforge.recipe import RecipeError

    errors = (RecipeError, DataError, ScoreError, ModelError, MathGradeError, ValueError)
    try:
        with progress_bars() as bars:
            start(progress=bars, log=lambda m: console.print(m))
    except errors as e:
        fail(str(e).strip("'\""))
    print((out / "report.md").read_text())
    console.print(f"wrote {out / 'result.json'}, {out / 'report.md'} and {records} in {out}")


@app.command()
def selfcorrect(
    model: Annotated[str | None, typer.Option("--model", help="The model to train (as for eval).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder; the same command resumes it.")] = Path(
        "runs/selfcorrect"
    ),
    config: Annotated[
        Path | None, typer.Option("--config", help="A selfcorrect YAML file (see configs/selfcorrect*.yaml).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of sampling, the problem draw and the mixes.")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, hf or vllm.")] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", help="Copies of the model on their own GPUs (data parallel).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Self-correction training for math: the model answers GSM8K-train problems (greedy and k sampled),
    wrong -> "Wait, let me reconsider." -> right traces and right -> right ones are mined, a LoRA is trained
    per mix, and GSM8K test is scored before and after (accuracy, wait, over-correction and fix rates).
    Writes RUN/result.json, RUN/report.md and every stage's records; rerun to resume."""
    from tinyforge.selfcorrect import load_config as load_selfcorrect
    from tinyforge.selfcorrect import selfcorrect as run_selfcorrect

    run_staged(
        lambda **kw: run_selfcorrect(
            load_selfcorrect(config, model=model, seed=seed, backend=backend, replicas=replicas),
            out,
            data_dir=data_dir,
            **kw,
        ),
        out,
    )


@app.command()
def train(
    examples: Annotated[
        Path, typer.Argument(help='JSONL: one {"prompt": text or chat messages, "completion": text} a line.')
    ],
    model: Annotated[str, typer.Option("--model", help="The base model (as for eval).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for adapter/ and train.json (rerun to resume).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="LoRA settings (YAML; the paper's defaults otherwise).")
    ] = None,
    fsdp: Annotated[
        bool,
        typer.Option(
            "--fsdp", help="With several processes: shard the base model over them (FSDP), for large models."
        ),
    ] = False,
) -> None:
    """Train a LoRA on (prompt, completion) examples, the loss on the completion only. Under `accelerate
    launch` or `torchrun` (`accelerate launch -m tinyforge.cli train ...`) every process takes its share of
    each step's micro-batches and the adapter is the single process's (docs/scaling.md); with `--fsdp` each
    holds only its shards of the base model."""
    from tinyforge.generate.models import ModelError
    from tinyforge.recipe import RecipeError, load_settings
    from tinyforge.train.lora import LoraConfig, read_examples, train_lora

    try:
        settings = load_settings(LoraConfig, "lora", config, {})
        data = read_examples(examples)
        lead = os.environ.get("RANK", "0") == "0"  # one process draws the bar and prints
        with progress_bars() as bars:
            result = train_lora(model, data, out, settings, progress=bars if lead else None, fsdp=fsdp)
    except (RecipeError, ModelError, ValueError) as e:
        fail(str(e))
    if lead:
        console.print(
            f"{result['steps']} steps on {result['used']} examples ({result['processes']} process(es)), "
            f"final loss {result['final_loss']:.4f}: wrote {out / 'adapter'} and {out / 'train.json'}"
        )


@app.command()
def experiment(
    spec: Annotated[Path, typer.Argument(help="An experiment spec (YAML; built-in: configs/experiments/).")],
    out: Annotated[Path, typer.Option("--out", help="Experiment folder (rerun to resume).")] = Path(
        "runs/experiment"
    ),
    model: Annotated[
        str | None, typer.Option("--model", help="The recipe's model (not for boundary).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run (or resume) an experiment: synergy, pair_scaling, control, rounds, format or boundary. The recipe
    runs in OUT/recipe (boundary: OUT/recipe-MODEL), its extra arms beside it; OUT/KIND/result.json and
    OUT/KIND/report.md (with plots) hold the comparison."""
    from tinyforge.experiment import load_spec, run_experiment
    from tinyforge.recipe import RecipeError

    try:
        s = load_spec(spec, model=model)
    except RecipeError as e:
        fail(str(e))
    run_staged(
        lambda **kw: run_experiment(s, out, data_dir=data_dir, **kw), out / s.kind, f"the runs in {out}"
    )


@app.command()
def report(
    paths: Annotated[
        list[Path], typer.Argument(help="Run, eval, tts or experiment folders (or result files).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md and figures/.")] = Path("report"),
    title: Annotated[str, typer.Option("--title", help="The report's title.")] = "tinyforge report",
) -> None:
    """A Markdown report with PNG plots from the results under PATHS: recipe runs (before/after, control),
    experiments (synergy, pair-count scaling, rounds, format, boundary), curriculum, self-correction, TTS
    curves, and lift vs base score across models."""
    from tinyforge.report import ReportError, write_report

    try:
        path = write_report(paths, out, title=title)
    except ReportError as e:
        fail(str(e))
    console.print(f"wrote {path} and {out / 'figures'}")


pairs_app = typer.Typer(help="Mined (broken, fixed) pairs.", no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")


@pairs_app.command("stats")
def pairs_stats(
    files: Annotated[list[Path], typer.Argument(help="pairs.jsonl files (or run folders).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The failure-class mix of mined pairs: how many are real repairs and how many only fix the format."""
    from tinyforge.mine.pairs import read_pairs

    pairs = []
    try:
        for f in files:
            found = sorted(f.glob("**/pairs.jsonl")) if f.is_dir() else [f]
            if not found:
                fail(f"no pairs.jsonl under {f}")
            for path in found:
                pairs += read_pairs(path)
    except ValueError as e:
        fail(str(e))
    from tinyforge.mine.pairs import pair_stats as stats_of

    stats = stats_of(pairs)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    table = Table(title=f"{stats['pairs']} pairs from {stats['problems']} problems")
    table.add_column("failure class")
    table.add_column("pairs", justify="right")
    table.add_column("share", justify="right")
    for name, v in stats["by_class"].items():
        table.add_row(name, str(v["n"]), f"{100 * v['share']:.1f}%")
    Console().print(table)
    print(
        f"format-only (nothing to repair): {stats['format_only']} ({100 * stats['format_only_share']:.1f}%); "
        f"sources: {stats['by_source']}"
    )


@app.command()
def doctor() -> None:
    """Show which sandbox isolation layers this machine offers."""
    from tinyforge.sandbox import capabilities

    caps = capabilities()
    print(
        json.dumps(
            {
                "bubblewrap": caps.bwrap,
                "cgroups": sorted(caps.cgroup_root),
                "python": sys.version.split()[0],
                "tinyforge": __version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    app()
