"""The outcome guard: an advised refinement never ends below continued PPO's from the same agents.

Per-suggestion verification (`jaxmod.advice.verify`) judges each suggestion against the policy's own action at the
same states; it cannot see harm that builds up over a whole refinement (a KL pull toward bad advice, shaping that
misleads the critic), nor help that needs many suggestions together. The guard judges the outcome instead. Continued
PPO (fine-tuning, `BASELINE`) runs first from the same agents and with the same chunks; after each of its chunks its
agents are evaluated on guard episodes: evaluation keys of their own (`GUARD_SEED_OFFSET`), so the reported
evaluations are never the ones a decision was made on. After each chunk of an advised method (ULTRA-A, R, RA) its
agents are evaluated on the same guard episodes, and the paired IQM difference over seeds (advised minus
fine-tuning, seed i of both refining the same agent) is tested with its 95% bootstrap interval
(`jaxmod.reporting.gain_summary`), each seed's returns averaged over the last `WINDOW` chunks. Once it lies wholly
below zero ("worse"), the advisor is switched off and every seed's agent becomes fine-tuning's from that chunk on: the method's remaining evaluations and its final agents are
fine-tuning's, so its result can only move toward fine-tuning's, never below it by more than noise. Below
`MIN_RUNS` seeds no interval means much (`jaxmod.stats`): the guard records the gap but never acts, and the run
says so before refinement. Two chunks (`WINDOW`), because the test is repeated after every chunk: one chunk's dip
would otherwise end good advice (CartPole-v1, the teacher trusted in full without matching: -98 [-173, -12] at chunk
5 of 10 after +34 at chunk 4), and two chunks' episodes see a lasting harm sooner (Pendulum-v1, random advice: one
chunk's interval below 0 at chunks 4, 7 and 9 of 10, never twice in a row, while the final evaluation was -59 [-97,
-11]). Each decision rests on `GUARD_EVALUATIONS` evaluations of --eval-envs episodes per seed and chunk.

Cost: one evaluation of each method's agents per chunk on the guard episodes (the same compiled evaluation program)
and fine-tuning's run, which every `jaxmod ultra` run does anyway; an advised method's chunks after the guard acted
are not run. jaxmod's choice, beyond the paper (which reports ULTRA against fine-tuning after the fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from jaxmod.parallel import gather, seed_keys
from jaxmod.reporting import gain_summary
from jaxmod.stats import MIN_RUNS

GUARD_SEED_OFFSET = 7000  # guard episodes' keys: seed + this (reported evaluations use seed + 2000)
GUARD_EVALUATIONS = 4  # evaluations (of --eval-envs episodes per seed each) behind every guard decision
WINDOW = 2  # chunks whose guard evaluations each decision averages per seed (the latest and the one before)


def guard_keys(seed: int, seeds: int) -> jax.Array:
    """(seeds,) keys of the guard's evaluations (each chunk folds its number in): the same for every method."""
    return seed_keys(seed + GUARD_SEED_OFFSET, seeds)


def _evaluate(program: Any, state: Any, keys: jax.Array, chunk: int) -> jax.Array:
    """[S] mean guard-evaluation return of `state`'s agents after `chunk` over `GUARD_EVALUATIONS` evaluations
    (device array, not waited for)."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    runs = [program.evaluate_on(state, fold(fold(keys, chunk), i)) for i in range(GUARD_EVALUATIONS)]
    return sum(runs) / GUARD_EVALUATIONS


@dataclass
class FineTuningRecord:
    """Continued PPO's refinement as the guard reads it. `record(chunk, state)` is `refine_chunks`' `guard` hook
    for fine-tuning (no facts, never acts); `finish` stores the final agents and the reported evaluations."""

    program: Any
    keys: jax.Array
    guard_returns: list[Any] = field(default_factory=list)  # per chunk 1..n: [S] guard evaluation
    eval_returns: list[list[float]] = field(default_factory=list)  # per evaluation 0..n: [S] reported evaluation
    final_state: Any = None

    def after_chunk(self, chunk: int, state: Any) -> dict[str, Any]:
        self.guard_returns.append(_evaluate(self.program, state, self.keys, chunk))
        return {}

    def finish(self, state: Any, eval_returns: list[list[float]]) -> None:
        self.final_state, self.eval_returns = state, eval_returns
        self.guard_returns = [np.asarray(gather(g), np.float64) for g in self.guard_returns]

    def reported(self, chunk: int) -> np.ndarray:
        """[S] fine-tuning's reported evaluation after `chunk`."""
        return np.asarray(self.eval_returns[chunk], np.float64)


@dataclass
class OutcomeGuard:
    """An advised method's guard (`refine_chunks`' `guard` hook): after each chunk, the paired gap of the guard
    evaluations to fine-tuning's (`reference`), each seed's averaged over the last `WINDOW` chunks, as row facts
    (`guard_gap`: IQM of advised minus fine-tuning; `guard_ci95`); once it is "worse" (with at least `MIN_RUNS`
    seeds), `tripped` holds {"chunk", "iqm", "ci95", "seeds"} and the loop continues with fine-tuning's agents and
    evaluations (`restore`, `reported`)."""

    program: Any
    keys: jax.Array
    reference: FineTuningRecord
    tripped: dict[str, Any] | None = None
    history: list[np.ndarray] = field(default_factory=list)  # per chunk: [S] this method's guard evaluation

    def after_chunk(self, chunk: int, state: Any) -> dict[str, Any]:
        self.history.append(np.asarray(gather(_evaluate(self.program, state, self.keys, chunk)), np.float64))
        first = max(0, chunk - WINDOW)
        mine = np.mean(self.history[first:chunk], axis=0)
        theirs = np.mean(self.reference.guard_returns[first:chunk], axis=0)
        gap = gain_summary(mine, theirs)
        if gap is None:  # a non-finite seed: the loop's own check stops the run with its message
            return {}
        facts = {"guard_gap": gap["iqm"], "guard_ci95": gap["ci95"]}
        if gap["verdict"] == "worse" and mine.size >= MIN_RUNS:
            self.tripped = {"chunk": chunk, "iqm": gap["iqm"], "ci95": gap["ci95"], "seeds": int(mine.size)}
            facts["guard_restored"] = True
        return facts

    def restore(self) -> Any:
        """The agents the method holds once the guard acted: fine-tuning's final ones."""
        return self.reference.final_state

    def reported(self, chunk: int) -> np.ndarray:
        return self.reference.reported(chunk)
