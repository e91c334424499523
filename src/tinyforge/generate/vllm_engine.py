"""The vLLM back-end: offline ``vllm.LLM`` over a transformers folder, completions yielded as each finishes.

Model. vLLM reads transformers folders, not our GGUF files, so a GGUF model is first converted once with
``hf_folder`` (dequantized to ``dtype`` and saved). Prompts are rendered and tokenized here with the
model's own transformers tokenizer, exactly as ``HFEngine`` does (a chat through its chat template, a final
assistant message continued rather than answered), and vLLM gets the token ids (``TokensPrompt``): what the
cache keys on (the rendered text) is what the model saw, and both back-ends see the same tokens. A peft
LoRA adapter is served by vLLM's LoRA support (``enable_lora=True``, one ``LoRARequest`` per request), not
merged; its folder hash is part of ``key()``.

Streaming. ``LLM.generate`` returns when every request is done. To hand each completion on as soon as it is
finished (so the caller verifies programs in the sandbox while the GPU keeps generating), ``run`` adds the
requests with ``LLM.enqueue`` (in vLLM 0.26 it renders and adds them without running the engine, and marks
them ``FINAL_ONLY``; a vLLM without it gets them through ``llm_engine.add_request``) and then drives
``llm.llm_engine.step()`` itself, as ``LLM.wait_for_completion`` does inside (the loop in
``OfflineInferenceMixin._run_engine``), yielding each request whose final output comes back. Checked against the vLLM 0.26.0 source: ``RequestOutput.request_id`` is the id the request was
added under (``LLM`` uses a decimal counter), while ``enqueue`` returns the internal id, that id plus
``-`` and 8 random characters (``InputProcessor.assign_request_id``); ``LLMEngine.abort_request`` takes
the former. With vLLM's default multiprocess engine core (``VLLM_ENABLE_V1_MULTIPROCESSING=1``) the
scheduler and the GPU run in their own process and keep going while the caller works on a completion;
``step()`` only collects outputs, detokenizes them and matches stop strings. So keep the consumer quick
(hand completions to a worker pool): a request that has hit a stop string is only aborted at the next
``step()``, and until then the GPU extends it for nothing (its text is still cut right). Two alternatives
were rejected: ``LLM.generate`` on chunks of requests in a background thread drains the batch at the end
of every chunk, and a thread that drives ``step()`` needs locking around the engine and careful shutdown.
A run whose generator is closed early (an exception or ``break`` in the caller) aborts what is left.

Peeks. ``run_peeking`` also shows the caller the text so far of each request still running, every
``PEEK_EVERY`` seconds: the text vLLM's output processor has detokenized for it (``llm_engine.
output_processor.request_states[internal id].detokenizer.output_text``, vLLM 0.26; it decodes as the
transformers tokenizer does, and checks stop strings on it), less a possible start of a stop string. Reading
it costs nothing: vLLM detokenizes every step anyway. A vLLM without that state is run without peeks.

Sampling. Sample ``i`` of a prompt gets vLLM's per-request ``seed`` = ``sample_key(seed, rendered prompt,
i)``; vLLM gives each seeded request its own ``torch.Generator``, so its noise does not depend on what else
is in the batch (the logits still do, slightly, in bf16: a near-tie can flip a token; vLLM's
``VLLM_BATCH_INVARIANT=1`` removes that at a cost in speed). The price: vLLM 0.26 draws the noise of
seeded requests one row at a time (a Python loop in ``random_sample``, one kernel per request and step),
which ``bench/generate.py`` measures ("per-sample seeds" row). Greedy requests carry no seed, and identical
ones (the same rendered prompt at ``temperature=0``) are generated once. The samples differ from
``HFEngine``'s (another sampler), so at ``temperature > 0`` the two back-ends give different texts for the
same ``(seed, i)``; greedy texts agree up to bf16 rounding.

Completions are post-processed like ``HFEngine``'s: the generated token ids are decoded with the
transformers tokenizer (special tokens skipped) up to the end-of-sequence token, cut at the first stop
string (``cut_at_stop``; vLLM has cut the text there already), and ``completion_tokens`` counts the
generated tokens without the end-of-sequence token. The end tokens are the tokenizer's end-of-sequence
token, the generation config's and the padding token (``HFEngine`` ends a completion at the padding token
too: Qwen's padding token is ``<|endoftext|>``, which ends a document, while its end-of-sequence token is
``<|im_end|>``); they are passed to vLLM as ``stop_token_ids``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tinyforge.generate.base import (
    Completion,
    GenerationRequest,
    LocalEngine,
    Peek,
    SamplingParams,
    free_memory,
    sample_key,
)
from tinyforge.generate.models import ModelError, ModelRef, hf_folder, resolve_model, sha256_path
from tinyforge.generate.sanitize import cut_at_stop

__all__ = ["INSTALL_HINT", "VLLMEngine", "import_vllm"]

# Peeks (``run_peeking``): every PEEK_EVERY seconds, the text so far of each request still running.
PEEK_EVERY = 0.25

INSTALL_HINT = (
    "vLLM is not installed: `pip install vllm` on a Linux machine with a CUDA GPU, or use --backend hf"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line ``ModelError`` saying what to do."""
    try:
        import vllm
    except ModuleNotFoundError as e:
        if e.name in (None, "vllm") or str(e.name).startswith("vllm."):
            raise ModelError(INSTALL_HINT) from None
        raise ModelError(
            f"vLLM cannot be imported: {e} (install what it needs, or use --backend hf)"
        ) from None
    except Exception as e:  # a broken install: a CUDA or torch mismatch raises all sorts of things
        why = " ".join(str(e).split())[:200]
        raise ModelError(
            f"vLLM cannot be imported ({type(e).__name__}: {why}); or use --backend hf"
        ) from None
    return vllm


