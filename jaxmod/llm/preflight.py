"""Before any training: is the advisor there, does it accept the key, which model, does it answer?

`preflight(settings)` asks `GET {base}/models` and one tiny completion, within `timeout_s` in total, and returns a
`PreflightResult` (the model to use: the one asked for, or the server's only one) or raises `AdvisorUnavailable`
with one line that says what to do: "no server at ...", "key rejected ...", "did you mean .../v1?", "model ... is
not served ...; models served: ...". Credentials never appear in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from jaxmod.llm.client import ChatResult, ClientSettings, LLMClient, _Failed
from jaxmod.llm.endpoint import Endpoint, resolve_endpoint
from jaxmod.llm.errors import AdvisorUnavailable

PING = [{"role": "system", "content": "Answer with one JSON object."},
        {"role": "user", "content": 'Reply with {"ok": true}.'}]


@dataclass(frozen=True)
class PreflightResult:
    """A usable advisor: where (no credentials), which model, what the server lists, and how long the test took."""

    base_url: str
    model: str
    models: tuple[str, ...]
    latency_s: float

    def describe(self) -> str:
        return f"advisor {self.base_url} (model {self.model}) answered in {self.latency_s:.2f} s"


def _served(model: str, models: list[str]) -> bool:
    # Ollama lists "name:tag" and accepts "name" for "name:latest"
    return model in models or f"{model}:latest" in models


def _explain(endpoint: Endpoint, what: str, result: ChatResult) -> str:
    url = endpoint.base_url
    if result.kind == "connect":
        if "refused" in (result.error or "").lower() or "errno 111" in (result.error or "").lower():
            return f"no server at {url} (connection refused): start one (e.g. `jaxmod serve-advisor`) or fix the URL"
        if any(words in (result.error or "").lower() for words in ("name or service not known", "nodename nor "
                                                                   "servname", "name resolution", "getaddrinfo")):
            return f"cannot reach {url}: its host name does not resolve: fix the URL ({result.error})"
        return f"cannot reach {url}: {result.error}"
    if result.kind in ("timeout", "deadline"):
        return (f"the server at {url} did not answer {what} in time ({result.error}): check that it is not busy or "
                "still loading its model, then start the run again")
    if result.status in (401, 403):
        hint = "set OPENAI_API_KEY (or ADVISOR_API_KEY) to a key it accepts" if endpoint.has_credentials else \
            "no key was sent: set OPENAI_API_KEY (or ADVISOR_API_KEY)"
        return f"key rejected by {url} (HTTP {result.status} on {what}): {hint}"
    return f"the server at {url} failed {what}: {result.error}"


async def _models(client: LLMClient, endpoint: Endpoint, timeout: float) -> list[str] | None:
    """The served models; None when the server has no model list (404) but answers completions."""
    try:
        return await client.list_models(timeout)
    except _Failed as failed:
        res = failed.result
        if res.status == 404:
            if not endpoint.base_url.rstrip("/").endswith("/v1"):
                probe = f"{endpoint.base_url}/v1"
                try:
                    status, _, _ = await client.request("GET", f"{probe}/models", timeout_s=timeout)
                except _Failed:
                    status = 0
                if status == 200:
                    raise AdvisorUnavailable(f"no OpenAI API at {endpoint.base_url} (HTTP 404 on GET /models): did "
                                             f"you mean {probe}?") from None
                raise AdvisorUnavailable(f"no OpenAI API at {endpoint.base_url} (HTTP 404 on GET /models): the URL "
                                         "should end with /v1, e.g. http://127.0.0.1:8080/v1") from None
            return None
        raise AdvisorUnavailable(_explain(endpoint, "GET /models", res)) from None


async def apreflight(settings: ClientSettings, timeout_s: float = 30.0, endpoint: Endpoint | None = None,
                     env: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None
                     ) -> PreflightResult:
    """`preflight` for code already inside an event loop."""
    endpoint = endpoint or resolve_endpoint(settings.base_url, settings.model, env, settings.api_key_env)
    start = time.monotonic()
    timeout = min(timeout_s, settings.timeout_s)
    probe = dataclasses.replace(settings, concurrency=1, max_retries=0, deadline_s=timeout_s, structured="prompt")
    async with LLMClient(probe, endpoint=endpoint, transport=transport) as client:
        models = await _models(client, endpoint, timeout)
        model = endpoint.model
        if models is not None:
            shown = ", ".join(models[:10]) + (f" (+{len(models) - 10} more)" if len(models) > 10 else "")
            if not models:
                raise AdvisorUnavailable(f"the server at {endpoint.base_url} serves no models")
            if model is None and len(models) > 1:
                raise AdvisorUnavailable(f"the server at {endpoint.base_url} serves {len(models)} models: {shown}; "
                                         "choose one with --model (or OPENAI_MODEL)")
            if model is None:
                model = models[0]
            elif not _served(model, models):
                raise AdvisorUnavailable(f"model {model!r} is not served by {endpoint.base_url}; models served: "
                                         f"{shown}")
        elif model is None:
            raise AdvisorUnavailable(f"the server at {endpoint.base_url} lists no models (HTTP 404 on GET /models): "
                                     "name one with --model (or OPENAI_MODEL)")
        client.use_model(model)
        remaining = timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            raise AdvisorUnavailable(f"the server at {endpoint.base_url} did not finish the preflight within "
                                     f"{timeout_s:.0f} s")
        result = await client.chat(PING, None, "ping", time.monotonic() + remaining, max_tokens=16)
        if not result.ok:
            if result.status == 404 or (result.status in (400, 422) and "model" in (result.error or "").lower()):
                raise AdvisorUnavailable(f"the test completion with model {model!r} failed at {endpoint.base_url} "
                                         f"({result.error}); models served: {', '.join(models or ['unknown'])}")
            raise AdvisorUnavailable(_explain(endpoint, f"a test completion (model {model!r})", result))
    return PreflightResult(endpoint.base_url, model, tuple(models or ()), time.monotonic() - start)


def preflight(settings: ClientSettings, timeout_s: float = 30.0, endpoint: Endpoint | None = None,
              env: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None
              ) -> PreflightResult:
    """Check the advisor in `settings` (URL, model, key from the arguments or `ADVISOR_*`/`OPENAI_*` variables)
    within `timeout_s`; returns the model to use or raises `AdvisorUnavailable` (one line). Not inside a running
    event loop: use `apreflight` there."""
    return asyncio.run(apreflight(settings, timeout_s, endpoint, env, transport))
