"""The one wrapper stack shared by every backend: a batch of envs with time limits, auto-reset,
episode statistics, observation/reward normalisation, action clipping and `reset_to`.

Truncation (time limit) is kept distinct from termination: `StepResult.final_obs` is the true next
observation before any auto-reset, so learners bootstrap from it on truncation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.envs.core import CoreState, EnvCore, checked_action
from jaxmod.envs.normalize import RunningMeanStd


@struct.dataclass
class VecEnvState:
    """State of a batch of N envs plus the statistics shared by the batch."""

    core: CoreState  # batched (N, ...)
    episode_return: jax.Array  # (N,) undiscounted raw return of the running episode
    episode_length: jax.Array  # (N,)
    last_return: jax.Array  # (N,) return of each env's last completed episode
    last_length: jax.Array  # (N,)
    discounted_return: jax.Array  # (N,) running discounted return, for reward scaling
    obs_rms: RunningMeanStd
    return_rms: RunningMeanStd


@struct.dataclass
class StepResult:
    """What one batched step returns to a learner; all arrays have leading axis N."""

    obs: jax.Array  # policy input after auto-reset (normalised if enabled)
    final_obs: jax.Array  # true next observation before auto-reset (normalised the same way)
    reward: jax.Array  # reward for learning (scaled if reward normalisation is on)
    raw_reward: jax.Array  # the env's own reward
    terminated: jax.Array  # bool: a true terminal state, value 0 beyond it
    truncated: jax.Array  # bool: time limit hit, bootstrap from final_obs
    episode_done: jax.Array  # terminated | truncated


@dataclass(frozen=True)
class VecEnv:
    """N copies of `core` stepped in lock-step; every method is pure and jittable."""

    core: EnvCore
    num_envs: int
    normalize_obs: bool = False
    normalize_reward: bool = False
    reward_gamma: float = 0.99
    clip_actions: bool = True
    obs_clip: float = 10.0
    update_stats: bool = True  # False freezes the normalisers (evaluation, episode collection)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.core.obs_shape

    @property
    def action_space(self):
        return self.core.action_space

    def replace_num_envs(self, num_envs: int) -> VecEnv:
        """The same stack over a different number of envs."""
        return dataclasses.replace(self, num_envs=num_envs)

    # ----------------------------------------------------------------- resets
    def fresh_cores(self, key: jax.Array) -> CoreState:
        """N new initial states from the env's own initial distribution."""
        return jax.vmap(self.core.reset)(jax.random.split(key, self.num_envs))

    def step_resets(self, key: jax.Array) -> CoreState:
        """The fresh states `step(key, ...)` restarts finished envs from when it is given none: a caller that
        replaces some of them (restart distributions) keeps the others' draws the same as an unmodified step's."""
        return self.fresh_cores(jax.random.split(key)[1])

    def reset(self, key: jax.Array) -> tuple[VecEnvState, jax.Array]:
        """Start all N envs; returns the state and the (normalised) first observations."""
        core = self.fresh_cores(key)
        zeros = jnp.zeros((self.num_envs,), jnp.float32)
        state = VecEnvState(
            core=core,
            episode_return=zeros,
            episode_length=jnp.zeros((self.num_envs,), jnp.int32),
            last_return=zeros,
            last_length=jnp.zeros((self.num_envs,), jnp.int32),
            discounted_return=zeros,
            obs_rms=RunningMeanStd.create(self.obs_shape),
            return_rms=RunningMeanStd.create(()),
        )
        if self.normalize_obs:
            state = state.replace(obs_rms=state.obs_rms.update(core.obs))
        return state, self.observe(state.obs_rms, core.obs)

    def reset_to(self, state: VecEnvState, snapshot: CoreState, mask: jax.Array) -> tuple[VecEnvState, jax.Array]:
        """Restart envs where `mask` (N,) is true from `snapshot` (batched `CoreState`), exactly as stored."""
        core = select_envs(mask, snapshot, state.core)
        zeros_f = jnp.zeros_like(state.episode_return)
        state = state.replace(
            core=core,
            episode_return=jnp.where(mask, zeros_f, state.episode_return),
            episode_length=jnp.where(mask, 0, state.episode_length),
            discounted_return=jnp.where(mask, zeros_f, state.discounted_return),
        )
        return state, self.observe(state.obs_rms, core.obs)

    # ------------------------------------------------------------------ steps
    def observe(self, obs_rms: RunningMeanStd, raw_obs: jax.Array) -> jax.Array:
        """The policy's view of raw observations under the current statistics."""
        return obs_rms.normalize(raw_obs, self.obs_clip) if self.normalize_obs else raw_obs

    def step(
        self,
        key: jax.Array,
        state: VecEnvState,
        action: jax.Array,
        reset_cores: CoreState | None = None,
        cut: jax.Array | None = None,
    ) -> tuple[VecEnvState, StepResult]:
        """Step all envs; finished ones restart from `reset_cores` (fresh random resets if None). `cut` ([N] bool,
        optional): episodes to end at this step as a time limit would (truncated, not terminated: learners bootstrap
        from `final_obs`), so that their env restarts mid-episode (restart distributions on long episodes)."""
        step_key = jax.random.split(key)[0]  # [1]: the resets' key (`step_resets`)
        space = self.core.action_space
        if not space.discrete and self.clip_actions:
            action = jnp.clip(action, jnp.asarray(space.low), jnp.asarray(space.high))
        action = checked_action(space, action, (self.num_envs,))  # discrete: [N] integers in range (eager: an error;
        # traced: clipped)
        nxt, reward, terminated = jax.vmap(self.core.step)(jax.random.split(step_key, self.num_envs), state.core, action)
        limit = nxt.time >= self.core.max_steps  # the time limit, and the episodes a caller cuts now (`cut`)
        truncated = jnp.logical_and(limit if cut is None else limit | cut, jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)

        if reset_cores is None:
            reset_cores = self.step_resets(key)
        core = select_envs(done, reset_cores, nxt)

        ep_return = state.episode_return + reward
        ep_length = state.episode_length + 1
        obs_rms = state.obs_rms.update(core.obs) if self.normalize_obs and self.update_stats else state.obs_rms

        learn_reward = reward
        disc = state.discounted_return
        return_rms = state.return_rms
        if self.normalize_reward:
            disc = disc * self.reward_gamma + reward
            return_rms = return_rms.update(disc) if self.update_stats else return_rms
            learn_reward = reward / jnp.sqrt(return_rms.var + 1e-8)
            disc = jnp.where(done, 0.0, disc)

        new_state = VecEnvState(
            core=core,
            episode_return=jnp.where(done, 0.0, ep_return),
            episode_length=jnp.where(done, 0, ep_length),
            last_return=jnp.where(done, ep_return, state.last_return),
            last_length=jnp.where(done, ep_length, state.last_length),
            discounted_return=disc,
            obs_rms=obs_rms,
            return_rms=return_rms,
        )
        result = StepResult(
            obs=self.observe(obs_rms, core.obs),
            final_obs=self.observe(obs_rms, nxt.obs),
            reward=learn_reward,
            raw_reward=reward,
            terminated=terminated,
            truncated=truncated,
            episode_done=done,
        )
        return new_state, result


def select_envs(mask: jax.Array, on_true, on_false):
    """Per-env tree select: leaves have leading axis N, `mask` is (N,)."""

    def pick(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, on_true, on_false)
