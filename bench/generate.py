"""Generation speed on one GPU: bare vLLM, tinyforge's vLLM engine and whole eval, plain transformers.

The work is HumanEval in each prompt format of ``--format`` (default ``auto``: the one ``tinyforge eval``
picks for the model, chat for an instruct model with a chat template; ``--format chat,raw`` runs both;
prompts ``prompts.task_prompt``, stops ``prompts.task_stops``, as the eval makes them), ``--n`` samples per
task (default 8) at ``--temperature`` (0.8), up to ``--max-tokens`` (512) each, with
Qwen2.5-Coder-0.5B-Instruct (the embedded GGUF, converted once to a bf16 transformers folder by
``hf_folder``; or ``--model``). The vLLM rows run for every format, on the token ids ``VLLMEngine`` sends
(a chat rendered by the model's chat template); the transformers rows for the first format only. Rows:

* bare vLLM, ``LLM.generate`` with ``SamplingParams(n=8)``: the reference, what vLLM does alone;
* bare vLLM with per-sample seeds: the same samples as 8 requests of ``n=1``, each seeded with tinyforge's
  ``sample_key`` (as ``VLLMEngine`` does): the cost of reproducible samples (vLLM draws seeded noise row by
  row);
* tinyforge ``VLLMEngine.generate``: the engine alone (rendering, token prompts, streaming, decoding);
* tinyforge eval, ``tinyforge.evaluate.run.evaluate``: generation, sanitizing and sandboxed verification
  end to end, with a fresh cache (nothing served from it). Its tokens are counted as they pass, and the
  notes say when the first and the last completion arrived (the rest is verification after generation),
  and ``timeline`` lists the last sandbox jobs to finish (sent, done, verdict, run time). Run three times:
  verifying finished functions ahead of their completions (``verify_ahead``, the default), without it, and
  with it again; then bare vLLM once more (how much the same work moves between runs). ``--pairs P`` adds
  P-2 more (eval, bare vLLM) pairs, and the report gives each pair's ratio, their median and the median eval
  over the median bare run (one run's ratio moves by ~10 % on the same machine);
* transformers ``generate`` in batches of 8 (and 256) on the first prompts: a plain sampling loop
  (left padding, the same stop strings);
* tinyforge ``HFEngine`` (GPU defaults: bf16, batch 256, static cache + torch.compile), cold (compiling)
  and warm.

Wall times exclude model loading and vLLM's start (reported apart) and follow one short warm-up request.
vLLM's prefix cache is reset before each vLLM row. tok/s = generated tokens / wall seconds; vLLM's own
counts include the end-of-sequence token, tinyforge's do not. Each group of rows runs in its own
subprocess (one model load each; vLLM's memory is only really freed when its process ends), and a failed
part is reported while the others still run. The model is converted before any timing.

    .venv/bin/python bench/generate.py [--quick] [--model SPEC] [--format auto|raw|chat[,...]] [--json OUT]
        [--parts vllm,hf-generate,hf-engine]

Needs a CUDA GPU, torch and transformers; vLLM for the vLLM rows. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchutil import git_commit, log, parse_args, run_part, version

from tinyforge.data import load_benchmark
from tinyforge.generate import prompts
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Peek, Prompt, SamplingParams
from tinyforge.generate.models import ModelRef, hf_folder, resolve_model

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
PARTS = ("vllm", "hf-generate", "hf-engine")
BENCH = "humaneval"
# How the shared tools' notes say to run vLLM on the GPU machine; set for the parts unless already set.
VLLM_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}


def _row(what: str, wall: float, tokens: int, samples: int, notes: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "what": what,
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "samples": samples,
        "tok_s": round(tokens / wall, 1) if wall > 0 else None,
        "notes": notes,
        **extra,
    }


def _device() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"device": "no CUDA device"}
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "device_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def _prompts(cfg: dict[str, Any], fmt: str, count: int | None = None) -> list[Prompt]:
    """The eval's prompts in format ``fmt`` for the first ``count`` tasks (default: ``--limit``)."""
    tasks = load_benchmark(BENCH)
    limit = cfg["limit"] if count is None else count
    return [prompts.task_prompt(t, fmt) for t in tasks[:limit]]


