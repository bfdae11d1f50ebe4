"""Async client for any OpenAI-compatible `/v1/chat/completions` (vLLM, llama.cpp, llama-cpp-python,
Ollama, OpenAI) on `httpx.AsyncClient`. The server is untrusted: every limit holds whatever it sends.

- endpoint from the argument or `ADVISOR_*` / `OPENAI_*` variables (`jaxmod.llm.endpoint`); the model defaults
  to the server's only one; the key and URL credentials are sent but redacted from everything the client
  returns (errors, answers, model names);
- limits that hold: `timeout_s` bounds one attempt from connecting to the last byte of its body (a server
  trickling bytes is cut off), `deadline_s` bounds a whole request with its retries and backoff,
  `max_response_bytes` caps what is read (decompressed), and a batch deadline can shorten both;
- retries with exponential backoff and jitter on connection errors, timeouts, 408/409/429/5xx,
  honouring `retry-after-ms` / `Retry-After` up to a cap; no retry on other 4xx, nor on a 5xx that says the
  request itself is at fault (context overflow: llama-cpp-python answers it with a 500; invalid requests):
  kind "context" or "request";
- the model's context window, where the server tells it (`context_tokens`: llama.cpp `/props`, or vLLM's
  `max_model_len` when the model list was fetched);
- every answer shape (`jaxmod.llm.responses`): reasoning fields, content parts, streamed (SSE) bodies;
- structured output through `response_format` json_schema, falling back to json_object + schema
  (llama-cpp-python) and then to prompt-only when a server rejects the format;
- token log-probabilities asked for where wanted; a server that answers HTTP 400 to a request with them (many
  reject `logprobs`) is asked once more without them, and once that works, never with them again (counted in
  `ClientStats.logprobs_refused`, one warning per client);
- a cache that stores and serves only answers the caller's `accept` validated;
- token usage and latency accounting. `chat` never raises for server faults: it returns a result
  whose `error` (one line) says what went wrong and `kind` classifies it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from jaxmod.llm.cache import ResponseCache, request_key
from jaxmod.llm.endpoint import Endpoint, resolve_endpoint
from jaxmod.llm.errors import LLMConfigError
from jaxmod.llm.logprobs import TokenLogprob, parse_token_logprobs, to_json
from jaxmod.llm.responses import MalformedResponse, parse_body
from jaxmod.llm.secrets import one_line, redact

log = logging.getLogger("jaxmod.llm")
RETRY_STATUSES = frozenset({408, 409, 429})
STRUCTURED_MODES = ("json_schema", "json_object_schema", "prompt")
Accept = Callable[[str, "str | None"], bool]

__all__ = ["Accept", "ChatResult", "ClientSettings", "ClientStats", "LLMClient", "LLMConfigError", "STRUCTURED_MODES",
           "parse_retry_after"]


@dataclass(frozen=True)
class ClientSettings:
    """How to talk to one server. Times in seconds; every limit is checked by `__post_init__`.

    `model` None (or the legacy "default") means the server's only model. `timeout_s` bounds one attempt in total
    (connect, send, wait, read the whole body); `deadline_s` one request with all its retries (None: no bound but
    `timeout_s` times the attempts); `max_response_bytes` the body read per attempt."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    deadline_s: float | None = 300.0
    max_response_bytes: int = 4 * 1024 * 1024
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_after_cap_s: float = 60.0
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = 0
    structured: str = "json_schema"  # first mode to try; falls back along STRUCTURED_MODES
    retry_connect: bool = True  # retry connection failures here (False: one of several endpoints, whose pool moves
    # the question to another endpoint at once)

    def __post_init__(self) -> None:
        if self.structured not in STRUCTURED_MODES:
            raise LLMConfigError(f"structured must be one of {', '.join(STRUCTURED_MODES)}")
        if self.concurrency < 1:
            raise LLMConfigError("advisor concurrency must be >= 1")
        for name in ("timeout_s", "connect_timeout_s", "backoff_base_s", "backoff_cap_s", "retry_after_cap_s"):
            if not getattr(self, name) > 0:
                raise LLMConfigError(f"{name.removesuffix('_s').replace('_', ' ')} must be > 0 seconds")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise LLMConfigError("advisor deadline must be > 0 seconds")
        if self.max_response_bytes < 1024:
            raise LLMConfigError("max response size must be >= 1024 bytes")
        if self.max_tokens < 1 or self.max_retries < 0:
            raise LLMConfigError("max_tokens must be >= 1 and max_retries >= 0")
        if not 0.0 <= self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            raise LLMConfigError("temperature must lie in [0, 2] and top_p in (0, 1]")


