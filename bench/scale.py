"""Scaling out on one host: sampling with 1 vs 2 vLLM replicas, LoRA training on 1 vs 2 GPUs (DDP, FSDP).

Sampling: HumanEval, raw format, ``--n`` samples per task (default 32) at T=0.8, up to 512 tokens, seed 0,
through ``make_engine(model, "vllm", replicas=R)`` (``R`` copies of ``VLLMEngine``, one per GPU, each in its
own process; ``R=1`` is a plain ``VLLMEngine`` in the part's process). Timed: ``engine.generate`` after one
warm-up request; engine start reported apart. Also: how many samples of the R=2 row have the text of the
R=1 row (the samples are keyed per (seed, prompt, index), so they should agree up to bf16 batch effects).

Training: ``tinyforge train`` on (HumanEval prompt, canonical solution) examples (164; every task's
reference code, raw format; ``--train-examples``), LoRA r=16 on q/k/v/o, batch 4 x 4 micro-batches a step, 2 epochs, seed 0, run
as ``python -m torch.distributed.run --nproc_per_node P -m tinyforge.cli train ...`` for P = 1 and 2
(NCCL; ``NCCL_NVLS_ENABLE=0``), and for P = 2 with ``--fsdp`` (the base model sharded over the GPUs).
Timed: the training loop (``train.json`` wall_seconds, model load excluded) and the whole command; peak GPU
memory of rank 0; the adapters are compared with the one-GPU one (largest difference of a LoRA weight).

    .venv/bin/python bench/scale.py [--parts sample-1,sample-2,train-1,train-2,train-2-fsdp] [--n 32]
        [--json OUT]

Each part runs in its own subprocess. Needs 2 CUDA GPUs (and vLLM for the sampling parts). Prints numbers,
asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import git_commit, parse_args, run_part, version

from tinyforge.data import load_benchmark
from tinyforge.generate import prompts
from tinyforge.generate.base import SamplingParams

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
PARTS = ("sample-1", "sample-2", "train-1", "train-2", "train-2-fsdp")
ENV = {
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "NCCL_NVLS_ENABLE": "0",  # no NVLink multicast
}
LORA = {"r": 16, "alpha": 32, "batch_size": 4, "grad_accum": 4, "epochs": 2, "seed": 0, "lr": 2e-4}


def _sample(cfg: dict[str, Any], out: dict[str, Any], replicas: int) -> None:
    from tinyforge.generate.engines import make_engine

    tasks = load_benchmark("humaneval")[: cfg["limit"]]
    texts = [prompts.code_prompt(t, "raw") for t in tasks]
    params = SamplingParams(
        n=cfg["n"], temperature=0.8, max_new_tokens=512, stop=tuple(prompts.stops("raw")), seed=cfg["seed"]
    )
    t = time.perf_counter()
    engine = make_engine(cfg["model"], "vllm", replicas=replicas)
    out["start_s"] = round(time.perf_counter() - t, 1)
    try:
        engine.generate(texts[:2], SamplingParams(max_new_tokens=8))  # warm-up
        t = time.perf_counter()
        done = engine.generate(texts, params)
        wall = time.perf_counter() - t
    finally:
        engine.close()
    tokens = sum(c.completion_tokens for row in done for c in row)
    samples = sum(len(row) for row in done)
    out["rows"].append(
        {
            "what": f"sampling, {replicas} vLLM replica(s)",
            "wall_s": round(wall, 2),
            "samples": samples,
            "tokens": tokens,
            "tok_s": round(tokens / wall, 1),
        }
    )
    out["texts"] = [c.text for row in done for c in row]


def _train(cfg: dict[str, Any], out: dict[str, Any], procs: int, fsdp: bool = False) -> None:
    work = Path(cfg["workdir"])
    examples, lora = work / "examples.jsonl", work / "lora.yaml"
    if not examples.is_file():
        with examples.open("w") as f:
            for t in load_benchmark("humaneval")[: cfg["train_examples"]]:
                f.write(json.dumps({"prompt": t.prompt, "completion": t.canonical_solution}) + "\n")
        lora.write_text("".join(f"{k}: {v}\n" for k, v in LORA.items()))
    run = work / f"train-{procs}{'-fsdp' if fsdp else ''}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd += ["-m", "tinyforge.cli", "train", str(examples), "--model", cfg["model"], "--out", str(run)]
    cmd += ["--config", str(lora), *(["--fsdp"] if fsdp else [])]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    whole = time.perf_counter() - t
    result = json.loads((run / "train.json").read_text())
    loop = result["wall_seconds"]
    out["rows"].append(
        {
            "what": f"LoRA training, {procs} GPU(s){', FSDP' if fsdp else ''}",
            "wall_s": round(loop, 2),
            "steps": result["steps"],
            "s_per_step": round(loop / result["steps"], 3),
            "tokens": result["tokens"],
            "tok_s": round(result["tokens"] / loop, 1),
            "command_s": round(whole, 1),
            "final_loss": result["final_loss"],
            "processes": result["processes"],
            "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib"),
        }
    )
    out["adapter"] = str(run / "adapter")


PART_FUNCS = {
    "sample-1": lambda cfg, out: _sample(cfg, out, 1),
    "sample-2": lambda cfg, out: _sample(cfg, out, 2),
    "train-1": lambda cfg, out: _train(cfg, out, 1),
    "train-2": lambda cfg, out: _train(cfg, out, 2),
    "train-2-fsdp": lambda cfg, out: _train(cfg, out, 2, fsdp=True),
}


def _adapter_gap(a: str, b: str) -> float:
    """Largest absolute difference between two adapters' LoRA weights."""
    from safetensors.torch import load_file

    x, y = (load_file(str(Path(p) / "adapter_model.safetensors")) for p in (a, b))
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def _device() -> dict[str, Any]:
    import torch

    n = torch.cuda.device_count()
    return {"gpus": n, "device": torch.cuda.get_device_name(0) if n else "no CUDA device"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--n", type=int, default=32, help="samples per HumanEval task")
    ap.add_argument("--limit", type=int, help="first N HumanEval tasks (default: all 164)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-examples", type=int, default=164, help="first N HumanEval tasks as examples")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per part")
    ap.add_argument("--json", metavar="OUT", help="also write the numbers to OUT")
    args, parts = parse_args(ap, PART_FUNCS, argv)
    workdir = Path(tempfile.mkdtemp(prefix="tinyforge-bench-scale-"))
    cfg = {"model": args.model, "n": args.n, "limit": args.limit, "seed": args.seed, "workdir": str(workdir)}
    cfg["train_examples"] = args.train_examples
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "git": git_commit(),
        "versions": {d: version(d) for d in ("torch", "transformers", "peft", "vllm")},
        **_device(),
        **{k: v for k, v in cfg.items() if k != "workdir"},
        "lora": LORA,
    }
    env = {**ENV, **os.environ}
    results = {name: run_part(__file__, name, cfg, workdir, args.timeout, env) for name in parts}
    rows = [r for p in parts for r in results[p]["rows"]]
    print(f"\n{meta['device']} x {meta['gpus']}, {args.model}, git {meta['git']}, {meta['date']}")
    print(f"{'what':<34} {'wall s':>8} {'tok/s':>10}  notes")
    for r in rows:
        notes = (
            f"{r['samples']} samples"
            if "samples" in r
            else f"{r['steps']} steps, {r['s_per_step']} s/step, peak {r['peak_gpu_memory_gib']} GiB"
        )
        print(f"{r['what']:<34} {r['wall_s']:>8} {r['tok_s']:>10}  {notes}")
    summary: dict[str, Any] = {}
    one, two = results.get("sample-1"), results.get("sample-2")
    if one and two and one["rows"] and two["rows"]:
        same = sum(a == b for a, b in zip(one["texts"], two["texts"], strict=True))
        summary["sampling_speedup"] = round(one["rows"][0]["wall_s"] / two["rows"][0]["wall_s"], 2)
        summary["same_text"] = f"{same}/{len(one['texts'])}"
        summary["engine_start_s"] = {"1": one.get("start_s"), "2": two.get("start_s")}
        print(
            f"sampling: 2 replicas {summary['sampling_speedup']}x one; same text as one: {summary['same_text']}"
        )
    one = results.get("train-1")
    for name, key in (("train-2", ""), ("train-2-fsdp", "fsdp_")):
        two = results.get(name)
        if one and two and one["rows"] and two["rows"]:
            summary[f"{key}training_speedup"] = round(one["rows"][0]["wall_s"] / two["rows"][0]["wall_s"], 2)
            summary[f"{key}adapter_max_abs_diff"] = _adapter_gap(one["adapter"], two["adapter"])
            print(
                f"training ({name}): {summary[f'{key}training_speedup']}x one GPU; "
                f"adapters differ by at most {summary[f'{key}adapter_max_abs_diff']:.2e}"
            )
    for name, r in results.items():
        for e in r["errors"]:
            print(f"[{name}] {e}")
    if args.json:
        for r in results.values():
            r.pop("texts", None)
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "parts": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
