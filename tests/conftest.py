"""Shared fixtures: one fresh expected-output cache and one sandbox pool per session for the scoring tests,
and one small real recipe run that the recipe and experiment tests build on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinyforge.generate.models import models_dir
from tinyforge.sandbox import SandboxPool


@pytest.fixture(scope="session")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new, empty TINYFORGE_CACHE_DIR for the whole session.

    Scoring HumanEval+/MBPP+ caches the canonical outputs there; starting empty makes the tests compute them
    with the code under test instead of trusting a cache some older version wrote (~1 min on 2 cores).
    Benchmark files still come from the shared data folder, and models from the usual models folder."""
    path = tmp_path_factory.mktemp("tinyforge-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFORGE_MODELS_DIR", str(models_dir()))  # models stay where they are (no re-download)
        mp.setenv("TINYFORGE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def score_pool(fresh_cache: Path) -> Iterator[SandboxPool]:
    """One sandbox pool (2 workers) shared by every scoring test of the session."""
    with SandboxPool(workers=2) as p:
        yield p


@dataclass(frozen=True)
class SmallRecipe:
    """Recipe settings small enough for CI (``config``, YAML) and one finished, uninterrupted run of them with
    Qwen2.5-Coder-0.5B and seed 1 (``run``). Tests copy ``run`` before they change it."""

    model: str
    seed: int
    config: Path
    run: Path

    def cli(self, out: Path, *extra: str) -> list[str]:
        """The ``tinyforge bootstrap`` command that made ``run``, into ``out``."""
        return [sys.executable, "-m", "tinyforge.cli", "bootstrap", "--model", self.model, "--out", str(out),
                "--config", str(self.config), "--seed", str(self.seed), *extra]  # fmt: skip


# Small enough for CI, large enough that the model is at the edge on some MBPP-train problems. Seeded
# problems and the 0.5B model: SmolLM2 solves none of them (0 of 64 attempts) and cannot write problems that
# pass their own tests, so it would mine nothing.
SMALL_RECIPE = """\
problems: 8
seeded: mbpp-train
dtype: bfloat16
solve: {k: 4, temperature: 1.0, max_new_tokens: 256}
mine: {mode: multi, exclude: []}
train: {epochs: 1, grad_accum: 2, save_every: 1, max_len: 1024}
eval: {limit: 2, max_new_tokens: 256}
workers: 2
control: true
"""


@pytest.fixture(scope="session")
def small_recipe(tmp_path_factory: pytest.TempPathFactory) -> SmallRecipe:
    """The small recipe run, made once per session by the command line (a separate process, as users run
    it): the recipe test compares runs it kills and resumes with it, the experiment test builds its arms on
    a copy of it (~10 min on 2 cores)."""
    folder = tmp_path_factory.mktemp("small-recipe")
    config = folder / "small.yaml"
    config.write_text(SMALL_RECIPE)
    recipe = SmallRecipe("qwen2.5-coder-0.5b-instruct", 1, config, folder / "run")
    done = subprocess.run(recipe.cli(recipe.run), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe
