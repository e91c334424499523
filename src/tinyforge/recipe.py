"""The self-bootstrap recipe for code, end to end: ``bootstrap(config, run_dir)`` (``tinyforge bootstrap``).

Stages, in order, each a library call of its own module:

1. problems: the model writes problems (``mine.problems``), or they are taken from a benchmark's train
   split (``seeded``, ``mine.seeded``);
2. solve: k attempts per problem at temperature, verified in the sandbox (``mine.solve``);
3. mine: (broken, fixed) pairs from at-edge problems (``mine.pairs``);
4. train: a LoRA from the base model on the pairs, prompts masked (``train.lora``);
5. evaluate: the same benchmarks and prompt formats before and after (``evaluate.run``).

Variants: ``rounds`` > 1 (round r generates new problems and solves them with round r-1's adapter, and a
fresh LoRA is trained from the base on the pairs of rounds 1..r), and ``control`` (as many pairs as round
1 trained on, made by corrupting MBPP-train solutions, ``mine.control``; trained and evaluated the same).

The run folder holds everything (``RUN/config.json``, ``RUN/round-R/{problems,rejections,attempts,pairs}
.jsonl``, ``RUN/round-R/train/adapter``, ``RUN/eval/LABEL-BENCH-FORMAT/``, ``RUN/control/``,
``RUN/result.json``, ``RUN/report.md``) and the generation cache (``RUN/cache``). Resuming: run the same
command again. A stage whose output file exists is done and is read back; a stage that was killed is
redone, and what it had produced is not lost: every completion is in the cache the moment it is made
(nothing is generated twice), attempts are appended as their verdicts arrive (a resumed solve skips
them), training continues from its last checkpoint. Stage outputs are written whole to a temporary file
and renamed, so a file that is there is complete, and the same inputs give the same pairs.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinyforge import __version__
from tinyforge.data import load_benchmark
from tinyforge.data.code import read_jsonl
from tinyforge.evaluate.metrics import paired_comparison
from tinyforge.evaluate.run import evaluate, resolve_format
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams, free_memory
from tinyforge.generate.cache import CachedEngine, GenerationCache
from tinyforge.mine.pairs import Pair, mine_pairs, pair_stats, select_pairs
from tinyforge.mine.problems import Problem, Rejection, dedupe, parse_problem, problem_prompt, verify_problems
from tinyforge.mine.solve import FORMAT_ONLY, Attempt, solve
from tinyforge.sandbox import make_pool
from tinyforge.train.lora import LoraConfig, launch_training, train_lora

__all__ = [
    "STAGES",
    "RecipeConfig",
    "RecipeError",
    "RunConfig",
    "bootstrap",
    "load_config",
    "load_settings",
    "report",
]

STAGES: tuple[str, ...] = ("problems", "solve", "mine", "train", "eval")

Progress = Callable[[str, int], Callable[[int], None]]
Log = Callable[[str], None]


class RecipeError(Exception):
    """A problem with the run's settings or its folder, said in one line."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemsConfig(_Config):
    format: str = Field("auto", description="Prompt format for problem requests: auto, raw or chat.")
    samples_per_problem: float = Field(
        4.0, gt=0, description="Problem answers drawn per problem asked for (many are rejected)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for problem generation.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling for problem generation.")
    max_new_tokens: int = Field(512, ge=16, description="Token budget of one problem answer.")
    min_tests: int = Field(3, ge=1, description="Fewest asserts a problem must have.")
    near_duplicate: float = Field(
        0.9, gt=0, le=1, description="Token similarity at which problems are duplicates."
    )
    timeout: float = Field(5.0, gt=0, description="Seconds for a problem's own solution to pass its tests.")


class SolveConfig(_Config):
    format: str = Field("auto", description="Prompt format for solving: auto, raw, chat or chat+prefix.")
    k: int = Field(4, ge=2, description="Attempts per problem (paper: 4; multi-pair mining: 8).")
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature of attempts (paper: 0.7; multi: 0.8)."
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of attempts.")
    max_new_tokens: int = Field(512, ge=16, description="Token budget of one attempt.")
    timeout: float = Field(5.0, gt=0, description="Seconds for an attempt to pass the problem's tests.")


