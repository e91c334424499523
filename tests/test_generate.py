"""The engine interface, the transformers back-end on the real SmolLM2, and the generation cache."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tinyforge.data import load_benchmark
from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams
from tinyforge.generate.cache import CachedEngine, GenerationCache, cache_key
from tinyforge.generate.hf import HFEngine, KeyedSampler, keyed_choice, keyed_uniform, sample_key
from tinyforge.generate.models import ModelError, fetch_model, resolve_model

CHAT = [{"role": "user", "content": "Write a Python function that returns the square of a number."}]


@pytest.fixture(scope="session")
def engine() -> HFEngine:
    """SmolLM2-135M-Instruct (the real GGUF, fetched once into the user cache), fp32 on the CPU."""
    fetch_model("smollm2-135m-instruct")
    return HFEngine("smollm2-135m-instruct", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def humaneval() -> list[str]:
    return [t.prompt for t in load_benchmark("humaneval")[:16]]


class Counting(Engine):
    """Passes work to ``inner``, counting the samples asked for; ``die_after`` simulates a kill."""

    def __init__(self, inner: Engine, die_after: int | None = None) -> None:
        self.inner, self.die_after, self.asked = inner, die_after, 0

    def render(self, prompt: Prompt) -> str:
        return self.inner.render(prompt)

    def key(self) -> dict[str, Any]:
        return self.inner.key()

    def plan(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[int]]:
        return self.inner.plan(requests, params)

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        self.asked += len(requests)
        for done, item in enumerate(self.inner.run(requests, params)):
            if done == self.die_after:
                raise KeyboardInterrupt
            yield item


class Echo(Engine):
    """A model-free engine: the completion names the prompt, the sample and the temperature."""

    generation = 0  # with ``pairs``, completions also name how many times ``run`` was called
    pairs = False

    def plan(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[list[int]]:
        if not self.pairs:
            return super().plan(requests, params)
        return [list(range(i, min(i + 2, len(requests)))) for i in range(0, len(requests), 2)]

    def render(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt)

    def key(self) -> dict[str, Any]:
        return {"echo": 1}

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        self.generation += 1
        tag = f"/{self.generation}" if self.pairs else ""
        for i, r in reversed(list(enumerate(requests))):  # any order is allowed
            yield i, Completion(f"{self.render(r.prompt)}#{r.index}@{params.temperature}{tag}", 1, 1, "stop")


# --- the interface ------------------------------------------------------------------------------------


def test_sampling_params() -> None:
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    p = SamplingParams(n=4, temperature=0.8, stop=["\n```"], seed=3)
    assert p.stop == ("\n```",) and not p.greedy
    assert (
        p.key() == SamplingParams(n=1, temperature=0.8, stop=("\n```",), seed=3).key()
    )  # n is no part of a sample
    assert SamplingParams(seed=1, top_p=0.5).key() == SamplingParams(seed=2).key()  # greedy ignores both


def test_generate_groups_samples_in_prompt_order() -> None:
    out = Echo().generate(["a", CHAT], SamplingParams(n=2, temperature=1.0))
    assert [[c.text for c in cs] for cs in out] == [
        ["a#0@1.0", "a#1@1.0"],
        [f"{json.dumps(CHAT)}#0@1.0", f"{json.dumps(CHAT)}#1@1.0"],
    ]


# --- keyed sampling -------------------------------------------------------------------------------------


def test_keyed_uniform_is_a_function_of_key_step_and_token() -> None:
    keys = torch.tensor([sample_key(0, "p", 0), sample_key(0, "p", 1), sample_key(1, "p", 0)])
    vocab = torch.arange(50_000)
    u = keyed_uniform(keys, 5, vocab)
    assert torch.equal(u, keyed_uniform(keys, 5, vocab))
    assert torch.equal(u[1:2], keyed_uniform(keys[1:2], 5, vocab))  # whatever else is in the batch
    assert torch.equal(
        u[:, [7, 9]], keyed_uniform(keys, 5, torch.tensor([[7, 9]] * 3))
    )  # a token's own noise
    assert not torch.equal(u[0], u[1]) and not torch.equal(u, keyed_uniform(keys, 6, vocab))
    assert u.min() > 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01


def test_keyed_sampler_follows_the_distribution() -> None:
    """Frequencies over many keys match softmax(logits / T), and top-p drops the tail."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    rows = 20_000

    def freqs(temperature: float, top_p: float) -> torch.Tensor:
        sampler = KeyedSampler([sample_key(7, "x", i) for i in range(rows)], temperature, top_p, prompt_len=3)
        out = sampler(torch.zeros(rows, 4, dtype=torch.long), logits.expand(rows, -1).clone())
        assert torch.equal((out == 0).sum(1), torch.ones(rows, dtype=torch.long))  # one token left per row
        return torch.bincount(out.argmax(1), minlength=5) / rows

    want = (logits / 0.7).softmax(0)
    assert (freqs(0.7, 1.0) - want).abs().max() < 0.015
    nucleus = freqs(1.0, 0.8)  # p = .61 .22 .14 .08 .03: the first three reach 0.8
    assert nucleus[3:].sum() == 0
    assert (nucleus[:3] - logits[:3].softmax(0)).abs().max() < 0.015


