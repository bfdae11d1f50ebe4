"""Collect episodes from an agent on device, with a restorable env snapshot for every step, and split
them into host-side episode records for the advisor; plus policy evaluation without modulation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmod.envs import CoreState, RunningMeanStd, VecEnv
from jaxmod.ppo.networks import ActorCritic, Params


@struct.dataclass
class Recording:
    """(T, N) per-step arrays of a collection run."""

    core: CoreState  # the env state before each step (restorable snapshot)
    obs: jax.Array  # raw observation before each step
    action: jax.Array
    reward: jax.Array  # the env's own reward
    terminated: jax.Array
    truncated: jax.Array


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


def make_collector(env: VecEnv, net: ActorCritic, num_steps: int) -> Callable[..., Recording]:
    """A jitted `collect(params, obs_rms, key) -> Recording` that runs the stochastic policy from fresh
    resets for `num_steps` steps in `env.num_envs` envs, normalisers frozen at `obs_rms`."""
    env = dataclasses.replace(env, update_stats=False)

    def collect(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> Recording:
        k_reset, k_roll = jax.random.split(key)
        state, _ = env.reset(k_reset)
        state = state.replace(obs_rms=obs_rms)

        def step(state, k):
            k_act, k_env = jax.random.split(k)
            obs = env.observe(state.obs_rms, state.core.obs)
            action, _ = net.sample(params, net.policy_head(params, obs), k_act)
            nxt, res = env.step(k_env, state, action)
            rec = Recording(core=state.core, obs=state.core.obs, action=action, reward=res.raw_reward,
                            terminated=res.terminated, truncated=res.truncated)
            return nxt, rec

        _, rec = jax.lax.scan(step, state, jax.random.split(k_roll, num_steps))
        return rec

    return jax.jit(collect)


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


def make_evaluator(env: VecEnv, net: ActorCritic, num_steps: int, deterministic: bool = False
                   ) -> Callable[..., jax.Array]:
    """A jitted `evaluate(params, obs_rms, key) -> (mean return of completed episodes, count)` with
    plain resets (no advice, no restarts), normalisers frozen."""
    env = dataclasses.replace(env, update_stats=False)

    def evaluate(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        k_reset, k_roll = jax.random.split(key)
        state, _ = env.reset(k_reset)
        state = state.replace(obs_rms=obs_rms)

        def step(carry, k):
            state, total, count = carry
            k_act, k_env = jax.random.split(k)
            obs = env.observe(state.obs_rms, state.core.obs)
            head = net.policy_head(params, obs)
            action = net.mode(head) if deterministic else net.sample(params, head, k_act)[0]
            ep_return = state.episode_return + 0.0
            nxt, res = env.step(k_env, state, action)
            finished = res.episode_done
            total = total + jnp.sum(jnp.where(finished, ep_return + res.raw_reward, 0.0))
            return (nxt, total, count + jnp.sum(finished)), None

        (_, total, count), _ = jax.lax.scan(step, (state, jnp.float32(0), jnp.int32(0)),
                                            jax.random.split(k_roll, num_steps))
        return total / jnp.maximum(count, 1), count

    return jax.jit(evaluate)
