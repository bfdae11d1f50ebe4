"""Split a device recording of an agent (`jaxmod.ppo.acting.Recording`) into host-side episode records for the
advisor, and read the restorable env snapshot of any of their steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxmod.ppo.acting import Recording, make_collector, make_evaluator

WINDOW_END = "the recording window's end (still running)"
MIN_WINDOW_STEPS = 8  # an unfinished episode shorter than this is not sent

__all__ = ["WINDOW_END", "EpisodeRecord", "Recording", "make_collector", "make_evaluator", "snapshot_at", "split_episodes"]


@dataclass(frozen=True)
class EpisodeRecord:
    """One complete episode on the host, with where its snapshots live in the recording."""

    uid: int
    env_index: int
    start: int  # time index of its first step in the recording
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    ended_by: str  # "termination", "time limit", or WINDOW_END (still running when the recording stopped)

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def ret(self) -> float:
        return float(np.sum(self.rewards))


def split_episodes(rec: Recording, uid_start: int = 0, max_episodes: int | None = None,
                   unfinished: bool = False) -> list[EpisodeRecord]:
    """Complete episodes of a (T, N) host recording, in order of their end time. With `unfinished`, when fewer than
    `max_episodes` episodes completed, the episodes still running at the recording's end follow (those of at least
    `MIN_WINDOW_STEPS` steps, longest first), ended by `WINDOW_END`: an agent whose episodes outlast the recording
    window (Acrobot's weak agents run the full 500 steps) is still asked about."""
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
    found = [(end, n, start, "termination" if term[end, n] else "time limit") for end, n, start in found]
    if unfinished and (max_episodes is None or len(found) < max_episodes):
        last = done.shape[0] - 1
        tails = []
        for n in range(done.shape[1]):
            ends = np.nonzero(done[:, n])[0]
            start = int(ends[-1]) + 1 if len(ends) else 0
            if last - start + 1 >= MIN_WINDOW_STEPS:
                tails.append((last, n, start, WINDOW_END))
        found += sorted(tails, key=lambda f: (f[2], f[1]))  # longest first (earliest start), then env order
    episodes = []
    for i, (end, n, start, ended_by) in enumerate(found[:max_episodes]):
        episodes.append(EpisodeRecord(uid=uid_start + i, env_index=n, start=start, obs=obs[start:end + 1, n],
                                      actions=act[start:end + 1, n], rewards=rew[start:end + 1, n],
                                      ended_by=ended_by))
    return episodes


def snapshot_at(rec: Recording, episode: EpisodeRecord, step: int) -> Any:
    """The host copy of the env state at `step` of `episode` (what `reset_to` restores)."""
    t = episode.start + step
    return jax.tree.map(lambda x: np.asarray(x[t, episode.env_index]), rec.core)


