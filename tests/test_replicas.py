"""Data parallelism: copies of the real SmolLM2 engine in their own processes give one engine's texts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyforge.data import load_benchmark
from tinyforge.generate.base import GenerationRequest, SamplingParams
from tinyforge.generate.cache import CachedEngine, GenerationCache
from tinyforge.generate.engines import make_engine
from tinyforge.generate.hf import HFEngine
from tinyforge.generate.models import ModelError, fetch_model
from tinyforge.generate.replicas import Replicas
from tinyforge.recipe import RecipeConfig, RecipeError, check_settings

MODEL = "smollm2-135m-instruct"
CPU = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [t.prompt for t in load_benchmark("humaneval")[:4]]


@pytest.fixture(scope="module")
def single() -> HFEngine:
    fetch_model(MODEL)
    return HFEngine(MODEL, **CPU)


@pytest.fixture(scope="module")
def pair() -> Iterator[Replicas]:
    fetch_model(MODEL)
    with Replicas(HFEngine, MODEL, replicas=2, **CPU) as engine:
        yield engine


@pytest.mark.slow
def test_two_replicas_give_one_engines_texts(single: HFEngine, pair: Replicas, prompts: list[str]) -> None:
    assert pair.key() == single.key() and pair.render(prompts[0]) == single.render(prompts[0])
    assert (
        pair.backend == "HFEngine x2" and not pair.swaps_adapters
    )  # HFEngine merges an adapter at load: the recipe builds another engine
    greedy = SamplingParams(max_new_tokens=32, stop=("\ndef ",))
    assert pair.generate(prompts, greedy) == single.generate(prompts, greedy)
    sampled = SamplingParams(n=2, temperature=0.8, max_new_tokens=24, seed=5)
    assert pair.generate(prompts, sampled) == single.generate(prompts, sampled)
    # Every replica took a share, and a completion comes out as soon as its replica has it.
    requests = [GenerationRequest(p, i) for p in prompts[:2] for i in range(2)]
    order = [pos for pos, _ in pair.run(requests, sampled)]
    assert sorted(order) == list(range(len(requests)))


@pytest.mark.slow
def test_a_run_closed_early_stops_the_replicas_and_the_next_one_works(
    single: HFEngine, pair: Replicas, prompts: list[str], tmp_path: Path
) -> None:
    params = SamplingParams(max_new_tokens=16)
    stream = pair.run([GenerationRequest(p) for p in prompts], params)
    next(stream)
    stream.close()  # the caller stopped reading: both replicas abort their share
    # Behind the generation cache: the cache is keyed as one engine's, so one engine's run is served from it.
    cache = GenerationCache(tmp_path / "cache")
    first = CachedEngine(pair, cache).generate(prompts, params)
    assert first == single.generate(prompts, params)
    counting = CachedEngine(single, cache)
    assert counting.generate(prompts, params) == first and len(cache) == len(prompts)


def test_a_replica_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(ModelError) as e:
        Replicas(HFEngine, str(missing), replicas=2, **CPU)
    assert "replica 0 failed to start" in str(e.value) and "\n" not in str(e.value)


def test_make_engine_checks_the_spread() -> None:
    with pytest.raises(ModelError, match="tensor parallelism needs the vllm backend"):
        make_engine(MODEL, "hf", tensor_parallel=2)
    with pytest.raises(ModelError, match="several --base-url"):
        make_engine("m", "openai", base_url="http://127.0.0.1:9/v1", replicas=2)
    with pytest.raises(ModelError, match="at least 1"):
        make_engine(MODEL, "hf", replicas=0)


def test_a_run_may_move_to_more_replicas(tmp_path: Path) -> None:
    config = RecipeConfig(model=MODEL)
    check_settings(tmp_path, config)
    check_settings(tmp_path, config.model_copy(update={"replicas": 4, "workers": 16}))  # resumes
    with pytest.raises(RecipeError, match=r"other settings \(seed: 0 -> 1\)"):
        check_settings(tmp_path, config.model_copy(update={"seed": 1}))
