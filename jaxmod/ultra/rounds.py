"""Advice rounds on the host: hand a recording's episodes to the advisor thread, and pack its answers into the
per-seed advice books once they are there (`AdviceRounds`). Every question of a round is tagged with its variant,
round and seed (`jaxmod.llm.tagged`), so a replay serves exactly the answer each got; each round's counts go to
the advisor's failure policy (`jaxmod.llm.FailurePolicy`), which stops the run when the advisor stops advising.
A round asks about at most `budget` episodes, all seeds together (`jaxmod.ultra.sharing`): an answer is packed
into the book of the seed whose episode was asked and of every seed whose near-identical episode was not asked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
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
        self.agreement = [0, 0]  # valid answers that agree with the reference, valid answers judged
        self._lock = threading.Lock()
        self.budget, self.radius, self.key = budget, radius, key
        self._plan: RoundPlan | None = None  # the pending round's
        self.sharing = dict.fromkeys(SHARING_COUNTS, 0)

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
                return await advise_episodes(adv, core, rec, eps, scores=sc, protocol=protocol)

        async def job(adv: Advisor):  # every seed's questions at once, up to the advisor's concurrency
            return list(await asyncio.gather(*(one(adv, i, *seed) for i, seed in enumerate(per_seed))))

        self._before = self.advisor.advisor.stats.copy()
        self._plan = plan
        self.round += 1
        self.pending = (self.advisor.submit(job), time.perf_counter())
        if self.reference is not None:  # every answer that comes back is scored, swapped in or not
            self.pending[0].add_done_callback(self._scored)
        return time.perf_counter() - t0

    def ready(self) -> bool:
        return self.pending is not None and self.pending[0].done()

    def take(self) -> tuple[Advice, dict[str, Any]]:
        """Wait for the pending round, pack its valid answers; returns the new advice and the swap's row facts.
        Raises `AdvisorFailure` (one line) when the failure policy stops the run."""
        future, started = self.pending
        outs = future.result()
        latency = time.perf_counter() - started
        self.pending = None
        if self.policy is not None:
            label = f"{self.variant} round {self.round - 1}".strip()  # as tagged
            warning = self.policy.check(RoundCounts.between(self._before, self.advisor.advisor.stats), label)
            if warning:
                self.warn(warning)
        shared = self._share(outs)  # first: a full book drops its oldest slots, and a seed's own answers are newer
        counts = {"packed": 0, "dropped": 0}
        for seed, (book, (items, verdicts, rows)) in enumerate(zip(self.books, outs, strict=True)):
            c = book.add_answers(items, verdicts)
            counts = {k: counts[k] + c[k] for k in counts}
            self.on_rows([(self.variant, seed, row) for row in rows])
        for k, v in {**self._plan.counts(), "answers_shared": shared}.items():
            self.sharing[k] += v
        return self.advice(), {"swapped_advice": True, "advisor_latency_s": latency, **counts}

    def _share(self, outs: list[Any]) -> int:
        """Pack each answer into the books of the other seeds its episode stands for (`RoundPlan.shared_with`);
        returns the valid answers so packed (one per receiving seed)."""
        shared = 0
        for items, verdicts, _ in outs:
            for item, verdict in zip(items, verdicts, strict=True):
                for seed in self._plan.shared_with.get(item.episode, ()):
                    shared += self.books[seed].add_answers([item], [verdict])["packed"]
        return shared

    def _scored(self, future: Any) -> None:
        """Count how many of a finished round's valid answers agree with the reference policy at their exact states
        (runs on the advisor's thread when the round's answers are in)."""
        if future.cancelled() or future.exception() is not None:
            return
        valid = [(item, v) for items, verdicts, _ in future.result()
                 for item, v in zip(items, verdicts, strict=True) if isinstance(v, Advised)]
        if not valid:
            return
        agree = self.reference.agrees(np.stack([item.obs for item, _ in valid]), np.stack([v.action for _, v in valid]))
        with self._lock:
            self.agreement = [self.agreement[0] + int(np.sum(agree)), self.agreement[1] + len(valid)]

    def cancel(self) -> None:
        """Drop the pending round. The first round is left to finish in the background instead: its recording is
        every variant's (the pre-trained agents, the same keys), so the next variant asks the same questions and
        the advisor shares the answers in flight (`Advisor`) rather than asking again."""
        if self.pending is not None:
            if self.round > 1:
                self.pending[0].cancel()
            self.pending = None
