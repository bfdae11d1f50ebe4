"""Advice rounds on the host: hand a recording's episodes to the advisor thread, and pack its answers into the
per-seed advice books once they are there (`AdviceRounds`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jax

from jaxmod.advice.arrays import Advice, AdviceBook
from jaxmod.envs.core import EnvCore
from jaxmod.llm import Advisor
from jaxmod.ultra.advise import CriticalRow, advise_episodes
from jaxmod.ultra.async_advice import AdvisorThread
from jaxmod.ultra.collect import split_episodes


class AdviceRounds:
    """One variant's advice rounds: at most one in flight. `books[i]` holds seed i's advice (capacity K); the
    rows of the critical-state table go to `on_rows`. Every method runs on the training loop's thread."""

    def __init__(self, advisor: AdvisorThread, core: EnvCore, seeds: int, capacity: int, episodes_per_round: int,
                 on_rows: Callable[[list[CriticalRow]], None]) -> None:
        self.advisor, self.core, self.seeds, self.episodes_per_round = advisor, core, seeds, episodes_per_round
        self.books = [AdviceBook(core, capacity) for _ in range(seeds)]
        self.on_rows = on_rows
        self.pending: tuple[Any, float] | None = None  # (future of the round's answers, time it was handed over)
        self._uid = 0

    def advice(self) -> Advice:
        """Every seed's book stacked into one `Advice` with a leading seed axis, moved in one transfer."""
        return AdviceBook.stacked(self.books)

    def hand_over(self, recording: Any) -> float:
        """Split a (seeds, T, N) recording into episodes and start the round; returns the host seconds spent (the
        device waits for nothing here but the recording's transfer, which is counted too)."""
        recording = jax.device_get(recording)  # waits for the collection (device work)
        t0 = time.perf_counter()
        per_seed = []
        for i in range(self.seeds):
            rec_i = jax.tree.map(lambda x, i=i: x[i], recording)
            episodes = split_episodes(rec_i, self._uid, self.episodes_per_round)
            self._uid += len(episodes) + 1
            per_seed.append((rec_i, episodes))
        core = self.core

        async def job(adv: Advisor):  # every seed's questions at once, up to the advisor's concurrency
            return list(await asyncio.gather(*(advise_episodes(adv, core, rec, eps) for rec, eps in per_seed)))

        self.pending = (self.advisor.submit(job), time.perf_counter())
        return time.perf_counter() - t0

    def ready(self) -> bool:
        return self.pending is not None and self.pending[0].done()

    def take(self) -> tuple[Advice, dict[str, Any]]:
        """Wait for the pending round, pack its valid answers; returns the new advice and the swap's row facts."""
        future, started = self.pending
        outs = future.result()
        latency = time.perf_counter() - started
        self.pending = None
        counts = {"packed": 0, "dropped": 0}
        for book, (items, verdicts, rows) in zip(self.books, outs, strict=True):
            c = book.add_answers(items, verdicts)
            counts = {k: counts[k] + c[k] for k in counts}
            self.on_rows(rows)
        return self.advice(), {"swapped_advice": True, "advisor_latency_s": latency, **counts}

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending[0].cancel()
            self.pending = None
