"""Pick and build an engine by name: ``make_engine(model, backend=...)``.

* ``hf``: transformers (``tinyforge.generate.hf.HFEngine``), on the GPU or the CPU;
* ``vllm``: vLLM's offline engine (``tinyforge.generate.vllm_engine.VLLMEngine``), GPU only;
* ``openai``: any OpenAI-compatible server (``tinyforge.generate.server.OpenAIEngine``);
* ``auto``: ``openai`` when a server URL is given, else ``vllm`` on a machine with a CUDA GPU where vLLM
  is importable, else ``hf``.

Back-ends are imported only when chosen, so that a machine without torch or vLLM can use the others.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from tinyforge.generate.base import Engine
from tinyforge.generate.models import ModelError

__all__ = ["BACKENDS", "Backend", "choose_backend", "make_engine"]

Backend = Literal["auto", "hf", "vllm", "openai"]
BACKENDS: tuple[str, ...] = ("auto", "hf", "vllm", "openai")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_backend(backend: str = "auto", base_url: str | None = None) -> str:
    """The back-end ``auto`` stands for here (any other name is checked and returned as is)."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if base_url:
        return "openai"
    if importlib.util.find_spec("vllm") is not None and _cuda():
        return "vllm"
    return "hf"


def make_engine(
    model: str,
    backend: str = "auto",
    *,
    adapter: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    replicas: int = 1,
    tensor_parallel: int = 1,
    **engine_kwargs: Any,
) -> Engine:
    """An engine for ``model`` (an embedded name, a path, a hub id; for ``openai`` the server's model name).

    ``batch_size`` applies to ``hf`` (rows per ``generate`` call) and ``openai`` (requests in flight).
    ``replicas`` > 1 runs that many copies of a local engine, each in its own process on its own GPU(s)
    (``tinyforge.generate.replicas``); ``tensor_parallel`` is vLLM's ``tensor_parallel_size`` (GPUs per
    replica). Other keyword arguments go to the local engine (``VLLMEngine``: ``enable_lora``,
    ``gpu_memory_utilization``, ...)."""
    backend = choose_backend(backend, base_url)
    if replicas < 1 or tensor_parallel < 1:
        raise ModelError("replicas and tensor parallel size must be at least 1")
    if backend == "openai" and (replicas > 1 or tensor_parallel > 1):
        raise ModelError("replicas and tensor parallelism are the servers' business: give several --base-url")
    if backend == "hf" and tensor_parallel > 1:
        raise ModelError("tensor parallelism needs the vllm backend (the hf backend takes --replicas)")
    if backend == "openai":
        if not base_url:
            raise ModelError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if adapter is not None:
            raise ModelError(
                "a server applies LoRA adapters itself (e.g. vllm serve --lora-modules NAME=PATH): "
                "pass the adapter's served name as the model instead of --adapter"
            )
        from tinyforge.generate.server import OpenAIEngine

        return OpenAIEngine(base_url, model, **({"concurrency": batch_size} if batch_size else {}))
    if base_url:
        raise ModelError(f"--base-url is for the openai backend, not {backend}")
    adapter_path = Path(adapter) if adapter is not None else None
    factory: Any
    kwargs: dict[str, Any] = {"adapter": adapter_path, **engine_kwargs}
    if backend == "vllm":
        from tinyforge.generate.vllm_engine import VLLMEngine, import_vllm

        factory = VLLMEngine
        kwargs.update(dtype=dtype or "bfloat16", tensor_parallel_size=tensor_parallel)
        if replicas > 1:
            import_vllm()  # fail here, not in every replica
    else:
        try:
            from tinyforge.generate.hf import HFEngine
        except ImportError as e:
            raise ModelError(
                f"the transformers backend needs torch and transformers ({e}): pip install 'tinyforge[models]'"
            ) from None
        factory = HFEngine
        kwargs.update(dtype=dtype, batch_size=batch_size)
    if replicas == 1:
        return factory(model, **kwargs)
    from tinyforge.generate.models import hf_folder, resolve_model
    from tinyforge.generate.replicas import Replicas

    ref = resolve_model(model)  # fetched (and for vLLM converted) once, before the replicas read it
    if backend == "vllm":
        hf_folder(ref, kwargs["dtype"])
    return Replicas(factory, ref, replicas=replicas, devices_per_replica=tensor_parallel, **kwargs)
