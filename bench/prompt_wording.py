"""How much does the wording of a chat prompt move an instruct model's HumanEval score?

tinyforge's ``chat`` format is EvalPlus' instruction with the task in a fenced block; ``chat+prefix`` adds
EvalPlus' response prefix. Other harnesses word it otherwise, and a small model's greedy score follows the
wording: this script scores one model on the same tasks under several wordings, every answer turned into a
program by the same sanitizer (``prompts.to_program``) and verified in the same sandbox (``score``), so
that the only difference between rows is the text the model was shown.

Wordings (the user message; ``{task}`` is the task's prompt, the signature and docstring):

* ``chat``: tinyforge's default (EvalPlus' instruction + fenced task);
* ``chat+prefix``: the same, the answer opened with EvalPlus' response prefix;
* ``chat+system``: ``chat`` under an explicit system message "You are a helpful assistant." (instead of
  the chat template's default one, if it has one);
* ``complete``: "Complete the following Python function:" + fenced task;
* ``bare``: the task alone as the message.

    .venv/bin/python bench/prompt_wording.py [--model qwen2.5-coder-0.5b-instruct] [--limit N] [--json OUT]

Greedy, ``--max-new-tokens`` (768) each; on a GPU with vLLM by default (``--backend``). Prints numbers,
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchutil import log, version

from tinyforge.data import load_benchmark
from tinyforge.evaluate.score import score
from tinyforge.generate.base import Engine, GenerationRequest, SamplingParams
from tinyforge.generate.engines import choose_backend, make_engine
from tinyforge.generate.prompts import INSTRUCTION, code_prompt, stops, task_text, to_program

WORDINGS = ("chat", "chat+prefix", "chat+system", "complete", "bare")


def messages(task: Any, wording: str) -> list[dict[str, str]]:
    text = task_text(task, "chat").rstrip()
    if wording in ("chat", "chat+prefix"):
        return code_prompt(task, wording)  # type: ignore[return-value]
    if wording == "chat+system":
        user = f"{INSTRUCTION}\n```\n{text}\n```\n"
        return [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": user},
        ]
    if wording == "complete":
        return [
            {"role": "user", "content": f"Complete the following Python function:\n```python\n{text}\n```"}
        ]
    return [{"role": "user", "content": text + "\n"}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--max-new-tokens", type=int, default=768)
    ap.add_argument("--wordings", default=",".join(WORDINGS))
    ap.add_argument("--gpu-memory", type=float, default=0.85, help="vLLM's gpu_memory_utilization")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    tasks = load_benchmark("humaneval")[: a.limit]
    if choose_backend(a.backend) == "vllm":
        from tinyforge.generate.vllm_engine import VLLMEngine

        engine: Engine = VLLMEngine(a.model, gpu_memory_utilization=a.gpu_memory)
    else:
        engine = make_engine(a.model, a.backend)
    print(f"model {a.model} ({type(engine).__name__}), HumanEval {len(tasks)} tasks, greedy, "
          f"{a.max_new_tokens} new tokens; tinyforge {version('tinyforge')}, vLLM {version('vllm')}")  # fmt: skip
    rows: dict[str, Any] = {}
    for wording in a.wordings.split(","):
        fmt = "chat+prefix" if wording == "chat+prefix" else "chat"
        params = SamplingParams(max_new_tokens=a.max_new_tokens, stop=tuple(stops(fmt)))
        log(wording)
        t0 = time.perf_counter()
        requests = [GenerationRequest(messages(t, wording), 0) for t in tasks]
        texts = dict(engine.run(requests, params))
        samples = [
            {"task_id": t.task_id, "solution": to_program(t, fmt, texts[i].text)} for i, t in enumerate(tasks)
        ]
        summary, results = score("humaneval", samples, tasks=tasks)
        passed = [r.passed for r in results]
        rows[wording] = {
            "passed": sum(passed),
            "length_cut": sum(texts[i].finish_reason == "length" for i in range(len(tasks))),
            "seconds": round(time.perf_counter() - t0, 1),
            "passed_tasks": [t.task_id for t, p in zip(tasks, passed, strict=True) if p],
        }
    base = set(rows.get("chat", {}).get("passed_tasks", []))
    print(f"\n{'wording':<12} {'passed':>9} {'cut':>4} {'+ vs chat':>9} {'- vs chat':>9} {'s':>6}")
    for w, r in rows.items():
        got = set(r["passed_tasks"])
        print(f"{w:<12} {r['passed']:>4}/{len(tasks):<4} {r['length_cut']:>4} {len(got - base):>9} "
              f"{len(base - got):>9} {r['seconds']:>6}")  # fmt: skip
    union = set().union(*(set(r["passed_tasks"]) for r in rows.values()))
    print(f"solved under at least one wording: {len(union)}/{len(tasks)}")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "tasks": len(tasks), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
