"""The host-side advisor loop: its own thread and asyncio event loop, so LLM queries run while the
device trains; results come back as futures the refinement loop polls without blocking.

With `idle_priority` (Linux) the thread runs under the idle scheduling class (`SCHED_IDLE`, inherited by the
threads it starts, such as the embedded advisor server's): prompting, HTTP and an in-process advisor then
use only CPU time that training leaves idle. Where the "device" is the CPU itself that is a trade-off: on
2 cores a continuously busy scripted advisor at normal priority slowed the compiled MountainCar refinement
by 42%, at idle priority by 0.3%, but rounds then arrive later, so fewer land in a short run (asynchronous
noisy CartPole RA fell below continued PPO). The default is normal priority; with a GPU it changes nothing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from jaxmod.llm import Advisor

T = TypeVar("T")


class AdvisorThread:
    """Runs an `Advisor` (created inside the thread's loop from `factory`) in the background."""

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[Advisor]], idle_priority: bool = False) -> None:
        self._loop = asyncio.new_event_loop()
        self._idle_priority = idle_priority
        self._thread = threading.Thread(target=self._serve, name="advisor-loop", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()

        async def enter() -> Advisor:
            return await self._stack.enter_async_context(factory())

        self.advisor: Advisor = asyncio.run_coroutine_threadsafe(enter(), self._loop).result()

    def _serve(self) -> None:
        if self._idle_priority and sys.platform.startswith("linux"):  # a thread id is a schedulable task on Linux only
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        self._loop.run_forever()

    def submit(self, job: Callable[[Advisor], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Start `job(advisor)` in the background; returns at once."""
        return asyncio.run_coroutine_threadsafe(job(self.advisor), self._loop)

    def close(self) -> None:
        async def shutdown() -> None:  # jobs still running (a first round left to finish) end first, then the advisor
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stack.aclose()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> AdvisorThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