@dataclass
class ChatResult:
    """One chat completion (or why there is none). `kind` classifies a failure: connect, timeout, deadline, http, context
    (prompt + max_tokens over the context window), request (a 5xx blaming the request),
    malformed, oversized, empty, model, format."""

    content: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    error: str | None = None
    status: int | None = None
    kind: str | None = None
    reasoning: str | None = None
    source: str = "content"
    streamed: bool = False
    logprobs: tuple[TokenLogprob, ...] | None = None  # the answer's tokens with their log-probabilities, if returned
    failovers: int = 0  # endpoints of a pool that could not be reached before this result (`jaxmod.llm.pool`)

    @property
    def ok(self) -> bool:
        return self.error is None and self.content is not None


@dataclass
class ClientStats:
    """Accounting over the client's lifetime."""

    requests: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_rejected: int = 0  # cached answers the caller's validator refused (asked again)
    cache_stores: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    fallbacks: int = 0
    oversized: int = 0
    timeouts: int = 0
    logprobs_refused: int = 0  # requests the server refused with HTTP 400 while asking for logprobs (sent again without)

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def parse_retry_after(headers: httpx.Headers, cap_s: float) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or HTTP date); None if absent,
    non-positive or above the cap."""
    raw_ms = headers.get("retry-after-ms")
    wait: float | None = None
    if raw_ms is not None:
        try:
            wait = float(raw_ms) / 1000.0
        except ValueError:
            wait = None
    if wait is None and headers.get("retry-after") is not None:
        raw = headers["retry-after"].strip()
        try:
            wait = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                wait = when.timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = None
    if wait is None or wait != wait or wait <= 0 or wait > cap_s:
        return None
    return wait


def _format_rejected(status: int, body: str) -> bool:
    """Does this error look like the server refusing our `response_format`?"""
    text = body.lower()
    return status in (400, 422, 500) and ("response_format" in text or "json_schema" in text or "schema" in text)


CONTEXT_MARKERS = ("context window", "context length", "context_length", "exceed_context", "context size",
                   "maximum context", "too many tokens", "prompt is too long", "input is too long")
REQUEST_TYPES = ("invalid_request_error", "validation_error", "bad_request", "not_found_error")


def classify_error(status: int, body: bytes) -> str:
    """A failed request's kind: "context" (the prompt and max_tokens exceed the model's context, whatever the
    status: llama-server 400 `exceed_context_size_error`, llama-cpp-python 500 "Requested tokens (4516) exceed
    context window of 4096", OpenAI/vLLM 400 `context_length_exceeded`), "request" (a 5xx whose error type says the
    request is at fault: retrying cannot help), else "http"."""
    text = body[:4096].decode("utf-8", "replace").lower()
    if any(m in text for m in CONTEXT_MARKERS):
        return "context"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return "http"
    err = data.get("error") if isinstance(data, dict) else None
    kind = str(err.get("type") or err.get("code") or "") if isinstance(err, dict) else ""
    return "request" if status >= 500 and kind in REQUEST_TYPES else "http"


def error_message(body: bytes) -> str:
    """A server's error body as one redacted line: `error.message` of a JSON error, else the text itself."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return one_line(text, 200)
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or err.get("type") or err
        if err is not None:
            return one_line(str(err), 200)
    return one_line(text, 200)


def _refused(err: BaseException) -> bool:
    """Was this connection refused (nothing listens)? httpx hides it behind "All connection attempts failed"."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, ConnectionRefusedError) or (isinstance(err, OSError) and err.errno == 111):
            return True
        if isinstance(err, BaseExceptionGroup) and any(_refused(e) for e in err.exceptions):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _props_n_ctx(data: Any) -> int | None:
    """n_ctx from llama.cpp's `/props` body (per slot), or None."""
    if not isinstance(data, dict):
        return None
    settings = data.get("default_generation_settings")
    if isinstance(settings, dict) and "n_ctx" in settings:
        return settings["n_ctx"]
    return data.get("n_ctx")


