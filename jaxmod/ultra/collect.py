"""Split a device recording of an agent (`jaxmod.ppo.acting.Recording`) into host-side episode records for the
advisor, and read the restorable env snapshot of any of their steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxmod.ppo.acting import Recording, make_collector, make_evaluator

__all__ = ["EpisodeRecord", "Recording", "make_collector", "make_evaluator", "snapshot_at", "split_episodes"]


@dataclass(frozen=True)
class EpisodeRecord:
    """One complete episode on the host, with where its snapshots live in the recording."""

    uid: int
    env_index: int
    start: int  # time index of its first step in the recording
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    ended_by: str  # "termination" or "time limit"

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def ret(self) -> float:
        return float(np.sum(self.rewards))


def split_episodes(rec: Recording, uid_start: int = 0, max_episodes: int | None = None) -> list[EpisodeRecord]:
    """Complete episodes of a (T, N) host recording, in order of their end time."""
    term = np.asarray(rec.terminated)
    trunc = np.asarray(rec.truncated)
    done = term | trunc
    obs, act, rew = np.asarray(rec.obs), np.asarray(rec.action), np.asarray(rec.reward)
    found: list[tuple[int, int, int]] = []  # (end, env, start)
    for n in range(done.shape[1]):
        start = 0
        for t in np.nonzero(done[:, n])[0]:
            found.append((int(t), n, start))
            start = int(t) + 1
    found.sort()
    episodes = []
    for i, (end, n, start) in enumerate(found[:max_episodes]):
        episodes.append(EpisodeRecord(uid=uid_start + i, env_index=n, start=start, obs=obs[start:end + 1, n],
                                      actions=act[start:end + 1, n], rewards=rew[start:end + 1, n],
                                      ended_by="termination" if term[end, n] else "time limit"))
    return episodes


def snapshot_at(rec: Recording, episode: EpisodeRecord, step: int) -> Any:
    """The host copy of the env state at `step` of `episode` (what `reset_to` restores)."""
    t = episode.start + step
    return jax.tree.map(lambda x: np.asarray(x[t, episode.env_index]), rec.core)


