"""Advice rounds in a multi-process `jaxmod ultra` run: process 0 owns the advisor, every process takes the same
advice at the same chunk.

Every process runs the same refinement programs on its share of the seeds (`jaxmod.parallel.SeedPrograms` over a
mesh spanning every process), so every process must feed a chunk the same advice, and must take the same branch at
each of the loop's decisions (`jaxmod.ultra.refine.refine_chunks`): record episodes or not (a device program),
swap advice in or not. `SharedRounds` stands for `AdviceRounds` in that loop (the same members it uses: `pending`,
`hand_over`, `fresh`, `take`, `advice`, `cancel`):

- `hand_over`: every process gathers the recording (`jaxmod.parallel.gather`: its seeds live on every process's
  devices); process 0 hands it to its `AdviceRounds`; the others note that a round is pending.
- `fresh` (an asynchronous schedule's timing-dependent "are answers in?"): process 0 decides, and its answer is
  broadcast (`jaxmod.parallel.broadcast_from_primary`).
- `take`: process 0 packs its answers; the packed `Advice` arrays ([S, K, ...], fixed shapes), whether the round
  is still pending after the swap, and whether process 0 stopped (its advisor's failure policy, an error) are
  broadcast as one buffer; the others return the same advice (row facts: `swapped_advice` only: process 0 writes
  the run's files) or stop too (`AdvisorStopped`).

A single-process run never builds one (`UltraRun` hands `AdviceRounds` to the loop itself). jaxmod's choice:
a broadcast of process 0's decisions rather than a deterministic advisor on every process, so an LLM is asked once
and an asynchronous schedule (timing-dependent) still gives every process the same advice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxmod.advice.arrays import Advice
from jaxmod.parallel import broadcast_from_primary, from_bytes, gather, to_bytes
from jaxmod.ultra.rounds import AdviceRounds

STOP, PENDING = 0, 1  # the flag bytes at the head of a `take` broadcast


class AdvisorStopped(RuntimeError):
    """Process 0 stopped the run while taking advice (its advisor failed; process 0's output says why)."""


class SharedRounds:
    """`AdviceRounds` for every process of a multi-process run (see the module doc). `rounds`: process 0's advice
    rounds (None on every other process); `empty`: the advice with no valid slot ([S, K, ...]: every seed's empty
    book), the starting advice and the shapes of every broadcast. Other members (`sharing`, `agreement`) are
    process 0's `rounds`'."""

    def __init__(self, rounds: AdviceRounds | None, empty: Advice) -> None:
        self.rounds = rounds
        self._empty = jax.device_get(empty)
        self._pending = False  # on the other processes: a round handed over and not yet complete

    def __getattr__(self, name: str) -> Any:
        rounds = self.__dict__.get("rounds")
        if rounds is None:
            raise AttributeError(f"{name!r}: only process 0 holds the advice rounds")
        return getattr(rounds, name)

    @property
    def pending(self) -> Any:
        """Not None while a round is pending (process 0's round, or its mirror on the other processes)."""
        if self.rounds is not None:
            return self.rounds.pending
        return True if self._pending else None

    def pace(self, deadline: float | None) -> None:
        """Process 0's `AdviceRounds.pace` (its advisor's pacer decides which questions are asked; the others
        receive the answers through `take`)."""
        if self.rounds is not None:
            self.rounds.pace(deadline)

    def advice(self) -> Advice:
        """The current advice: process 0's books, the empty advice elsewhere (called before any swap)."""
        return self.rounds.advice() if self.rounds is not None else self._empty

    def hand_over(self, recorded: Any) -> float:
        """Gather `recorded` (`RefinementProgram.record`'s) on every process and start process 0's round; returns
        the host seconds spent (the gather included)."""
        t0 = time.perf_counter()
        host = gather(recorded)
        if self.rounds is None:
            self._pending = True
            return time.perf_counter() - t0
        spent = time.perf_counter() - t0
        return spent + self.rounds.hand_over(host)

    def fresh(self) -> bool:
        """Process 0's `AdviceRounds.fresh()`, the same on every process."""
        ready = self.rounds is not None and bool(self.rounds.fresh())
        return bool(broadcast_from_primary(np.array([ready], np.uint8), "fresh")[0])

    def take(self, wait: bool = True, only: tuple[Sequence[Sequence[int]], bool] | None = None,
             ) -> tuple[Advice, dict[str, Any]]:
        """Process 0's `AdviceRounds.take(wait, only)`, its advice on every process. Raises on process 0 what its
        take raised, elsewhere `AdvisorStopped`."""
        if self.rounds is not None:
            try:
                advice, facts = self.rounds.take(wait=wait, only=only)
            except BaseException:
                self._share(self._empty, stop=True, pending=False)
                raise
            self._share(jax.device_get(advice), stop=False, pending=self.rounds.pending is not None)
            return advice, facts
        flags, advice = self._share(self._empty, stop=False, pending=False)
        if flags[STOP]:
            raise AdvisorStopped("process 0 stopped the run while taking advice (its output says why)")
        self._pending = bool(flags[PENDING])
        return advice, {"swapped_advice": True}

    def _share(self, advice: Any, stop: bool, pending: bool) -> tuple[np.ndarray, Any]:
        """Broadcast process 0's flags and `advice` (host arrays of the empty advice's shapes)."""
        data = np.concatenate([np.array([stop, pending], np.uint8), to_bytes(advice)])
        got = broadcast_from_primary(data, "advice")
        return got[:2], from_bytes(got[2:], self._empty)

    def cancel(self) -> None:
        """Process 0's `AdviceRounds.cancel()`; the others drop their pending mark."""
        if self.rounds is not None:
            self.rounds.cancel()
        self._pending = False