class MineConfig(_Config):
    mode: Literal["single", "multi"] = Field(
        "single", description="One pair per at-edge problem, or several."
    )
    max_pairs: int = Field(4, ge=1, description="Most pairs per problem in multi mode (paper: 4).")
    near_duplicate: float = Field(
        0.95, gt=0, le=1, description="Token similarity at which broken attempts are duplicates (multi mode)."
    )
    exclude: list[str] = Field(
        default_factory=lambda: sorted(FORMAT_ONLY),
        description="Failure classes not trained on (default: format-only pairs); they stay in pairs.jsonl.",
    )


class EvalConfig(_Config):
    benches: list[str] = Field(
        default_factory=lambda: ["humaneval"], description="Benchmarks before and after."
    )
    formats: list[str] = Field(
        default_factory=lambda: ["auto"], description="Prompt formats (auto, raw, chat)."
    )
    limit: int | None = Field(None, ge=1, description="Only the first N tasks of each benchmark.")
    max_new_tokens: int = Field(768, ge=16, description="Token budget of one greedy answer.")


class RunConfig(_Config):
    """What every staged run (``bootstrap``, ``curriculum``, ``selfcorrect``) says about its model and the
    machine; each run's config adds its own stages' settings."""

    model: str = Field(
        ..., description="An embedded model name, a .gguf file, a transformers folder or a hub id."
    )
    seed: int = Field(0, description="Seed of every sampled completion, shuffle and training run.")
    backend: str = Field("auto", description="Generation back-end: auto, hf or vllm.")
    dtype: str | None = Field(None, description="Model dtype for generation (default: the back-end's).")
    batch_size: int | None = Field(None, ge=1, description="Generation batch (hf back-end).")
    workers: int | None = Field(None, ge=1, description="Sandbox workers (default: one per core).")
    gpu_memory: float = Field(
        0.4,
        gt=0,
        lt=1,
        description="vLLM back-end: the share of the GPU's memory vLLM takes (the rest is for training).",
    )
    replicas: int = Field(
        1, ge=1, description="Copies of the model, each in its own process on its own GPU(s) (data parallel)."
    )
    tensor_parallel: int = Field(
        1, ge=1, description="vLLM back-end: GPUs per copy of the model (tensor parallel)."
    )
    train_processes: int = Field(
        1, ge=1, description="LoRA training in this many processes, one per GPU (data parallel, torchrun)."
    )
    train_fsdp: bool = Field(
        False,
        description="With train_processes > 1: shard the base model over them (FSDP), for large models.",
    )