def _params(cfg: dict[str, Any], fmt: str) -> SamplingParams:
    return SamplingParams(
        n=cfg["n"],
        temperature=cfg["temperature"],
        top_p=cfg["top_p"],
        max_new_tokens=cfg["max_tokens"],
        stop=tuple(prompts.task_stops(load_benchmark(BENCH)[0], fmt)),
        seed=cfg["seed"],
    )


class Watched(Engine):
    """Passes work to ``inner``, counting samples and generated tokens and noting when the first and the last
    completion passed (``time.perf_counter``). Other attributes are the inner engine's."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.samples = self.tokens = 0
        self.first: float | None = None
        self.last: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def render(self, prompt: Prompt) -> str:
        return self.inner.render(prompt)

    def key(self) -> dict[str, Any]:
        return self.inner.key()

    @property
    def peeks(self) -> bool:  # type: ignore[override]
        return self.inner.peeks

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        return self._watched(self.inner.run(requests, params))

    def run_peeking(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek
    ) -> Iterator[tuple[int, Completion]]:
        return self._watched(self.inner.run_peeking(requests, params, peek))

    def _watched(self, made: Iterator[tuple[int, Completion]]) -> Iterator[tuple[int, Completion]]:
        for pos, c in made:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.samples += 1
            self.tokens += c.completion_tokens
            yield pos, c


class TimedPool:
    """A sandbox pool that notes when each job was sent and answered, and its verdict (the eval's timeline).
    Other attributes are the inner pool's."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.jobs = pool, []
        self.task_of = {t.test: t.task_id for t in load_benchmark(BENCH)}  # a job's tests -> its task

    def __getattr__(self, name: str) -> Any:
        if name == "pool":
            raise AttributeError(name)
        return getattr(self.pool, name)

    def __enter__(self) -> TimedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()

    def submit(self, job: Any) -> Any:
        rec: dict[str, Any] = {
            "sent": time.perf_counter(),
            "task": self.task_of.get(getattr(job, "tests", None)),
        }
        self.jobs.append(rec)
        future = self.pool.submit(job)

        def done(f: Any) -> None:
            rec["done"] = time.perf_counter()
            try:
                v = f.result()
                rec.update(status=v.status, duration=round(v.duration, 3))
            except Exception as e:  # the pool closed under it
                rec["status"] = type(e).__name__

        future.add_done_callback(done)
        return future

    def timeline(self, t0: float, last_completion: float, count: int = 8) -> dict[str, Any]:
        """The jobs still running after the last completion, and the ``count`` last to finish."""
        ended = sorted((j for j in self.jobs if "done" in j), key=lambda j: j["done"])
        late = [j for j in ended if j["done"] > last_completion]

        def rel(j: dict[str, Any]) -> dict[str, Any]:
            return {**j, "sent": round(j["sent"] - t0, 3), "done": round(j["done"] - t0, 3)}

        return {
            "jobs": len(self.jobs),
            "done_after_generation": len(late),
            "last": [rel(j) for j in ended[-count:]],
        }


def watch(engine: Engine) -> Watched:
    """``Watched(engine)`` under the inner engine's class name, which the eval records as the back-end."""
    return type(type(engine).__name__, (Watched,), {})(engine)


def _pass_at(summary: Any) -> str:
    """``pass@k=...`` for the pass@k numbers found anywhere in an eval summary (its shape is the eval's)."""
    found: dict[str, Any] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, str) and k.startswith("pass@") and isinstance(v, int | float):
                    found.setdefault(k, v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(summary)
    return ", ".join(f"{k}={v:.3f}" for k, v in sorted(found.items(), key=lambda kv: kv[0]))


# --- the parts (each in its own process) ------------------------------------------------------------------


def part_vllm(cfg: dict[str, Any], out: dict[str, Any]) -> None:
    """For each format: bare vLLM (n=8, then per-sample seeds), VLLMEngine.generate and the whole eval (three
    times), then bare vLLM again, on one vLLM instance."""
    import vllm

    from tinyforge.generate.vllm_engine import VLLMEngine

    out.update(_device(), vllm=vllm.__version__)
    ref = ModelRef(**cfg["ref"])
    start = time.perf_counter()
    engine = VLLMEngine(
        ref, gpu_memory_utilization=cfg["gpu_memory_utilization"], max_model_len=cfg["max_model_len"]
    )
    llm = engine.llm
    out["start_s"] = round(time.perf_counter() - start, 1)
    log(f"vLLM started in {out['start_s']} s")
    llm.generate(
        [{"prompt_token_ids": engine.encode("def f():")}] * 2,
        vllm.SamplingParams(max_tokens=8),
        use_tqdm=False,
    )
    for fmt in cfg["formats"]:
        _vllm_rows(cfg, out, fmt, engine)
    engine.close()


def _vllm_rows(cfg: dict[str, Any], out: dict[str, Any], fmt: str, engine: Any) -> None:
    """The vLLM rows of one prompt format, on ``engine`` (a started VLLMEngine) and its ``LLM``."""
    import vllm

    from tinyforge.generate.hf import sample_key

    llm = engine.llm
    todo = _prompts(cfg, fmt)
    params = _params(cfg, fmt)
    # What VLLMEngine sends: the token ids of the rendered prompt (a chat through the chat template).
    ids = [engine.encode(p) for p in todo]
    n = params.n
    samples = len(todo) * n

    def vparams(**kw: Any) -> Any:
        return vllm.SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            **kw,
        )

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        log(f"{name} ({fmt})")
        llm.reset_prefix_cache()
        try:
            out["rows"].append({**fn(), "format": fmt})
        except Exception:
            out["errors"].append(f"{name} ({fmt}): {traceback.format_exc(limit=4)}")

    def bare() -> dict[str, Any]:
        t = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": x} for x in ids], vparams(n=n), use_tqdm=False)
        wall = time.perf_counter() - t
        tokens = sum(len(o.token_ids) for r in res for o in r.outputs)
        return _row(f"bare vLLM: LLM.generate, n={n}", wall, tokens, samples, key="bare")

    def bare_seeded() -> dict[str, Any]:
        reqs = [(p, x, i) for p, x in zip(todo, ids, strict=True) for i in range(n)]
        sps = [vparams(n=1, seed=sample_key(params.seed, engine.render(p), i)) for p, _, i in reqs]
        t = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": x} for _, x, _ in reqs], sps, use_tqdm=False)
        wall = time.perf_counter() - t
        tokens = sum(len(o.token_ids) for r in res for o in r.outputs)
        return _row("bare vLLM: per-sample seeds (n=1 each)", wall, tokens, samples, key="bare_seeded")

    def engine_generate() -> dict[str, Any]:
        watched = watch(engine)
        t = time.perf_counter()
        watched.generate(todo, params)
        wall = time.perf_counter() - t
        first = (watched.first or t) - t
        return _row(
            "tinyforge VLLMEngine.generate",
            wall,
            watched.tokens,
            watched.samples,
            f"first completion after {first:.1f} s",
            key="engine",
        )

    def whole_eval(ahead: bool = True, key: str = "eval", what: str = "") -> dict[str, Any]:
        from tinyforge.evaluate.run import eval_pool, evaluate
        from tinyforge.evaluate.score import read_samples

        watched = watch(engine)
        with tempfile.TemporaryDirectory(prefix="tinyforge-bench-") as tmp:
            t = time.perf_counter()
            with TimedPool(eval_pool()) as pool:  # what evaluate makes when given none, watched
                summary = evaluate(
                    BENCH,
                    watched,
                    out_dir=Path(tmp) / "out",
                    fmt=fmt,
                    params=params,
                    limit=cfg["limit"],
                    cache_dir=Path(tmp) / "cache",
                    pool=pool,
                    verify_ahead=ahead,
                )
            wall = time.perf_counter() - t
            timeouts = [  # what sets the tail, when a program runs into the benchmark's time limit late
                {k: x.get(k) for k in ("task_id", "index", "finish_reason", "completion_tokens", "output")}
                for x in read_samples(Path(tmp) / "out" / "samples.jsonl")
                if x.get("status") == "timeout"
            ]
        first, last = ((x or t) - t for x in (watched.first, watched.last))
        notes = f"{_pass_at(summary)}; completions from {first:.1f} s to {last:.1f} s".lstrip("; ")
        return _row(
            "tinyforge eval (generate + sanitize + verify)" + what,
            wall,
            watched.tokens,
            watched.samples,
            notes,
            key=key,
            generation_done_s=round(last, 3),
            timeline=pool.timeline(t, t + last),
            timeouts=timeouts,
            summary=summary,
        )

    timed("bare vLLM", bare)
    timed("bare vLLM, per-sample seeds", bare_seeded)
    timed("VLLMEngine.generate", engine_generate)
    timed("tinyforge eval", whole_eval)
    timed(
        "tinyforge eval, without verifying ahead", lambda: whole_eval(False, "eval_no_ahead", ", not ahead")
    )
    timed("tinyforge eval, again", lambda: whole_eval(True, "eval_again", ", again"))
    timed(
        "bare vLLM, again",
        lambda: {**bare(), "key": "bare_again", "what": f"bare vLLM: LLM.generate, n={n}, again"},
    )
    for k in range(3, cfg.get("pairs", 2) + 1):  # more (eval, bare) pairs: single runs vary by ~10 %
        timed(f"tinyforge eval, pair {k}", lambda k=k: whole_eval(True, f"eval_{k}", f", pair {k}"))
        timed(
            f"bare vLLM, pair {k}",
            lambda k=k: {**bare(), "key": f"bare_{k}", "what": f"bare vLLM: LLM.generate, n={n}, pair {k}"},
        )


