"""LoRA fine-tuning on (prompt, completion) pairs, the loss on the completion only.

``train_lora(model, examples, out_dir, config)`` reads top to bottom like nanoGPT's ``train.py``: load the
model and its tokenizer, encode the examples, plan the optimizer steps, wrap the model with peft, then one
loop of forward, masked loss, backward, clip, AdamW step. It writes ``out_dir/adapter`` (peft's standard
format, no ``modules_to_save``: ``HFEngine(model, adapter=...)`` and vLLM's ``LoRARequest`` load it) and
``out_dir/train.json`` (settings, example counts, losses per step, tokens, time, model key, versions). The
base model is loaded with ``models.load_model`` (bfloat16 on CUDA, float32 on the CPU, unless ``dtype``);
the LoRA weights stay float32 (peft's default).

Why not TRL's ``SFTTrainer``: TRL is not installed on our GPU machine, and the loop is about a hundred lines
in which the masking and the loss are in plain sight; resuming exactly is ours to get right either way.

Encoding. The prompt becomes exactly the ids the engines feed the model at inference (``LocalEngine.encode``:
a chat through the chat template with the assistant turn opened, raw text with the tokenizer's usual special
tokens). The completion is tokenized on its own and its ids appended, then the token the model stops on:
for a chat the template's end of turn (``<|im_end|>`` for Qwen and SmolLM2, ``<end_of_turn>`` for Gemma),
for raw text the tokenizer's end of sequence. Prompt and completion are tokenized separately because
tokenizing the joined string can merge characters across the boundary into one token, which would put
part of the prompt into the loss or part of the answer into the mask, and make the training prompt differ
from the one the model sees at inference. Labels are -100 over the prompt (and over padding), the ids
elsewhere. An example longer than ``max_len`` is dropped and counted (truncating either side would teach
an answer to a prompt it was not written for, or an answer cut off before its end of turn).

The loss is the mean cross-entropy per target token over the whole accumulation window: each micro-batch's
summed token losses are divided by the window's target-token count, so a long completion weighs as much
per token as a short one whatever micro-batch it falls in. The learning rate warms up linearly over
``warmup_ratio`` of the steps and is constant after. Steps do not cross epochs: an epoch's last step may
accumulate fewer micro-batches. Data order: one ``torch.Generator`` seeded with ``seed`` draws one
permutation per epoch, up front.

Resuming. Every ``save_every`` optimizer steps the state is written to ``out_dir/checkpoint/step-NNNNNNNN``
(the trainable weights, AdamW and scheduler state, the step, its epoch, the losses so far; plus a peft
``adapter`` folder for evaluating mid-run; dropout needs no saved state: each micro-batch seeds its own). A
checkpoint is written under a hidden temporary name and renamed into place, so a ``step-*`` folder that is
there is complete; the newest one is loaded and older ones are removed once it is in place. Running
``train_lora`` again with the same arguments continues from it and ends with the same adapter as an
uninterrupted run (bit-identical on the CPU in float32, and it was on an H200 in bfloat16 too). A checkpoint
or a finished run whose fingerprint (settings other than ``save_every``, model, dtype, examples) differs is an
error rather than silently discarded or mixed: delete it, or train into another folder. A finished run
(``train.json`` with the same fingerprint, written after the adapter) is returned at once; the checkpoints are
removed when it is written. The model's memory is freed before returning, for the stage that loads an engine
next.

Several processes. Launched by ``torchrun`` or ``accelerate launch --multi_gpu`` (``tinyforge train``:
``torchrun --nproc-per-node N -m tinyforge.cli train ...``), each process (rank) loads the model on its own
device and runs the same plan, taking the micro-batches ``rank, rank + world, ...`` of every optimizer step;
the gradients are summed over the ranks (an all-reduce of the LoRA weights' gradients: few, and small), every
rank takes the same AdamW step, and rank 0 writes checkpoints, the adapter and ``train.json``. The loss of a
micro-batch is normalised by the whole window's target tokens, and the LoRA dropout of micro-batch k of step s
draws from a generator seeded by (seed, s, k), so the adapter is the single process's whatever the number of
processes, up to the order of floating-point sums. This is data parallelism over the LoRA's gradients (DDP's
all-reduce without its bucketing): every rank holds the whole base model. With ``fsdp=True``
(``tinyforge train --fsdp``) the ranks shard it instead (PyTorch's ``fully_shard``, a unit per decoder
layer): each keeps 1/world of every weight, LoRA's included, gathers a layer's weights while it runs, and
the LoRA gradients are reduce-scattered; the plan and the seeds are the same, so is the adapter. Checkpoints
hold whole tensors either way, so a run resumes with or without sharding and with any number of processes.
``launch_training`` starts such a run from Python (the staged runs use it when their ``train_processes`` is
above 1; ``train_fsdp`` adds ``--fsdp``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tinyforge.generate.base import LocalEngine, Prompt, free_memory
from tinyforge.generate.models import ModelRef, load_model, resolve_model

__all__ = [
    "Example",
    "LoraConfig",
    "collate",
    "encode_example",
    "end_ids",
    "launch_training",
    "training_command",
    "read_examples",
    "train_lora",
]

log = logging.getLogger(__name__)

# peft warns on every save that a GGUF-loaded model's folder has no config file (the vocabulary is not
# changed, so it does not apply), and about a transformers attribute renamed in v6: noise in every run.
warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)

Example = tuple[Prompt, str]  # (prompt, completion)
Progress = Callable[[str, int], Callable[[int], None]]
IGNORE = -100  # the label cross_entropy skips: prompt tokens and padding
PROGRESS_FILE = ".progress.json"  # a launched run's steps done, for ``launch_training``'s progress bar
PROGRESS_ENV = "TINYFORGE_TRAIN_PROGRESS"  # where rank 0 writes them (set by ``training_command``)


class LoraConfig(BaseModel):
    """LoRA training settings; the defaults are the paper's."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Linear layers that get a LoRA (by module name suffix).",
    )
    epochs: int = Field(2, ge=1, description="Passes over the examples.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (constant after the warm-up).")
    batch_size: int = Field(1, ge=1, description="Examples per micro-batch (right-padded).")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    max_len: int = Field(
        2048, ge=2, description="Longest example in tokens; longer ones are dropped, not cut."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="Share of the steps over which lr rises linearly."
    )
    seed: int = Field(0, description="Seeds the LoRA initialisation, dropout and the data order.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Base model dtype (default: bfloat16 on CUDA, float32 on the CPU)."
    )
    save_every: int = Field(10, ge=1, description="Optimizer steps between resumable checkpoints.")


