"""The transformers back-end: batched ``generate`` with left padding, stop strings and keyed sampling.

Batching. Prompts are sorted by length and cut into batches, left-padded (transformers derives positions
from the attention mask). With ``batch_invariant`` (the default on the CPU) a prompt's output does not
depend on its batch, to the bit. Two things made fp32 logits differ by ~1e-5 between a prompt alone and in
a batch (position ids and masks were right): (1) the amount of left padding, which shifts where the
prompt's keys fall in the attention's reductions and so changes their rounding; (2) MKL, which rounds a
row of an fp32 matrix product differently when it is multiplied in a block of fewer than 4 rows (and, with
2 threads, of 5-7 or 9-11). So each prompt is padded to its own length rounded up to ``pad_multiple``, a
batch holds prompts of one such width only, and batches are filled up to a multiple of 4 rows. The price
is smaller batches when prompt lengths vary. On a GPU batches mix widths (its kernels are not
batch-invariant anyway), and with ``compile`` (the default there) the forward pass is compiled over a
static key/value cache. In bfloat16 a prompt's output may depend on its batch even on the CPU; ``plan``
tells the generation cache which batches to form again so that a resumed run gets the same text.

Stop strings are matched on the generated tokens only (``GeneratedOnly``), so a stop string that would
straddle the prompt and the completion, such as "\n```" after a chat prompt, does not end it at once.

Sampling does not use torch's global generator. Each sample has a 32-bit key from ``(seed, rendered prompt,
sample index)``; at every step its token is drawn by the Gumbel-max trick with noise that is a pure
function of (key, step, token id), and a logits processor leaves only that token for greedy decoding to
take. A sample is then the same whichever samples share its batch, and on any device up to the logits'
rounding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria, StopStringCriteria

from tinyforge.generate.base import Completion, GenerationRequest, LocalEngine, SamplingParams, sample_key
from tinyforge.generate.models import ModelError, ModelRef, load_model, resolve_model, sha256_path
from tinyforge.generate.sanitize import cut_at_stop

__all__ = ["HFEngine", "sample_key"]

ROW_MULTIPLE = 4  # batch-invariant batches are filled up to a multiple of this many rows, the last repeated


class HFEngine(LocalEngine):
    """A transformers model (any ``resolve_model`` spec), optionally with a peft LoRA adapter merged in.

    Defaults on a GPU / the CPU: ``dtype`` bfloat16 / float32, ``batch_size`` 256 / 8, ``pad_multiple``
    64 / 32 tokens, ``compile`` (static cache and torch.compile) on / off, ``batch_invariant`` off / on.
    """

    def __init__(
        self,
        model: str | ModelRef,
        adapter: str | Path | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        pad_multiple: int | None = None,
        compile: bool | None = None,
        batch_invariant: bool | None = None,
    ) -> None:
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
        self.ref = model if isinstance(model, ModelRef) else resolve_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.gpu = self.device.startswith("cuda")
        self.dtype = dtype or ("bfloat16" if self.gpu else "float32")
        self.batch_size = batch_size or (256 if self.gpu else 8)
        self.pad_multiple = pad_multiple or (64 if self.gpu else 32)
        self.compile = self.gpu if compile is None else compile
        self.batch_invariant = not self.gpu if batch_invariant is None else batch_invariant
        self.adapter_sha256 = sha256_path(Path(adapter)) if adapter is not None else None
        self.model, self.tokenizer = load_model(self.ref, self.dtype, self.device)
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter)).merge_and_unload().eval()
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = sorted({tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
        self._ends = {*self.eos_ids, tok.pad_token_id}  # finished rows are filled with padding

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        rows = self._rows(requests, params)
        for batch in self.plan(requests, params, rows):
            outs = self._generate([rows[i][0] for i in batch], [rows[i][1] for i in batch], params)
            yield from zip(batch, outs, strict=True)

    def plan(
        self,
        requests: Sequence[GenerationRequest],
        params: SamplingParams,
        rows: list[tuple[list[int], int]] | None = None,
    ) -> list[list[int]]:
        """The batches: prompts sorted by length (stable; the longest first) and cut into runs of at most
        ``batch_size``, and with ``batch_invariant`` of one padded width. Taking whole batches out of the
        sorted order leaves the others as they were, so planning the requests of some batches again forms
        the same batches."""
        rows = rows if rows is not None else self._rows(requests, params)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        batches: list[list[int]] = []
        for i in order:
            b = batches[-1] if batches else None
            same_width = b and self.width(rows[b[0]][0]) == self.width(rows[i][0])
            if b and len(b) < self.batch_size and (same_width or not self.batch_invariant):
                b.append(i)
            else:
                batches.append([i])
        return batches

    def _rows(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[tuple[list[int], int]]:
        """``(token ids, sample key)`` of each request."""
        encoded: dict[str, list[int]] = {}
        rows = []
        for r in requests:
            text = self.render(r.prompt)
            if text not in encoded:
                encoded[text] = self.encode(r.prompt)
            rows.append((encoded[text], sample_key(params.seed, text, r.index)))
        return rows

    def width(self, prompt: list[int]) -> int:
        """The padded length of a prompt: its own length rounded up to a multiple of ``pad_multiple``."""
        return math.ceil(len(prompt) / self.pad_multiple) * self.pad_multiple

    @torch.inference_mode()
    def _generate(
        self, prompts: list[list[int]], keys: list[int], params: SamplingParams
    ) -> list[Completion]:
        tok = self.tokenizer
        width = max(map(self.width, prompts))
        n = len(prompts)
        fill = -n % ROW_MULTIPLE if self.batch_invariant else 0
        prompts, keys = prompts + prompts[-1:] * fill, keys + keys[-1:] * fill
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_ids,
            pad_token_id=tok.pad_token_id,
            cache_implementation="static" if self.compile else None,
            disable_compile=not self.compile,
        )
        processors = [] if params.greedy else [KeyedSampler(keys, params.temperature, params.top_p, width)]
        stop = [s for s in params.stop if s]
        criteria = [GeneratedOnly(StopStringCriteria(tok, stop), width)] if stop else []
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
        )
        return [
            self._completion(len(p), row[width:].tolist(), params)
            for p, row in zip(prompts[:n], out[:n].cpu(), strict=True)
        ]

    def _completion(self, prompt_tokens: int, generated: list[int], params: SamplingParams) -> Completion:
        """Text up to the end of sequence or the first stop string; ``length`` only if neither came."""
        n = next((j for j, t in enumerate(generated) if t in self._ends), len(generated))
        full = self.tokenizer.decode(generated[:n], skip_special_tokens=True)
        text = cut_at_stop(full, params.stop)
        stopped = len(text) < len(full)
        ran_out = n == params.max_new_tokens and not stopped
        return Completion(text, prompt_tokens, n, "length" if ran_out else "stop")


class GeneratedOnly(StoppingCriteria):
    """Apply ``inner`` to the generated tokens only (the prompt is ``prompt_len`` tokens, padding included)."""

    def __init__(self, inner: StoppingCriteria, prompt_len: int) -> None:
        self.inner, self.prompt_len = inner, prompt_len

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return self.inner(input_ids[:, self.prompt_len :], scores, **kwargs)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for 32-bit values held in int64, in 16-bit halves so that nothing overflows."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (the 'lowbias32' constants found by Chris Wellons' hash prospector)."""
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(keys: torch.Tensor, step: torch.Tensor | int, tokens: torch.Tensor) -> torch.Tensor:
    """Uniform noise in (0, 1) for each row and token id (``tokens``: one row of ids, or one per row): a pure
    function of (row key, step, token id)."""
    row = _mix32(_mix32(keys) ^ step)
    bits = _mix32(row[:, None] ^ tokens) >> 8
    return (bits.float() + 0.5) / (1 << 24)