def part_hf_generate(cfg: dict[str, Any], out: dict[str, Any]) -> None:
    """A plain transformers sampling loop, batches of each ``--hf-batch`` size, in the first format (a chat
    rendered by the chat template, as the engines do)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.update(_device(), transformers=version("transformers"))
    fmt = cfg["formats"][0]
    n, stops = cfg["n"], list(_params(cfg, fmt).stop)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(cfg["folder"])
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg["folder"], dtype=torch.bfloat16).to("cuda").eval()
    out["start_s"] = round(time.perf_counter() - start, 1)
    eos = model.generation_config.eos_token_id
    ends = {tok.eos_token_id, tok.pad_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    sample = cfg["temperature"] > 0
    kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": cfg["max_tokens"]}
    if sample:
        kwargs.update(temperature=cfg["temperature"], top_p=cfg["top_p"], top_k=0)

    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tok)

    def text(p: Prompt) -> str:
        return (
            p
            if isinstance(p, str)
            else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        )

    @torch.inference_mode()
    def generate(batch: list[str], **kw: Any) -> int:
        # A rendered chat holds its special tokens already; raw text gets the usual ones.
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=fmt == "raw").to("cuda")
        gen = model.generate(**enc, pad_token_id=tok.pad_token_id, **kw)
        tokens = 0
        for row in gen[:, enc.input_ids.shape[1] :].tolist():
            tokens += next((k for k, t in enumerate(row) if t in ends), len(row))
        return tokens

    generate([text(p) for p in _prompts(cfg, fmt, 2)], **{**kwargs, "max_new_tokens": 8})  # warm-up
    for size in cfg["hf_batches"]:
        rows = max(cfg["hf_rows"], size)
        texts = [text(p) for p in _prompts(cfg, fmt, math.ceil(rows / n)) for _ in range(n)][:rows]
        log(f"transformers generate, batch {size}, {rows} rows")
        try:
            torch.manual_seed(cfg["seed"])
            t = time.perf_counter()
            tokens = sum(generate(texts[k : k + size], **kwargs) for k in range(0, rows, size))
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
            note = f"first {math.ceil(rows / n)} prompts x {n}"
            out["rows"].append(
                _row(
                    f"transformers generate, batch {size}",
                    wall,
                    tokens,
                    rows,
                    note,
                    key=f"hf_b{size}",
                    format=fmt,
                )
            )
        except Exception:
            out["errors"].append(f"transformers batch {size}: {traceback.format_exc(limit=4)}")


def part_hf_engine(cfg: dict[str, Any], out: dict[str, Any]) -> None:
    """tinyforge's HFEngine with its GPU defaults, cold (compiling) then warm, in the first format."""
    from tinyforge.generate.hf import HFEngine

    out.update(_device(), transformers=version("transformers"))
    n, rows = cfg["n"], cfg["hf_engine_rows"]
    start = time.perf_counter()
    engine = HFEngine(resolve_model(cfg["folder"]))
    out["start_s"] = round(time.perf_counter() - start, 1)
    fmt = cfg["formats"][0]
    texts = _prompts(cfg, fmt, math.ceil(rows / n))
    reqs = [GenerationRequest(t, i) for t in texts for i in range(n)][:rows]
    params = _params(cfg, fmt)
    for run in ("cold", "warm")[: cfg["hf_engine_runs"]]:
        log(f"HFEngine, {run}, {rows} rows")
        try:
            t = time.perf_counter()
            done = [c for _, c in engine.run(reqs, params)]
            wall = time.perf_counter() - t
            note = f"batch {engine.batch_size}, compile {engine.compile}, {run}; first {len(texts)} prompts x {n}"
            tokens = sum(c.completion_tokens for c in done)
            out["rows"].append(
                _row(
                    f"tinyforge HFEngine ({run})",
                    wall,
                    tokens,
                    len(done),
                    note,
                    key=f"hfengine_{run}",
                    format=fmt,
                )
            )
        except Exception:
            out["errors"].append(f"HFEngine {run}: {traceback.format_exc(limit=4)}")