def test_shortlist_draws_the_same_tokens() -> None:
    """The CPU's shortcut (look for the nucleus among the 256 likeliest tokens) changes no draw."""
    torch.manual_seed(0)
    keys, step = torch.tensor([sample_key(0, "p", i) for i in range(16)]), torch.tensor(3)
    for scale in (1.0, 4.0, 12.0):  # nuclei from the whole vocabulary down to a few tokens
        scores = torch.randn(16, 5000) * scale
        for top_p in (0.3, 0.9, 0.999):
            want = keyed_choice(scores, keys, step, 0.8, top_p)
            assert torch.equal(keyed_choice(scores, keys, step, 0.8, top_p, shortlist=256), want)


# --- the transformers engine on SmolLM2 ----------------------------------------------------------------


@pytest.mark.slow
def test_gguf_model_loads_dequantized_and_saves(engine: HFEngine, tmp_path: Path) -> None:
    model = engine.model  # read through the GGUF's converted folder: not flagged as quantized
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert not hasattr(model.config, "quantization_config")
    assert model.dtype == torch.float32 and engine.key()["sha256"] == engine.ref.sha256
    model.save_pretrained(tmp_path)  # refused while transformers thinks the model is quantized
    engine.tokenizer.save_pretrained(tmp_path)
    ref = resolve_model(tmp_path)
    assert ref.kind == "folder" and ref.sha256 != engine.ref.sha256


@pytest.mark.slow
def test_greedy_output_does_not_depend_on_batching(engine: HFEngine, humaneval: list[str]) -> None:
    """16 HumanEval prompts, one at a time and 16 to a batch: the same tokens (bit-identical logits)."""
    params = SamplingParams(max_new_tokens=48)
    outs = {}
    for size in (1, 16):
        engine.batch_size = size
        outs[size] = engine.generate(humaneval, params)
    engine.batch_size = 8
    assert outs[1] == outs[16]
    assert all(c.prompt_tokens == len(engine.encode(p)) for p, (c,) in zip(humaneval, outs[1], strict=True))


@pytest.mark.slow
def test_sampling_is_keyed_per_sample(engine: HFEngine, humaneval: list[str]) -> None:
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=1)
    full = engine.generate(humaneval[:2], params)
    assert len({c.text for c in full[0]}) == 3  # the samples of a prompt differ
    alone = dict(
        engine.run([GenerationRequest(humaneval[1], 2)], params)
    )  # just one of them, in a batch of 1
    assert alone[0] == full[1][2]
    other_seed = engine.generate(humaneval[:1], replace(params, seed=2))
    assert other_seed[0] != full[0]


