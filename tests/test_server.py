"""The OpenAI-compatible server engine against a real server: ``transformers serve`` on SmolLM2, on loopback.

The session converts the embedded SmolLM2-135M-Instruct GGUF to a transformers folder (fp32; ``transformers
serve`` cannot load a bare GGUF file: its config names no architecture), starts the server on a free port
of 127.0.0.1 with the hub switched off, and kills it at the end. Outputs are kept short: the CPU is slow.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tinyforge.generate.base import Completion, GenerationRequest, SamplingParams
from tinyforge.generate.cache import CachedEngine, GenerationCache
from tinyforge.generate.models import ModelError, fetch_model, load_model, resolve_model
from tinyforge.generate.server import OpenAIEngine

RAW = "def fibonacci(n):"
CHAT = [{"role": "user", "content": "Say hello in one short sentence."}]
STARTUP_S = 180  # the server imports torch and loads the model; slow on a busy 2-core machine


@dataclass(frozen=True)
class Server:
    url: str  # the API root, ending in /v1
    model: str  # the name it serves the model under: the folder it was given
    folder: Path


def _free_port() -> int:
    """A loopback port nothing listens on (now; the kernel does not hand it out again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (fp32) with sampling on, from the embedded GGUF."""
    for module in ("torch", "fastapi", "uvicorn"):
        pytest.importorskip(
            module, reason="the test server needs transformers[serving]: pip install -e '.[dev]'"
        )
    try:
        fetch_model("smollm2-135m-instruct")
    except ModelError as e:
        pytest.skip(f"SmolLM2 is not available: {e}")
    model, tokenizer = load_model(resolve_model("smollm2-135m-instruct"), "float32", "cpu")
    # transformers serve samples only when the model's generation config says so (a request's temperature
    # does not turn sampling on; temperature 0 turns it off), as the hub's chat models' configs do.
    model.generation_config.do_sample = True
    folder = tmp_path_factory.mktemp("smollm2-135m-instruct-hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def _serve(folder: Path, log: Path) -> Iterator[tuple[Server, subprocess.Popen[bytes]]]:
    """``transformers serve`` pinned to the model in ``folder``, on 127.0.0.1, offline; killed on exit."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with no_proxy.open(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready in {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Server(f"http://127.0.0.1:{port}/v1", str(folder), folder), proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server (see ``_serve``)."""
    with _serve(model_folder, tmp_path_factory.mktemp("server") / "serve.log") as (srv, _):
        yield srv


@pytest.fixture(scope="session")
def engine(server: Server) -> OpenAIEngine:
    """One request at a time: ``transformers serve`` seeds torch's global generator per request, so only
    sequential requests make its seeded samples repeatable."""
    return OpenAIEngine(server.url, server.model, concurrency=1, max_retries=1, timeout=120)


def _counting(engine: OpenAIEngine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every HTTP request the engine sends (its per-request method) in the returned list."""
    calls: list[Any] = []
    inner: Callable[..., Completion] = engine._complete

    def complete(job: Any, params: SamplingParams) -> Completion:
        calls.append(job)
        return inner(job, params)

    monkeypatch.setattr(engine, "_complete", complete)
    return calls


# --- without a server -----------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_in_one_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ModelError) as e:
        OpenAIEngine(url, "any", max_retries=1)
    msg = str(e.value)
    assert time.monotonic() - start < 10
    assert "\n" not in msg and url in msg and "is the server running?" in msg
    assert "refused" in msg


def test_pool_urls_and_a_pool_of_dead_servers() -> None:
    """Several API roots make one pool (a list, or one string with commas; repeats dropped); when none can
    be reached, the error is the first one's, in one line."""
    dead = [f"http://127.0.0.1:{_free_port()}/v1", f"http://127.0.0.1:{_free_port()}/v1/"]
    with pytest.raises(ModelError) as e:
        OpenAIEngine(",".join([*dead, dead[0]]), "any", max_retries=0)
    msg = str(e.value)
    assert "\n" not in msg and dead[0] in msg and "is the server running?" in msg
    with pytest.raises(ModelError, match="no server URL"):
        OpenAIEngine(" , ", "any")


# --- against transformers serve ---------------------------------------------------------------------------


@pytest.mark.slow
def test_wrong_model_name(server: Server) -> None:
    with pytest.raises(ModelError) as e:
        OpenAIEngine(server.url, "no-such-model", max_retries=0)
    msg = str(e.value)
    assert "\n" not in msg and "'no-such-model'" in msg and server.model in msg and server.url in msg


@pytest.mark.slow
def test_not_an_api_root(server: Server) -> None:
    """A base URL without /v1 answers 404 on /models: the message says where the API root usually is."""
    with pytest.raises(ModelError, match=r"HTTP 404.*ends in /v1"):
        OpenAIEngine(server.url.removesuffix("/v1"), server.model, max_retries=0)


@pytest.mark.slow
def test_render_and_key(engine: OpenAIEngine, server: Server) -> None:
    assert engine.render(RAW) == RAW
    assert engine.render(CHAT) == '[{"content":"Say hello in one short sentence.","role":"user"}]'
    assert engine.render([{"role": "user", "content": "é"}]) == '[{"content":"é","role":"user"}]'
    assert engine.key() == {"server_model": server.model, "revision": None}
    pinned = OpenAIEngine(server.url, server.model, revision="abc123", max_retries=0)
    assert pinned.key() == {"server_model": server.model, "revision": "abc123"}


@pytest.mark.slow
def test_raw_and_chat_completions(engine: OpenAIEngine) -> None:
    (raw,), (chat,) = engine.generate([RAW, CHAT], SamplingParams(max_new_tokens=12))
    assert raw.text.strip() and raw.finish_reason == "length" and raw.completion_tokens == 12
    assert 3 <= raw.prompt_tokens <= 10  # "def fibonacci(n):" is a handful of tokens
    assert chat.text.strip() and chat.finish_reason in ("stop", "length")
    assert 0 < chat.completion_tokens <= 12
    assert chat.prompt_tokens > 10  # the chat template's system prompt and markers count too
    (short,) = engine.generate([RAW], SamplingParams(max_new_tokens=3))[0]
    assert (
        short.finish_reason == "length" and short.completion_tokens == 3 and raw.text.startswith(short.text)
    )


@pytest.mark.slow
def test_stop_strings_are_cut(engine: OpenAIEngine) -> None:
    """``transformers serve`` stops at a stop string but keeps it in the text: the engine cuts it."""
    (full,) = engine.generate([RAW], SamplingParams(max_new_tokens=12))[0]
    stop = full.text.strip()[:2]  # a string that greedy decoding is sure to produce
    assert stop and stop in full.text
    (cut,) = engine.generate([RAW], SamplingParams(max_new_tokens=12, stop=(stop, "never")))[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens < 12


@pytest.mark.slow
def test_greedy_samples_are_requested_once(engine: OpenAIEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(engine, monkeypatch)
    (samples,) = engine.generate([RAW], SamplingParams(n=3, max_new_tokens=4))
    assert len(calls) == 1 and len(samples) == 3 and len({s.text for s in samples}) == 1


@pytest.mark.slow
def test_samples_one_request_each_and_reproducible(
    engine: OpenAIEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n > 1 on a server that ignores ``n`` (``transformers serve`` does): each sample is its own request
    with its own seed, so sample 2 asked for alone is the text it was in the full run."""
    calls = _counting(engine, monkeypatch)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    (samples,) = engine.generate([RAW], params)
    assert len(samples) == 3 and len(calls) == 3 and len({c.seed for c in calls}) == 3
    assert len({s.text for s in samples}) > 1  # distinct seeds, distinct samples
    alone = dict(engine.run([GenerationRequest(RAW, 2)], params))
    assert alone[0] == samples[2]
    reseeded = engine.generate([RAW], SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=12))[0]
    assert [s.text for s in reseeded] != [s.text for s in samples]


@pytest.mark.slow
def test_greedy_matches_the_transformers_engine(engine: OpenAIEngine, server: Server) -> None:
    """The same fp32 weights on the same CPU give the same greedy text as ``HFEngine``, raw and chat.

    The two can differ by ~1e-5 in the logits (the transformers engine pads prompts for batch invariance;
    the server runs each prompt alone), which could flip a near-tie: these short outputs have none. Token
    counts may differ by one: the server counts the end-of-sequence token, ``HFEngine`` does not."""
    from tinyforge.generate.hf import HFEngine

    hf = HFEngine(str(server.folder), device="cpu", dtype="float32")
    prompts = [RAW, CHAT, "The capital of France is"]
    params = SamplingParams(max_new_tokens=16)
    ours, theirs = engine.generate(prompts, params), hf.generate(prompts, params)
    for (a,), (b,) in zip(ours, theirs, strict=True):
        assert a.text == b.text
        assert a.prompt_tokens == b.prompt_tokens and a.finish_reason == b.finish_reason
        assert a.completion_tokens - b.completion_tokens in (0, 1)


@pytest.mark.slow
def test_concurrent_requests_give_the_sequential_results(engine: OpenAIEngine, server: Server) -> None:
    prompts = [RAW, CHAT, "The capital of France is", "1, 2, 3,"]
    params = SamplingParams(max_new_tokens=4)
    parallel = OpenAIEngine(server.url, server.model, concurrency=3, max_retries=1)
    assert parallel.generate(prompts, params) == engine.generate(prompts, params)


@pytest.mark.slow
def test_behind_the_cache(engine: OpenAIEngine, server: Server, tmp_path: Path) -> None:
    """A second run is served from the cache alone: the engine then points at a port where nothing listens."""
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=6, seed=3)
    cache = GenerationCache(tmp_path)
    first = CachedEngine(engine, cache).generate([RAW, CHAT], params)
    assert len(cache) == 4
    engine_offline = OpenAIEngine(server.url, server.model, concurrency=1, max_retries=0)
    engine_offline.client = engine_offline.client.with_options(base_url=f"http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(ModelError, match="cannot reach"):  # it really cannot reach anything now
        engine_offline.generate([RAW], SamplingParams(max_new_tokens=1))
    cache.close()
    again = CachedEngine(engine_offline, GenerationCache(tmp_path)).generate([RAW, CHAT], params)
    assert again == first


@pytest.mark.slow
def test_failure_mid_run_keeps_what_came_back(engine: OpenAIEngine, tmp_path: Path) -> None:
    """The second request fails (``transformers serve`` rejects continue_final_message with HTTP 422): the
    first completion was yielded, so the cache has it, and the error is one line naming the cause."""
    continued = [*CHAT, {"role": "assistant", "content": "Hello"}]
    cache = GenerationCache(tmp_path)
    got = []
    with pytest.raises(ModelError) as e:
        for item in CachedEngine(engine, cache).run(
            [GenerationRequest(RAW), GenerationRequest(continued)], SamplingParams(max_new_tokens=4)
        ):
            got.append(item)
    msg = str(e.value)
    assert "\n" not in msg and "HTTP 422" in msg and "continue_final_message" in msg
    assert [i for i, _ in got] == [0] and len(cache) == 1


# --- a pool of servers ----------------------------------------------------------------------------------

POOL_PROMPTS = [RAW, CHAT, "The capital of France is", "1, 2, 3,", "def add(a, b):", "Once upon a time"]


@pytest.fixture(scope="module")
def server2(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server of the same model."""
    with _serve(model_folder, tmp_path_factory.mktemp("server2") / "serve.log") as (srv, _):
        yield srv


@pytest.mark.slow
def test_pool_spreads_requests_and_gives_one_servers_results(
    engine: OpenAIEngine, server: Server, server2: Server, tmp_path: Path
) -> None:
    """Two servers of one model: both get requests, the completions are one server's, and the cache key
    does not name the endpoint (a pool's cache serves a single server and the other way round)."""
    params = SamplingParams(max_new_tokens=6)
    pool = OpenAIEngine([server.url, server2.url], server.model, concurrency=1, max_retries=1)
    assert pool.key() == engine.key()
    assert pool.generate(POOL_PROMPTS, params) == engine.generate(POOL_PROMPTS, params)
    stats = pool.stats()
    assert [s["url"] for s in stats] == [server.url, server2.url]
    assert all(s["sent"] >= 1 and s["failed"] == 0 for s in stats)
    assert sum(s["sent"] for s in stats) == len(POOL_PROMPTS)


@pytest.mark.slow
def test_pool_with_an_endpoint_down_from_the_start(engine: OpenAIEngine, server: Server) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    pool = OpenAIEngine([dead, server.url], server.model, concurrency=1, max_retries=0, revive_s=600)
    params = SamplingParams(max_new_tokens=4)
    assert pool.generate(POOL_PROMPTS[:3], params) == engine.generate(POOL_PROMPTS[:3], params)
    down, up = pool.stats()
    assert down["down"] and down["failed"] == 1 and down["sent"] == 0 and "cannot reach" in down["last_error"]
    assert up["sent"] == 3 and not up["down"]


@pytest.mark.slow
def test_pool_loses_an_endpoint_mid_run(
    engine: OpenAIEngine, server: Server, model_folder: Path, tmp_path: Path
) -> None:
    """A server killed after the first completion: its requests go to the other one and every completion
    arrives, the same as from one server; the lost endpoint is set aside."""
    params = SamplingParams(max_new_tokens=6)
    want = engine.generate(POOL_PROMPTS, params)
    with _serve(model_folder, tmp_path / "serve.log") as (doomed, proc):
        pool = OpenAIEngine(
            [server.url, doomed.url], server.model, concurrency=1, max_retries=0, revive_s=600
        )
        got: dict[int, Completion] = {}
        for i, c in pool.run([GenerationRequest(p) for p in POOL_PROMPTS], params):
            got[i] = c
            if len(got) == 1:
                proc.kill()
                proc.wait()
    assert [[got[i]] for i in range(len(POOL_PROMPTS))] == want
    alive, lost = pool.stats()
    assert lost["down"] and lost["failed"] >= 1 and not alive["down"] and alive["failed"] == 0
