"""Acting without learning: collect a recording of a policy with restorable env snapshots, and evaluate a policy
with plain resets (no modulation, normalisers frozen). Brax's `training/acting.py` is the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
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


def evaluate(config, params: Params, obs_rms: RunningMeanStd | None = None, key: jax.Array | None = None,
             num_envs: int = 16, num_steps: int | None = None, deterministic: bool = False) -> dict[str, float]:
    """Evaluate a policy of `config` (a `PPOConfig`) with plain resets: no advice, no restarts, normalisers frozen.

    `params`: the actor-critic's params (e.g. `TrainOutput.state.params`); `obs_rms`: the observation normaliser it
    was trained with (`state.env_state.obs_rms`; required where `config.normalize_obs`); `num_steps`: env steps per
    env (default: two episodes' time limit); `deterministic`: the policy's mode instead of samples. Returns
    {"mean_return": mean undiscounted return of the completed episodes, "episodes": how many completed} (floats).
    Raises ValueError when the config normalises observations and no `obs_rms` is given."""
    from jaxmod.ppo.train import PPOLearner

    learner = PPOLearner(config)
    env = learner.env.replace_num_envs(num_envs)
    if obs_rms is None:
        if config.normalize_obs:
            raise ValueError("this config normalises observations: pass the trained state's env_state.obs_rms")
        obs_rms = RunningMeanStd.create(env.obs_shape)
    steps = num_steps if num_steps is not None else 2 * env.core.max_steps
    run = make_evaluator(env, learner.net, steps, deterministic)
    mean, count = run(params, obs_rms, jax.random.PRNGKey(0) if key is None else key)
    return {"mean_return": float(mean), "episodes": float(count)}
