"""Advice rounds on the host: hand a recording's episodes to the advisor thread, and pack its answers into the
per-seed advice books once they are there (`AdviceRounds`). Every question of a round is tagged with its variant,
round and seed (`jaxmod.llm.tagged`), so a replay serves exactly the answer each got; each round's counts go to
the advisor's failure policy (`jaxmod.llm.FailurePolicy`), which stops the run when the advisor stops advising.
A round asks about at most `budget` episodes, all seeds together (`jaxmod.ultra.sharing`): an answer is packed
into the book of the seed whose episode was asked and of every seed whose near-identical episode was not asked.
Answers are packed as they arrive (`take(wait=False)`): a slow advisor's first answers act while the rest of its
round is still being asked; a swap that packs part of a round records which answers it packed (`taken`), so a
replay packs the same ones at the same chunk."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxmod.advice.arrays import Advice, AdviceBook
from jaxmod.envs.core import EnvCore
from jaxmod.llm import Advised, Advisor, FailurePolicy, RoundCounts, tagged
from jaxmod.ultra.advise import CriticalRow, advise_episodes
from jaxmod.ultra.async_advice import AdvisorThread
from jaxmod.ultra.collect import split_episodes
from jaxmod.ultra.sharing import RoundPlan, plan_round

SHARING_COUNTS = ("round_candidates", "round_asked", "round_deduplicated", "round_unasked", "answers_shared")


class AdviceRounds:
    """One variant's advice rounds: at most one in flight. `books[i]` holds seed i's advice (capacity K); the
    rows of the critical-state table go to `on_rows` as (variant, seed, row). `policy` judges each round's answers
    (None: never stops); its warnings go to `warn`. `budget`: episodes asked per round, all seeds together (None:
    every seed's `episodes_per_round`), near-duplicates within `radius` standard deviations shared
    (`jaxmod.ultra.sharing.plan_round`, its rounds drawn from `key`); `sharing` sums the rounds' counts.
    Every method runs on the training loop's thread."""

    def __init__(self, advisor: AdvisorThread, core: EnvCore, seeds: int, capacity: int, episodes_per_round: int,
                 on_rows: Callable[[list[tuple[str, int, CriticalRow]]], None], variant: str = "",
                 policy: FailurePolicy | None = None, warn: Callable[[str], None] = lambda _: None,
                 protocol: str = "episodes", reference: Any = None, budget: int | None = None,
                 radius: float = 0.0, key: int = 0) -> None:
        self.advisor, self.core, self.seeds, self.episodes_per_round = advisor, core, seeds, episodes_per_round
        self.protocol = protocol
        self.books = [AdviceBook(core, capacity) for _ in range(seeds)]
        self.on_rows, self.variant, self.policy, self.warn = on_rows, variant, policy, warn
        self.pending: tuple[Any, float] | None = None  # (future of the round's answers, time it was handed over)
        self.round = 0  # rounds handed over so far
        self._before: Any = None  # the advisor's stats when the pending round was handed over
        self._uid = 0
        self.reference = reference  # a policy with `agrees(obs, actions)` (a TeacherBackend) to score answers by
        self._agreement = [0, 0]  # valid answers that agree with the reference, valid answers judged
        self._unscored: list[Any] = []  # the futures of rounds not scored yet (with a reference)
        self.budget, self.radius, self.key = budget, radius, key
        self._plan: RoundPlan | None = None  # the pending round's
        self.sharing = dict.fromkeys(SHARING_COUNTS, 0)
        self._cond = threading.Condition()  # guards `_arrived` (appended on the advisor's thread)
        self._arrived: list[tuple[tuple[int, int], Any, Any, CriticalRow]] = []  # ((seed, i), item, verdict, row)
        self._partial = False  # part of the pending round was packed already

    def pace(self, deadline: float | None) -> None:
        """Tell the advisor's pacer (if it has one: the asynchronous schedule) by when answers must be in to act
        (`time.monotonic()` seconds; None: not known yet)."""
        pacer = self.advisor.advisor.pacer
        if pacer is not None:
            pacer.set_deadline(deadline)

    def advice(self) -> Advice:
        """Every seed's book stacked into one `Advice` with a leading seed axis, moved in one transfer."""
        return AdviceBook.stacked(self.books)

    def hand_over(self, recorded: Any) -> float:
        """Split a (seeds, T, N) recording into episodes (unfinished ones too when too few completed) and start the
        round; `recorded` is `RefinementProgram.record`'s (recording, candidate scores). Returns the host seconds
        spent (the device waits for nothing here but the recording's transfer, which is counted too)."""
        recording, scores = jax.device_get(recorded)  # waits for the collection (device work)
        t0 = time.perf_counter()
        per_seed = []
        for i in range(self.seeds):
            rec_i = jax.tree.map(lambda x, i=i: x[i], recording)
            episodes = split_episodes(rec_i, self._uid, self.episodes_per_round, unfinished=True)
            self._uid += len(episodes) + 1
            per_seed.append((rec_i, episodes, scores[i]))
        budget = sum(len(eps) for _, eps, _ in per_seed) if self.budget is None else self.budget
        plan = plan_round([eps for _, eps, _ in per_seed], [sc for _, _, sc in per_seed], budget, self.radius,
                          (self.key, self.round))
        per_seed = [(rec, eps, sc) for (rec, _, sc), eps in zip(per_seed, plan.asked, strict=True)]
        core, tags, protocol = self.core, {"variant": self.variant, "round": self.round}, self.protocol

        async def one(adv: Advisor, seed: int, rec: Any, eps: list, sc: Any) -> Any:
            if not eps:  # this round's budget went to other seeds' episodes
                return [], [], []
            with tagged(**tags, seed=seed):  # replay serves each (variant, round, seed, question) its own answer
                return await advise_episodes(adv, core, rec, eps, scores=sc, protocol=protocol,
                                             on_answer=lambda i, *answer, seed=seed: self._arrive((seed, i), *answer))

        async def job(adv: Advisor):  # every seed's questions at once, up to the advisor's concurrency
            return list(await asyncio.gather(*(one(adv, i, *seed) for i, seed in enumerate(per_seed))))

        self._before = self.advisor.advisor.stats.copy()
        self._plan = plan
        self._partial = False
        self.round += 1
        self.pending = (self.advisor.submit(job), time.perf_counter())
        if self.reference is not None:  # every answer that comes back is scored, swapped in or not (`agreement`)
            self._unscored.append(self.pending[0])
        return time.perf_counter() - t0

    def _arrive(self, order: tuple[int, int], item: Any, verdict: Any, row: CriticalRow) -> None:
        """One judged answer of the pending round, `order` (seed, its index among the seed's questions) (called on
        the advisor's thread as it arrives)."""
        with self._cond:
            self._arrived.append((order, item, verdict, row))
            self._cond.notify_all()

    def fresh(self) -> bool:
        """Something to swap in without waiting: answers not packed yet, or a finished round to close."""
        with self._cond:
            return self.pending is not None and (bool(self._arrived) or self.pending[0].done())

    def take(self, wait: bool = True, only: tuple[Sequence[Sequence[int]], bool] | None = None,
             ) -> tuple[Advice, dict[str, Any]]:
        """Pack the pending round's answers; returns the new advice and the swap's row facts. `wait`: wait for the
        whole round and pack all of it; else pack the answers in so far (the round stays pending until it is done
        and every answer packed). `only` (a replay): (the [seed, episode, step] answers a recorded run packed here,
        whether its round was complete then): waits for exactly those (and the round's end if it was complete).
        Raises `AdvisorFailure` (one line) when the failure policy stops the run at the round's end."""
        future, started = self.pending
        if only is not None:
            arrived = self._wait_for({tuple(k) for k in only[0]}, future)
            if only[1]:
                future.result()
        elif wait:
            future.result()  # raises what the round raised
        finished = future.done()  # checked before draining: a finished round's answers have all arrived
        with self._cond:
            if only is None:
                arrived, self._arrived = self._arrived, []
            complete = finished and not self._arrived
        counts = self._pack(arrived)
        facts = {"swapped_advice": True, "advisor_latency_s": time.perf_counter() - started, **counts}
        if not complete or self._partial:  # a replay needs to know which answers went in here
            facts.update(taken=[[order[0], int(item.episode), int(item.step)] for order, item, _, _ in arrived],
                         round_complete=complete)
        self._partial = not complete
        if complete:
            self._close(future)
        return self.advice(), facts

    def _wait_for(self, keys: set[tuple[int, ...]], future: Any) -> list:
        """The pending round's answers named by `keys` ((seed, episode, step)), once all have arrived. Raises
        ValueError if the round ends without one of them (a replay of a different run)."""
        def named(answer):
            return (answer[0][0], int(answer[1].episode), int(answer[1].step)) in keys

        with self._cond:
            while sum(map(named, self._arrived)) < len(keys):
                if future.done():  # every answer of a finished round has arrived: one named is missing
                    future.result()
                    raise ValueError("the replayed round never answered a question the recorded run packed here: "
                                     "replay a run with its own transcript and ultra.json")
                self._cond.wait(timeout=0.05)
            taken = [a for a in self._arrived if named(a)]
            self._arrived = [a for a in self._arrived if not named(a)]
        return taken

    def _pack(self, arrived: list) -> dict[str, int]:
        """Pack answers into the books, in the order they were asked (seed, then question: the same whatever order
        they arrived in): first into the books of the seeds each stands for (`RoundPlan.shared_with`; a full book
        drops its oldest slots, and a seed's own answers are newer), then into its own seed's."""
        arrived.sort(key=lambda answer: answer[0])
        shared = 0
        for _, item, verdict, _ in arrived:
            for other in self._plan.shared_with.get(item.episode, ()):
                shared += self.books[other].add_answers([item], [verdict])["packed"]
        self.sharing["answers_shared"] += shared
        counts = {"packed": 0, "dropped": 0}
        for (seed, _), item, verdict, row in arrived:
            c = self.books[seed].add_answers([item], [verdict])
            counts = {k: counts[k] + c[k] for k in counts}
            self.on_rows([(self.variant, seed, row)])
        return counts

    def _close(self, future: Any) -> None:
        """The pending round is done and packed: judge it (failure policy) and count its sharing."""
        self.pending = None
        future.result()
        if self.policy is not None:
            label = f"{self.variant} round {self.round - 1}".strip()  # as tagged
            warning = self.policy.check(RoundCounts.between(self._before, self.advisor.advisor.stats), label)
            if warning:
                self.warn(warning)
        for k, v in self._plan.counts().items():
            self.sharing[k] += v

    @property
    def agreement(self) -> tuple[int, int]:
        """(valid answers that agree with the reference policy, valid answers judged) over every round whose answers
        are all in by now, swapped in or not. Each finished round is scored here, once, on the caller's thread (a
        done-callback on the advisor's thread once raced the reading of the count)."""
        for future in [f for f in self._unscored if f.done()]:
            self._unscored.remove(future)
            self._scored(future)
        return self._agreement[0], self._agreement[1]

    def _scored(self, future: Any) -> None:
        """Count how many of a finished round's valid answers agree with the reference policy at their exact
        states."""
        if future.cancelled() or future.exception() is not None:
            return
        valid = [(item, v) for items, verdicts, _ in future.result()
                 for item, v in zip(items, verdicts, strict=True) if isinstance(v, Advised)]
        if not valid:
            return
        agree = self.reference.agrees(np.stack([item.obs for item, _ in valid]), np.stack([v.action for _, v in valid]))
        self._agreement = [self._agreement[0] + int(np.sum(agree)), self._agreement[1] + len(valid)]

    def cancel(self) -> None:
        """Drop the pending round. The first round is left to finish in the background instead: its recording is
        every variant's (the pre-trained agents, the same keys), so the next variant asks the same questions and
        the advisor shares the answers in flight (`Advisor`) rather than asking again."""
        if self.pending is not None:
            if self.round > 1:
                self.pending[0].cancel()
            self.pending = None
        with self._cond:
            self._arrived = []
