"""The engine interface: prompts and sampling parameters in, completions out.

A prompt is raw text (completed as is) or a chat (a list of ``{"role", "content"}`` messages, rendered by
the model's chat template with the assistant turn opened). Sample ``i`` of a prompt is the unit of work:
engines make each one reproducible from ``(seed, rendered prompt, i)``, whatever else shares its batch, so
a cache can ask for any subset of samples and get the same text a full run would have produced.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tinyforge.generate.models import ModelError

__all__ = [
    "Completion",
    "Engine",
    "GenerationRequest",
    "LocalEngine",
    "Prompt",
    "SamplingParams",
    "free_memory",
    "sample_key",
]

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature=0`` is greedy decoding (then ``top_p`` and ``seed`` play no part)."""

    n: int = 1  # samples per prompt
    temperature: float = 0.0
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens holding this much probability
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()  # the completion ends before the first of these strings (which is dropped)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError("n and max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self) -> dict[str, Any]:
        """What decides the text of a sample besides model and prompt (``n`` does not: sample i is sample i)."""
        d = asdict(self)
        del d["n"]
        if self.greedy:
            d.update(top_p=1.0, seed=0)
        return d


def sample_key(seed: int, prompt: str, index: int) -> int:
    """The 32-bit key that all randomness of one sample derives from (``prompt``: the rendered prompt).

    Every engine derives sample ``index``'s randomness from it alone (the transformers engine seeds its keyed
    sampler with it, a server engine sends it as the request's seed), so sample i does not depend on which
    other samples are asked for.
    """
    digest = hashlib.sha256(json.dumps([seed, prompt, index]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to make: sample number ``index`` of ``prompt``."""

    prompt: Prompt
    index: int = 0


@dataclass(frozen=True)
class Completion:
    """One generated sample. ``finish_reason`` is ``stop`` (end of sequence or a stop string) or ``length``."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # tokens generated, up to the stop string or end of sequence (not counted)
    finish_reason: Literal["stop", "length"]


#: ``peek(position, text so far)``: what ``Engine.run_peeking`` calls for samples still being generated.
Peek = Callable[[int, str], None]


class Engine(ABC):
    """A model that completes prompts. Back-ends implement ``render``, ``key`` and ``run``."""

    #: Whether ``with_adapter`` can swap a LoRA adapter into this engine's loaded model (vLLM). Where not, a
    #: model with an adapter is loaded as an engine of its own.
    swaps_adapters: bool = False
    #: Whether ``run_peeking`` shows the text of samples still being generated (vLLM). Where not, it is ``run``.
    peeks: bool = False

    def with_adapter(self, adapter: str | os.PathLike[str] | None) -> Engine:
        """A view of this engine that generates with ``adapter`` (None: none) on the same loaded model; only
        where ``swaps_adapters``."""
        raise ModelError(f"{type(self).__name__} cannot swap adapters into a loaded model")

    @abstractmethod
    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees for ``prompt`` (a chat goes through the chat template)."""

    @abstractmethod
    def key(self) -> dict[str, Any]:
        """What identifies this engine's outputs: model and its file hash or revision, adapter hash, dtype."""

    @abstractmethod
    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        """Yield ``(position in requests, completion)`` for every request, in any order, as each is done."""

    def run_peeking(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek
    ) -> Iterator[tuple[int, Completion]]:
        """``run``, on an engine that ``peeks`` also calling ``peek(position, text so far)`` now and then for
        samples still being generated, from the thread that iterates. A caller can start on work the final
        text will likely need (``tinyforge eval`` verifies a function the model has finished writing), but must
        treat the text as unfinished: the sample's completion comes as usual."""
        return self.run(requests, params)

    def plan(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[int]]:
        """The groups (positions in ``requests``) that ``run`` generates together, where a sample's text may
        depend on which samples share its group (its batch). ``run`` on the requests of some whole groups
        must form those same groups again. The default, one group per request, claims no such dependence.

        The generation cache uses it so that a resumed run regenerates whole groups, as they were formed in
        a run that was never interrupted, and gets the same text where the engine is deterministic."""
        return [[i] for i in range(len(requests))]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in order."""
        requests = [GenerationRequest(p, i) for p in prompts for i in range(params.n)]
        done: dict[int, Completion] = dict(self.run(requests, params))
        return [[done[j * params.n + i] for i in range(params.n)] for j in range(len(prompts))]


class LocalEngine(Engine):
    """An engine over a model of our own (not a server): its identity is the model's content hash (or hub
    commit), the adapter's hash and the dtype; chats are rendered with the model's own chat template.
    Subclasses set ``ref`` (a ``models.ModelRef``), ``tokenizer``, ``adapter_sha256`` and ``dtype``."""

    ref: Any
    tokenizer: Any
    adapter_sha256: str | None
    dtype: str

    def key(self) -> dict[str, Any]:
        return {**self.ref.key(), "adapter": self.adapter_sha256, "dtype": self.dtype}

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.tokenizer.chat_template:
            raise ModelError(
                f"{self.ref.name or self.ref.path} has no chat template; give it raw text prompts"
            )
        # A chat that ends with an assistant message is continued from it rather than answered.
        answer = prompt[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=not answer, continue_final_message=answer
        )

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt; a rendered chat holds its special tokens, raw text gets the usual ones."""
        return self.tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str)).input_ids


def free_memory() -> None:
    """Collect garbage and hand cached GPU memory back, so that the next model (an engine, a training run)
    finds it free."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
