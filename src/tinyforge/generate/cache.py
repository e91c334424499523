"""The generation cache: every completion is appended to a JSONL file the moment it arrives.

A record is keyed by a hash of everything that decides its text: the engine (model file hash or hub
commit, adapter hash, dtype), the rendered prompt, the sampling parameters with the seed, and the sample
index. A killed run loses at most the batch in flight; run again, it generates only what is missing, and a
rerun with the same seed is served from the cache alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinyforge.generate.base import Completion, Engine, GenerationRequest, Peek, Prompt, SamplingParams

__all__ = ["SCHEMA_VERSION", "CachedEngine", "GenerationCache", "cache_key"]

SCHEMA_VERSION = 1
FILE_NAME = "completions.jsonl"


def cache_key(engine_key: dict[str, Any], prompt: str, chat: bool, params: SamplingParams, index: int) -> str:
    """The hex sha256 that names one sample."""
    what = {"engine": engine_key, "prompt": prompt, "chat": chat, "params": params.key(), "index": index}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class GenerationCache:
    """Completions by key, read from and appended to ``folder/completions.jsonl``.

    Each record is written with one ``write`` to a file opened for appending, so records from concurrent
    writers do not interleave and a kill leaves at most a torn last line, which is skipped on reading.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Completion] = {}
        line = ""
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        version, key = rec.pop("v"), rec.pop("key")
                        if version == SCHEMA_VERSION:
                            self._done[key] = Completion(**rec)
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn line from a killed writer
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if line and not line.endswith("\n"):
            os.write(self._fd, b"\n")  # end a torn line so the next record starts on its own

    def __len__(self) -> int:
        return len(self._done)

    def get(self, key: str) -> Completion | None:
        return self._done.get(key)

    def put(self, key: str, completion: Completion) -> None:
        rec = {"v": SCHEMA_VERSION, "key": key, **asdict(completion)}
        os.write(self._fd, (json.dumps(rec, ensure_ascii=False) + "\n").encode())
        self._done[key] = completion

    def close(self) -> None:
        os.close(self._fd)


class CachedEngine(Engine):
    """``engine`` behind ``cache``: only samples missing from the cache are sent to the engine."""

    def __init__(self, engine: Engine, cache: GenerationCache) -> None:
        self.engine, self.cache = engine, cache
        self.hits = self.misses = 0  # samples served from the cache / sent to the engine, over all runs

    def render(self, prompt: Prompt) -> str:
        return self.engine.render(prompt)

    def key(self) -> dict[str, Any]:
        return self.engine.key()

    @property
    def peeks(self) -> bool:  # type: ignore[override]
        return self.engine.peeks

    def run_peeking(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek
    ) -> Iterator[tuple[int, Completion]]:
        return self.run(requests, params, peek)

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, peek: Peek | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Cached samples first, then the rest from the engine. The engine gets every group of its
        ``plan`` that lacks a sample, whole: a resumed run forms the batches an uninterrupted run formed,
        so a deterministic engine gives it the same text. Samples regenerated that way keep their cached
        text. ``peek`` (``run_peeking``) sees the samples the engine makes, under their positions here."""
        engine_key = self.engine.key()
        wanted: dict[str, list[int]] = {}  # key -> positions in requests that want it
        unique: list[GenerationRequest] = []
        for i, r in enumerate(requests):
            key = cache_key(engine_key, self.render(r.prompt), not isinstance(r.prompt, str), params, r.index)
            if (hit := self.cache.get(key)) is not None:
                self.hits += 1
                yield i, hit
            if key not in wanted:
                wanted[key] = []
                unique.append(r)
            wanted[key].append(i)
        keys = list(wanted)
        missing = [self.cache.get(k) is None for k in keys]
        if not any(missing):
            return
        groups = [g for g in self.engine.plan(unique, params) if any(missing[j] for j in g)]
        todo = sorted(j for g in groups for j in g)
        asked = [unique[j] for j in todo]
        if peek is None:
            made = self.engine.run(asked, params)
        else:

            def peeked(t: int, text: str) -> None:
                if missing[todo[t]]:
                    for i in wanted[keys[todo[t]]]:
                        peek(i, text)

            made = self.engine.run_peeking(asked, params, peeked)
        for t, completion in made:
            j = todo[t]
            if not missing[j]:
                continue  # generated again only to keep its batch as it was
            self.cache.put(keys[j], completion)
            self.misses += 1
            yield from ((i, completion) for i in wanted[keys[j]])