class _Failed(Exception):
    """One attempt's failure: (result, wait, fallback) as `_attempt` returns them."""

    def __init__(self, result: ChatResult, wait: float | None = None, fallback: bool = False) -> None:
        super().__init__(result.error)
        self.result, self.wait, self.fallback = result, wait, fallback


class LLMClient:
    """Bounded-concurrency chat client. Use as `async with LLMClient(settings) as client:`."""

    def __init__(self, settings: ClientSettings, cache: ResponseCache | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Callable[[float], Any] = asyncio.sleep,
                 endpoint: Endpoint | None = None):
        self.settings = settings
        self.endpoint = endpoint if endpoint is not None else resolve_endpoint(settings.base_url, settings.model,
                                                                               api_key_env=settings.api_key_env)
        self.base_url = self.endpoint.base_url  # no credentials: safe to show
        self._completions_url = httpx.URL(f"{self.base_url}/chat/completions")  # parsed once, not per request
        self.cache = cache
        self.stats = ClientStats()
        self._mode_index = STRUCTURED_MODES.index(settings.structured)
        self._transport = transport
        self._sleep = sleep
        self._clients: list[httpx.AsyncClient] = []
        self._idle: asyncio.LifoQueue[httpx.AsyncClient] | None = None
        self._model: str | None = self.endpoint.model
        self._model_error: ChatResult | None = None
        self._model_lock: asyncio.Lock | None = None
        self._model_lens: dict[str, Any] = {}  # max_model_len by model id, from the model list (vLLM)
        self.logprobs_off = False  # the server refused logprobs and answered without them: not asked again

    async def __aenter__(self) -> LLMClient:
        s = self.settings
        headers = {"Content-Type": "application/json", **self.endpoint.headers()}
        # One single-connection client per question in flight, lent out by a stack (which bounds concurrency):
        # httpcore scans its whole pool, checking every idle connection's socket, on each request event, so
        # client CPU per request grows with the pool (MountainCar's advice rounds, 64 in flight: 3.3 ms per
        # request with one pool of 64, 0.63 ms with pools of 8, 0.39 ms with one connection each).
        # One TLS context for all: httpx builds (and loads the CA store into) one per client otherwise, 16 clients
        # in 1.0 s on a busy 2-core machine. Plain http needs no CA store at all.
        if self.base_url.startswith("https://") and self._transport is None:
            tls: ssl.SSLContext = httpx.create_ssl_context()
        else:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._clients = [httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=self._transport,
                                           verify=tls, limits=limits,
                                           timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s))
                         for _ in range(s.concurrency)]
        self._idle = asyncio.LifoQueue()  # the most recently used first: its connection is open
        for client in self._clients:
            self._idle.put_nowait(client)
        self._model_lock = asyncio.Lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []

    @property
    def structured_mode(self) -> str:
        return STRUCTURED_MODES[self._mode_index]

    @property
    def model(self) -> str | None:
        """The model asked for: the configured one, or the server's only one once discovered."""
        return self._model

    def use_model(self, model: str) -> None:
        """Ask for `model` from now on (e.g. the one `preflight` chose)."""
        self._model = model

    # ------------------------------------------------------------------ low-level bounded GET/POST
    async def request(self, method: str, path: str, *, json_body: Any = None, timeout_s: float | None = None
                      ) -> tuple[int, httpx.Headers, bytes]:
        """One HTTP exchange, bounded in time (`timeout_s`, default the attempt timeout: connect to last byte) and
        size (`max_response_bytes`). Raises `_Failed` with a classified, redacted, one-line result."""
        if not self._clients or self._idle is None:
            raise RuntimeError("use LLMClient inside 'async with'")
        client = await self._idle.get()
        try:
            return await self._exchange(client, method, path, json_body, timeout_s or self.settings.timeout_s)
        finally:
            self._idle.put_nowait(client)

    async def _exchange(self, client: httpx.AsyncClient, method: str, url: str | httpx.URL, json_body: Any,
                        timeout_s: float) -> tuple[int, httpx.Headers, bytes]:
        cap = self.settings.max_response_bytes
        try:
            async with asyncio.timeout(timeout_s):
                async with client.stream(method, url, json=json_body) as resp:
                    declared = resp.headers.get("content-length")
                    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > cap:
                        raise _Failed(self._oversized(resp.status_code, cap))
                    chunks, size = [], 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > cap:
                            raise _Failed(self._oversized(resp.status_code, cap))
                        chunks.append(chunk)
                    return resp.status_code, resp.headers, b"".join(chunks)
        except TimeoutError:
            self.stats.timeouts += 1
            raise _Failed(ChatResult(error=f"timeout: no complete answer within {timeout_s:.1f} s", kind="timeout"),
                          -1.0) from None
        except httpx.TimeoutException as err:
            self.stats.timeouts += 1
            raise _Failed(ChatResult(error=f"timeout ({type(err).__name__}) within {timeout_s:.1f} s",
                                     kind="timeout"), -1.0) from None
        except httpx.TransportError as err:  # connection refused/reset, protocol errors, bad encodings
            detail = "connection refused" if _refused(err) else one_line(f"{type(err).__name__}: {err}", 200)
            raise _Failed(ChatResult(error=f"connection error: {detail}", kind="connect"), -1.0) from None

    def _oversized(self, status: int, cap: int) -> ChatResult:
        self.stats.oversized += 1
        return ChatResult(error=f"response larger than {cap} bytes (max_response_bytes)", status=status,
                          kind="oversized")

    # ------------------------------------------------------------------ model discovery
    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        """Model ids from `GET {base}/models`; raises `_Failed` (see `jaxmod.llm.preflight` for messages)."""
        status, _, body = await self.request("GET", f"{self.base_url}/models", timeout_s=timeout_s)
        if status >= 400:
            raise _Failed(ChatResult(error=f"HTTP {status} on GET /models: {error_message(body)}", status=status,
                                     kind="http"))
        try:
            data = json.loads(body)
            items = data["data"] if isinstance(data, dict) else data
            ids = [redact(str(m["id"] if isinstance(m, dict) else m)) for m in items]
            self._model_lens = {i: m.get("max_model_len") for i, m in zip(ids, items, strict=True)
                                if isinstance(m, dict) and m.get("max_model_len") is not None}
        except (ValueError, KeyError, TypeError, RecursionError):
            raise _Failed(ChatResult(error="malformed GET /models body (no data[].id)", status=status,
                                     kind="malformed")) from None
        return ids

    async def context_tokens(self, timeout_s: float | None = None) -> int | None:
        """The model's context window in tokens, where the server tells it: llama.cpp's `GET /props`
        (`default_generation_settings.n_ctx`, per slot; also jaxmod's embedded server), else vLLM's `max_model_len`
        from the model list when it was fetched (no model given). None when neither tells (OpenAI, Ollama) or the
        answer is malformed; never raises."""
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        n = None
        try:
            status, _, body = await self.request("GET", f"{root}/props",
                                                 timeout_s=timeout_s or min(self.settings.timeout_s, 10.0))
            if status < 400:
                n = _props_n_ctx(json.loads(body))
        except (_Failed, ValueError, RecursionError):
            n = None
        if n is None and self._model_lens:  # the model list, if it was fetched (vLLM's max_model_len)
            n = self._model_lens.get(self._model) if self._model in self._model_lens else \
                next(iter(self._model_lens.values())) if len(self._model_lens) == 1 else None
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    async def _ensure_model(self, deadline: float | None = None) -> ChatResult | None:
        """Discover the model once when none was given; the failure (a result) if that is impossible."""
        if self._model is not None:
            return None
        async with self._model_lock:
            if self._model is not None or self._model_error is not None:
                return self._model_error
            timeout = self.settings.timeout_s if deadline is None else \
                max(0.01, min(self.settings.timeout_s, deadline - time.monotonic()))
            try:
                models = await self.list_models(timeout)
            except _Failed as failed:
                return ChatResult(error=f"no model given and the model list failed: {failed.result.error}",
                                  kind="connect" if failed.result.kind == "connect" else "model",
                                  status=failed.result.status)  # nothing listens: a connection failure
            if len(models) == 1:
                self._model = models[0]
                return None
            shown = ", ".join(models[:10]) or "none"
            self._model_error = ChatResult(error=f"no model given and the server serves {len(models)} models "
                                                 f"({shown}): choose one with --model", kind="model")
            return self._model_error

    # ------------------------------------------------------------------ request building
    def _payload(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None, name: str,
                 max_tokens: int | None = None, top_logprobs: int = 0) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": self._model, "messages": list(messages), "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": max_tokens or s.max_tokens, "stream": False}
        if s.seed is not None:
            body["seed"] = s.seed
        if top_logprobs > 0:  # OpenAI's chat-completion fields (vLLM, llama.cpp's server, llama-cpp-python too)
            body.update(logprobs=True, top_logprobs=int(top_logprobs))
        mode = self.structured_mode
        if schema is not None and mode == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": name, "schema": schema, "strict": True}}
        elif schema is not None and mode == "json_object_schema":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def cache_key(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None,
                  top_logprobs: int = 0) -> str:
        s = self.settings
        request = {"backend": self.base_url, "model": self._model, "messages": list(messages),
                   "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "max_tokens": s.max_tokens,
                   "schema": schema, "n": 1}
        if top_logprobs > 0:
            request["top_logprobs"] = int(top_logprobs)
        return request_key(request)

    # ------------------------------------------------------------------ one request
    async def chat(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None = None,
                   name: str = "answer", deadline: float | None = None, accept: Accept | None = None,
                   max_tokens: int | None = None, top_logprobs: int = 0) -> ChatResult:
        """One completion, returned by `deadline` (a `time.monotonic()` instant) or `deadline_s` from now, whichever
        is first. `accept(content, finish_reason)` is the caller's validator: only answers it accepts (and that
        finished with "stop") are cached, and a cached answer it refuses is asked for again. `top_logprobs` > 0 asks
        for the answer's token log-probabilities with that many alternatives per token (`ChatResult.logprobs`, None
        where the server returns none)."""
        if not self._clients or self._idle is None:
            raise RuntimeError("use LLMClient inside 'async with'")
        top_logprobs = 0 if self.logprobs_off else top_logprobs
        self.stats.requests += 1
        start = time.monotonic()
        if self.settings.deadline_s is not None:
            own = start + self.settings.deadline_s
            deadline = own if deadline is None else min(deadline, own)
        failure = await self._ensure_model(deadline)
        if failure is not None:
            self.stats.failed += 1
            return ChatResult(error=failure.error, kind=failure.kind, status=failure.status,
                              latency_s=time.monotonic() - start)
        key = self.cache_key(messages, schema, top_logprobs) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None and (accept is None or accept(hit["content"], hit.get("finish_reason"))):
                self.stats.cache_hits += 1
                self.stats.completed += 1
                return ChatResult(content=hit["content"], finish_reason=hit.get("finish_reason"),
                                  usage=hit.get("usage", {}), model=hit.get("model"), cached=True,
                                  logprobs=parse_token_logprobs(hit.get("logprobs")))
            if hit is not None:
                self.stats.cache_rejected += 1
        try:  # waiting for a free connection counts against the deadline too
            async with asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                client = await self._idle.get()
        except TimeoutError:
            self.stats.failed += 1
            return ChatResult(error="deadline passed while waiting for a free connection", kind="deadline",
                              latency_s=time.monotonic() - start)
        try:
            result = await self._with_retries(client, messages, schema, name, deadline, start, max_tokens,
                                              top_logprobs)
        finally:
            self._idle.put_nowait(client)
        if result.ok:
            self.stats.completed += 1
            self.stats.prompt_tokens += int(result.usage.get("prompt_tokens", 0) or 0)
            self.stats.completion_tokens += int(result.usage.get("completion_tokens", 0) or 0)
            self.stats.latency_s += result.latency_s
            if key is not None and accept is not None and result.finish_reason == "stop" \
                    and accept(result.content, result.finish_reason):
                self.cache.put(key, {"content": result.content, "finish_reason": result.finish_reason,
                                     "usage": result.usage, "model": result.model,
                                     **({"logprobs": to_json(result.logprobs)} if result.logprobs else {})})
                self.stats.cache_stores += 1
        else:
            self.stats.failed += 1
        return result

    async def _with_retries(self, client: httpx.AsyncClient, messages, schema, name, deadline, start,
                            max_tokens, top_logprobs: int = 0) -> ChatResult:
        s = self.settings
        attempt = 0
        without_logprobs = False  # sent again without logprobs after the server refused them
        last = ChatResult(error="not attempted", kind="deadline")
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0.005:
                last.error = f"deadline passed after {attempt} attempt(s): {last.error}"
                last.kind, last.attempts, last.latency_s = "deadline", attempt, time.monotonic() - start
                return last
            attempt += 1
            timeout = s.timeout_s if remaining is None else min(s.timeout_s, remaining)
            last, wait, fallback = await self._attempt(client, messages, schema, name, timeout, max_tokens,
                                                       top_logprobs)
            last.attempts = attempt
            last.latency_s = time.monotonic() - start
            if last.ok:
                if without_logprobs:
                    self.logprobs_off = True  # the server answers without them: stop asking
                return last
            if last.kind == "connect" and not s.retry_connect:
                return last
            if top_logprobs > 0 and last.status == 400 and last.kind == "http":
                top_logprobs, without_logprobs = 0, True  # many servers reject logprobs: once more without them
                self._refused_logprobs(last)
                attempt -= 1
                continue
            if fallback and self._mode_index < len(STRUCTURED_MODES) - 1:
                self._mode_index += 1  # the server refused this response_format: degrade and resend now
                self.stats.fallbacks += 1
                attempt -= 1
                continue
            if wait is None or attempt > s.max_retries:
                return last
            if wait < 0:  # no server hint: exponential backoff with jitter
                wait = min(s.backoff_cap_s, s.backoff_base_s * 2 ** (attempt - 1)) * (1 - 0.25 * random.random())
            if deadline is not None and time.monotonic() + wait >= deadline:
                last.error = f"deadline would pass while backing off: {last.error}"
                return last
            self.stats.retries += 1
            await self._sleep(wait)

    def _refused_logprobs(self, result: ChatResult) -> None:
        """Count a request refused (HTTP 400) while asking for logprobs; warn on the first."""
        self.stats.logprobs_refused += 1
        if self.stats.logprobs_refused == 1:
            log.warning("the advisor server at %s answered HTTP 400 to a request with logprobs (%s): asking again "
                        "without them (answers fall back to one-hot targets; --advisor-logprobs 0 skips asking)",
                        self.base_url, result.error)

    async def _attempt(self, client: httpx.AsyncClient, messages, schema, name, timeout, max_tokens,
                       top_logprobs: int = 0) -> tuple[ChatResult, float | None, bool]:
        """(result, wait, fallback): wait None = do not retry, -1 = retry with backoff, > 0 = server's hint."""
        payload = self._payload(messages, schema, name, max_tokens, top_logprobs)
        try:
            status, headers, body = await self._exchange(client, "POST", self._completions_url, payload, timeout)
        except _Failed as failed:
            return failed.result, failed.wait, failed.fallback
        if status >= 400:
            message = error_message(body)
            if schema is not None and self.structured_mode != "prompt" and _format_rejected(status, message):
                return ChatResult(error=f"HTTP {status}: response_format rejected", status=status, kind="format"), \
                    None, True
            kind = classify_error(status, body)
            result = ChatResult(error=f"HTTP {status}: {message}", status=status, kind=kind)
            if kind != "http":  # the request itself is at fault: the same request fails again
                return result, None, False
            should = headers.get("x-should-retry")
            if should == "false":
                return result, None, False
            if status in RETRY_STATUSES or status >= 500 or should == "true":
                hint = parse_retry_after(headers, self.settings.retry_after_cap_s)
                return result, (hint if hint is not None else -1.0), False
            return result, None, False
        try:
            done = parse_body(body, headers.get("content-type"))
        except MalformedResponse as err:
            return ChatResult(error=one_line(str(err)), status=status, kind="malformed"), None, False
        result = ChatResult(content=redact(done.content) if done.content is not None else None,
                            finish_reason=done.finish_reason, usage=done.usage,
                            model=redact(done.model) if done.model else None, status=status,
                            reasoning=redact(done.reasoning) if done.reasoning else None, source=done.source,
                            streamed=done.streamed, logprobs=done.logprobs)
        if done.content is None:
            result.error, result.kind = "no answer text (content and reasoning are empty)", "empty"
        return result, None, False

    # ------------------------------------------------------------------ batches
    async def chat_many(self, requests: Sequence[tuple[Sequence[dict[str, str]], dict[str, Any] | None, str]],
                        deadline_s: float | None = None, accept: Accept | None = None) -> list[ChatResult]:
        """All requests concurrently (bounded); each ends by `deadline_s` from now, answered or not."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return list(await asyncio.gather(*(self.chat(m, s, n, deadline, accept) for m, s, n in requests)))
