"""Data parallelism on one host: copies of a local engine, each in its own process on its own GPU(s).

vLLM's offline ``LLM`` does not run data parallel in one process (``LLM(data_parallel_size=2)`` is refused
in vLLM 0.26); its documented way is one process per replica, each given a share of the prompts
(``examples/features/data_parallel/data_parallel_offline.py``). ``Replicas`` does that behind the engine
interface: it starts ``replicas`` processes (``spawn``), sets ``CUDA_VISIBLE_DEVICES`` of replica ``r`` to
the ``r``-th group of ``devices_per_replica`` visible GPUs (``tensor_parallel_size`` of a vLLM replica),
and builds ``factory(*args, **kwargs)`` (``VLLMEngine``, or ``HFEngine``) in each. ``run`` deals the
samples out in turn (the samples of one greedy prompt stay together, so that the replica generates it
once) and yields every completion as its replica sends it, so verification keeps overlapping generation.

Nothing else changes: a sample's text is a function of ``(seed, rendered prompt, index)`` in both
back-ends whatever shares its batch (up to bf16 rounding), so the replicas give the texts one engine gives;
``key()`` is the inner engine's (the generation cache is shared with one-engine runs); prompts are
rendered here with the replicas' own tokenizer. ``with_adapter`` gives a view that sends an adapter folder
with each run, and each replica swaps it in with its engine's own ``with_adapter`` (vLLM's LoRA requests).

A replica that fails to start, fails a run or dies is a one-line ``ModelError`` naming it; a run closed
early (an exception or ``break`` in the caller) aborts the rest of the work in every replica. No scheduler:
each replica's engine schedules its own share, as vLLM's data-parallel example does.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tinyforge.generate.base import Completion, GenerationRequest, LocalEngine, SamplingParams
from tinyforge.generate.models import ModelError, sha256_path

__all__ = ["Replicas", "visible_gpus"]

_ENV_LOCK = threading.Lock()  # CUDA_VISIBLE_DEVICES is set around each replica's start


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (none without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]  # NVML: does not initialise CUDA here


def _one_line(e: BaseException) -> str:
    return (
        f"{type(e).__name__}: {' '.join(str(e).split())[:300]}" if not isinstance(e, ModelError) else str(e)
    )


def _serve(
    conn: Connection, factory: Callable[..., LocalEngine], args: tuple, kwargs: dict[str, Any]
) -> None:
    """A replica's process: build the engine, then run what the parent sends until it says close."""
    try:
        engine = factory(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", _one_line(e)))
        return
    views: dict[str, LocalEngine] = {}
    conn.send(("ready", {k: getattr(engine, k) for k in ("ref", "tokenizer", "dtype", "adapter_sha256")}))
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                break
            if msg[0] == "close":
                break
            if msg[0] != "run":  # an abort that came after the run had ended
                continue
            _, adapter, positions, requests, params = msg
            try:
                target = engine
                if adapter is not None:
                    if adapter not in views:
                        views[adapter] = engine.with_adapter(adapter)  # type: ignore[attr-defined]
                    target = views[adapter]
                stream = target.run(requests, params)
                for j, completion in stream:
                    conn.send(("done", positions[j], completion))
                    if conn.poll() and conn.recv()[0] == "abort":
                        stream.close()  # aborts what this replica has left
                        break
                conn.send(("end", None))
            except Exception as e:  # noqa: BLE001 - the parent raises it
                conn.send(("error", _one_line(e)))
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


class Replicas(LocalEngine):
    """``replicas`` copies of ``factory(*args, **kwargs)``, each in its own process on
    ``devices_per_replica`` GPUs of its own (on a machine without GPUs: the CPU; there each replica's OpenMP
    threads sleep when idle, ``OMP_WAIT_POLICY=PASSIVE``, or their spinning starves the other replicas)."""

    def __init__(
        self,
        factory: Callable[..., LocalEngine],
        *args: Any,
        replicas: int = 2,
        devices_per_replica: int = 1,
        start_timeout_s: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        if replicas < 1 or devices_per_replica < 1:
            raise ModelError("replicas and devices per replica must be at least 1")
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._owner = True
        self._adapter: str | None = None
        self._running = False
        gpus = visible_gpus()
        if gpus and replicas * devices_per_replica > len(gpus):
            raise ModelError(
                f"{replicas} replicas x {devices_per_replica} GPU(s) need {replicas * devices_per_replica} "
                f"GPUs; {len(gpus)} visible"
            )
        self.replicas = replicas
        self.backend = f"{getattr(factory, '__name__', 'engine')} x{replicas}"  # what result.json records
        # Adapters are swapped in only where the inner engine can (VLLMEngine).
        self.swaps_adapters = bool(getattr(factory, "swaps_adapters", False))
        ctx = mp.get_context("spawn")  # a forked child could not use CUDA; vLLM starts its own processes
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        for r in range(replicas):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_serve, args=(child, factory, args, kwargs), name=f"tinyforge-replica-{r}"
            )
            if gpus:
                env = {
                    "CUDA_VISIBLE_DEVICES": ",".join(
                        gpus[r * devices_per_replica : (r + 1) * devices_per_replica]
                    )
                }
            else:  # OpenMP threads that spin while idle would take the cores the other replicas work on
                env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
            with _ENV_LOCK:  # the child's environment is copied at start
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    proc.start()
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        info: dict[str, Any] = {}
        try:
            for r, conn in enumerate(self._conns):
                if not conn.poll(start_timeout_s):
                    raise ModelError(f"replica {r} did not start within {start_timeout_s:.0f} s")
                kind, payload = self._recv(r)
                if kind != "ready":
                    raise ModelError(f"replica {r} failed to start: {payload}")
                info = info or payload
        except BaseException:
            self.close()
            raise
        self.ref, self.tokenizer = info["ref"], info["tokenizer"]
        self.dtype, self.adapter_sha256 = info["dtype"], info["adapter_sha256"]

    def _recv(self, r: int) -> tuple[str, Any]:
        try:
            return self._conns[r].recv()
        except (EOFError, OSError):
            self._procs[r].join(5)
            raise ModelError(f"replica {r} died (exit code {self._procs[r].exitcode})") from None

    def with_adapter(self, adapter: str | os.PathLike[str] | None) -> Replicas:
        """A view of the same replicas that generates with ``adapter`` (None: none); every replica swaps it
        in with its engine's ``with_adapter`` (so the inner engine must have one: ``VLLMEngine`` with
        ``enable_lora=True``). Use one view at a time; closing a view does nothing."""
        if not self.swaps_adapters:
            super().with_adapter(adapter)  # the one-line error
        view = copy.copy(self)
        view._owner = False
        if adapter is None:
            view._adapter, view.adapter_sha256 = None, None
            return view
        path = Path(adapter).resolve()
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
        view._adapter, view.adapter_sha256 = str(path), sha256_path(path)
        return view

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        if not self._conns:
            raise ModelError("these replicas were closed")
        if self._running:
            raise RuntimeError("the replicas run one request set at a time; finish or close the other run")
        # Deal the samples out in turn; the samples of one greedy prompt go together.
        share: list[list[int]] = [[] for _ in self._conns]
        turn: dict[Any, int] = {}
        for pos, r in enumerate(requests):
            unit = self.render(r.prompt) if params.greedy else pos
            share[turn.setdefault(unit, len(turn) % len(share))].append(pos)
        busy = set()
        self._running = True
        try:
            for r, positions in enumerate(share):
                if positions:
                    self._conns[r].send(
                        ("run", self._adapter, positions, [requests[p] for p in positions], params)
                    )
                    busy.add(r)
            while busy:
                for conn in wait([self._conns[r] for r in busy]):
                    r = self._conns.index(conn)  # type: ignore[arg-type]
                    kind, *payload = self._recv(r)
                    if kind == "done":
                        yield payload[0], payload[1]
                    elif kind == "end":
                        busy.discard(r)
                    else:
                        busy.discard(r)
                        raise ModelError(f"replica {r}: {payload[0]}")
        finally:
            self._running = False
            self._drain(busy)

    def _drain(self, busy: set[int]) -> None:
        """After a run ended early: tell the replicas still at work to stop, and read until each has."""
        for r in busy:
            with contextlib.suppress(OSError):
                self._conns[r].send(("abort",))
        for r in busy:
            try:
                while True:
                    if not self._conns[r].poll(600):
                        raise ModelError(f"replica {r} did not stop")
                    if self._recv(r)[0] in ("end", "error"):
                        break
            except ModelError:
                self._procs[r].kill()

    def key(self) -> dict[str, Any]:
        return super().key()  # the inner engine's: one generation cache for any number of replicas

    def close(self) -> None:
        """Stop every replica (its engine closes and gives its GPU memory back). A view does nothing."""
        if self._owner:
            self._finalizer()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(procs: list[Any], conns: list[Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send(("close",))
    for proc in procs:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    for conn in conns:
        conn.close()
    conns.clear()