class VLLMEngine(LocalEngine):
    """A model (any ``resolve_model`` spec, or a ``ModelRef``) served by ``vllm.LLM`` on the GPU(s).

    ``gpu_memory_utilization`` is the share of the GPU's memory vLLM takes for weights and KV cache (it must
    be free at start). ``max_model_len`` bounds prompt plus completion. ``max_lora_rank`` must be at least
    the adapter's rank (vLLM allows 1, 8, 16, 32, 64, ...). ``seed`` seeds vLLM's global generator, which
    only unseeded requests use (none of ours). Other keyword arguments go to ``vllm.LLM`` as they are (say
    ``enforce_eager=True`` to skip CUDA graph capture).
    """

    def __init__(
        self,
        model: str | ModelRef,
        adapter: str | Path | None = None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        max_lora_rank: int = 32,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enable_lora: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        self.llm: Any = None
        vllm = import_vllm()  # first: without vLLM, fail at once, before any model is fetched or converted
        adapter_path = Path(adapter).resolve() if adapter is not None else None
        if adapter_path is not None:
            config = adapter_path / "adapter_config.json"
            if not config.is_file():
                raise ModelError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
            rank = json.loads(config.read_text()).get("r")
            if isinstance(rank, int) and rank > max_lora_rank:
                raise ModelError(f"{adapter} has LoRA rank {rank}; pass max_lora_rank >= {rank}")
        self.ref = model if isinstance(model, ModelRef) else resolve_model(model)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.adapter_sha256 = sha256_path(adapter_path) if adapter_path is not None else None
        self.folder = hf_folder(self.ref, dtype)
        revision = self.ref.sha256 if self.ref.kind == "hub" else None

        from transformers import AutoTokenizer, GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), revision=revision)
        tok = self.tokenizer
        try:
            eos = GenerationConfig.from_pretrained(str(self.folder), revision=revision).eos_token_id
        except (OSError, ValueError):  # no generation_config.json
            eos = None
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ends = [tok.eos_token_id, pad, *(eos if isinstance(eos, list) else [eos])]
        self._ends = frozenset(int(t) for t in ends if t is not None)

        self._vllm = vllm
        self.lora: Any = None
        kwargs: dict[str, Any] = {
            "model": str(self.folder),
            "tokenizer": str(self.folder),
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if revision is not None:
            kwargs.update(revision=revision, tokenizer_revision=revision)
        self.max_lora_rank = max_lora_rank
        self._lora_ids = itertools.count(1)
        self._owner = True
        self.lora_enabled = adapter_path is not None or enable_lora
        if self.lora_enabled:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if adapter_path is not None:
            self.lora = self._lora_request(adapter_path)
        kwargs.update(llm_kwargs)
        # vLLM forks its engine process by default, and a forked child cannot use CUDA once this process
        # touched it (converting a GGUF or checking for a GPU may): start it fresh instead.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.llm = vllm.LLM(**kwargs)
        self._running = False
        self._ids = itertools.count()  # request ids for vLLM versions without LLM.enqueue

    def _lora_request(self, path: Path) -> Any:
        from vllm.lora.request import LoRARequest

        sha = sha256_path(path)
        return LoRARequest(f"adapter-{sha[:16]}", next(self._lora_ids), str(path))

    swaps_adapters = True  # with ``enable_lora=True`` (``with_adapter`` says so otherwise)
    peeks = True

    def with_adapter(self, adapter: str | os.PathLike[str] | None) -> VLLMEngine:
        """The same running model with another LoRA adapter (None: none), without starting vLLM again: the
        engine must have been made with ``enable_lora=True`` (or an adapter). The view shares this engine's
        vLLM, so use one of them at a time; closing the view does nothing, closing this engine ends both."""
        import copy

        view = copy.copy(self)
        view._owner = False
        if adapter is None:
            view.lora, view.adapter_sha256 = None, None
            return view
        path = Path(adapter).resolve()
        config = path / "adapter_config.json"
        if not config.is_file():
            raise ModelError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
        if not self.lora_enabled:
            raise ModelError("this VLLMEngine was started without LoRA support: pass enable_lora=True")
        rank = json.loads(config.read_text()).get("r")
        if isinstance(rank, int) and rank > self.max_lora_rank:
            raise ModelError(f"{adapter} has LoRA rank {rank}; start the engine with max_lora_rank >= {rank}")
        view.adapter_sha256 = sha256_path(path)
        view.lora = self._lora_request(path)
        return view

    # --- the Engine interface ----------------------------------------------------------------------------

    def run_peeking(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek
    ) -> Iterator[tuple[int, Completion]]:
        return self.run(requests, params, peek)

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek | None = None
    ) -> Iterator[tuple[int, Completion]]:
        if self.llm is None:
            raise ModelError("this VLLMEngine was closed")
        if self._running:
            raise RuntimeError("a VLLMEngine runs one request set at a time; finish or close the other run")
        key_of = sample_key
        encoded: dict[str, list[int]] = {}
        slot: dict[tuple[str, int | None], int] = {}  # (rendered prompt, sample key) -> vLLM request
        positions: list[list[int]] = []  # vLLM request -> positions in requests
        prompts: list[dict[str, Any]] = []
        vparams: list[Any] = []
        for pos, r in enumerate(requests):
            text = self.render(r.prompt)
            if text not in encoded:
                encoded[text] = self.encode(r.prompt)
                if len(encoded[text]) >= self.max_model_len:
                    raise ModelError(
                        f"a prompt of {len(encoded[text])} tokens does not fit max_model_len={self.max_model_len}"
                    )
            key = None if params.greedy else key_of(params.seed, text, r.index)
            j = slot.setdefault((text, key), len(positions))
            if j == len(positions):
                positions.append([])
                prompts.append({"prompt_token_ids": encoded[text], "prompt": text})
                vparams.append(self._sampling_params(params, key))
            positions[j].append(pos)
        if prompts:
            yield from self._stream(prompts, vparams, positions, params, peek)

    # --- vLLM ----------------------------------------------------------------------------------------------

    def _sampling_params(self, params: SamplingParams, key: int | None) -> Any:
        """vLLM's parameters for one sample; ``key`` is its seed (None when greedy)."""
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=1.0 if key is None else params.top_p,
            seed=key,
            max_tokens=params.max_new_tokens,
            stop=[s for s in params.stop if s] or None,
            stop_token_ids=sorted(self._ends),
            skip_special_tokens=True,
        )

    def _submit(self, prompts: list[dict[str, Any]], vparams: list[Any]) -> tuple[list[str], list[str]]:
        """Add the requests to vLLM (which starts on them at once): the ids their outputs will carry, and
        vLLM's internal ids (what its output processor keys their state on)."""
        if hasattr(self.llm, "enqueue"):
            internal = [
                str(rid) for rid in self.llm.enqueue(prompts, vparams, lora_request=self.lora, use_tqdm=False)
            ]
            ids = [rid.split("-", 1)[0] for rid in internal]  # "<counter>-<random>" -> "<counter>"
            if len(set(ids)) != len(ids):
                self.llm.llm_engine.abort_request(sorted(set(ids)))
                raise ModelError(f"unexpected vLLM request ids {internal[:3]}; is this vLLM 0.26?")
            return ids, internal
        ids = []  # older vLLM: add to the engine directly (it still takes raw prompts there)
        try:
            for p, sp in zip(prompts, vparams, strict=True):
                rid = f"tinyforge-{next(self._ids)}"
                self.llm.llm_engine.add_request(rid, p, sp, lora_request=self.lora)
                ids.append(rid)
        except BaseException:
            if ids:
                self.llm.llm_engine.abort_request(ids)
            raise
        return ids, ids

    def _stream(
        self,
        prompts: list[dict[str, Any]],
        vparams: list[Any],
        positions: list[list[int]],
        params: SamplingParams,
        peek: Peek | None = None,
    ) -> Iterator[tuple[int, Completion]]:
        engine = self.llm.llm_engine
        self._running = True
        pending: set[int] = set()
        ids: list[str] = []
        try:
            ids, internal = self._submit(prompts, vparams)
            index = {rid: j for j, rid in enumerate(ids)}
            pending = set(range(len(ids)))
            # The state vLLM's output processor keeps of each request (its text so far): where peeks look.
            states = getattr(getattr(engine, "output_processor", None), "request_states", None)
            stops = [s for s in params.stop if s]
            hold = max(map(len, stops), default=1) - 1
            peeked = time.monotonic()
            while pending:
                if not engine.has_unfinished_requests():
                    raise ModelError(f"vLLM stopped with {len(pending)} of {len(ids)} requests unanswered")
                for out in engine.step():
                    j = index.get(out.request_id)
                    if j is None or j not in pending or not out.finished:
                        continue
                    pending.discard(j)
                    completion = self._completion(out, params)
                    for pos in positions[j]:
                        yield pos, completion
                if peek is not None and isinstance(states, dict) and time.monotonic() - peeked >= PEEK_EVERY:
                    for j in sorted(pending):
                        if (text := self._text_so_far(states.get(internal[j]), stops, hold)) is not None:
                            for pos in positions[j]:
                                peek(pos, text)
                    peeked = time.monotonic()
        finally:
            self._running = False
            if pending:  # closed early (or failed): stop the GPU work nobody will read
                engine.abort_request([ids[j] for j in sorted(pending)])

    @staticmethod
    def _text_so_far(state: Any, stops: list[str], hold: int) -> str | None:
        """The text of a running request (vLLM's output processor state) that its completion will start with:
        what vLLM has detokenized so far, less the last ``hold`` characters, which could be the start of a
        stop string (what vLLM holds back when it streams). None when there is none (yet)."""
        text = getattr(getattr(state, "detokenizer", None), "output_text", None)
        if not isinstance(text, str):
            return None
        cut = cut_at_stop(text, stops)
        if hold and len(cut) == len(text):
            cut = cut[: len(cut) - hold]
        return cut or None

    def _completion(self, out: Any, params: SamplingParams) -> Completion:
        """A ``Completion`` from a finished ``vllm.RequestOutput`` (one sample), post-processed as HFEngine's."""
        o = out.outputs[0]
        if o.finish_reason not in ("stop", "length"):
            raise ModelError(f"vLLM ended a request with finish reason {o.finish_reason!r}")
        generated = list(o.token_ids)
        n = len(generated)
        # Ended by an end token (stop_reason None: end of sequence; an int: one of stop_token_ids), which
        # vLLM keeps as the last token id; a stop string gives its text as stop_reason.
        if (
            o.finish_reason == "stop"
            and not isinstance(o.stop_reason, str)
            and n
            and generated[-1] in self._ends
        ):
            n -= 1
        full = self.tokenizer.decode(generated[:n], skip_special_tokens=True)
        text = cut_at_stop(full, params.stop)
        stopped = o.finish_reason == "stop" or len(text) < len(full)
        return Completion(text, len(out.prompt_token_ids or ()), n, "stop" if stopped else "length")

    # --- lifetime ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut vLLM down and give its GPU memory back (the engine cannot be used afterwards). A view made by
        ``with_adapter`` only forgets its engine."""
        llm, self.llm = self.llm, None
        if not getattr(self, "_owner", True):
            return
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        free_memory()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