# --- examples ------------------------------------------------------------------------------------------


class _Prompter(LocalEngine):
    """The engines' own ``render`` and ``encode`` over a bare tokenizer (it never generates)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ref = SimpleNamespace(name=getattr(tokenizer, "name_or_path", ""), path="this model")

    def run(self, requests: Any, params: Any) -> Any:
        raise NotImplementedError


def end_ids(tokenizer: Any, chat: bool) -> list[int]:
    """The ids that end a completion: for a chat, what the template writes after an assistant message, up to
    and including its first special token (its end of turn); else, or if none, the end of sequence."""
    if chat and tokenizer.chat_template:
        mark = "tinyforge-completion-end"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}], tokenize=False
        )
        after = text[text.rindex(mark) + len(mark) :] if mark in text else ""
        ids = tokenizer(after, add_special_tokens=False).input_ids
        special = {
            *tokenizer.all_special_ids,
            *(i for i, t in tokenizer.added_tokens_decoder.items() if t.special),
        }
        for k, t in enumerate(ids):
            if t in special:
                return ids[: k + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token to end completions with")
    return [tokenizer.eos_token_id]


def encode_example(
    tokenizer: Any, prompt: Prompt, completion: str, max_len: int
) -> dict[str, list[int]] | None:
    """``input_ids`` (the prompt as the engines encode it, the completion, its end token) and ``labels``
    (-100 over the prompt); None if longer than ``max_len``."""
    prompt_ids = _Prompter(tokenizer).encode(prompt)
    target = tokenizer(completion, add_special_tokens=False).input_ids + end_ids(
        tokenizer, not isinstance(prompt, str)
    )
    if len(prompt_ids) + len(target) > max_len:
        return None
    return {"input_ids": prompt_ids + target, "labels": [IGNORE] * len(prompt_ids) + target}


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """(prompt, completion) examples from a JSONL file of ``{"prompt": ..., "completion": ...}`` objects (a
    prompt is raw text or a list of chat messages); a ``ValueError`` of one line naming the bad line."""
    out: list[Example] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{n}: not JSON") from None
        prompt, completion = (
            (rec.get("prompt"), rec.get("completion")) if isinstance(rec, dict) else (None, None)
        )
        chat = isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)
        if not (isinstance(prompt, str) or chat) or not isinstance(completion, str):
            raise ValueError(f'{path}:{n}: want {{"prompt": text or chat messages, "completion": text}}')
        out.append((prompt, completion))
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_id``, ``labels`` with -100, ``attention_mask`` 0."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[row, :n] = torch.tensor(b["input_ids"])
        labels[row, :n] = torch.tensor(b["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# --- training ------------------------------------------------------------------------------------------


def train_lora(
    model: str | os.PathLike[str] | ModelRef,
    examples: Iterable[Example],
    out_dir: str | os.PathLike[str],
    config: LoraConfig | None = None,
    progress: Progress | None = None,
    fsdp: bool = False,
) -> dict[str, Any]:
    """Train a LoRA on ``examples`` into ``out_dir/adapter``; returns what ``out_dir/train.json`` holds.
    ``fsdp``: with several processes, shard the base model over them (each holds a part of the weights)
    instead of giving each the whole model; the same adapter either way."""
    import peft
    import transformers

    config = config or LoraConfig()
    pairs = [(p, c) for p, c in examples]
    if not pairs:
        raise ValueError("no examples to train on")
    out = Path(out_dir)
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    rank, world, local_rank = _world()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = config.dtype or ("bfloat16" if device == "cuda" else "float32")
    fingerprint = _fingerprint(config, ref, dtype, pairs)
    if (out / "train.json").is_file():
        done = json.loads((out / "train.json").read_text(encoding="utf-8"))
        if done.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out} holds a finished run with other settings or examples; train into another folder"
            )
        if (out / "adapter" / "adapter_config.json").is_file():
            return done
    ckpt = _latest_checkpoint(out)
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True) if ckpt else None
    if state is not None and state["fingerprint"] != fingerprint:
        raise ValueError(
            f"{ckpt} is from a run with other settings or examples; delete it or train elsewhere"
        )
    if world > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    sharded = fsdp and world > 1

    # Load the model first: the tokenizer comes with it. Sharded, each process loads it into host memory and
    # keeps only its shards on the device (``_shard``).
    base, tokenizer = load_model(ref, dtype, "cpu" if sharded else device)
    encoded = [encode_example(tokenizer, p, c, config.max_len) for p, c in pairs]
    data = [e for e in encoded if e is not None]
    if not data:
        raise ValueError(f"all {len(pairs)} examples are longer than max_len={config.max_len} tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    # The plan: every optimizer step is a list of micro-batches (lists of example indices), all epochs ahead.
    gen = torch.Generator().manual_seed(config.seed)
    plan: list[tuple[int, list[list[int]]]] = []  # (epoch, micro-batches)
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        micro = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        plan += [(epoch, micro[i : i + config.grad_accum]) for i in range(0, len(micro), config.grad_accum)]
    warmup = math.ceil(config.warmup_ratio * len(plan))

    torch.manual_seed(config.seed)  # the LoRA initialisation (replaced by a checkpoint's weights)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        bias="none",
    )
    net = peft.get_peft_model(base, lora)
    if state is not None:
        named = dict(net.named_parameters())
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                named[name].copy_(tensor)
    if sharded:
        _shard(net, device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    run = {"step": 0, "losses": [], "tokens": 0, "target_tokens": 0, "seconds": 0.0}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        if sharded:
            _shard_optimizer_state(opt)
        sched.load_state_dict(state["scheduler"])
        run = state["run"]
        log.info("resuming %s from step %d of %d", out, run["step"], len(plan))
    resumed_from = run["step"]

    out.mkdir(parents=True, exist_ok=True)
    advance = progress("train", len(plan)) if progress else None
    progress_file = Path(os.environ[PROGRESS_ENV]) if rank == 0 and os.environ.get(PROGRESS_ENV) else None
    if advance and resumed_from:
        advance(resumed_from)
    net.train()
    start = time.monotonic()
    for step in range(resumed_from, len(plan)):
        epoch, micro = plan[step]
        # Targets: the label of position t is the token at t + 1; prompt and padding are IGNORE. The count
        # is the whole window's, on every rank (from the plan, no communication).
        n_target = sum(_n_target(data[i]) for m in micro for i in m)
        step_loss, tokens = 0.0, 0
        # This rank's micro-batches: k = rank, rank + world, ... Sharded, every rank must run as many
        # forward and backward passes as the others (each gathers the weights with them): one short of a
        # micro-batch runs one of the step's again with its loss weighed by 0.
        mine = range(rank, len(micro) if not sharded else _ceil_to(len(micro), world), world)
        for k in mine:
            real = k < len(micro)
            # Sharded, FSDP averages the gradients over the ranks in backward: weighed by world, they are summed.
            weight = 0 if not real else world if sharded else 1
            b = {
                key: v.to(device)
                for key, v in collate([data[i] for i in micro[k % len(micro)]], pad_id).items()
            }
            torch.manual_seed(_micro_seed(config.seed, step, k))  # LoRA dropout: the same on any layout
            logits = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                b["labels"][:, 1:].flatten(),
                ignore_index=IGNORE,
                reduction="sum",
            ) / max(n_target, 1)  # the mean over the window's target tokens, once all are summed
            (loss * weight).backward()
            if real:
                step_loss += loss.item()
                tokens += int(b["attention_mask"].sum())
        if world > 1:  # sharded, the gradients were summed over the ranks in backward (reduce-scatter)
            step_loss, tokens = _sum_over_ranks([] if sharded else params, step_loss, tokens, device)
        run["tokens"] += tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        run["step"] = step + 1
        run["losses"].append(step_loss)
        run["target_tokens"] += n_target
        if advance:
            advance(1)
        if progress_file:
            _write_json(progress_file, {"step": run["step"], "steps": len(plan)})
        if run["step"] % config.save_every == 0 and run["step"] < len(plan):
            run_now = {**run, "seconds": run["seconds"] + time.monotonic() - start}
            if sharded or rank == 0:  # gathering is collective when sharded
                trainable, opt_state = _gathered(net), _gathered(opt.state_dict())
            if rank == 0:
                _save_checkpoint(out, net, trainable, opt_state, sched, fingerprint, epoch, run_now)
                log.info("step %d/%d loss %.4f: checkpoint saved", run["step"], len(plan), step_loss)
            if world > 1:
                dist.barrier()
    run["seconds"] += time.monotonic() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None

    if sharded or rank == 0:  # gathering is collective when sharded
        trainable = _gathered(net)
    if rank == 0:
        tmp = out / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp, state_dict=trainable)
        shutil.rmtree(out / "adapter", ignore_errors=True)  # left by a run that died before train.json
        os.rename(tmp, out / "adapter")
    del net, base, params, opt, sched
    free_memory()  # for the next stage (an engine) on the same GPU
    result = {
        "fingerprint": fingerprint,
        "config": config.model_dump(),
        "model": {**ref.key(), "name": ref.name},
        "dtype": dtype,
        "device": device,
        "examples": len(pairs),
        "used": len(data),
        "skipped_too_long": len(pairs) - len(data),
        "epochs": config.epochs,
        "processes": world,
        "fsdp": sharded,
        "steps": len(plan),
        "resumed_from_step": resumed_from,
        "losses": run["losses"],
        "final_loss": run["losses"][-1],
        "tokens": run["tokens"],
        "target_tokens": run["target_tokens"],
        "wall_seconds": round(run["seconds"], 3),
        "peak_gpu_memory_gib": None if peak is None else round(peak, 3),  # this process's (rank 0's)
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    if rank == 0:
        _write_json(out / "train.json", result)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    if world > 1:
        dist.barrier()
    if own_group:
        dist.destroy_process_group()
    return result


# --- several processes ----------------------------------------------------------------------------------


def launch_training(
    model: str | ModelRef,
    examples: Iterable[Example],
    out_dir: str | os.PathLike[str],
    config: LoraConfig | None = None,
    processes: int = 2,
    fsdp: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``train_lora`` in ``processes`` processes on this host: ``torchrun -m tinyforge.cli train`` on the
    examples and settings written to ``out_dir`` (one process per GPU; on a machine without GPUs, gloo on
    the CPU; ``fsdp``: the base model sharded over them). Returns what ``out_dir/train.json`` holds; a failed
    launch is a one-line ``RuntimeError`` naming ``out_dir/train.log``, and a rerun resumes from the
    checkpoint like ``train_lora``. ``progress`` gets the optimizer steps as the processes take them."""
    import subprocess

    out = Path(out_dir)
    cmd, env = training_command(model, examples, out, config, processes, fsdp)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    advance, shown = None, 0
    with (out / "train.log").open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                finished = proc.poll() is not None
                try:
                    at = json.loads((out / PROGRESS_FILE).read_text())
                except (OSError, ValueError):
                    at = None
                if progress and at:
                    advance = advance or progress("train", at["steps"])
                    advance(at["step"] - shown)
                    shown = at["step"]
                if finished:
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # interrupted here: stop the processes too
                proc.terminate()
            proc.wait()
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    if proc.returncode != 0 or not (out / "train.json").is_file():
        last = _launch_error((out / "train.log").read_text(errors="replace").splitlines())
        raise RuntimeError(
            f"training in {processes} processes failed (exit {proc.returncode}; {out / 'train.log'}): {last}"
        )
    return json.loads((out / "train.json").read_text(encoding="utf-8"))


