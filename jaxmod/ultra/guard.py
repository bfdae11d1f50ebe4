"""The outcome guard: an advised refinement never ends below continued PPO's from the same agents.

Per-suggestion verification (`jaxmod.advice.verify`) judges each suggestion against the policy's own action at the
same states; it cannot see harm that builds up over a whole refinement (a KL pull toward bad advice, shaping that
misleads the critic), nor help that needs many suggestions together. The guard judges the outcome instead. Continued
PPO (fine-tuning, `BASELINE`) runs first from the same agents and with the same chunks; after each of its chunks its
agents play guard episodes: `GUARD_EVALUATIONS` evaluations of --eval-envs episodes per seed, on keys of their own
(`GUARD_SEED_OFFSET`), so no reported evaluation is one a decision was made on. After each chunk of an advised
method (every method whose critical states come from the advisor: ULTRA-A, R, RA, restart) its agents play the same
guard episodes, and the paired difference over seeds (advised minus fine-tuning, seed i of both refining the same
agent; each seed's returns averaged over the last `WINDOW` chunks) is tested with a Student-t interval of its mean
(`jaxmod.stats.mean_difference_ci`). Once the interval lies wholly below zero, the advisor is switched off and every
seed's agent becomes fine-tuning's from that chunk on: the method's remaining evaluations and its final agents are
fine-tuning's, so its result can only move toward fine-tuning's.

The test is repeated after every chunk, so each look before the last uses a 1 - 0.05 / chunks interval (a
Bonferroni bound: advice worth nothing is switched off before the last chunk in at most ~2.5% of runs), and the last
look the 95% interval the results are reported with (at the last chunk acting only substitutes fine-tuning's agents
for the method's, on evidence apart from the reported evaluation). Two chunks (`WINDOW`; the first chunk's look has
one), because one chunk's dip would otherwise end good advice (CartPole-v1, the teacher trusted in full without
matching: -98 [-173, -12] at chunk 5 of 10 after +34 at chunk 4), and two chunks' episodes see a lasting harm that
one chunk's miss (Pendulum-v1, random advice: one chunk's interval below 0 at chunks 4, 7 and 9 of 10, never twice in
a row, while the final evaluation was -59 [-97, -11]). The guard records the gap but never acts below `MIN_RUNS`
seeds (no interval means much there, `jaxmod.stats`) or where evaluations are shorter than the task's episodes (an
agent whose episodes outlast them scores 0: a better agent would look worse); the run says so before pretraining.

Cost: `GUARD_EVALUATIONS` evaluations of every method's agents per chunk (fine-tuning's included, in its wall time)
on the run's compiled evaluation program, and fine-tuning's run, which every `jaxmod ultra` run does anyway; an
advised method's chunks after the guard acted are not run (its wall time is shorter). jaxmod's choice, beyond the
paper (which reports ULTRA against fine-tuning after the fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from jaxmod.parallel import gather, seed_keys
from jaxmod.stats import CONFIDENCE, mean_difference_ci, verdict

GUARD_SEED_OFFSET = 7000  # guard episodes' keys: seed + this (reported evaluations use seed + 2000)
GUARD_EVALUATIONS = 4  # evaluations (of --eval-envs episodes per seed each) behind every guard decision
WINDOW = 2  # chunks whose guard evaluations each decision averages per seed (the latest and the one before)


def guard_keys(seed: int, seeds: int) -> jax.Array:
    """(seeds,) keys of the guard's evaluations (each chunk folds its number in): the same for every method."""
    return seed_keys(seed + GUARD_SEED_OFFSET, seeds)


def guard_level(chunk: int, chunks: int) -> float:
    """The confidence of the interval the guard decides on after `chunk` of `chunks`: 1 - 0.05 / chunks before the
    last chunk (the looks together err at most as one 95% look), 95% at the last."""
    return CONFIDENCE if chunk >= chunks else 1.0 - (1.0 - CONFIDENCE) / chunks


def _evaluate(program: Any, state: Any, keys: jax.Array, chunk: int) -> jax.Array:
    """[S] mean guard-evaluation return of `state`'s agents after `chunk` over `GUARD_EVALUATIONS` evaluations
    (device array, not waited for)."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    runs = [program.evaluate_on(state, fold(fold(keys, chunk), i)) for i in range(GUARD_EVALUATIONS)]
    return sum(runs) / GUARD_EVALUATIONS


@dataclass
class FineTuningRecord:
    """Continued PPO's refinement as the guard reads it. `after_chunk(chunk, state)` is `refine_chunks`' `guard` hook
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
        """[S] float32 fine-tuning's reported evaluation after `chunk` (as its program returned it)."""
        return np.asarray(self.eval_returns[chunk], np.float32)


@dataclass
class OutcomeGuard:
    """An advised method's guard (`refine_chunks`' `guard` hook) over `chunks` chunks: after each, the paired gap of
    the guard evaluations to fine-tuning's (`reference`), each seed's averaged over the last `WINDOW` chunks, as row
    facts (`guard_gap`: the mean over seeds of advised minus fine-tuning; `guard_ci` at confidence `guard_level`;
    `guard_verdict`); once the interval lies below 0 and the guard `acts` (`MIN_RUNS` seeds or more, whole-episode
    evaluations), `tripped` holds {"chunk", "gap" (the mean gap), "ci", "level", "seeds"} and the loop continues with
    fine-tuning's agents and evaluations (`restore`, `reported`)."""

    program: Any
    keys: jax.Array
    reference: FineTuningRecord
    chunks: int
    acts: bool = True
    tripped: dict[str, Any] | None = None
    history: list[np.ndarray] = field(default_factory=list)  # per chunk: [S] this method's guard evaluation

    def after_chunk(self, chunk: int, state: Any) -> dict[str, Any]:
        self.history.append(np.asarray(gather(_evaluate(self.program, state, self.keys, chunk)), np.float64))
        first = max(0, chunk - WINDOW)
        mine = np.mean(self.history[first:chunk], axis=0)
        theirs = np.mean(self.reference.guard_returns[first:chunk], axis=0)
        if not (np.all(np.isfinite(mine)) and np.all(np.isfinite(theirs))):
            return {}  # a non-finite seed: the loop's own check stops the run with its message
        level = guard_level(chunk, self.chunks)
        gap = mean_difference_ci(mine, theirs, level)
        said = verdict(gap) if self.acts else "not acting"
        facts = {"guard_gap": gap.point, "guard_ci": [gap.low, gap.high], "guard_level": level, "guard_verdict": said}
        if said == "worse":
            self.tripped = {"chunk": chunk, "gap": gap.point, "ci": [gap.low, gap.high], "level": level,
                            "seeds": int(mine.size)}
            facts["guard_restored"] = True
        return facts

    def restore(self) -> Any:
        """The agents the method holds once the guard acted: fine-tuning's final ones."""
        return self.reference.final_state

    def reported(self, chunk: int) -> np.ndarray:
        return self.reference.reported(chunk)
