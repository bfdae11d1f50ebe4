"""The host-side advisor loop: its own thread and asyncio event loop, so LLM queries run while the
device trains; results come back as futures the refinement loop polls without blocking.

The thread runs at a lower CPU priority (Linux `nice`, inherited by the threads it starts, such as the
embedded advisor server's): where the "device" is the CPU itself, prompting, HTTP and a scripted or local
advisor then use only the cycles training leaves idle instead of slowing it down. Elsewhere (a GPU, a
remote LLM) it changes nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from jaxmod.llm import Advisor

T = TypeVar("T")


class AdvisorThread:
    """Runs an `Advisor` (created inside the thread's loop from `factory`) in the background."""

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[Advisor]], niceness: int = 10) -> None:
        self._loop = asyncio.new_event_loop()
        self._niceness = niceness
        self._thread = threading.Thread(target=self._serve, name="advisor-loop", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()

        async def enter() -> Advisor:
            return await self._stack.enter_async_context(factory())

        self.advisor: Advisor = asyncio.run_coroutine_threadsafe(enter(), self._loop).result()

    def _serve(self) -> None:
        if self._niceness:
            with contextlib.suppress(AttributeError, OSError):  # per-thread priorities: Linux only
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)
        self._loop.run_forever()

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
