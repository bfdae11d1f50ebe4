"""Async client for any OpenAI-compatible `/v1/chat/completions` (vLLM, llama.cpp, llama-cpp-python,
Ollama, OpenAI) on `httpx.AsyncClient`.

- base URL from the argument, `ADVISOR_BASE_URL`, `OPENAI_BASE_URL` or `OPENAI_API_BASE`; key from
  `OPENAI_API_KEY` (sent as a bearer token, never logged, cached or written anywhere);
- bounded concurrency (one keep-alive connection per question in flight), per-request timeout and a deadline
  for a whole batch;
- retries with exponential backoff and jitter on connection errors, timeouts, 408/409/429/5xx,
  honouring `retry-after-ms` / `Retry-After` up to a cap; no retry on other 4xx;
- structured output through `response_format` json_schema, falling back to json_object + schema
  (llama-cpp-python) and then to prompt-only when a server rejects the format;
- token usage and latency accounting. `chat` never raises for server faults: it returns a result
  whose `error` says what went wrong.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from jaxmod.llm.cache import ResponseCache, request_key

RETRY_STATUSES = frozenset({408, 409, 429})
STRUCTURED_MODES = ("json_schema", "json_object_schema", "prompt")


class LLMConfigError(ValueError):
    """Missing or bad client settings (e.g. no base URL); the message says what to set."""


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get("ADVISOR_BASE_URL") or os.environ.get("OPENAI_BASE_URL") \
        or os.environ.get("OPENAI_API_BASE")
    if not url:
        raise LLMConfigError("no LLM server URL: pass --llm-url (e.g. http://127.0.0.1:8080/v1) or set OPENAI_BASE_URL")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LLMConfigError(f"LLM URL must start with http:// or https://, got {url!r}")
    return url


@dataclass(frozen=True)
class ClientSettings:
    """How to talk to one server. Timeouts in seconds."""

    base_url: str | None = None
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_after_cap_s: float = 60.0
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = 0
    structured: str = "json_schema"  # first mode to try; falls back along STRUCTURED_MODES

    def __post_init__(self) -> None:
        if self.structured not in STRUCTURED_MODES:
            raise LLMConfigError(f"structured must be one of {', '.join(STRUCTURED_MODES)}")
        if self.concurrency < 1:
            raise LLMConfigError("concurrency must be >= 1")


@dataclass
class ChatResult:
    """One chat completion (or why there is none)."""

    content: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    error: str | None = None
    status: int | None = None

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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    fallbacks: int = 0

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
            except (TypeError, ValueError):
                wait = None
    if wait is None or wait <= 0 or wait > cap_s:
        return None
    return wait


def _format_rejected(status: int, body: str) -> bool:
    """Does this error look like the server refusing our `response_format`?"""
    text = body.lower()
    return status in (400, 422, 500) and ("response_format" in text or "json_schema" in text or "schema" in text)


class LLMClient:
    """Bounded-concurrency chat client. Use as `async with LLMClient(settings) as client:`."""

    def __init__(self, settings: ClientSettings, cache: ResponseCache | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Callable[[float], Any] = asyncio.sleep):
        self.settings = settings
        self.base_url = resolve_base_url(settings.base_url)
        self._completions_url = httpx.URL(f"{self.base_url}/chat/completions")  # parsed once, not per request
        self.cache = cache
        self.stats = ClientStats()
        self._mode_index = STRUCTURED_MODES.index(settings.structured)
        self._transport = transport
        self._sleep = sleep
        self._clients: list[httpx.AsyncClient] = []
        self._idle: asyncio.LifoQueue[httpx.AsyncClient] | None = None

    async def __aenter__(self) -> LLMClient:
        s = self.settings
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(s.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # One single-connection client per question in flight, lent out by a stack (which bounds concurrency):
        # httpcore scans its whole pool, checking every idle connection's socket, on each request event, so
        # client CPU per request grows with the pool (MountainCar's advice rounds, 64 in flight: 3.3 ms per
        # request with one pool of 64, 0.63 ms with pools of 8, 0.39 ms with one connection each).
        # One TLS context for all: building one per client costs ~15 ms.
        tls = httpx.create_ssl_context() if self.base_url.startswith("https://") and self._transport is None else True
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._clients = [httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=self._transport,
                                           verify=tls, limits=limits,
                                           timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s))
                         for _ in range(s.concurrency)]
        self._idle = asyncio.LifoQueue()  # the most recently used first: its connection is open
        for client in self._clients:
            self._idle.put_nowait(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []

    @property
    def structured_mode(self) -> str:
        return STRUCTURED_MODES[self._mode_index]

    # ------------------------------------------------------------------ request building
    def _payload(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None, name: str) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": list(messages), "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_tokens, "stream": False}
        if s.seed is not None:
            body["seed"] = s.seed
        mode = self.structured_mode
        if schema is not None and mode == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": name, "schema": schema, "strict": True}}
        elif schema is not None and mode == "json_object_schema":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def cache_key(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None) -> str:
        s = self.settings
        return request_key({"backend": self.base_url, "model": s.model, "messages": list(messages),
                            "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
                            "max_tokens": s.max_tokens, "schema": schema, "n": 1})

    # ------------------------------------------------------------------ one request
    async def chat(self, messages: Sequence[dict[str, str]], schema: dict[str, Any] | None = None,
                   name: str = "answer", deadline: float | None = None,
                   accept: Callable[[str, str | None], bool] | None = None) -> ChatResult:
        """One completion. `deadline` is a `time.monotonic()` instant; `accept(content, finish_reason)`
        decides whether a response may be cached (validated answers only)."""
        if not self._clients or self._idle is None:
            raise RuntimeError("use LLMClient inside 'async with'")
        self.stats.requests += 1
        key = self.cache_key(messages, schema) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                self.stats.completed += 1
                return ChatResult(content=hit["content"], finish_reason=hit.get("finish_reason"),
                                  usage=hit.get("usage", {}), model=hit.get("model"), cached=True)
        client = await self._idle.get()
        try:
            result = await self._with_retries(client, messages, schema, name, deadline)
        finally:
            self._idle.put_nowait(client)
        if result.ok:
            self.stats.completed += 1
            self.stats.prompt_tokens += int(result.usage.get("prompt_tokens", 0) or 0)
            self.stats.completion_tokens += int(result.usage.get("completion_tokens", 0) or 0)
            self.stats.latency_s += result.latency_s
            if key is not None and result.finish_reason == "stop" and (accept is None or
                                                                       accept(result.content, result.finish_reason)):
                self.cache.put(key, {"content": result.content, "finish_reason": result.finish_reason,
                                     "usage": result.usage, "model": result.model})
        else:
            self.stats.failed += 1
        return result

    async def _with_retries(self, client: httpx.AsyncClient, messages, schema, name, deadline) -> ChatResult:
        s = self.settings
        start = time.monotonic()
        attempt = 0
        last = ChatResult(error="not attempted")
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                last.error = f"deadline passed after {attempt} attempt(s): {last.error}"
                last.attempts = attempt
                return last
            attempt += 1
            timeout = s.timeout_s if remaining is None else max(0.01, min(s.timeout_s, remaining))
            last, wait, fallback = await self._attempt(client, messages, schema, name, timeout)
            last.attempts = attempt
            last.latency_s = time.monotonic() - start
            if last.ok:
                return last
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

    async def _attempt(self, client: httpx.AsyncClient, messages, schema, name, timeout
                       ) -> tuple[ChatResult, float | None, bool]:
        """(result, wait, fallback): wait None = do not retry, -1 = retry with backoff, > 0 = server's hint."""
        payload = self._payload(messages, schema, name)
        try:
            resp = await client.post(self._completions_url, json=payload, timeout=timeout)
        except httpx.TimeoutException as err:
            return ChatResult(error=f"timeout after {timeout:.1f}s ({type(err).__name__})"), -1.0, False
        except httpx.TransportError as err:  # connection refused/reset, protocol errors
            return ChatResult(error=f"connection error: {type(err).__name__}: {err}"[:300]), -1.0, False
        status = resp.status_code
        if status >= 400:
            body = resp.text[:500]
            if schema is not None and self.structured_mode != "prompt" and _format_rejected(status, body):
                return ChatResult(error=f"HTTP {status}: response_format rejected", status=status), None, True
            result = ChatResult(error=f"HTTP {status}: {body[:200]}", status=status)
            should = resp.headers.get("x-should-retry")
            if should == "false":
                return result, None, False
            if status in RETRY_STATUSES or status >= 500 or should == "true":
                hint = parse_retry_after(resp.headers, self.settings.retry_after_cap_s)
                return result, (hint if hint is not None else -1.0), False
            return result, None, False
        try:
            data = resp.json()
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ChatResult(error="malformed response body (no choices[0].message.content)", status=status), \
                None, False
        usage = data.get("usage") or {}
        return ChatResult(content=content if isinstance(content, str) else None,
                          finish_reason=choice.get("finish_reason"), usage=usage if isinstance(usage, dict) else {},
                          model=data.get("model"), status=status,
                          error=None if isinstance(content, str) else "content is not text"), None, False

    # ------------------------------------------------------------------ batches
    async def chat_many(self, requests: Sequence[tuple[Sequence[dict[str, str]], dict[str, Any] | None, str]],
                        deadline_s: float | None = None,
                        accept: Callable[[str, str | None], bool] | None = None) -> list[ChatResult]:
        """All requests concurrently (bounded); each ends by `deadline_s` from now, answered or not."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return list(await asyncio.gather(*(self.chat(m, s, n, deadline, accept) for m, s, n in requests)))