@pytest.mark.slow
def test_chat_stop_strings_and_finish_reasons(engine: HFEngine) -> None:
    rendered = engine.render(CHAT)
    assert rendered.endswith("<|im_start|>assistant\n") and "square of a number" in rendered
    assert engine.render([*CHAT, {"role": "assistant", "content": "```python\n"}]).endswith("```python\n")
    free = engine.generate([CHAT], SamplingParams(max_new_tokens=80))[0][0]
    assert free.text.startswith("```python\n") and "\n```" in free.text
    stopped = engine.generate([CHAT], SamplingParams(max_new_tokens=80, stop=("\n```",)))[0][0]
    # "```" opens the answer, right after the prompt's "\n": a stop string is matched in the answer only.
    assert stopped.text == free.text[: free.text.index("\n```")]
    assert stopped.finish_reason == "stop" and stopped.completion_tokens < free.completion_tokens
    short = engine.generate([CHAT], SamplingParams(max_new_tokens=5))[0][0]
    assert (short.finish_reason, short.completion_tokens) == ("length", 5)
    assert free.text.startswith(short.text)


@pytest.mark.slow
def test_end_of_sequence_stops(engine: HFEngine) -> None:
    (c,) = engine.generate([[{"role": "user", "content": "Say hello."}]], SamplingParams(max_new_tokens=64))[
        0
    ]
    assert c.finish_reason == "stop" and 0 < c.completion_tokens < 64 and "<|im_end|>" not in c.text


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Could not find a config file")
def test_lora_adapter_is_merged_and_keyed(engine: HFEngine, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(copy.deepcopy(engine.model), config).save_pretrained(tmp_path)
    tuned = HFEngine(engine.ref, adapter=tmp_path)
    assert tuned.key() == {**engine.key(), "adapter": tuned.adapter_sha256} and tuned.adapter_sha256
    params = SamplingParams(max_new_tokens=8)
    assert tuned.generate([CHAT], params) != engine.generate([CHAT], params)


def test_bad_adapter_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a peft adapter folder"):
        HFEngine("smollm2-135m-instruct", adapter=tmp_path)


# --- the cache ---------------------------------------------------------------------------------------------


def test_cache_survives_reopening_and_torn_lines(tmp_path: Path) -> None:
    c = Completion("x = 1", 3, 4, "stop")
    cache = GenerationCache(tmp_path)
    cache.put("k1", c)
    cache.close()
    with open(tmp_path / "completions.jsonl", "a") as f:
        f.write('{"v": 1, "key": "k2", "text": "tor')  # a writer killed mid-record
    cache = GenerationCache(tmp_path)
    assert (cache.get("k1"), cache.get("k2"), len(cache)) == (c, None, 1)
    cache.put("k3", c)
    cache.close()
    assert GenerationCache(tmp_path).get("k3") == c


def test_cache_key_covers_everything_that_decides_the_text() -> None:
    p = SamplingParams(temperature=0.8, seed=1)
    base = cache_key({"sha256": "a"}, "prompt", False, p, 0)
    assert base == cache_key(
        {"sha256": "a"}, "prompt", False, SamplingParams(n=5, temperature=0.8, seed=1), 0
    )
    assert (
        len(
            {
                base,
                cache_key({"sha256": "b"}, "prompt", False, p, 0),
                cache_key({"sha256": "a", "adapter": "c"}, "prompt", False, p, 0),
                cache_key({"sha256": "a"}, "prompt2", False, p, 0),
                cache_key({"sha256": "a"}, "prompt", True, p, 0),
                cache_key({"sha256": "a"}, "prompt", False, SamplingParams(temperature=0.8, seed=2), 0),
                cache_key(
                    {"sha256": "a"}, "prompt", False, SamplingParams(temperature=0.8, seed=1, top_p=0.9), 0
                ),
                cache_key(
                    {"sha256": "a"}, "prompt", False, SamplingParams(temperature=0.8, seed=1, stop=("x",)), 0
                ),
                cache_key({"sha256": "a"}, "prompt", False, p, 1),
            }
        )
        == 9
    )


def test_cached_engine_sends_only_missing_samples(tmp_path: Path) -> None:
    params = SamplingParams(n=3, temperature=1.0)
    inner = Counting(Echo())
    engine = CachedEngine(inner, GenerationCache(tmp_path))
    first = engine.generate(["a"], params)
    assert inner.asked == 3
    both = engine.generate(["a", "b", "b"], params)  # "b" twice: generated once
    assert inner.asked == 6 and both[0] == first[0] and both[1] == both[2]
    assert both == Echo().generate(["a", "b", "b"], params)
    engine.generate(["a", "b"], SamplingParams(n=4, temperature=1.0))  # a larger n adds samples 3 only
    assert inner.asked == 8


def test_cached_engine_regenerates_whole_groups(tmp_path: Path) -> None:
    """An engine whose samples depend on their batch (pairs of requests here) is asked again for every
    whole pair that lacks a sample; a sample already cached keeps its cached text."""
    params = SamplingParams(temperature=1.0)
    echo = Echo()
    echo.pairs = True
    inner = Counting(echo)
    engine = CachedEngine(inner, GenerationCache(tmp_path))
    reqs = [GenerationRequest(p, 0) for p in "abcd"]
    early = dict(engine.run(reqs[2:3], params))[0]  # "c" alone, in generation 1
    out = dict(engine.run(reqs, params))
    assert inner.asked == 1 + 4  # pairs (a, b) and (c, d): c again, so that d's batch is as planned
    assert out[2] == early and early.text.endswith("/1")
    assert all(out[i].text.endswith("/2") for i in (0, 1, 3))
    assert dict(engine.run(reqs, params)) == out and inner.asked == 5


@pytest.mark.slow
def test_killed_run_resumes_from_the_cache(engine: HFEngine, humaneval: list[str], tmp_path: Path) -> None:
    """Generate, die after the first batch, resume in a new engine: same outputs, nothing generated twice."""
    prompts = [*humaneval[:6], CHAT]
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=5)
    reference = engine.generate(prompts, params)

    dying = Counting(engine, die_after=engine.batch_size)
    with pytest.raises(KeyboardInterrupt):
        CachedEngine(dying, GenerationCache(tmp_path)).generate(prompts, params)
    saved = len(GenerationCache(tmp_path))
    assert saved == engine.batch_size  # every completion handed out before the kill, and no other

    resumed = Counting(engine)
    assert CachedEngine(resumed, GenerationCache(tmp_path)).generate(prompts, params) == reference
    assert resumed.asked == 2 * len(prompts) - saved

    rerun = Counting(engine)
    assert CachedEngine(rerun, GenerationCache(tmp_path)).generate(prompts, params) == reference
    assert rerun.asked == 0
    assert len(GenerationCache(tmp_path)) == 2 * len(prompts)


