"""Pacing: ask an advisor only what it can answer while its answers can still act (jaxmod's choice, beyond the
paper).

Under the asynchronous schedule an answer helps only if it arrives before the refinement's last chunk starts
(answers are swapped in between chunks). A slow advisor asked a whole round (SmolLM2-135M on 2 CPU cores: ~2.2 s an
answer, 64 questions a round) would otherwise spend the refinement on questions whose answers come too late,
leave most of them unanswered when the refinement ends, and keep the CPU busy for nothing. `Pacer` sends a
question only when its answer is expected in time:

    now + max(latency, (in_flight + 1) / rate) <= deadline

- `rate`: the advisor's measured answers per busy second (answers finished, over the seconds during which at
  least one question was out): a serial server's 1 / (seconds per answer), a parallel one's more. Until the first
  answer it is unknown and questions go out one at a time (a probe), so a slow advisor is never flooded.
- `latency`: the measured seconds from sending a question to its answer (a moving average): a parallel server
  answers many at once but none faster than this.
- `deadline` (`time.monotonic()` seconds): when the last answers that can still act must be in, set by the
  refinement loop from its measured chunk time (`jaxmod.ultra.refine.refine_chunks`); None (unknown yet): one
  question at a time.

A question that is not sent is not asked: the advisor counts it in `AdvisorStats.paced` (not a failure, not a
question), and writes a transcript record, so a replay skips exactly the questions the recorded run skipped.
Asking stops for good once the deadline has passed, until the loop sets a later one (the next method's
refinement). The pacer lives on the advisor's event loop; `set_deadline` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PACED = "not asked: its answer could not arrive before the refinement's last advice swap (pacing)"


class Pacer:
    """Admits questions to an advisor (see the module docstring). `clock`: seconds (default `time.monotonic`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline: float | None = None
        self.finished = 0  # answers (or failures) that came back: the rate's numerator
        self.busy_s = 0.0  # seconds with at least one question out, up to the last change
        self._busy_since: float | None = None
        self.latency: float | None = None  # moving average of send-to-answer seconds
        self._sent: list[float] = []  # send times of the questions in flight, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None

    @property
    def in_flight(self) -> int:
        """Questions admitted and not yet back."""
        return len(self._sent)

    @property
    def rate(self) -> float | None:
        """Answers per busy second (None before the first answer)."""
        busy = self.busy_s + (self.clock() - self._busy_since if self._busy_since is not None else 0.0)
        return self.finished / busy if self.finished and busy > 0 else None

    def expected_finish(self) -> float | None:
        """When a question sent now is expected back (None: no rate yet)."""
        rate = self.rate
        if rate is None:
            return None
        return self.clock() + max(self.latency or 0.0, (self.in_flight + 1) / rate)

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            self._loop, self._changed = loop, asyncio.Condition()
        return self._changed

    def set_deadline(self, deadline: float | None) -> None:
        """The instant (this pacer's clock) by which answers must be in to act; None: unknown. Thread-safe."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.deadline = deadline
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._set(deadline)
        else:
            loop.call_soon_threadsafe(self._set, deadline)

    def _set(self, deadline: float | None) -> None:
        self.deadline = deadline
        self._notify()

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        asyncio.ensure_future(wake())

    async def admit(self) -> bool:
        """Wait until a question may go out (True: it is counted in flight; call `release` when it is back) or
        until it can no longer be answered in time (False)."""
        cond = self._condition()
        async with cond:
            while True:
                now = self.clock()
                if self.deadline is not None and now >= self.deadline:
                    return False
                finish = self.expected_finish()
                if finish is not None and self.deadline is not None:
                    if finish > self.deadline:
                        return False
                    break
                if self.in_flight == 0:  # a probe: unknown rate or deadline, one question at a time
                    break
                await cond.wait()
        if self.in_flight == 0:
            self._busy_since = self.clock()
        self._sent.append(self.clock())
        return True

    def release(self) -> None:
        """An admitted question is back (answered, failed or cancelled): the oldest in flight stands for it (the
        latency's estimate, not any one question's)."""
        took = self.clock() - self._sent.pop(0)
        self.latency = took if self.latency is None else 0.7 * self.latency + 0.3 * took
        self.finished += 1
        if self.in_flight == 0 and self._busy_since is not None:
            self.busy_s += self.clock() - self._busy_since
            self._busy_since = None
        self._notify()
