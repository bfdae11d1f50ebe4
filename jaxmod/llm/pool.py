"""Several OpenAI-compatible advisor endpoints behind one chat backend (`--advisor URL1,URL2`; issue 23, the
advisor at scale).

Each endpoint is its own `LLMClient` with its own concurrency limit (its connections). A question goes to the live
endpoint with the fewest requests in flight relative to its limit (ties: the first listed). An endpoint whose
connection fails (nothing listens, the connection is reset: `ChatResult.kind` "connect") is marked down: the
question moves at once to the next endpoint (counted in `ChatResult.failovers`), a warning says so once per outage,
and the endpoint gets no question for `revive_s` seconds, after which it is tried again. A question that no
endpoint could take fails with the last endpoint's error, which the advisor's failure policy turns into the run's
usual one-line error. Other failures (timeouts, HTTP errors, bad answers) stay with the endpoint that answered:
they say nothing about the others.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from jaxmod.llm.client import Accept, ChatResult, LLMClient

log = logging.getLogger("jaxmod.llm")
REVIVE_S = 30.0  # seconds an endpoint found down gets no question (jaxmod's choice: a restarted server rejoins soon)
_URL_START = re.compile(r",(?=\s*https?://)")


def split_urls(spec: str) -> list[str]:
    """The endpoints of an advisor spec: one URL, or several separated by commas (`http://a/v1,http://b/v1`); a
    trailing comma (`http://a/v1,`) is no part of a URL."""
    urls = (u.strip().rstrip(",").strip() for u in _URL_START.split(spec))
    return [u for u in urls if u]


class EndpointPool:
    """A `ChatBackend` over several open `LLMClient`s (module docstring). `clock`: seconds, monotonic."""

    def __init__(self, clients: Sequence[LLMClient], revive_s: float = REVIVE_S, clock=time.monotonic) -> None:
        if not clients:
            raise ValueError("an endpoint pool needs at least one client")
        self.clients = list(clients)
        self.in_flight = [0] * len(self.clients)
        self.down_until = [float("-inf")] * len(self.clients)
        self.outages = [0] * len(self.clients)  # times each endpoint was found down
        self.revive_s, self._clock = revive_s, clock
        self.name = "http-pool:" + ",".join(f"{c.base_url}:{c.model or 'auto'}" for c in self.clients)

    def _pick(self, tried: set[int]) -> int | None:
        """The untried endpoint to ask next: live ones first, by in-flight requests over their limit; an endpoint
        down only when every untried one is (a question is tried on each at most once)."""
        now = self._clock()
        left = [i for i in range(len(self.clients)) if i not in tried]
        if not left:
            return None
        return min(left, key=lambda i: (self.down_until[i] > now,
                                        self.in_flight[i] / self.clients[i].settings.concurrency, i))

    def _mark_down(self, i: int, result: ChatResult) -> None:
        now = self._clock()
        if self.down_until[i] <= now:  # a new outage (not another question that was in flight on it)
            self.outages[i] += 1
            log.warning("advisor endpoint %s is down (%s): its questions go to the other %d endpoint(s) for %.0f s",
                        self.clients[i].base_url, result.error, len(self.clients) - 1, self.revive_s)
        self.down_until[i] = now + self.revive_s

    async def complete(self, messages, schema, name, deadline, accept: Accept | None = None, *,
                       numeric: Any = None, top_logprobs: int = 0) -> ChatResult:
        tried: set[int] = set()
        result = ChatResult(error="no advisor endpoint", kind="connect")
        while (i := self._pick(tried)) is not None:
            tried.add(i)
            self.in_flight[i] += 1
            try:  # HTTP carries text only (`numeric` is for in-process answerers)
                result = await self.clients[i].chat(messages, schema, name, deadline, accept=accept,
                                                    top_logprobs=top_logprobs)
            finally:
                self.in_flight[i] -= 1
            if result.kind != "connect":
                self.down_until[i] = float("-inf")  # it answered (or failed otherwise): it is up
                break
            self._mark_down(i, result)
        result.failovers = len(tried) - 1
        return result

    async def context_tokens(self) -> int | None:
        """The smallest context window any endpoint tells (prompts must fit every one); None: none tells."""
        told = [n for n in [await c.context_tokens() for c in self.clients] if n is not None]
        return min(told) if told else None