@pytest.mark.slow
def test_resume_forms_the_batches_of_an_uninterrupted_run(humaneval: list[str], tmp_path: Path) -> None:
    """In bfloat16 a sample may depend on its batch. Killed one sample into its second batch, a resumed run
    generates that batch again whole and ends with the text of a run that was never interrupted."""
    engine = HFEngine("smollm2-135m-instruct", device="cpu", dtype="bfloat16", batch_size=4)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=3)
    prompts = humaneval[:6]
    reference = CachedEngine(engine, GenerationCache(tmp_path / "ref")).generate(prompts, params)
    requests = [GenerationRequest(p, i) for p in prompts for i in range(2)]
    batches = engine.plan(requests, params)
    first = len(batches[0])
    with pytest.raises(KeyboardInterrupt):
        CachedEngine(Counting(engine, die_after=first + 1), GenerationCache(tmp_path / "run")).generate(
            prompts, params
        )
    resumed = Counting(engine)
    assert CachedEngine(resumed, GenerationCache(tmp_path / "run")).generate(prompts, params) == reference
    assert resumed.asked == len(requests) - first  # the second batch whole, with its one cached sample
    order = [j for b in batches[1:] for j in sorted(b)]  # whole batches, asked again: planned as they were
    again = engine.plan([requests[j] for j in order], params)
    assert [sorted(order[t] for t in g) for g in again] == [sorted(b) for b in batches[1:]]
