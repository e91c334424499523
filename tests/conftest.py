"""Shared fixtures for the scoring tests: one fresh expected-output cache and one sandbox pool per session."""

from __future__ import annotations

from collections.abc import Iterator
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
