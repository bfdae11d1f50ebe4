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
from jaxmod.ppo.rollout import Act, generate_unroll


@struct.dataclass
class Recording:
    """(T, N) per-step arrays of a collection run."""

    core: CoreState  # the env state before each step (restorable snapshot)
    obs: jax.Array  # raw observation before each step
    action: jax.Array
    reward: jax.Array  # the env's own reward
    terminated: jax.Array
    truncated: jax.Array


def _plain_unroll(env: VecEnv, net: ActorCritic, params: Params, obs_rms: RunningMeanStd, key: jax.Array,
                  num_steps: int, record: Callable, deterministic: bool = False):
    """`generate_unroll` of the policy (its mode with `deterministic`, else samples) from fresh resets of `env`
    (statistics frozen by the caller), normalisers at `obs_rms`; returns what `record` gathered per step."""
    k_reset, k_roll = jax.random.split(key)
    state, _ = env.reset(k_reset)
    state = state.replace(obs_rms=obs_rms)

    def policy(obs, k, _):
        head = net.policy_head(params, obs)
        return Act(action=net.mode(head) if deterministic else net.sample(params, head, k)[0])

    return generate_unroll(env, policy, state, env.observe(obs_rms, state.core.obs), k_roll, num_steps, record)[3]


def make_collector(env: VecEnv, net: ActorCritic, num_steps: int) -> Callable[..., Recording]:
    """A jitted `collect(params, obs_rms, key) -> Recording` that runs the stochastic policy from fresh
    resets for `num_steps` steps in `env.num_envs` envs, normalisers frozen at `obs_rms` (`generate_unroll`)."""
    env = dataclasses.replace(env, update_stats=False)

    def collect(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> Recording:
        def record(state, obs, action, _, res):
            return Recording(core=state.core, obs=state.core.obs, action=action, reward=res.raw_reward,
                             terminated=res.terminated, truncated=res.truncated)

        return _plain_unroll(env, net, params, obs_rms, key, num_steps, record)

    return jax.jit(collect)


def make_evaluator(env: VecEnv, net: ActorCritic, num_steps: int, deterministic: bool = False
                   ) -> Callable[..., jax.Array]:
    """A jitted `evaluate(params, obs_rms, key) -> (mean return of completed episodes, count)` with
    plain resets (no advice, no restarts), normalisers frozen (`generate_unroll`)."""
    env = dataclasses.replace(env, update_stats=False)

    def evaluate(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        def record(state, obs, action, _, res):  # the return of each episode that ends at this step, summed
            finished = res.episode_done
            return jnp.sum(jnp.where(finished, state.episode_return + res.raw_reward, 0.0)), jnp.sum(finished)

        totals, counts = _plain_unroll(env, net, params, obs_rms, key, num_steps, record, deterministic)
        # accumulated in step order, as a running sum is (the same float rounding)
        total = jax.lax.scan(lambda acc, x: (acc + x, None), jnp.float32(0), totals)[0]
        return total / jnp.maximum(jnp.sum(counts), 1), jnp.sum(counts)

    return jax.jit(evaluate)


def make_episode_evaluator(env: VecEnv, net: ActorCritic, deterministic: bool = False) -> Callable[..., jax.Array]:
    """A jitted `returns(params, obs_rms, key) -> [N] float32`: the undiscounted return of each env's first episode
    from a plain reset (N = `env.num_envs` episodes, none favoured for being short; an episode ends by the time
    limit at the latest, so `max_steps` steps hold all of them), normalisers frozen."""
    env = dataclasses.replace(env, update_stats=False)

    def returns(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> jax.Array:
        def record(state, obs, action, _, res):
            return res.episode_done, state.episode_return + res.raw_reward

        done, ret = _plain_unroll(env, net, params, obs_rms, key, env.core.max_steps, record, deterministic)
        first = jnp.argmax(done, axis=0)  # [N] step of each env's first episode end
        return ret[first, jnp.arange(env.num_envs)]

    return jax.jit(returns)


def make_episode_recorder(env: VecEnv, net: ActorCritic, deterministic: bool = False) -> Callable[..., tuple]:
    """A jitted `record(params, obs_rms, key) -> (core, done, reward)`: one env from a plain reset for
    `env.core.max_steps` steps (its first episode ends within them: the time limit at the latest), normalisers
    frozen at `obs_rms`. `core` is the `CoreState` before each step with leading axis [T] (what a renderer draws),
    `done` [T] bool marks the step that ends an episode, `reward` [T] float32 the env's own reward per step; steps
    after the first episode belong to the next one (`jaxmod.render` keeps the first)."""
    env = dataclasses.replace(env, update_stats=False).replace_num_envs(1)

    def record_one(params: Params, obs_rms: RunningMeanStd, key: jax.Array) -> tuple:
        def record(state, obs, action, _, res):
            return state.core, res.episode_done, res.raw_reward

        out = _plain_unroll(env, net, params, obs_rms, key, env.core.max_steps, record, deterministic)
        return jax.tree.map(lambda x: x[:, 0], out)  # [T, 1, ...] -> [T, ...]

    return jax.jit(record_one)


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