def training_command(
    model: str | ModelRef,
    examples: Iterable[Example],
    out: Path,
    config: LoraConfig | None,
    processes: int,
    fsdp: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Write ``out/examples.jsonl`` and ``out/lora.yaml``; the ``torchrun`` command line (on a free port of
    this host) and environment that train on them in ``processes`` processes."""
    import socket
    import sys

    import yaml

    out.mkdir(parents=True, exist_ok=True)
    with (out / "examples.jsonl").open("w", encoding="utf-8") as f:
        for prompt, completion in examples:
            f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
    (out / "lora.yaml").write_text(yaml.safe_dump((config or LoraConfig()).model_dump()))
    spec = model.path if isinstance(model, ModelRef) else str(model)
    with socket.socket() as s:  # a free port for the processes to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
        "--master-addr=127.0.0.1", f"--master-port={port}",
        "-m", "tinyforge.cli", "train", str(out / "examples.jsonl"), "--model", spec,
        "--out", str(out), "--config", str(out / "lora.yaml"), *(["--fsdp"] if fsdp else []),
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", PROGRESS_ENV: str(out / PROGRESS_FILE)}
    env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off
    return cmd, env


def _launch_error(lines: list[str]) -> str:
    """What a failed launch's log says went wrong, in one line: the processes' own error (``tinyforge train``
    prints "error: ..."), else the exception a process died of, else its last word above torchrun's
    failure summary."""
    lines = [ln.strip() for ln in lines]
    said = [ln for ln in lines if ln.startswith("error:")]
    died = [m.group(1) for ln in lines if (m := re.match(r"\[rank\d+\]: (\w*(?:Error|Exception)\b.*)", ln))]
    summary = (
        "=",
        "-",
        "[",
        "*",
        "time",
        "host",
        "rank",
        "exit",
        "error_file",
        "traceback",
        "Failures",
        "Root",
    )
    rest = [ln for ln in lines if ln and not ln.startswith(summary)]
    last = (said or died or rest or ["no output"])[-1]
    return last[:300]


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``torchrun`` and ``accelerate launch`` set them; (0, 1, 0) alone."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def _n_target(example: dict[str, list[int]]) -> int:
    """Target tokens of an example: labels that are not IGNORE, after the first position."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE)


def _micro_seed(seed: int, step: int, k: int) -> int:
    """The dropout seed of micro-batch ``k`` of optimizer step ``step``."""
    digest = hashlib.sha256(f"{seed}:{step}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _ceil_to(n: int, k: int) -> int:
    return -(-n // k) * k


def _shard(net: Any, device: str) -> None:
    """FSDP (``fully_shard``) over all the processes: every decoder layer its own unit, the rest (embeddings,
    final norm, head) the root's. Each process keeps 1/world of every weight on ``device`` and gathers a
    unit's whole weights only while it runs; the LoRA gradients are reduce-scattered and averaged over the
    ranks (the loop weighs the loss by world: summed, as ``_sum_over_ranks`` sums them unsharded)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    layers = set(getattr(net.get_base_model(), "_no_split_modules", None) or ())
    for module in list(net.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(net, mesh=mesh)


def _shard_optimizer_state(opt: Any) -> None:
    """A checkpoint's whole AdamW moments, cut to this process's shards of the (sharded) weights."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for p, st in opt.state.items():
        if isinstance(p, DTensor):
            for key, v in st.items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[key] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


def _gathered(obj: Any) -> Any:
    """``obj`` (a model: its trainable weights by name; or an optimizer state dict) with whole tensors on the
    CPU; sharded tensors are gathered, which every process must do together."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, torch.nn.Module):
        return {n: _gathered(p.detach()) for n, p in obj.named_parameters() if p.requires_grad}
    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _gathered(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_gathered(v) for v in obj]
    return obj


def _sum_over_ranks(params: list[Any], loss: float, tokens: int, device: str) -> tuple[float, int]:
    """Sum the LoRA gradients (a rank without a micro-batch this step adds zeros), the loss and the token
    count over the ranks."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    totals = torch.tensor([loss, float(tokens)], dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return float(totals[0]), int(totals[1])


# --- fingerprint and checkpoints ------------------------------------------------------------------------


def _fingerprint(config: LoraConfig, ref: ModelRef, dtype: str, examples: list[Example]) -> str:
    """What decides the adapter: the settings (but ``save_every``), the model's content, dtype, examples."""
    what = {"config": config.model_dump(exclude={"save_every"}), "model": ref.key(), "dtype": dtype}
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    for p, c in examples:
        h.update(json.dumps([p, c]).encode() + b"\n")
    return h.hexdigest()


def _latest_checkpoint(out: Path) -> Path | None:
    steps = sorted((out / "checkpoint").glob("step-*"))
    return steps[-1] if steps else None


def _save_checkpoint(
    out: Path,
    net: Any,
    trainable: dict[str, torch.Tensor],
    opt_state: dict[str, Any],
    sched: Any,
    fingerprint: str,
    epoch: int,
    run: dict[str, Any],
) -> None:
    """Write ``out/checkpoint/step-NNNNNNNN`` under a temporary name and rename it; drop older ones."""
    root = out / "checkpoint"
    final = root / f"step-{run['step']:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "trainable": trainable,
        "optimizer": opt_state,
        "scheduler": sched.state_dict(),
        "run": run,
    }
    torch.save(state, tmp / "state.pt")
    net.save_pretrained(tmp / "adapter", state_dict=trainable)
    os.rename(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