PART_FUNCS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "vllm": part_vllm,
    "hf-generate": part_hf_generate,
    "hf-engine": part_hf_engine,
}


# --- the report ------------------------------------------------------------------------------------------


def print_report(meta: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = [r for p in parts.values() for r in p["rows"]]
    print(f"# Generation benchmark, {meta['date']}")
    print(f"command: {meta['command']}")
    print(f"model: {meta['model']} (sha256 {meta['model_sha256']}), folder {meta['folder']}")
    print(
        f"work: {meta['bench']} ({', '.join(meta['formats'])}), {meta['tasks']} tasks x n={meta['n']}, "
        f"T={meta['temperature']}, "
        f"top_p={meta['top_p']}, max {meta['max_tokens']} tokens; tinyforge {meta['git']}"
    )
    for name, p in parts.items():
        extra = ", ".join(f"{k} {p[k]}" for k in ("torch", "cuda", "vllm", "transformers") if k in p)
        start = f", model load/start {p['start_s']} s" if "start_s" in p else ""
        print(f"part {name}: {p.get('device', '?')}{start}; {extra}")
    head = ["what", "format", "samples", "wall s", "gen tokens", "tok/s", "notes"]
    lines = [
        [
            r["what"],
            r.get("format", ""),
            str(r["samples"]),
            f"{r['wall_s']:.1f}",
            str(r["tokens"]),
            f"{r['tok_s'] or 0:.0f}",
            r["notes"],
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = " | ".join(f"{{:{'<' if i in (0, 1, 6) else '>'}{w}}}" for i, w in enumerate(widths))
    print()
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for ln in lines:
        print(fmt.format(*ln))
    by = {(r.get("format"), r.get("key")): r for r in rows}
    ratios: dict[str, float] = {}
    print()
    for form in meta["formats"]:
        for num, den, label in (
            ("eval", "bare", "eval / bare vLLM (goal <= 1.2)"),
            ("eval", "bare_seeded", "eval / bare vLLM with per-sample seeds"),
            ("eval_again", "bare_again", "eval, again / bare vLLM, again"),
            ("eval_no_ahead", "bare", "eval without verifying ahead / bare vLLM"),
            ("engine", "bare", "VLLMEngine.generate / bare vLLM"),
            ("bare_seeded", "bare", "per-sample seeds / bare vLLM"),
        ):
            a, b = by.get((form, num)), by.get((form, den))
            if a and b and b["wall_s"] > 0:
                ratios[f"{form}: {label}"] = x = round(a["wall_s"] / b["wall_s"], 3)
                print(f"{form}: {label}: {x:.2f}x")
        pairs = [("eval", "bare"), ("eval_again", "bare_again")]
        pairs += [(f"eval_{k}", f"bare_{k}") for k in range(3, meta["config"].get("pairs", 2) + 1)]
        got = [
            (by[(form, e)]["wall_s"], by[(form, b)]["wall_s"])
            for e, b in pairs
            if (form, e) in by and (form, b) in by and by[(form, b)]["wall_s"] > 0
        ]
        if len(got) > 1:
            each = sorted(e / b for e, b in got)
            mid = statistics.median(e for e, _ in got) / statistics.median(b for _, b in got)
            ratios[f"{form}: median eval / median bare vLLM, {len(got)} pairs"] = round(mid, 3)
            print(
                f"{form}: eval / bare vLLM over {len(got)} pairs: {', '.join(f'{x:.2f}' for x in each)}; "
                f"median {statistics.median(each):.2f}x; median eval / median bare {mid:.2f}x"
            )
        for key in ("eval", "eval_no_ahead", "eval_again", *(e for e, _ in pairs[2:])):
            if r := by.get((form, key)):
                tail = r["wall_s"] - r.get("generation_done_s", r["wall_s"])
                print(
                    f"{form}: {key}: generation ends at {r['generation_done_s']:.1f} s, then {tail:.1f} s of verification"
                )
    for name, p in parts.items():
        for err in p["errors"]:
            print(f"\n[{name}] ERROR: {err}")
    return {"meta": meta, "rows": rows, "ratios": ratios, "parts": parts}


def _formats(spec: str, folder: Path) -> list[str]:
    """The formats of ``--format``, ``auto`` resolved by the eval's own rule for the model in ``folder``."""
    from transformers import AutoTokenizer

    from tinyforge.evaluate.run import resolve_format

    class Tokenized:  # what resolve_format looks at in an engine
        tokenizer = AutoTokenizer.from_pretrained(str(folder))

    out = [resolve_format(f.strip(), Tokenized()) for f in spec.split(",") if f.strip()]  # type: ignore[arg-type]
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, GGUF file, folder or hub id")
    ap.add_argument(
        "--quick", action="store_true", help="16 tasks, fewer transformers rows, one HFEngine run"
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--limit", type=int, help="first N HumanEval tasks (default: all 164; --quick: 16)")
    ap.add_argument(
        "--format",
        default="auto",
        help="prompt formats, comma-separated, of auto (what tinyforge eval picks for the model), raw, chat",
    )
    ap.add_argument("--n", type=int, default=8, help="samples per task")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="(eval, bare vLLM) pairs per format, the first two as before (default 2); the report adds medians",
    )
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument(
        "--hf-batch", type=int, action="append", help="transformers batch sizes (default: 8 and 256)"
    )
    ap.add_argument(
        "--hf-rows", type=int, help="rows (prompt x sample) per transformers batch size (default 64)"
    )
    ap.add_argument("--hf-engine-rows", type=int, help="rows for HFEngine (default 256; --quick: 32)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per part")
    ap.add_argument("--log-dir", help="where the parts' logs go (default: a new temporary folder)")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to OUT")
    args, parts = parse_args(ap, PART_FUNCS, argv)
    limit = args.limit or (16 if args.quick else None)
    tasks = len(load_benchmark(BENCH)[:limit])
    log(f"resolving {args.model}")
    ref = resolve_model(args.model)
    start = time.perf_counter()
    folder = hf_folder(ref, "bfloat16")
    prep = time.perf_counter() - start
    log(f"transformers folder {folder} ({prep:.0f} s)")
    formats = _formats(args.format, folder)
    cfg = {
        "ref": {
            "kind": ref.kind,
            "path": ref.path,
            "sha256": ref.sha256,
            "gguf_file": ref.gguf_file,
            "name": ref.name,
        },
        "folder": str(folder),
        "limit": limit,
        "formats": formats,
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
        "hf_batches": args.hf_batch or ([8] if args.quick else [8, 256]),
        "hf_rows": args.hf_rows or (16 if args.quick else 64),
        "hf_engine_rows": args.hf_engine_rows or (32 if args.quick else 256),
        "hf_engine_runs": 1 if args.quick else 2,
        "pairs": max(2, args.pairs),
    }
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    meta = {
        "date": now.isoformat(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "host": f"{platform.node()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "git": git_commit(),
        "model": args.model,
        "model_sha256": ref.sha256,
        "folder": str(folder),
        "folder_prep_s": round(prep, 1),
        "bench": BENCH,
        "tasks": tasks,
        "formats": formats,
        **{k: cfg[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")},
        "config": cfg,
    }
    workdir = Path(args.log_dir or tempfile.mkdtemp(prefix="tinyforge-bench-generate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**VLLM_ENV, **os.environ}
    results = {name: run_part(__file__, name, cfg, workdir, args.timeout, env) for name in parts}
    report = print_report(meta, results)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nnumbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
