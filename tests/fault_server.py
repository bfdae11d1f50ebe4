"""A loopback OpenAI-compatible server whose responses a test scripts, to inject faults."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def ok(content: str, finish_reason: str = "stop") -> tuple:
    return ("ok", content, finish_reason)


def status(code: int, body: str = "", headers: dict[str, str] | None = None) -> tuple:
    return ("status", code, body, headers or {})


def stall(seconds: float) -> tuple:
    return ("stall", seconds)


def raw(body: bytes, code: int = 200) -> tuple:
    return ("raw", code, body)


class FaultServer:
    """Pops one scripted action per request (the last one repeats); records requests and headers."""

    def __init__(self, actions: list[tuple]) -> None:
        self.actions = deque(actions)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

            def log_message(self, *a):
                return

            def _write(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                server.times.append(time.monotonic())
                action = server.actions.popleft() if len(server.actions) > 1 else server.actions[0]
                kind = action[0]
                if kind == "ok":
                    self._write(200, json.dumps({
                        "id": "x", "object": "chat.completion", "model": "fault-model",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": action[1]},
                                     "finish_reason": action[2]}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode())
                elif kind == "status":
                    body_txt = action[2] or json.dumps({"error": {"message": f"HTTP {action[1]}", "code": action[1]}})
                    self._write(action[1], body_txt.encode(), action[3])
                elif kind == "stall":
                    time.sleep(action[1])
                    try:
                        self._write(200, b'{"choices": []}')
                    except OSError:
                        pass
                elif kind == "raw":
                    self._write(action[1], action[2])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
