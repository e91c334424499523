"""The OpenAI-compatible server back-end: vLLM, SGLang, llama.cpp's server, ``transformers serve``.

The model runs elsewhere; this engine sends each sample as one HTTP request (raw text to
``/completions``, chats to ``/chat/completions``) from a pool of ``concurrency`` threads and yields each
completion as soon as it arrives, so a cache in front keeps everything that came back before a failure.

One request per sample. Sample ``i`` of a prompt is requested on its own, with ``n=1`` and the seed
``sample_key(seed, rendered prompt, i)``. Asking a server for ``n`` choices under one seed would make
sample ``i`` depend on how many samples were asked for in that request, so a cache that asks only for the
missing samples would get other texts than a full run; one request per sample keeps the engine contract
(sample i is a function of seed, prompt and i alone) wherever the server honours ``seed``, and needs no
``n`` support (``transformers serve`` and llama.cpp ignore ``n``). The cost, prefilling a prompt once per
sample, is small on servers that cache prompt prefixes (vLLM and SGLang do by default). Greedy samples
are all the same, so a prompt is requested once and the answer reused for every index.

How reproducible a sample is depends on the server: vLLM seeds a generator per request, so a seeded sample
is the same however requests are batched (up to kernel rounding); ``transformers serve`` sets torch's
global seed, which concurrent requests share, so its seeded samples repeat only with ``concurrency=1``.
``transformers serve`` also samples only when the model's ``generation_config.json`` has ``do_sample``
on: a request's temperature does not turn sampling on, so without it every sample is the greedy one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tinyforge.generate.base import Completion, Engine, GenerationRequest, Prompt, SamplingParams, sample_key
from tinyforge.generate.models import ModelError
from tinyforge.generate.sanitize import cut_at_stop

__all__ = ["OpenAIEngine"]

# Asks vLLM (and SGLang) to continue a chat's final assistant message instead of answering it.
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}


@dataclass
class _Job:
    """One HTTP request: ``prompt`` (rendered as ``text``) with sample seed ``seed`` (None when greedy),
    whose completion answers the requests at ``positions``."""

    prompt: Prompt
    text: str
    seed: int | None
    positions: list[int] = field(default_factory=list)


class OpenAIEngine(Engine):
    """A model behind an OpenAI-compatible HTTP server.

    ``base_url`` is the API root, usually ending in ``/v1`` (``http://127.0.0.1:8000/v1``); ``model`` is the
    name the server serves the model under (its ``GET /models`` list is checked here, so a wrong name or a
    server that is down fails at once). ``api_key`` defaults to ``$OPENAI_API_KEY``, else "EMPTY" (local
    servers want none). ``concurrency`` requests are in flight at a time; a server batches them itself.

    A chat that ends with an assistant message is continued from it, as the transformers engine does, by
    sending vLLM's ``continue_final_message=True, add_generation_prompt=False``. Other servers may not
    support it: ``transformers serve`` rejects the fields (HTTP 422, reported as a ``ModelError`` that says
    so), and a server that ignores them answers the chat with a new assistant turn instead.

    Retries are the ``openai`` client's own (``max_retries``): on connection errors, timeouts, 408, 409,
    429 and 5xx, with exponential backoff from 0.5 s up to 8 s, jittered, and honouring ``Retry-After``.
    That is exactly the transient set we want retried, so there is no second retry loop here. ``timeout``
    bounds one request (a long completion on a busy server takes minutes); the connection itself gets
    ``connect_timeout``. The check at construction retries at most once, so that a server that is not
    running is reported in about a second rather than after the whole backoff.

    Identity: a server model is identified by ``model``, its name, and the optional ``revision`` (any
    string: a commit, a file's sha256) that the user vouches for. The cache trusts them: serve other weights
    under the same name and revision and it will hand back the old model's completions.

    Token counts are the server's ``usage`` (every request has ``n=1``, so it is the one sample's): servers
    usually count the end-of-sequence token, and the tokens of a stop string, which the transformers engine
    does not count; a server that sends no ``usage`` gives 0.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 16,
        max_retries: int = 5,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        revision: str | None = None,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise ModelError(
                "the server engine needs the openai client: pip install 'tinyforge[server]'"
            ) from None
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model, self.revision, self.concurrency, self.timeout = model, revision, concurrency, timeout
        self.max_retries = max_retries
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=connect_timeout),
        )
        self._check_model()

    def _check_model(self) -> None:
        """Fail now, in one line, if the server is unreachable or does not serve ``self.model``."""
        try:
            page = self.client.with_options(max_retries=min(self.max_retries, 1)).models.list()
            served = [m.id for m in page.data]
        except self._openai.NotFoundError:
            hint = "" if self.base_url.endswith("/v1") else " (the API root usually ends in /v1)"
            raise ModelError(
                f"{self.base_url}/models is not found (HTTP 404): is {self.base_url} an OpenAI-compatible "
                f"API root{hint}?"
            ) from None
        except self._openai.OpenAIError as e:
            raise self._error(e, "/models") from None
        except (AttributeError, TypeError) as e:
            raise ModelError(f"bad response from {self.base_url}/models: {_one_line(e)}") from None
        if self.model not in served:
            listed = ", ".join(repr(m) for m in served[:10]) or "nothing"
            raise ModelError(
                f"{self.base_url} does not serve model {self.model!r}; it serves {listed}: pass one of those"
            )

    def key(self) -> dict[str, Any]:
        return {"server_model": self.model, "revision": self.revision}

    def render(self, prompt: Prompt) -> str:
        """Raw text as is; a chat as canonical JSON of its messages (sorted keys, no spaces).

        The server renders chats with its own template, which we never see, so this is not the text the
        model reads: it is what names the prompt in cache keys and sample seeds. The chat template is
        then part of what ``model`` and ``revision`` vouch for.
        """
        if isinstance(prompt, str):
            return prompt
        return json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def run(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> Iterator[tuple[int, Completion]]:
        """Send one request per distinct sample (a greedy prompt once) and yield completions as they come.

        At most ``concurrency`` requests are in flight and none wait in a queue, so after a failure nothing
        more is sent: the requests in flight are waited for and their completions yielded, then the first
        error is raised as a ``ModelError``.
        """
        jobs: dict[tuple[bool, str, int | None], _Job] = {}
        for i, r in enumerate(requests):
            text = self.render(r.prompt)
            seed = None if params.greedy else sample_key(params.seed, text, r.index)
            job = jobs.setdefault((isinstance(r.prompt, str), text, seed), _Job(r.prompt, text, seed))
            job.positions.append(i)
        todo = iter(jobs.values())
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tinyforge-openai")
        running: dict[Future[Completion], _Job] = {}
        error: ModelError | None = None
        try:
            while True:
                while error is None and len(running) < self.concurrency:
                    job = next(todo, None)
                    if job is None:
                        break
                    running[pool.submit(self._complete, job, params)] = job
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        completion = future.result()
                    except ModelError as e:
                        error = error or e
                        continue
                    for i in job.positions:
                        yield i, completion
            if error is not None:
                raise error
        finally:
            # Closed early (the consumer stopped, ^C): send nothing more, do not wait for what is in flight.
            pool.shutdown(wait=False, cancel_futures=True)

    def _complete(self, job: _Job, params: SamplingParams) -> Completion:
        """One sample: the request, its errors as ``ModelError``, and the response as a ``Completion``."""
        chat = not isinstance(job.prompt, str)
        endpoint = "/chat/completions" if chat else "/completions"
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
        }
        if not params.greedy:
            kwargs.update(top_p=params.top_p, seed=job.seed)
        if stop := [s for s in params.stop if s]:
            kwargs["stop"] = stop
        continues = (
            isinstance(job.prompt, list) and bool(job.prompt) and job.prompt[-1].get("role") == "assistant"
        )
        try:
            if chat:
                extra = {"extra_body": CONTINUE_FINAL_MESSAGE} if continues else {}
                response = self.client.chat.completions.create(messages=job.prompt, **kwargs, **extra)
            else:
                response = self.client.completions.create(prompt=job.prompt, **kwargs)
        except self._openai.OpenAIError as e:
            error = self._error(e, endpoint)
            if continues and isinstance(e, self._openai.APIStatusError) and 400 <= e.status_code < 500:
                error = ModelError(
                    f"{error} (the chat ends with an assistant message, which is continued with vLLM's "
                    f"continue_final_message; this server may not support it)"
                )
            raise error from None
        try:
            choice = response.choices[0]
            text = choice.message.content if chat else choice.text
            if text is None and chat:
                text = ""  # an answer with no content (only a refusal or tool calls)
            if not isinstance(text, str):
                raise TypeError(f"the text is {type(text).__name__}, not a string")
            usage = response.usage
            prompt_tokens = int(usage.prompt_tokens) if usage is not None else 0
            completion_tokens = int(usage.completion_tokens) if usage is not None else 0
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise ModelError(f"bad response from {self.base_url}{endpoint}: {_one_line(e)}") from None
        # Servers differ on stop strings (some keep the one that matched), so we cut here too.
        cut = cut_at_stop(text, params.stop)
        finish = "length" if choice.finish_reason == "length" and len(cut) == len(text) else "stop"
        return Completion(cut, prompt_tokens, completion_tokens, finish)

    def _error(self, e: Exception, endpoint: str) -> ModelError:
        """A ``ModelError`` of one line for an ``openai`` exception: what went wrong where, and what to do."""
        oa = self._openai
        url = self.base_url
        if isinstance(e, oa.APITimeoutError):
            return ModelError(
                f"{url}{endpoint} did not answer within {self.timeout:g} s: is the server overloaded? "
                "Pass a larger timeout or a smaller concurrency"
            )
        if isinstance(e, oa.APIConnectionError):
            return ModelError(f"cannot reach {url} ({_root_cause(e)}): is the server running?")
        if isinstance(e, (oa.AuthenticationError, oa.PermissionDeniedError)):
            return ModelError(
                f"{url} refused the API key (HTTP {e.status_code}): set OPENAI_API_KEY or pass api_key"
            )
        if isinstance(e, oa.APIStatusError):
            return ModelError(f"{url}{endpoint} answered HTTP {e.status_code}: {_detail(e)}")
        return ModelError(f"bad response from {url}{endpoint}: {_one_line(e)}")


def _one_line(x: object, limit: int = 300) -> str:
    text = " ".join(str(x).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _root_cause(e: BaseException) -> str:
    """The innermost cause's message, lower-cased, without an ``[Errno N]`` prefix: "connection refused"."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        e = inner
        seen.add(id(e))
    text = _one_line(e, 120)
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.lower() if text else type(e).__name__


def _detail(e: Any) -> str:
    """The server's own words from an error body: OpenAI's and vLLM's ``error.message``, FastAPI's
    ``detail``, or a bare ``message``; else the client's summary."""
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error")
        for value in (inner.get("message") if isinstance(inner, dict) else inner, body.get("detail"),
                      body.get("message")):  # fmt: skip
            if value:
                return _one_line(value if isinstance(value, str) else json.dumps(value))
    elif isinstance(body, str) and body.strip():
        return _one_line(body)
    return _one_line(e.message)