def _gumbel_argmax(
    logits: torch.Tensor, keys: torch.Tensor, step: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    return (logits - torch.log(-torch.log(keyed_uniform(keys, step, tokens)))).argmax(-1, keepdim=True)


def keyed_choice(
    scores: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor,
    temperature: float,
    top_p: float,
    shortlist: int = 0,
) -> torch.Tensor:
    """The next token of each row, drawn from softmax(scores / temperature) by the Gumbel-max trick with the
    row's keyed noise. With ``top_p < 1`` only the nucleus can be drawn: the tokens at least as likely as
    the one at which the most likely tokens first hold ``top_p`` of the probability (ties all kept).

    ``shortlist`` > 0 looks for the nucleus among that many most likely tokens first, falling back to a
    sort of the whole vocabulary when it does not fit; the result is the same, only faster on a CPU.
    """
    logits = scores.float() / temperature
    vocab = torch.arange(logits.shape[1], device=logits.device)
    if top_p >= 1:
        return _gumbel_argmax(logits, keys, step, vocab)
    probs = logits.softmax(-1)
    if shortlist:
        top, ids = probs.topk(min(shortlist, probs.shape[1]))
        cut = top.gather(1, (top.cumsum(-1) < top_p).sum(-1, keepdim=True).clamp(max=top.shape[1] - 1))
        if (cut > top[:, -1:]).all():  # every row's nucleus, ties included, lies inside the shortlist
            inside = logits.gather(1, ids).masked_fill(top < cut, -math.inf)
            return ids.gather(1, _gumbel_argmax(inside, keys, step, ids))
    ranked = probs.sort(dim=-1, descending=True).values
    cut = ranked.gather(1, (ranked.cumsum(-1) < top_p).sum(-1, keepdim=True).clamp(max=ranked.shape[1] - 1))
    return _gumbel_argmax(logits.masked_fill(probs < cut, -math.inf), keys, step, vocab)


class KeyedSampler(LogitsProcessor):
    """Sample each row from its own keyed noise (``keyed_choice``, compiled on a GPU); keep only that token."""

    def __init__(self, keys: list[int], temperature: float, top_p: float, prompt_len: int) -> None:
        self.keys = torch.tensor(keys, dtype=torch.long)
        self.temperature, self.top_p, self.prompt_len = temperature, top_p, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.keys = self.keys.to(scores.device)
        step = torch.tensor(input_ids.shape[1] - self.prompt_len, device=scores.device)
        if scores.is_cuda:
            choice = _compiled_choice()(scores, self.keys, step, self.temperature, self.top_p)
        else:
            choice = keyed_choice(scores, self.keys, step, self.temperature, self.top_p, shortlist=256)
        return torch.full_like(scores, -math.inf).scatter_(1, choice, 0.0)


@functools.cache
def _compiled_choice() -> Any:
    return torch.compile(keyed_choice, dynamic=True)
