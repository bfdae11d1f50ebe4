"""A loopback OpenAI-compatible server whose responses a test scripts, to inject faults.

`FaultServer(actions)` pops one scripted action per `POST .../chat/completions` (the last one repeats) and
answers `GET .../models`; it records every request body and header set. Actions are tuples built by the helpers
below. Handlers that wait (`stall`, `trickle`) stop as soon as the server exits, so tests end promptly."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(content: Any = None, finish_reason: str | None = "stop", **message: Any) -> dict[str, Any]:
    """A chat.completion body; extra message fields (e.g. reasoning_content) via keywords."""
    return {"id": "x", "object": "chat.completion", "model": "fault-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def ok(content: str | None, finish_reason: str | None = "stop", **message: Any) -> tuple:
    return ("json", 200, completion(content, finish_reason, **message), {})


def body(data: Any, code: int = 200, headers: dict[str, str] | None = None) -> tuple:
    """Any JSON body."""
    return ("json", code, data, headers or {})


def status(code: int, text: str = "", headers: dict[str, str] | None = None) -> tuple:
    return ("status", code, text, headers or {})


def stall(seconds: float) -> tuple:
    """Accept the request and answer nothing for `seconds` (or until the server stops)."""
    return ("stall", seconds)


def raw(data: bytes, code: int = 200, content_type: str = "application/json") -> tuple:
    return ("raw", code, data, content_type)


def trickle(data: bytes, interval_s: float) -> tuple:
    """Send headers with the full Content-Length at once, then the body one byte every `interval_s`."""
    return ("trickle", data, interval_s)


def sse(events: list[Any], content_type: str = "text/event-stream", done: bool = True) -> tuple:
    """A streamed answer: each event (a dict, or a raw string) as `data: ...\\n\\n`, then `data: [DONE]`."""
    text = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return ("raw", 200, (text + ("data: [DONE]\n\n" if done else "")).encode(), content_type)


def chunk(content: str | None = None, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    """One chat.completion.chunk event."""
    d = {**({"content": content} if content is not None else {}), **delta}
    return {"id": "x", "object": "chat.completion.chunk", "model": "fault-model",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish_reason}]}


def huge(nbytes: int) -> tuple:
    """A 200 whose body is `nbytes` long (sent in 64 kB pieces; the client may hang up)."""
    return ("huge", nbytes)


def truncated(data: bytes, declared: int) -> tuple:
    """Declare `declared` bytes, send `data` (fewer), then close the connection."""
    return ("truncated", data, declared)


def echo_auth(code: int = 401) -> tuple:
    """An error whose body echoes the Authorization header (as some proxies do)."""
    return ("echo", code)


class FaultServer:
    """Pops one scripted action per completion request (the last one repeats); records requests and headers."""

    def __init__(self, actions: list[tuple], models: list[str] | None = None, models_action: tuple | None = None,
                 prefix: str = "/v1") -> None:
        self.actions = deque(actions)
        self.models = ["fault-model"] if models is None else models
        self.models_action = models_action
        self.prefix = prefix
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.model_headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

            def log_message(self, *a):
                return

            def _head(self, code: int, length: int, headers: dict[str, str] | None = None,
                      content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def _write(self, code: int, data: bytes, headers: dict[str, str] | None = None,
                       content_type: str = "application/json") -> None:
                self._head(code, len(data), headers, content_type)
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/") != f"{server.prefix}/models":
                    self._write(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    return
                server.model_headers.append(dict(self.headers))
                if server.models_action is not None:
                    self._act(server.models_action)
                    return
                self._write(200, json.dumps({"object": "list", "data": [{"id": m, "object": "model"}
                                                                         for m in server.models]}).encode())

            def do_POST(self):  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.rstrip("/") != f"{server.prefix}/chat/completions":
                    self._write(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    return
                server.requests.append(json.loads(data or b"{}"))
                server.headers.append(dict(self.headers))
                server.times.append(time.monotonic())
                self._act(server.actions.popleft() if len(server.actions) > 1 else server.actions[0])

            def _act(self, action: tuple) -> None:
                kind = action[0]
                try:
                    if kind == "json":
                        self._write(action[1], json.dumps(action[2]).encode(), action[3])
                    elif kind == "status":
                        text = action[2] or json.dumps({"error": {"message": f"HTTP {action[1]}", "code": action[1]}})
                        self._write(action[1], text.encode(), action[3])
                    elif kind == "stall":
                        server.stopping.wait(action[1])
                        self._write(200, json.dumps(completion('{"late": true}')).encode())
                    elif kind == "raw":
                        self._write(action[1], action[2], content_type=action[3])
                    elif kind == "trickle":
                        self._head(200, len(action[1]))
                        for i in range(len(action[1])):
                            if server.stopping.wait(action[2]):
                                break
                            self.wfile.write(action[1][i:i + 1])
                            self.wfile.flush()
                    elif kind == "huge":
                        self._head(200, action[1])
                        piece = b" " * 65536
                        for start in range(0, action[1], len(piece)):
                            self.wfile.write(piece[: min(len(piece), action[1] - start)])
                    elif kind == "truncated":
                        self._head(200, action[2])
                        self.wfile.write(action[1])
                        self.wfile.flush()
                        self.close_connection = True
                    elif kind == "echo":
                        auth = self.headers.get("Authorization", "")
                        self._write(action[1], json.dumps({"error": {"message": f"invalid credentials: {auth}",
                                                                     "received": auth}}).encode())
                except OSError:  # the client hung up (it is allowed to)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.root}{self.prefix}"

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
