"""Do vLLM and transformers compute the same model? Greedy texts and log-probabilities, side by side.

Before trusting a model's numbers from the vLLM back-end, check that vLLM runs it as transformers does.
transformers (bf16, on the GPU, from the same converted folder ``hf_folder`` gives vLLM) is the reference:
for each of ``--prompts`` HumanEval raw prompts it writes a greedy continuation of ``--max-new-tokens``
tokens and scores every token of prompt + continuation (teacher forcing). Each vLLM variant, through
``VLLMEngine`` with the variant's ``vllm.LLM`` options and in a process of its own, then

* writes its own greedy continuations: how many equal transformers' (bf16 rounding may flip a near-tie
  late in a text; a broken model diverges at once), and the first token where they part (median);
* scores transformers' prompt + continuation (``prompt_logprobs``): the largest and the median gap
  between the two log-probabilities of the same tokens. A few hundredths is bf16 noise; a model vLLM
  runs wrongly shows gaps of several nats from the first tokens.

Variants: ``default`` (``VLLMEngine``'s settings), ``lora`` (``enable_lora=True``, as ``tinyforge
bootstrap`` starts it, adapters swapped on one engine), ``eager`` (no CUDA graphs / compilation),
``triton`` and ``flex`` (vLLM's Triton and FlexAttention attention back-ends instead of its default).

    .venv/bin/python bench/parity.py --model gemma-3-270m [--variants default,lora,eager] [--json OUT]

Needs a CUDA GPU with vLLM. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import log, version

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "lora": {"enable_lora": True},
    "eager": {"enforce_eager": True},
    "triton": {"attention_backend": "TRITON_ATTN"},
    "flex": {"attention_backend": "FLEX_ATTENTION"},
}
VLLM_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}


def prompt_ids(model: str, n: int) -> tuple[Any, list[list[int]]]:
    """The model's tokenizer and the token ids of the first ``n`` HumanEval raw prompts (as the engines
    encode them)."""
    from transformers import AutoTokenizer

    from tinyforge.data import load_benchmark
    from tinyforge.generate.models import hf_folder, resolve_model
    from tinyforge.generate.prompts import code_prompt

    folder = hf_folder(resolve_model(model))
    tok = AutoTokenizer.from_pretrained(str(folder))
    texts = [str(code_prompt(t, "raw")) for t in load_benchmark("humaneval")[:n]]
    return tok, [tok(t).input_ids for t in texts]


def reference(model: str, n: int, new: int) -> dict[str, Any]:
    """transformers on the GPU: greedy continuations and the log-probability of every token."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinyforge.generate.models import hf_folder, resolve_model

    tok, prompts = prompt_ids(model, n)
    folder = hf_folder(resolve_model(model))
    lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).cuda().eval()
    outs, logprobs = [], []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids], device="cuda")
            y = lm.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False)
            cont = y[0, len(ids) :].tolist()
            full = torch.tensor([ids + cont], device="cuda")
            lp = lm(full).logits.float().log_softmax(-1)[0, :-1]
            logprobs.append(lp.gather(-1, full[0, 1:, None])[:, 0].tolist())
            outs.append(cont)
    return {"prompts": prompts, "continuations": outs, "logprobs": logprobs, "text0": tok.decode(outs[0])}


def worker(model: str, variant: str, ref_path: Path, out: Path) -> None:
    """One vLLM variant: its greedy continuations and its log-probabilities of the reference's tokens."""
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    from tinyforge.generate.vllm_engine import VLLMEngine

    ref = json.loads(ref_path.read_text())
    t0 = time.perf_counter()
    engine = VLLMEngine(model, gpu_memory_utilization=0.3, **VARIANTS[variant])
    start = time.perf_counter() - t0
    new = max(len(c) for c in ref["continuations"])
    greedy = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in ref["prompts"]],
        VParams(temperature=0.0, max_tokens=new, ignore_eos=False),
        use_tqdm=False,
    )
    conts = [list(o.outputs[0].token_ids) for o in greedy]
    full = [p + c for p, c in zip(ref["prompts"], ref["continuations"], strict=True)]
    scored = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=f) for f in full],
        VParams(temperature=0.0, max_tokens=1, prompt_logprobs=0),
        use_tqdm=False,
    )
    logprobs = []
    for f, o in zip(full, scored, strict=True):
        per = o.prompt_logprobs[1:]  # the first token has none
        logprobs.append([d[t].logprob for d, t in zip(per, f[1:], strict=True)])
    text0 = engine.tokenizer.decode(conts[0])
    engine.close()
    out.write_text(
        json.dumps({"continuations": conts, "logprobs": logprobs, "start_s": start, "text0": text0})
    )


def compare(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    same, parts, gaps = 0, [], []
    for a, b in zip(ref["continuations"], got["continuations"], strict=True):
        if a == b:
            same += 1
        else:
            parts.append(
                next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            )
    for a, b in zip(ref["logprobs"], got["logprobs"], strict=True):
        gaps.extend(abs(x - y) for x, y in zip(a, b, strict=True))
    return {
        "greedy_equal": same,
        "first_divergence_median": statistics.median(parts) if parts else None,
        "logprob_gap_max": max(gaps),
        "logprob_gap_median": statistics.median(gaps),
        "start_s": round(got["start_s"], 1),
        "text0": got["text0"][:120],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--variants", default="default,lora,eager,triton")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "REF", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.model, a.worker[0], Path(a.worker[1]), Path(a.worker[2]))
        return
    variants = a.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    print(f"model {a.model}, {a.prompts} HumanEval raw prompts, {a.max_new_tokens} greedy tokens; "
          f"transformers {version('transformers')}, vLLM {version('vllm')}, torch {version('torch')}")  # fmt: skip
    log("transformers reference")
    ref = reference(a.model, a.prompts, a.max_new_tokens)
    print(f"transformers greedy, prompt 0: {ref['text0'][:120]!r}")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "ref.json"
        ref_path.write_text(json.dumps(ref))
        for v in variants:
            log(f"vLLM {v}")
            out = Path(tmp) / f"{v}.json"
            env = {**VLLM_ENV, **os.environ}
            cmd = [sys.executable, __file__, "--model", a.model, "--worker", v, str(ref_path), str(out)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0 or not out.is_file():
                rows[v] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
            else:
                rows[v] = compare(ref, json.loads(out.read_text()))
    print(
        f"\n{'variant':<9} {'greedy = hf':>11} {'1st diff':>8} {'max |dlogp|':>11} {'median':>8} {'start s':>7}"
    )
    for v, r in rows.items():
        if "error" in r:
            print(f"{v:<9} failed: {r['error']}")
            continue
        print(f"{v:<9} {r['greedy_equal']:>5}/{a.prompts:<5} {str(r['first_divergence_median']):>8} "
              f"{r['logprob_gap_max']:>11.3f} {r['logprob_gap_median']:>8.4f} {r['start_s']:>7}")  # fmt: skip
    for v, r in rows.items():
        if "text0" in r:
            print(f"{v}, prompt 0: {r['text0']!r}")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
