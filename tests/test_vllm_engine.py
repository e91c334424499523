"""The vLLM back-end and the GGUF -> transformers folder conversion it needs.

Three kinds of tests:

* here, on the CPU: a missing vLLM is a one-line ``ModelError``; ``hf_folder`` converts the real SmolLM2
  GGUF into a folder that plain transformers loads and that decodes like the GGUF-loaded model;
* here, against a fake ``vllm`` module: ``VLLMEngine``'s own logic (request ids, streaming order, greedy
  de-duplication, seeds, finish reasons, aborts, LoRA plumbing). The fake copies what the vLLM 0.26.0
  source does where the engine depends on it: ``LLM.enqueue`` returns internal ids ``<counter>-<8 random
  characters>`` while ``RequestOutput.request_id`` is ``<counter>``; an output whose request ended on an end
  token keeps that token as its last id, with ``stop_reason`` None (end of sequence) or the token id;
  a stop string is cut from ``text`` and given as ``stop_reason``;
* on a GPU with vLLM installed (skipped elsewhere): greedy agreement with ``HFEngine``, keyed sampling
  across batch compositions, a LoRA adapter, and completions arriving before the run ends. The model is
  ``$TINYFORGE_VLLM_TEST_MODEL`` (default ``qwen2.5-coder-0.5b-instruct``).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tinyforge.data import load_benchmark
from tinyforge.generate import models, prompts, vllm_engine
from tinyforge.generate.base import Completion, GenerationRequest, SamplingParams
from tinyforge.generate.hf import HFEngine, sample_key
from tinyforge.generate.models import ModelError, ModelRef, hf_folder, load_model, resolve_model, sha256_path
from tinyforge.generate.vllm_engine import INSTALL_HINT, VLLMEngine

SMOL = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Write a Python function that returns the square of a number."}]

# As the shared tools' notes say to run vLLM on the GPU machine (set before vLLM is imported).
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


# --- no vLLM -------------------------------------------------------------------------------------------


def test_missing_vllm_is_a_one_line_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked before anything else: no model is resolved, fetched or converted first."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, installed or not
    start = time.monotonic()
    with pytest.raises(ModelError) as e:
        VLLMEngine("no-such-model-anywhere")
    assert str(e.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
    assert "pip install vllm" in INSTALL_HINT and "--backend hf" in INSTALL_HINT
    assert time.monotonic() - start < 2


# --- hf_folder -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_ref() -> ModelRef:
    """The real SmolLM2 GGUF, fetched once into the user cache (~94 MiB)."""
    return resolve_model(SMOL)


@pytest.fixture(scope="module")
def smol_hf(smol_ref: ModelRef, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted by ``hf_folder`` (bf16) into a fresh cache folder."""
    cache = tmp_path_factory.mktemp("tinyforge-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFORGE_CACHE_DIR", str(cache))
        mp.setenv("TINYFORGE_MODELS_DIR", str(cache / "models"))  # whatever another fixture set
        folder = hf_folder(smol_ref)
    assert isinstance(folder, Path)
    return folder


