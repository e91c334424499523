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

Several servers of one model (many ``vllm serve`` processes or hosts) make one engine: give a list of API
roots (or one string with commas). Each request goes to the live endpoint with the fewest requests in
flight; one whose request fails for want of the server (connection lost, timeout, HTTP 5xx or 429 after
the client's retries) is set aside for ``revive_s`` seconds and the request is sent to another, so a lost
endpoint costs only the time of its requests in flight. The cache key names the model, not the endpoint:
every endpoint serves (and fills) the same cache.
"""

from __future__ import annotations

import json
import os
import threading
import time
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
class _Endpoint:
    """One server of the pool: its client, and what the engine saw of it."""

    url: str
    client: Any
    in_flight: int = 0
    sent: int = 0
    failed: int = 0
    down_until: float = 0.0  # time.monotonic() before which it is not sent new requests
    last_error: str = ""


class _Unavailable(Exception):
    """A request that failed for want of its server (not for what it asked): another endpoint may answer."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(str(error))
        self.error = error


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
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        concurrency: int = 16,
        max_retries: int = 5,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        revision: str | None = None,
        revive_s: float = 60.0,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise ModelError(
                "the server engine needs the openai client: pip install 'tinyforge[server]'"
            ) from None
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        urls = _urls(base_url)
        self.base_url = urls[0]
        self.model, self.revision, self.concurrency, self.timeout = model, revision, concurrency, timeout
        self.max_retries, self.revive_s = max_retries, revive_s
        self._openai = openai
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.endpoints = [
            _Endpoint(
                url,
                openai.OpenAI(
                    base_url=url,
                    api_key=key,
                    max_retries=max_retries,
                    timeout=openai.Timeout(timeout, connect=connect_timeout),
                ),
            )
            for url in urls
        ]
        self._lock = threading.Lock()
        self._check_model()

    @property
    def client(self) -> Any:
        """The first endpoint's ``openai`` client."""
        return self.endpoints[0].client

    @client.setter
    def client(self, value: Any) -> None:
        self.endpoints[0].client = value

    def _check_model(self) -> None:
        """Fail now, in one line, if no endpoint is reachable or one does not serve ``self.model``; an
        endpoint that cannot be reached while others can is set aside (it is tried again later)."""
        unreachable: list[ModelError] = []
        for ep in self.endpoints:
            try:
                self._check_endpoint(ep)
            except _Unavailable as e:
                unreachable.append(e.error)
                self._set_aside(ep, e.error)
        if len(unreachable) == len(self.endpoints):
            raise unreachable[0]

    def _check_endpoint(self, ep: _Endpoint) -> None:
        try:
            page = ep.client.with_options(max_retries=min(self.max_retries, 1)).models.list()
            served = [m.id for m in page.data]
        except self._openai.NotFoundError:
            hint = "" if ep.url.endswith("/v1") else " (the API root usually ends in /v1)"
            raise ModelError(
                f"{ep.url}/models is not found (HTTP 404): is {ep.url} an OpenAI-compatible API root{hint}?"
            ) from None
        except self._openai.OpenAIError as e:
            raise self._failure(e, ep.url, "/models") from None
        except (AttributeError, TypeError) as e:
            raise ModelError(f"bad response from {ep.url}/models: {_one_line(e)}") from None
        if self.model not in served:
            listed = ", ".join(repr(m) for m in served[:10]) or "nothing"
            raise ModelError(
                f"{ep.url} does not serve model {self.model!r}; it serves {listed}: pass one of those"
            )

    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint: its URL, requests sent, requests that failed for want of it, whether it is set aside
        now, and its last such error."""
        now = time.monotonic()
        with self._lock:
            return [
                {"url": e.url, "sent": e.sent, "failed": e.failed, "down": e.down_until > now,
                 "last_error": e.last_error}
                for e in self.endpoints
            ]  # fmt: skip

    def _set_aside(self, ep: _Endpoint, error: ModelError) -> None:
        with self._lock:
            ep.failed += 1
            ep.down_until = time.monotonic() + self.revive_s
            ep.last_error = str(error)

    def _pick(self, tried: set[int]) -> _Endpoint | None:
        """The endpoint for a request's next try: a live one with the fewest requests in flight (then the
        fewest sent); one set aside only when no live one is left; None when every one was tried."""
        now = time.monotonic()
        with self._lock:
            fresh = [e for i, e in enumerate(self.endpoints) if i not in tried]
            if not fresh:
                return None
            ep = min(fresh, key=lambda e: (e.down_until > now, e.in_flight, e.sent))
            ep.in_flight += 1
            ep.sent += 1
            return ep

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

        At most ``concurrency`` requests per endpoint are in flight and none wait in a queue, so after a failure nothing
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
        slots = self.concurrency * len(self.endpoints)
        pool = ThreadPoolExecutor(slots, thread_name_prefix="tinyforge-openai")
        running: dict[Future[Completion], _Job] = {}
        error: ModelError | None = None
        try:
            while True:
                while error is None and len(running) < slots:
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
        """One sample from the pool: tried on each endpoint in turn while they fail for want of a server."""
        tried: set[int] = set()
        last: ModelError | None = None
        while (ep := self._pick(tried)) is not None:
            tried.add(self.endpoints.index(ep))
            try:
                return self._send(ep, job, params)
            except _Unavailable as e:
                last = e.error
                self._set_aside(ep, e.error)
            finally:
                with self._lock:
                    ep.in_flight -= 1
        assert last is not None
        if len(self.endpoints) == 1:
            raise last
        raise ModelError(f"every endpoint failed; the last: {last}")

    def _send(self, ep: _Endpoint, job: _Job, params: SamplingParams) -> Completion:
        """One sample from endpoint ``ep``: the request, its errors as ``ModelError`` (``_Unavailable`` when
        the server is the cause), and the response as a ``Completion``."""
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
                response = ep.client.chat.completions.create(messages=job.prompt, **kwargs, **extra)
            else:
                response = ep.client.completions.create(prompt=job.prompt, **kwargs)
        except self._openai.OpenAIError as e:
            failure = self._failure(e, ep.url, endpoint)
            if (
                continues
                and isinstance(failure, ModelError)
                and isinstance(e, self._openai.APIStatusError)
                and 400 <= e.status_code < 500
            ):
                failure = ModelError(
                    f"{failure} (the chat ends with an assistant message, which is continued with vLLM's "
                    f"continue_final_message; this server may not support it)"
                )
            raise failure from None
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
            raise ModelError(f"bad response from {ep.url}{endpoint}: {_one_line(e)}") from None
        # Servers differ on stop strings (some keep the one that matched), so we cut here too.
        cut = cut_at_stop(text, params.stop)
        finish = "length" if choice.finish_reason == "length" and len(cut) == len(text) else "stop"
        return Completion(cut, prompt_tokens, completion_tokens, finish)

    def _failure(self, e: Exception, url: str, endpoint: str) -> ModelError | _Unavailable:
        """``_error``, wrapped in ``_Unavailable`` when the server rather than the request is the cause
        (unreachable, timed out, HTTP 5xx or 429 after the client's retries)."""
        error = self._error(e, url, endpoint)
        oa = self._openai
        down = isinstance(e, (oa.APIConnectionError, oa.InternalServerError, oa.RateLimitError)) or (
            isinstance(e, oa.APIStatusError) and e.status_code >= 500
        )
        return _Unavailable(error) if down else error

    def _error(self, e: Exception, url: str, endpoint: str) -> ModelError:
        """A ``ModelError`` of one line for an ``openai`` exception: what went wrong where, and what to do."""
        oa = self._openai
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


def _urls(base_url: str | Sequence[str]) -> list[str]:
    """API roots from one URL, a comma-separated string of them, or a list; in order, without repeats."""
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = list(dict.fromkeys(u.strip().rstrip("/") for u in parts if u.strip()))
    if not urls:
        raise ModelError("no server URL given (e.g. http://127.0.0.1:8000/v1)")
    return urls


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