class RecipeConfig(RunConfig):
    problems: int = Field(50, ge=1, description="Problems to keep per round.")
    rounds: int = Field(1, ge=1, description="Recursive rounds (round r solves with round r-1's adapter).")
    control: bool = Field(False, description="Also train and evaluate on corrupted MBPP-train pairs.")
    seeded: str | None = Field(
        None, description="Take problems from this benchmark (mbpp-train), not the model."
    )
    problem: ProblemsConfig = Field(default_factory=ProblemsConfig)
    solve: SolveConfig = Field(default_factory=SolveConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    train: LoraConfig = Field(default_factory=LoraConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


C = TypeVar("C", bound=_Config)


def read_settings(path: str | os.PathLike[str], what: str, missing: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML settings file (empty file: no settings); else a one-line ``RecipeError`` saying
    ``missing`` not found, not valid YAML, or not a mapping of ``what`` settings."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RecipeError(f"{missing} not found: {p}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: {what} is a mapping of settings")
    return data


def validate_settings(cls: type[C], what: str, data: dict[str, Any]) -> C:
    """``cls`` from ``data``, or a one-line ``RecipeError`` naming the first bad setting."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise RecipeError(f"bad {what} setting {where}: {err['msg']}") from None


def load_settings(
    cls: type[C], what: str, path: str | os.PathLike[str] | None, overrides: dict[str, Any]
) -> C:
    """Settings of class ``cls`` from a YAML file (or the defaults), with ``overrides`` (the command line's
    options; None means not given) on top; any problem is a one-line ``RecipeError`` naming the ``what``
    config (recipe, curriculum, selfcorrect) and the setting."""
    data = read_settings(path, f"a {what} config") if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_settings(cls, what, data)


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> RecipeConfig:
    """A config from a YAML file (or defaults), with ``overrides`` (the command line's options) on top."""
    return load_settings(RecipeConfig, "recipe", path, overrides)


# --- run-folder records ------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    """Write the whole file under a temporary name and rename it: a file that exists is complete."""
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_appended(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only file; a torn last line (a killed writer) is dropped."""
    out = []
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


# --- the run -----------------------------------------------------------------------------------------------


class Run:
    """One run folder and what the stages share: the engines (one at a time), the sandbox pool, timings."""

    def __init__(
        self,
        config: RunConfig,
        root: Path,
        *,
        data_dir: str | os.PathLike[str] | None,
        progress: Progress | None,
        log: Log,
        engine_factory: Callable[[str | None], Engine] | None = None,
    ) -> None:
        self.config, self.root, self.data_dir, self.progress, self.log = config, root, data_dir, progress, log
        self.cache = GenerationCache(root / "cache")
        self.pool = make_pool(config.workers)
        self._factory = engine_factory or self._make_engine
        self._base: Engine | None = None  # the base model, loaded once for the whole run
        self._tuned: tuple[str, Engine] | None = None  # the model with the adapter last asked for
        state_path = root / "state.json"
        self.state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.state.setdefault("stages", {})

    def _make_engine(self, adapter: str | None) -> Engine:
        from tinyforge.generate.engines import choose_backend, make_engine

        c = self.config
        spread = {"replicas": c.replicas, "tensor_parallel": c.tensor_parallel}
        if choose_backend(c.backend) == "vllm":
            # One vLLM for the whole run (or one per replica), adapters swapped in per request
            # (``with_adapter``); it takes part of the GPU so that training fits beside it.
            return make_engine(
                c.model,
                "vllm",
                dtype=c.dtype,
                enable_lora=True,
                gpu_memory_utilization=c.gpu_memory,
                **spread,
            )
        return make_engine(
            c.model, c.backend, adapter=adapter, dtype=c.dtype, batch_size=c.batch_size, **spread
        )

    def train(
        self,
        examples: list[tuple[Prompt, str]],
        out: Path,
        config: LoraConfig,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """A LoRA on ``examples`` into ``out/adapter`` (``train_lora``; in ``train_processes`` processes
        when the config asks for more than one); what ``out/train.json`` holds."""
        n = self.config.train_processes
        if n == 1:
            return train_lora(self.config.model, examples, out, config, progress=progress or self.progress)
        how = ", the model sharded (FSDP)" if self.config.train_fsdp else ""
        self.log(f"training in {n} processes{how} (log: {out / 'train.log'})")
        try:
            return launch_training(
                self.config.model,
                examples,
                out,
                config,
                processes=n,
                fsdp=self.config.train_fsdp,
                progress=progress or self.progress,
            )
        except RuntimeError as e:
            raise RecipeError(str(e)) from None

    def cached(self, adapter: Path | None) -> CachedEngine:
        """``engine(adapter)`` behind the run's generation cache."""
        return CachedEngine(self.engine(adapter), self.cache)

    def engine(self, adapter: Path | None) -> Engine:
        """The model with ``adapter`` (None: the base). The base model stays loaded;
        a model with an adapter is a view of it where the back-end can swap adapters (vLLM), else its own
        engine, replacing the previous one."""
        if self._base is None:
            self.log(f"loading {self.config.model}")
            self._base = self._factory(None)
        engine = self._base
        if adapter is not None:
            key = str(adapter)
            if self._base.swaps_adapters:
                engine = self._base.with_adapter(adapter)
            else:
                if self._tuned is None or self._tuned[0] != key:
                    self._drop_tuned()
                    self.log(f"loading {self.config.model} with adapter {adapter}")
                    self._tuned = (key, self._factory(key))
                engine = self._tuned[1]
        return engine

    def eval_dir(self, label: str, bench: str, fmt: str) -> Path:
        """Where the eval ``label`` of ``bench`` in prompt format ``fmt`` is (``RUN/eval/LABEL-BENCH-FORMAT``)."""
        return self.root / "eval" / f"{label}-{bench}-{fmt}"

    def complete(
        self,
        adapter: Path | None,
        requests: Sequence[GenerationRequest],
        params: SamplingParams,
        label: str,
        on_each: Callable[[int, Completion], None] | None = None,
    ) -> tuple[list[Completion], dict[str, int]]:
        """Completions of ``requests`` (in order) from the model with ``adapter``, through the run's cache,
        with a progress bar; ``on_each(position, completion)`` runs as each one arrives. Returns them and the
        counts generated / from_cache; a ``RecipeError`` when the engine leaves any out."""
        engine = self.cached(adapter)
        out: list[Completion | None] = [None] * len(requests)
        bar = self.progress(label, len(requests)) if self.progress else None
        for pos, c in engine.run(list(requests), params):
            out[pos] = c
            if on_each is not None:
                on_each(pos, c)
            if bar:
                bar(1)
        done = [c for c in out if c is not None]
        if len(done) != len(requests):
            raise RecipeError(f"{label}: the engine returned {len(done)} of {len(requests)} completions")
        return done, {"generated": engine.misses, "from_cache": engine.hits}

    def _drop_tuned(self) -> None:
        if self._tuned is not None:
            _close(self._tuned[1])
            self._tuned = None

    def close(self) -> None:
        self._drop_tuned()
        if self._base is not None:
            _close(self._base)
            self._base = None
        self.pool.close()
        self.cache.close()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Times a stage and records it in state.json (the first completed run of it keeps its time)."""
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        yield info
        prev = self.state["stages"].get(name, {})
        info["wall_s"] = prev.get("wall_s", round(time.perf_counter() - t0, 2))
        self.state["stages"][name] = info
        write_json(self.root / "state.json", self.state)


def _close(engine: Engine) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        close()
    free_memory()


def _round_seed(seed: int, rnd: int) -> int:
    return seed if rnd == 1 else seed * 1000 + rnd


def make_problems(run: Run, rnd: int, adapter: Path | None, earlier: list[Problem]) -> list[Problem]:
    """Round ``rnd``'s problems (``problems.jsonl``): generated by the model (with ``adapter``), parsed,
    verified in the sandbox, deduplicated against each other and against ``earlier`` rounds' problems;
    or taken from the seeded benchmark. Rejections go to ``rejections.jsonl``."""
    c, folder = run.config, run.root / f"round-{rnd}"
    out = folder / "problems.jsonl"
    if out.is_file():
        return [Problem.from_record(r) for r in read_jsonl(out)]
    folder.mkdir(parents=True, exist_ok=True)
    with run.stage(f"round-{rnd}/problems") as info:
        if c.seeded:
            from tinyforge.mine.seeded import seeded_problems

            tasks = load_benchmark(c.seeded, run.data_dir)
            random.Random(_round_seed(c.seed, rnd)).shuffle(tasks)
            pool = seeded_problems(tasks, source=f"seeded:{c.seeded}")
            seen = {p.id for p in earlier}
            problems = [p for p in pool if p.id not in seen][: c.problems]
            write_jsonl(folder / "rejections.jsonl", [])
            info.update(source=c.seeded, kept=len(problems))
        else:
            fmt = resolve_format(c.problem.format, run.engine(adapter))
            engine = run.cached(adapter)
            n = math.ceil(c.problems * c.problem.samples_per_problem)
            params = SamplingParams(
                n=n,
                temperature=c.problem.temperature,
                top_p=c.problem.top_p,
                max_new_tokens=c.problem.max_new_tokens,
                seed=_round_seed(c.seed, rnd),
            )
            prompt = problem_prompt("chat" if fmt != "raw" else "raw")
            requests = [GenerationRequest(prompt, i) for i in range(n)]
            texts: list[str] = [""] * n
            bar = run.progress(f"round {rnd}: write problems", n) if run.progress else None
            for pos, comp in engine.run(requests, params):
                texts[pos] = comp.text
                if bar:
                    bar(1)
            meta = {"model": c.model, "seed": params.seed, "round": rnd, "format": fmt}
            parsed = [
                parse_problem(t, c.problem.min_tests, {**meta, "index": i}) for i, t in enumerate(texts)
            ]
            candidates = [p for p in parsed if isinstance(p, Problem)]
            verified = verify_problems(candidates, run.pool, c.problem.timeout)
            rejected: list[tuple[int, Rejection]] = [
                (i, r) for i, r in enumerate(parsed) if isinstance(r, Rejection)
            ]
            good = []
            for p, v in zip(candidates, verified, strict=True):
                if isinstance(v, Rejection):
                    rejected.append((p.meta["index"], v))
                else:
                    good.append(p)
            # Earlier rounds' problems go first, so a new problem like one of them is the one dropped.
            kept, dropped = dedupe([*earlier, *good], c.problem.near_duplicate)
            kept = [p for p in kept if p.meta.get("round") == rnd]
            rejected += [(p.meta["index"], Rejection("duplicate", twin)) for p, twin in dropped]
            problems = kept[: c.problems]
            reasons: dict[str, int] = {}
            for _, r in rejected:
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
            write_jsonl(
                folder / "rejections.jsonl",
                [
                    {"index": i, "reason": r.reason, "detail": r.detail, "output": texts[i]}
                    for i, r in sorted(rejected, key=lambda x: x[0])
                ],
            )
            info.update(
                format=fmt,
                samples=n,
                parsed=len(candidates),
                verified=len(good),
                kept=len(problems),
                rejected=reasons,
            )
    write_jsonl(out, [p.record() for p in problems])  # after state.json: a file that is there has its stats
    return problems


def solve_problems(run: Run, rnd: int, adapter: Path | None, problems: list[Problem]) -> list[Attempt]:
    """Round ``rnd``'s attempts (``attempts.jsonl``, appended as verdicts arrive; a resumed run keeps them)."""
    c, folder = run.config, run.root / f"round-{rnd}"
    out, done_mark = folder / "attempts.jsonl", folder / ".attempts.done"
    ids = {p.id for p in problems}
    have = {}
    for rec in _read_appended(out):
        a = Attempt.from_record(rec)
        if a.problem_id in ids and a.index < c.solve.k:
            have[(a.problem_id, a.index)] = a
    if done_mark.is_file():
        return sorted(have.values(), key=lambda a: (a.problem_id, a.index))
    with run.stage(f"round-{rnd}/solve") as info:
        fmt = resolve_format(c.solve.format, run.engine(adapter))
        engine = run.cached(adapter)
        params = SamplingParams(
            n=c.solve.k,
            temperature=c.solve.temperature,
            top_p=c.solve.top_p,
            max_new_tokens=c.solve.max_new_tokens,
            seed=_round_seed(c.seed, rnd),
        )
        total = len(problems) * c.solve.k
        bar = run.progress(f"round {rnd}: solve", total) if run.progress else None
        if bar and have:
            bar(len(have))
        with out.open("a", encoding="utf-8") as f:
            for a in solve(
                problems, engine, params, run.pool, fmt, timeout=c.solve.timeout, done=have, progress=bar
            ):
                f.write(json.dumps(a.record(), ensure_ascii=False) + "\n")
                f.flush()
                have[(a.problem_id, a.index)] = a
        attempts = sorted(have.values(), key=lambda a: (a.problem_id, a.index))
        n_pass = sum(a.passed for a in attempts)
        info.update(
            format=fmt,
            attempts=len(attempts),
            passed=n_pass,
            pass_rate=n_pass / len(attempts) if attempts else 0.0,
        )
    done_mark.write_text("")
    return attempts


def mine(run: Run, rnd: int, problems: list[Problem], attempts: list[Attempt]) -> list[Pair]:
    """Round ``rnd``'s pairs (``pairs.jsonl``), a pure function of its problems and attempts."""
    c, folder = run.config, run.root / f"round-{rnd}"
    out = folder / "pairs.jsonl"
    if out.is_file():
        return [Pair.from_record(r) for r in read_jsonl(out)]
    with run.stage(f"round-{rnd}/mine") as info:
        by_problem: dict[str, list[Attempt]] = {}
        for a in attempts:
            by_problem.setdefault(a.problem_id, []).append(a)
        pairs: list[Pair] = []
        edge = all_pass = all_fail = 0
        for p in problems:
            got = by_problem.get(p.id, [])
            n_pass = sum(a.passed for a in got)
            all_pass += n_pass == len(got)
            all_fail += n_pass == 0
            edge += 0 < n_pass < len(got)
            meta = {"model": c.model, "seed": _round_seed(c.seed, rnd), "round": rnd}
            source = p.meta.get("source", "generated")
            for pair in mine_pairs(
                p, got, c.mine.mode, max_pairs=c.mine.max_pairs, near=c.mine.near_duplicate, meta=meta
            ):
                pairs.append(replace(pair, source=source))
        info.update(at_edge=edge, all_pass=all_pass, all_fail=all_fail, pairs=len(pairs))
    write_jsonl(out, [p.record() for p in pairs])
    return pairs


def train(run: Run, folder: Path, pairs: list[Pair], fmt: str, lora: LoraConfig | None = None) -> Path:
    """A fresh LoRA from the base on ``pairs`` (minus excluded classes), in ``folder/train``, with the run's
    training settings (or ``lora``)."""
    c = run.config
    chosen = select_pairs(pairs, c.mine.exclude)
    if not chosen:
        raise RecipeError(
            f"no pairs to train on in {folder.name} ({len(pairs)} mined, all excluded or none at the edge): "
            "ask for more problems or attempts"
        )
    examples = [(p.prompt(fmt), p.target(fmt)) for p in chosen]
    name, adapter = f"{folder.name}/train", folder / "train" / "adapter"
    if name in run.state["stages"] and (adapter / "adapter_config.json").is_file():
        return adapter  # finished, maybe on another machine (train.json says where and how)
    with run.stage(name) as info:
        res = run.train(examples, folder / "train", lora or c.train)
        info.update(
            examples=len(examples), format=fmt, **{k: res[k] for k in ("steps", "final_loss") if k in res}
        )
    return adapter


def eval_all(
    run: Run, label: str, adapter: Path | None, params: SamplingParams | None = None
) -> dict[str, Any]:
    """Scores of the model (with ``adapter``) on every configured benchmark and format in
    ``RUN/eval/LABEL-BENCH-FORMAT``: greedy, or sampled with ``params``."""
    c, results = run.config, {}
    params = params or SamplingParams(max_new_tokens=c.eval.max_new_tokens)
    for bench in c.eval.benches:
        for fmt in c.eval.formats:
            folder = run.eval_dir(label, bench, fmt)
            if (folder / "result.json").is_file():
                results[f"{bench}/{fmt}"] = json.loads((folder / "result.json").read_text())
                continue
            with run.stage(f"eval/{label}-{bench}-{fmt}") as info:
                engine = run.engine(adapter)
                summary = evaluate(
                    bench,
                    engine,
                    out_dir=folder,
                    fmt=fmt,
                    params=params,
                    limit=c.eval.limit,
                    cache_dir=run.root / "cache",
                    data_dir=run.data_dir,
                    pool=run.pool,
                    progress=(lambda lbl, n, label=label: run.progress(f"{label}: {lbl}", n))
                    if run.progress
                    else None,
                    meta={"label": label, "adapter": str(adapter.relative_to(run.root)) if adapter else None},
                )
                info.update(pass_at_1=summary["pass@1"], format=summary["format"])
            results[f"{bench}/{fmt}"] = summary
    return results


def task_verdicts(folder: Path) -> dict[str, bool]:
    """Task id -> solved, from an eval folder's samples: a task with several samples is solved when any one
    of them passes (oracle best-of-N)."""
    out: dict[str, bool] = {}
    for r in read_jsonl(folder / "samples.jsonl"):
        out[r["task_id"]] = out.get(r["task_id"], False) or bool(r["passed"])
    return out


def compare(run: Run, before: str, after: str) -> dict[str, Any]:
    """Per benchmark and format: pass@1 before and after with Wilson intervals, and a paired McNemar test."""
    c = run.config
    return {
        f"{bench}/{fmt}": paired_comparison(
            task_verdicts(run.eval_dir(before, bench, fmt)),
            task_verdicts(run.eval_dir(after, bench, fmt)),
        )
        for bench in c.eval.benches
        for fmt in c.eval.formats
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """A run's result as experiments and reports compare it: the base scores, each round and the control
    against the base (counts, Wilson intervals, McNemar)."""
    return {
        "before": result["before"],
        "rounds": [
            {"round": r["round"], "trained_on": r["trained_on"], "vs_before": r["vs_before"]}
            for r in result["rounds"]
        ],
        "control": (result.get("control") or {}).get("vs_before"),
    }


def control(run: Run, n_pairs: int, fmt: str) -> dict[str, Any]:
    """The control arm: ``n_pairs`` corrupted-MBPP-train pairs, trained and evaluated like round 1."""
    from tinyforge.mine.control import control_pairs

    c, folder = run.config, run.root / "control"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "pairs.jsonl"
    if out.is_file():
        pairs = [Pair.from_record(r) for r in read_jsonl(out)]
    else:
        with run.stage("control/pairs") as info:
            tasks = load_benchmark("mbpp-train", run.data_dir)
            pairs, stats = control_pairs(tasks, run.pool, n_pairs=n_pairs, seed=c.seed)
            info.update({k: v for k, v in stats.items() if isinstance(v, (int, float))}, pairs=len(pairs))
        write_jsonl(out, [p.record() for p in pairs])
    adapter = train(run, folder, pairs, fmt)
    eval_all(run, "control", adapter)
    return {"pairs": pair_stats(pairs), "vs_before": compare(run, "before", "control")}


# Settings that only add work to a finished run: more rounds, the control arm. A run may be continued with
# them changed; every other setting decides what the existing records are, so it must match.
_EXTENDING = ("rounds", "control")


MACHINE_SETTINGS = ("workers", "gpu_memory", "replicas", "tensor_parallel", "train_processes", "train_fsdp")


def check_settings(root: Path, config: RunConfig, extending: Sequence[str] = ()) -> None:
    """A new run folder ``root`` gets ``config.json``; an existing one must hold the same settings, except
    the ``extending`` ones (settings that only add work), whose numbers may only grow. Else a one-line
    ``RecipeError``."""
    path, new = root / "config.json", config.model_dump(mode="json")
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_json(path, new)
        return
    written, full = json.loads(path.read_text()), new
    # How the work is spread, not what it is: a run may move to another machine.
    old, new = ({k: v for k, v in d.items() if k not in MACHINE_SETTINGS} for d in (written, full))
    fixed_old = {k: v for k, v in old.items() if k not in extending}
    fixed_new = {k: v for k, v in new.items() if k not in extending}
    shrunk = [
        k
        for k in extending
        if isinstance(new.get(k), int) and not isinstance(new[k], bool) and new[k] < old.get(k, new[k])
    ]
    if fixed_old != fixed_new or shrunk:
        more = f" ({' and '.join(f'more --{k}' for k in extending)} may be added)" if extending else ""
        raise RecipeError(
            f"{root} holds a run with other settings ({_first_diff(old, new)}): rerun with the same settings "
            f"to resume{more}, or give another --out"
        )
    if written != full:
        write_json(path, full)


def _first_diff(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_diff(old.get(k), new.get(k), f"{where}.{k}" if where else k)
    return f"{where}: {old!r} -> {new!r}"


def bootstrap(
    config: RecipeConfig,
    run_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    log: Log = lambda _: None,
    engine_factory: Callable[[str | None], Engine] | None = None,
    stop_after: str = "eval",
    run: Run | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole recipe in ``run_dir``; returns what ``RUN/result.json`` holds.

    ``stop_after`` ends the run after that stage (``STAGES``); running again with a later one goes on.
    ``engine_factory(adapter_path_or_None)`` overrides how models are loaded (default: ``make_engine``
    with the config's model, back-end, dtype and batch size). ``run``: an open ``Run`` of this folder and
    config to work in (its engine stays loaded for the caller, who closes it); by default one is opened
    and closed here."""
    root = Path(run_dir)
    if stop_after not in STAGES:
        raise RecipeError(f"unknown stage {stop_after!r}; known: {', '.join(STAGES)}")
    check_settings(root, config, _EXTENDING)
    t0 = time.perf_counter()
    own = run is None
    if run is None:
        run = Run(config, root, data_dir=data_dir, progress=progress, log=log, engine_factory=engine_factory)
    last = STAGES.index(stop_after)
    before: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    ctrl = None
    try:
        problems_so_far: list[Problem] = []
        pairs_so_far: list[Pair] = []
        adapter: Path | None = None
        for rnd in range(1, config.rounds + 1):
            problems = make_problems(run, rnd, adapter, problems_so_far)
            if last < STAGES.index("solve"):
                break
            attempts = solve_problems(run, rnd, adapter, problems)
            if last < STAGES.index("mine"):
                break
            pairs = mine(run, rnd, problems, attempts)
            if last < STAGES.index("train"):
                break
            problems_so_far += problems
            pairs_so_far += pairs
            if rnd == 1:  # the base model is still loaded from solving: score it now
                before = eval_all(run, "before", None)
            train_fmt = run.state["stages"]["round-1/solve"]["format"]
            folder = root / f"round-{rnd}"
            adapter = train(run, folder, pairs_so_far, train_fmt)
            if last < STAGES.index("eval"):
                break
            scores = eval_all(run, f"round-{rnd}", adapter)
            rounds.append(
                {
                    "round": rnd,
                    "stages": {k: v for k, v in run.state["stages"].items() if k.startswith(f"round-{rnd}/")},
                    "pairs": pair_stats(pairs),
                    "pairs_cumulative": len(pairs_so_far),
                    "trained_on": len(select_pairs(pairs_so_far, config.mine.exclude)),
                    "scores": {k: v["pass@1"] for k, v in scores.items()},
                    "vs_before": compare(run, "before", f"round-{rnd}"),
                    "adapter": str(adapter.relative_to(root)),
                }
            )
        if config.control and rounds:
            ctrl = control(run, rounds[0]["trained_on"], run.state["stages"]["round-1/solve"]["format"])
    finally:
        if own:
            run.close()
    result = {
        "tinyforge": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": config.model,
        "settings": config.model_dump(mode="json"),
        "complete": stop_after == "eval",
        "before": {k: v["pass@1"] for k, v in before.items()},
        "rounds": rounds,
        "control": ctrl,
        "stages": run.state["stages"],
        "wall_s_this_invocation": round(time.perf_counter() - t0, 1),
    }
    write_json(root / "result.json", result)
    (root / "report.md").write_text(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    """A short Markdown report of a run's result."""
    lines = [
        f"# tinyforge bootstrap: {result['model']}",
        "",
        f"tinyforge {result['tinyforge']}, {result['date']}, seed {result['settings']['seed']}.",
        "",
    ]
    for r in result["rounds"]:
        st = r["stages"]
        prob = st.get(f"round-{r['round']}/problems", {})
        solve_ = st.get(f"round-{r['round']}/solve", {})
        mined = st.get(f"round-{r['round']}/mine", {})
        lines += [
            f"## Round {r['round']}",
            "",
            f"- problems: {prob.get('kept', '?')} kept of {prob.get('samples', prob.get('kept', '?'))} drawn"
            + (f" (rejected: {prob['rejected']})" if prob.get("rejected") else ""),
            f"- attempts: {solve_.get('attempts', '?')}, passing {solve_.get('passed', '?')}",
            f"- at the edge: {mined.get('at_edge', '?')} problems (all pass {mined.get('all_pass', '?')}, all fail {mined.get('all_fail', '?')})",
            f"- pairs: {r['pairs']['pairs']} mined, format-only {r['pairs']['format_only']}; trained on {r['trained_on']} (cumulative)",
            "- pair classes: "
            + ", ".join(f"{k} {v['n']}" for k, v in r["pairs"]["by_class"].items() if v["n"]),
            "",
            "| benchmark/format | before | after | delta | McNemar p |",
            "|---|---|---|---|---|",
        ]
        for k, v in r["vs_before"].items():
            lines.append(
                f"| {k} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} | {v['delta']:+.1%} | {v['mcnemar']['p_value']:.3f} |"
            )
        lines.append("")
    if result.get("control"):
        lines += [
            "## Control (corrupted MBPP-train pairs)",
            "",
            "| benchmark/format | before | control | delta | McNemar p |",
            "|---|---|---|---|---|",
        ]
        for k, v in result["control"]["vs_before"].items():
            lines.append(
                f"| {k} | {v['before']}/{v['tasks']} | {v['after']}/{v['tasks']} | {v['delta']:+.1%} | {v['mcnemar']['p_value']:.3f} |"
            )
        lines.append("")
    lines += ["## Time per stage (s)", ""] + [
        f"- {k}: {v.get('wall_s')}" for k, v in result["stages"].items()
    ]
    return "\n".join(lines) + "\n"
