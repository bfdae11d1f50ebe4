"""The advice budget of a round (issue 23, the advisor at scale; jaxmod's choice, beyond the paper).

Without a budget an advice round asks about `episodes_per_round` episodes of every seed, so the advisor's load
grows with the seeds. `plan_round` caps it at `budget` episodes per round, all seeds together:

- when the seeds' episodes fit the budget, every one is asked, as before (nothing changes);
- else the episodes are visited seed by seed in turn (the seeds' order drawn anew each round, so every seed's own
  episodes are asked in some rounds), and an episode whose signature state lies within `radius` of an episode
  already chosen is not asked: the chosen one's answers are shared with its seed (deduplicated); the others are
  chosen until the budget is spent, and the rest are not asked this round (unasked).

An episode's signature state is its observation at its best-scored candidate step (`jaxmod.ultra.candidates`: where
the agent's value dropped most), the state the advisor is most likely to name. Distances are root-mean-square
differences over the observation's elements after standardising each element by its mean and standard deviation
over all the round's recorded episodes (units: standard deviations), so one radius means the same on every env.

Host side, numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxmod.ultra.candidates import episode_scores
from jaxmod.ultra.collect import EpisodeRecord

STD_FLOOR = 1e-3  # the smallest per-element standard deviation divided by (a constant element adds no distance)


@dataclass(frozen=True)
class RoundPlan:
    """Who is asked about what in one advice round.

    `asked[i]`: seed i's episodes the advisor is asked about (possibly none); `shared_with[uid]`: the other seeds
    that also get the answers to episode `uid` (their own episodes near it were not asked); `candidates`: episodes
    recorded for the round, all seeds; `deduplicated`: episodes not asked because a near one was; `unasked`:
    episodes over the budget with no near episode asked."""

    asked: list[list[EpisodeRecord]]
    shared_with: dict[int, tuple[int, ...]] = field(default_factory=dict)
    candidates: int = 0
    deduplicated: int = 0
    unasked: int = 0

    @property
    def episodes_asked(self) -> int:
        return sum(len(eps) for eps in self.asked)

    def counts(self) -> dict[str, int]:
        """The round's episode counts (`round_*` keys, as ultra.json's advisor section sums them)."""
        return {"round_candidates": self.candidates, "round_asked": self.episodes_asked,
                "round_deduplicated": self.deduplicated, "round_unasked": self.unasked}


def signatures(episodes: Sequence[EpisodeRecord], scores: Sequence[np.ndarray] | None) -> np.ndarray:
    """[E, D] float64: each episode's observation (flattened) at its best-scored step (`scores[e]`: its (L,)
    candidate scores; None: its last step)."""
    if not episodes:
        return np.zeros((0, 0))
    steps = [len(ep.obs) - 1 if scores is None else int(np.argmax(sc)) for ep, sc in
             zip(episodes, scores if scores is not None else [None] * len(episodes), strict=True)]
    return np.stack([np.asarray(ep.obs[t], np.float64).reshape(-1) for ep, t in zip(episodes, steps, strict=True)])


def _standardiser(episodes: Sequence[EpisodeRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Per-element mean and standard deviation (floored at `STD_FLOOR`) over every step of `episodes`."""
    obs = np.concatenate([np.asarray(ep.obs, np.float64).reshape(len(ep.obs), -1) for ep in episodes])
    return obs.mean(axis=0), np.maximum(obs.std(axis=0), STD_FLOOR)


def _visit_order(counts: Sequence[int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(seed, index) pairs: each seed's first episode, in a random order of the seeds, then each seed's second,
    and so on (the seeds' order drawn once per round)."""
    seeds = rng.permutation(len(counts)).tolist()
    return [(s, j) for j in range(max(counts, default=0)) for s in seeds if j < counts[s]]


def plan_round(per_seed: Sequence[Sequence[EpisodeRecord]], per_seed_scores: Sequence[np.ndarray] | None,
               budget: int, radius: float, key: int | tuple[int, ...]) -> RoundPlan:
    """The round's plan (module docstring). `per_seed[i]`: seed i's episodes (uids unique across seeds);
    `per_seed_scores[i]`: seed i's [T, N] candidate scores (None: episodes' last steps as signatures); `budget`:
    episodes asked at most; `radius`: the dedup distance in standard deviations (0: only identical states); `key`:
    the round's random seed (the same key, the same plan)."""
    total = sum(len(eps) for eps in per_seed)
    if total <= budget:
        return RoundPlan([list(eps) for eps in per_seed], candidates=total)
    sigs = [signatures(eps, None if per_seed_scores is None else episode_scores(sc, eps))
            for eps, sc in zip(per_seed, per_seed_scores or [None] * len(per_seed), strict=True)]
    mean, std = _standardiser([ep for eps in per_seed for ep in eps])
    asked: list[list[EpisodeRecord]] = [[] for _ in per_seed]
    chosen: list[tuple[int, int]] = []  # (seed, index) of the asked episodes
    chosen_sigs = np.zeros((0, mean.size))
    shared: dict[int, set[int]] = {}
    deduplicated = unasked = 0
    for s, j in _visit_order([len(eps) for eps in per_seed], np.random.default_rng(key)):
        z = (sigs[s][j] - mean) / std
        if len(chosen):
            dist = np.sqrt(np.mean((chosen_sigs - z) ** 2, axis=1))
            near = int(np.argmin(dist))
            if dist[near] <= radius:
                deduplicated += 1
                owner, idx = chosen[near]
                if owner != s:
                    shared.setdefault(per_seed[owner][idx].uid, set()).add(s)
                continue
        if len(chosen) < budget:
            chosen.append((s, j))
            chosen_sigs = np.vstack([chosen_sigs, z[None]])
            asked[s].append(per_seed[s][j])
        else:
            unasked += 1
    for eps in asked:  # each seed's episodes in their recorded order
        eps.sort(key=lambda ep: ep.uid)
    return RoundPlan(asked, {uid: tuple(sorted(seeds)) for uid, seeds in shared.items()}, total, deduplicated,
                     unasked)
