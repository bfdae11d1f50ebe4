"""The host-side advisor loop: its own thread and asyncio event loop, so LLM queries run while the
device trains; results come back as futures the refinement loop polls without blocking."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from jaxmod.llm import Advisor

T = TypeVar("T")


class AdvisorThread:
    """Runs an `Advisor` (created inside the thread's loop from `factory`) in the background."""

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[Advisor]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="advisor-loop", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()

        async def enter() -> Advisor:
            return await self._stack.enter_async_context(factory())

        self.advisor: Advisor = asyncio.run_coroutine_threadsafe(enter(), self._loop).result()

    def submit(self, job: Callable[[Advisor], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Start `job(advisor)` in the background; returns at once."""
        return asyncio.run_coroutine_threadsafe(job(self.advisor), self._loop)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> AdvisorThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