@pytest.mark.slow
def test_hf_folder_converts_a_gguf_once(
    smol_ref: ModelRef, smol_hf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    want_name = f"{smol_ref.sha256[:16]}-bfloat16-transformers-{transformers.__version__}"
    assert smol_hf.name == want_name and smol_hf.parent.name == "hf"
    assert [p.name for p in smol_hf.parent.iterdir()] == [smol_hf.name]  # no temporary folder left
    config = json.loads((smol_hf / "config.json").read_text())
    assert "quantization_config" not in config
    # Plain transformers, no GGUF involved, gives the GGUF-loaded model's greedy tokens (same dtype).
    folder_model = AutoModelForCausalLM.from_pretrained(smol_hf, dtype=torch.bfloat16).eval()
    folder_tok = AutoTokenizer.from_pretrained(smol_hf)
    gguf_model, gguf_tok = models._dequantize(smol_ref, "bfloat16")
    prompt = load_benchmark("humaneval")[2].prompt
    ids = gguf_tok(prompt, return_tensors="pt").input_ids
    assert folder_tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert folder_tok.apply_chat_template(CHAT, tokenize=False) == gguf_tok.apply_chat_template(
        CHAT, tokenize=False
    )
    with torch.inference_mode():
        want = gguf_model.generate(ids, max_new_tokens=24, do_sample=False)
        got = folder_model.generate(ids, max_new_tokens=24, do_sample=False)
    assert got.tolist() == want.tolist()
    # Once converted, the folder is reused: nothing is loaded again.
    monkeypatch.setenv("TINYFORGE_MODELS_DIR", str(smol_hf.parent.parent))

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_dequantize", no_load)
    assert hf_folder(smol_ref) == smol_hf
    # load_model reads a GGUF model through that folder: the dequantized weights, bit for bit.
    model, _ = load_model(smol_ref, "bfloat16")
    want_weights, got_weights = gguf_model.state_dict(), model.state_dict()
    assert want_weights.keys() == got_weights.keys()
    assert all(torch.equal(want_weights[k], got_weights[k]) for k in want_weights)


def test_hf_folder_passes_folders_and_hub_ids_through(tmp_path: Path) -> None:
    assert hf_folder(ModelRef("folder", str(tmp_path), "abc")) == tmp_path
    assert hf_folder(ModelRef("hub", "org/name", "0" * 40)) == "org/name"


def test_a_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TINYFORGE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TINYFORGE_MODELS_DIR", raising=False)  # so models live under the cache above

    class Broken:
        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    monkeypatch.setattr(models, "_dequantize", lambda ref, dtype: (Broken(), Broken()))
    ref = ModelRef("gguf", str(tmp_path), "f" * 64, "x.gguf")
    with pytest.raises(OSError, match="disk full"):
        hf_folder(ref)
    assert list((tmp_path / "models" / "hf").iterdir()) == []


# --- VLLMEngine against a fake vllm module -----------------------------------------------------------


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class FakeLoRARequest:
    def __init__(self, name: str, int_id: int, path: str) -> None:
        self.lora_name, self.lora_int_id, self.lora_path = name, int_id, path


class FakeCore:
    def __init__(self) -> None:
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


class FakeLLMEngine:
    """Finishes one request per ``step()``, the last added first (so out of submission order). Each step
    also reports an unfinished output (what CUMULATIVE mode does) and one for an unknown request."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.queue: list[tuple[str, dict[str, Any], FakeSamplingParams, Any]] = []
        self.aborted: list[str] = []
        self.added: list[str] = []
        self.steps = 0
        self.engine_core = FakeCore()
        # vLLM's output processor: the state of each request still running, under its internal id
        self.output_processor = types.SimpleNamespace(request_states={})

    def add_request(self, rid: str, prompt: dict[str, Any], params: Any, lora_request: Any = None) -> str:
        assert isinstance(rid, str) and "prompt_token_ids" in prompt
        self.queue.append((rid, prompt, params, lora_request))
        self.added.append(rid)
        return rid

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def abort_request(self, ids: list[str]) -> None:
        self.aborted += ids
        self.queue = [q for q in self.queue if q[0] not in ids]

    def step(self) -> list[Any]:
        self.steps += 1
        rid, prompt, sp, lora = self.queue.pop()
        self.output_processor.request_states.pop(f"{rid}-a1b2c3d4", None)
        eos = self.tok.eos_token_id
        words = f" seed={sp.seed} lora={lora.lora_int_id if lora else 0}"
        ids = self.tok.encode(words, add_special_tokens=False)
        text, reason, stop_reason = words, "stop", None
        if "[length]" in prompt["prompt"]:
            reason = "length"
        elif "[stop]" in prompt["prompt"]:
            more = self.tok.encode("\nprint(1)", add_special_tokens=False)
            ids, stop_reason = ids + more, "\nprint("
        elif "[abort]" in prompt["prompt"]:
            reason = "abort"
        else:
            ids = [*ids, eos]
        done = types.SimpleNamespace(
            request_id=rid,
            finished=True,
            prompt_token_ids=prompt["prompt_token_ids"],
            outputs=[
                types.SimpleNamespace(text=text, token_ids=ids, finish_reason=reason, stop_reason=stop_reason)
            ],
        )
        noise = [types.SimpleNamespace(request_id="999999", finished=True, outputs=[])]
        if self.queue:
            noise.append(types.SimpleNamespace(request_id=self.queue[0][0], finished=False, outputs=[]))
        return [*noise, done]


class OldFakeLLM:
    """A vLLM before ``LLM.enqueue``."""

    made: list[OldFakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.llm_engine = FakeLLMEngine(AutoTokenizer.from_pretrained(kwargs["tokenizer"]))
        self.request_counter = itertools.count()
        type(self).made.append(self)


class FakeLLM(OldFakeLLM):
    def enqueue(
        self, prompts: list[Any], sampling_params: list[Any], lora_request: Any = None, use_tqdm: bool = True
    ) -> list[str]:
        out = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            external = str(next(self.request_counter))
            sp.output_kind = "FINAL_ONLY"
            self.llm_engine.add_request(external, p, sp, lora_request=lora_request)
            self.llm_engine.output_processor.request_states[f"{external}-a1b2c3d4"] = types.SimpleNamespace(
                detokenizer=types.SimpleNamespace(output_text=f" so far {external}\nprint(")
            )
            out.append(f"{external}-a1b2c3d4")
        return out


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    FakeLLM.made.clear()
    return vllm


@pytest.fixture
def fake_engine(fake_vllm: types.ModuleType, smol_hf: Path) -> VLLMEngine:
    return VLLMEngine(ModelRef("folder", str(smol_hf), "s" * 64, None, "smol"), gpu_memory_utilization=0.5)


def _fake(engine: VLLMEngine) -> FakeLLMEngine:
    return engine.llm.llm_engine


@pytest.mark.slow
def test_llm_gets_the_folder_and_settings(fake_engine: VLLMEngine, smol_hf: Path) -> None:
    kwargs = fake_engine.llm.kwargs
    assert kwargs["model"] == kwargs["tokenizer"] == str(smol_hf)
    assert (kwargs["dtype"], kwargs["gpu_memory_utilization"], kwargs["max_model_len"]) == (
        "bfloat16",
        0.5,
        4096,
    )
    assert "enable_lora" not in kwargs and fake_engine.lora is None
    assert fake_engine.key() == {"sha256": "s" * 64, "adapter": None, "dtype": "bfloat16"}
    fake_engine.close()
    assert fake_engine.llm is None
    with pytest.raises(ModelError, match="closed"):
        list(fake_engine.run([GenerationRequest("x")], SamplingParams()))


@pytest.mark.slow
def test_samples_stream_out_of_order_with_keyed_seeds(fake_engine: VLLMEngine) -> None:
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=7, stop=("\nprint(", ""), seed=3)
    reqs = [GenerationRequest("def f():", 0), GenerationRequest("def f():", 1), GenerationRequest(CHAT, 0)]
    seen: list[tuple[int, Completion, int]] = []
    for pos, c in fake_engine.run(reqs, params):
        seen.append((pos, c, _fake(fake_engine).steps))
    assert [pos for pos, _, _ in seen] == [2, 1, 0]  # as vLLM finished them, not in request order
    assert [steps for _, _, steps in seen] == [1, 2, 3]  # each one handed on as soon as it came back
    for pos, c, _ in seen:
        r = reqs[pos]
        rendered = fake_engine.render(r.prompt)
        assert c.text == f" seed={sample_key(3, rendered, r.index)} lora=0"
        assert c.prompt_tokens == len(fake_engine.encode(r.prompt)) and c.finish_reason == "stop"
        assert c.completion_tokens == len(fake_engine.tokenizer.encode(c.text, add_special_tokens=False))
    assert not _fake(fake_engine).queue and not _fake(fake_engine).aborted


@pytest.mark.slow
def test_sampling_params_and_token_prompts(fake_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    added: list[tuple[dict[str, Any], Any]] = []
    add = _fake(fake_engine).add_request

    def spy(rid: str, prompt: dict[str, Any], params: Any, lora_request: Any = None) -> str:
        added.append((prompt, params))
        return add(rid, prompt, params, lora_request)

    monkeypatch.setattr(_fake(fake_engine), "add_request", spy)
    params = SamplingParams(temperature=0.5, top_p=0.8, max_new_tokens=9, stop=("\n```", ""), seed=1)
    chat_prefix = [*CHAT, {"role": "assistant", "content": "```python\n"}]
    list(fake_engine.run([GenerationRequest(CHAT), GenerationRequest(chat_prefix, 4)], params))
    (p0, s0), (p1, s1) = added
    assert p0["prompt"].endswith("<|im_start|>assistant\n") and p1["prompt"].endswith("```python\n")
    assert p0["prompt_token_ids"] == fake_engine.encode(CHAT)  # the chat's special tokens once, not twice
    assert (s0.n, s0.temperature, s0.top_p, s0.max_tokens, s0.stop) == (1, 0.5, 0.8, 9, ["\n```"])
    assert s0.seed == sample_key(1, p0["prompt"], 0) and s1.seed == sample_key(1, p1["prompt"], 4)
    assert fake_engine.tokenizer.eos_token_id in s0.stop_token_ids and s0.skip_special_tokens
    assert s0.output_kind == "FINAL_ONLY"


@pytest.mark.slow
def test_greedy_duplicates_are_generated_once(fake_engine: VLLMEngine) -> None:
    out = fake_engine.generate(["a", "b"], SamplingParams(n=3, top_p=0.5, seed=7))
    assert _fake(fake_engine).steps == 2  # one vLLM request per prompt
    assert [len(set(cs)) for cs in out] == [1, 1] and out[0][0].text == " seed=None lora=0"


@pytest.mark.slow
def test_finish_reasons_and_token_counts(fake_engine: VLLMEngine) -> None:
    params = SamplingParams(max_new_tokens=5, stop=("\nprint(",))
    eos, length, stop = (fake_engine.generate([p], params)[0][0] for p in ("x", "x [length]", "x [stop]"))
    n = len(fake_engine.tokenizer.encode(" seed=None lora=0", add_special_tokens=False))
    assert (eos.finish_reason, eos.completion_tokens) == ("stop", n)  # the end token is not counted
    assert (length.finish_reason, length.completion_tokens) == ("length", n)
    assert stop.finish_reason == "stop" and stop.text == " seed=None lora=0" and stop.completion_tokens > n
    with pytest.raises(ModelError, match="'abort'"):
        fake_engine.generate(["y", "z", "x [abort]"], params)  # the fake finishes the last one first
    assert _fake(fake_engine).aborted == ["3", "4"]  # what was left is aborted by its external id


@pytest.mark.slow
def test_closing_a_run_early_aborts_the_rest(fake_engine: VLLMEngine) -> None:
    run = fake_engine.run([GenerationRequest(str(i)) for i in range(4)], SamplingParams())
    assert next(run)[0] == 3
    with pytest.raises(RuntimeError, match="one request set at a time"):
        next(fake_engine.run([GenerationRequest("other")], SamplingParams()))
    run.close()
    assert _fake(fake_engine).aborted == ["0", "1", "2"] and not _fake(fake_engine).queue
    assert len(fake_engine.generate(["again"], SamplingParams())[0]) == 1


@pytest.mark.slow
def test_prompt_longer_than_the_model_allows(fake_vllm: types.ModuleType, smol_hf: Path) -> None:
    engine = VLLMEngine(ModelRef("folder", str(smol_hf), "s" * 64), max_model_len=8)
    with pytest.raises(ModelError, match="does not fit max_model_len=8"):
        engine.generate(["word " * 20], SamplingParams())
    assert not _fake(engine).queue


@pytest.mark.slow
def test_lora_adapter_is_served_and_keyed(fake_vllm: types.ModuleType, smol_hf: Path, tmp_path: Path) -> None:
    ref = ModelRef("folder", str(smol_hf), "s" * 64)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"]}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    engine = VLLMEngine(ref, adapter=tmp_path)
    kwargs = engine.llm.kwargs
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 32, 1)
    assert engine.lora.lora_path == str(tmp_path.resolve()) and engine.lora.lora_int_id == 1
    assert engine.key()["adapter"] == sha256_path(tmp_path)
    assert engine.generate(["x"], SamplingParams())[0][0].text == " seed=None lora=1"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64}))
    made = len(FakeLLM.made)
    with pytest.raises(ModelError, match="rank 64; pass max_lora_rank >= 64"):
        VLLMEngine(ref, adapter=tmp_path)
    with pytest.raises(ModelError, match="not a peft adapter folder"):
        VLLMEngine(ref, adapter=tmp_path / "missing")
    assert len(FakeLLM.made) == made  # refused before vLLM was started


@pytest.mark.slow
def test_adapters_swap_on_one_running_engine(
    fake_vllm: types.ModuleType, smol_hf: Path, tmp_path: Path
) -> None:
    ref = ModelRef("folder", str(smol_hf), "s" * 64)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"]}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ModelError, match="without LoRA support"):
        VLLMEngine(ref).with_adapter(tmp_path)
    engine = VLLMEngine(ref, enable_lora=True)
    made = len(FakeLLM.made)
    view = engine.with_adapter(tmp_path)
    assert len(FakeLLM.made) == made and view.llm is engine.llm  # no second vLLM
    assert (
        view.key() == {**engine.key(), "adapter": sha256_path(tmp_path)} and engine.key()["adapter"] is None
    )
    assert view.generate(["x"], SamplingParams())[0][0].text == " seed=None lora=1"
    assert engine.generate(["x"], SamplingParams())[0][0].text == " seed=None lora=0"
    assert engine.with_adapter(tmp_path).lora.lora_int_id == 2  # a new id per request object
    view.close()
    assert engine.llm is not None  # closing a view leaves the engine running


@pytest.mark.slow
def test_older_vllm_without_enqueue(fake_vllm: types.ModuleType, smol_hf: Path) -> None:
    fake_vllm.LLM = OldFakeLLM  # type: ignore[attr-defined]
    engine = VLLMEngine(ModelRef("folder", str(smol_hf), "s" * 64))
    out = engine.generate(["a", "b"], SamplingParams(n=2, temperature=1.0))
    assert [len({c.text for c in cs}) for cs in out] == [2, 2]
    assert _fake(engine).added == [f"tinyforge-{k}" for k in range(4)] and not _fake(engine).queue


# --- on a GPU with vLLM --------------------------------------------------------------------------------


@pytest.mark.slow
def test_peeks_show_the_text_of_requests_still_running(
    fake_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_peeking`` shows the text vLLM has detokenized for each request not yet finished, cut at stop strings,
    under every position that asked for it; ``run`` peeks at nothing."""
    monkeypatch.setattr(vllm_engine, "PEEK_EVERY", 0.0)
    params = SamplingParams(n=2, max_new_tokens=7, stop=("\nprint(",))  # greedy: one request for both
    reqs = [GenerationRequest("def f():", 0), GenerationRequest("def f():", 1), GenerationRequest(CHAT, 0)]
    peeks: list[tuple[int, str, int]] = []
    done = []
    for pos, _ in fake_engine.run_peeking(reqs, params, lambda p, t: peeks.append((p, t, len(done)))):
        done.append(pos)
    assert done == [2, 0, 1]  # the chat's request finished first, then the other two positions' one
    # after step 1 the one left (request "0") is shown under both its positions; then nothing is left
    assert peeks == [(0, " so far 0", 1), (1, " so far 0", 1)]
    assert fake_engine.peeks and list(fake_engine.run(reqs[:1], params))


GPU_MODEL = os.environ.get("TINYFORGE_VLLM_TEST_MODEL", "qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="module")
def gpu_ref() -> ModelRef:
    """The GPU test model, converted for vLLM (once, into the user cache). Skips without vLLM or CUDA."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM tests need a CUDA GPU")
    ref = resolve_model(GPU_MODEL)
    hf_folder(ref)
    return ref


@pytest.fixture(scope="module")
def gpu_engine(gpu_ref: ModelRef) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(gpu_ref, gpu_memory_utilization=0.3, max_model_len=2048)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def gpu_hf(gpu_ref: ModelRef) -> Iterator[HFEngine]:
    """HFEngine on the converted folder (the same bf16 weights vLLM loads), not compiled: faster to start."""
    folder = resolve_model(hf_folder(gpu_ref))
    engine = HFEngine(folder, dtype="bfloat16", device="cuda", compile=False)
    yield engine
    del engine
    torch.cuda.empty_cache()


def _tasks(count: int) -> list[Any]:
    return load_benchmark("humaneval")[:count]


def _agreement(name: str, got: list[str], want: list[str]) -> int:
    """How many texts are identical; prints where the others part."""
    same = 0
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a == b:
            same += 1
            continue
        at = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        print(
            f"{name} #{i}: differ from character {at} of {len(a)}/{len(b)}: {a[at : at + 40]!r} vs {b[at : at + 40]!r}"
        )
    print(f"{name}: {same}/{len(got)} identical")
    return same


@pytest.mark.slow
def test_gpu_greedy_agrees_with_hf(gpu_engine: VLLMEngine, gpu_hf: HFEngine) -> None:
    """bf16 on both sides: identical text for most prompts (a near-tie can flip a token either way)."""
    tasks = _tasks(16)
    groups = [("raw", tasks), ("chat", tasks[:4]), ("chat+prefix", tasks[4:6])]
    got, want = [], []
    for fmt, chosen in groups:
        texts = [prompts.code_prompt(t, fmt) for t in chosen]
        params = SamplingParams(max_new_tokens=128, stop=tuple(prompts.stops(fmt)))
        for (v,), (h,) in zip(
            gpu_engine.generate(texts, params), gpu_hf.generate(texts, params), strict=True
        ):
            assert v.prompt_tokens == h.prompt_tokens
            got.append(v.text)
            want.append(h.text)
    assert _agreement("greedy vLLM vs HF", got, want) >= 0.8 * len(got)


@pytest.mark.slow
def test_gpu_samples_are_keyed_whatever_the_batch(gpu_engine: VLLMEngine) -> None:
    texts = [prompts.code_prompt(t, "raw") for t in _tasks(8)]
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=64, seed=1)
    full = gpu_engine.generate(texts, params)
    assert all(len({c.text for c in cs}) >= 3 for cs in full)  # the samples of a prompt differ
    picks = [(3, 2), (5, 0), (0, 3), (7, 1)]
    alone = [dict(gpu_engine.run([GenerationRequest(texts[j], i)], params))[0] for j, i in picks]
    mixed_reqs = [GenerationRequest(texts[j], i) for j, i in reversed(picks)]
    mixed_reqs += [GenerationRequest(f"# filler {k}\n" + texts[k % 8], 9) for k in range(40)]
    mixed = dict(gpu_engine.run(mixed_reqs, params))
    want = [full[j][i].text for j, i in picks]
    same = _agreement("sample alone vs in full batch", [c.text for c in alone], want)
    same += _agreement(
        "sample in another batch", [mixed[len(picks) - 1 - k].text for k in range(len(picks))], want
    )
    assert same >= 0.75 * 2 * len(picks)
    other_seed = gpu_engine.generate(texts[:1], replace(params, seed=2))
    assert [c.text for c in other_seed[0]] != [c.text for c in full[0]]


def _random_adapter(ref: ModelRef, out: Path) -> None:
    """A random r=16 adapter on q/k/v/o, scaled down to change the model without wrecking it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(
        r=16, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    base_model = AutoModelForCausalLM.from_pretrained(hf_folder(ref), dtype=torch.float32)
    tuned = get_peft_model(base_model, config)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.mul_(0.2)
    tuned.save_pretrained(out)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Could not find a config file")
def test_gpu_lora_adapter(
    gpu_ref: ModelRef, gpu_engine: VLLMEngine, gpu_hf: HFEngine, tmp_path: Path
) -> None:
    """A random r=16 adapter on q/k/v/o (peft starts B at zero, so it is made random and scaled down to
    change the model without wrecking it): vLLM's output moves off the base model's and agrees with
    HFEngine's merged adapter for most prompts."""
    _random_adapter(gpu_ref, tmp_path)
    texts = [prompts.code_prompt(t, "raw") for t in _tasks(8)]
    params = SamplingParams(max_new_tokens=48)
    with VLLMEngine(gpu_ref, adapter=tmp_path, gpu_memory_utilization=0.3, max_model_len=2048) as lora:
        assert lora.key() == {**gpu_engine.key(), "adapter": sha256_path(tmp_path)}
        with_adapter = [cs[0].text for cs in lora.generate(texts, params)]
    base = [cs[0].text for cs in gpu_engine.generate(texts, params)]
    hf_lora = HFEngine(
        resolve_model(hf_folder(gpu_ref)), adapter=tmp_path, device="cuda", dtype="bfloat16", compile=False
    )
    merged = [cs[0].text for cs in hf_lora.generate(texts, params)]
    del hf_lora
    torch.cuda.empty_cache()
    changed = len(texts) - _agreement("vLLM adapter vs vLLM base", with_adapter, base)
    assert changed >= 2
    assert _agreement("vLLM adapter vs HF merged adapter", with_adapter, merged) >= len(texts) / 2


@pytest.mark.slow
def test_gpu_run_yields_before_the_end(gpu_engine: VLLMEngine) -> None:
    """Long requests first, short ones last: the short ones come back while the long ones still run."""
    long = [f"{', '.join(str(k) for k in range(start, start + 8))}," for start in (1, 100, 2000, 30000)]
    short = [[{"role": "user", "content": f"Reply with the single word OK. ({k})"}] for k in range(4)]
    reqs = [GenerationRequest(p) for p in [*long, *short]]
    start = time.monotonic()
    arrivals = [
        (pos, time.monotonic() - start, c)
        for pos, c in gpu_engine.run(reqs, SamplingParams(max_new_tokens=400))
    ]
    order = [pos for pos, _, _ in arrivals]
    print("arrival order", order, "times", [round(t, 2) for _, t, _ in arrivals])
    when = {pos: t for pos, t, _ in arrivals}
    assert sorted(order) == list(range(8))
    assert all(c.finish_reason == "length" for pos, _, c in arrivals if pos < 4)  # counting goes on
    assert order[0] >= 4  # the first completion handed on is a short one
    assert max(when[p] for p in range(4, 8)) < 0.5 * max(when[p] for p in range(4))


@pytest.mark.slow
def test_gpu_peeks_show_the_text_so_far(gpu_engine: VLLMEngine) -> None:
    """Peeks at requests still running show the start of their final text, growing, never after the end."""
    params = SamplingParams(
        n=4, temperature=0.8, max_new_tokens=384, stop=tuple(prompts.stops("raw")), seed=0
    )
    reqs = [GenerationRequest(prompts.code_prompt(t, "raw"), i) for t in _tasks(16) for i in range(4)]
    final: dict[int, Completion] = {}
    shown: dict[int, list[str]] = {}
    late: list[int] = []

    def peek(pos: int, text: str) -> None:
        if pos in final:
            late.append(pos)
        shown.setdefault(pos, []).append(text)

    for pos, c in gpu_engine.run_peeking(reqs, params, peek):
        final[pos] = c
    print("peeked at", len(shown), "of", len(reqs), "samples,", sum(map(len, shown.values())), "peeks")
    assert sorted(final) == list(range(len(reqs))) and not late
    assert shown  # 64 requests: few enough to peek at from the start
    for pos, texts in shown.items():
        whole = [t.rstrip("\ufffd") for t in texts]  # a character cut mid-way shows as U+FFFD
        assert all(final[pos].text.startswith(t) for t in whole), (
            pos,
            whole[-1][-60:],
            final[pos].text[-60:],
        )
        assert all(len(a) <= len(b) for a, b in itertools.pairwise(whole))


@pytest.mark.slow
def test_gpu_tensor_parallel(gpu_ref: ModelRef, gpu_engine: VLLMEngine) -> None:
    """`make_engine(..., tensor_parallel=2)`: one vLLM engine over 2 GPUs (`tensor_parallel_size`) gives
    the one-GPU engine's greedy text (up to bf16 near-ties from sums split over two GPUs)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from tinyforge.generate.engines import make_engine

    texts = [prompts.code_prompt(t, "raw") for t in _tasks(16)]
    greedy = SamplingParams(max_new_tokens=64)
    engine = make_engine(gpu_ref, "vllm", tensor_parallel=2, gpu_memory_utilization=0.3, max_model_len=2048)
    try:
        free, total = torch.cuda.mem_get_info(1)  # the one-GPU engine is on GPU 0 only
        assert total - free > 0.2 * total, "tensor_parallel=2 left GPU 1 unused"
        got = [cs[0].text for cs in engine.generate(texts, greedy)]
    finally:
        engine.close()
    want = [cs[0].text for cs in gpu_engine.generate(texts, greedy)]
    assert _agreement("tensor parallel 2 vs one GPU", got, want) >= 0.75 * len(want)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Could not find a config file")
def test_gpu_two_replicas(gpu_ref: ModelRef, gpu_engine: VLLMEngine, tmp_path: Path) -> None:
    """Two VLLMEngine replicas, one per GPU: the samples of one engine (keyed seeds), and an adapter swapped
    in on both through a view."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from tinyforge.generate.replicas import Replicas

    texts = [prompts.code_prompt(t, "raw") for t in _tasks(8)]
    sampled = SamplingParams(n=4, temperature=0.8, max_new_tokens=64, seed=3)
    greedy = SamplingParams(max_new_tokens=48)
    _random_adapter(gpu_ref, tmp_path)
    kw = {"gpu_memory_utilization": 0.3, "max_model_len": 2048, "enable_lora": True}
    with Replicas(VLLMEngine, gpu_ref, replicas=2, **kw) as pair:
        assert pair.key() == gpu_engine.key()
        got = [c.text for cs in pair.generate(texts, sampled) for c in cs]
        base = [cs[0].text for cs in pair.generate(texts, greedy)]
        tuned = pair.with_adapter(tmp_path)
        assert tuned.key() == {**gpu_engine.key(), "adapter": sha256_path(tmp_path)}
        with_adapter = [cs[0].text for cs in tuned.generate(texts, greedy)]
    want = [c.text for cs in gpu_engine.generate(texts, sampled) for c in cs]
    assert _agreement("2 replicas vs one engine", got, want) >= 0.75 * len(want)
    assert len(texts) - _agreement("replicas with adapter vs without", with_adapter, base) >= 2
