"""Collect a [T, N] rollout with one `lax.scan` over env steps; only the actor runs inside the loop.

`collect` is the training unroll: the policy acts, a modulator (`jaxmod.ppo.modulator`) may override actions and
choose what finished envs restart from, and everything it records per step lands in `Trajectory.extras`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.envs.core import CoreState
from jaxmod.envs.vec_env import StepResult, VecEnv, VecEnvState
from jaxmod.ppo.modulator import LearnerSpec, Modulator, Plan, RolloutContext, StepState
from jaxmod.ppo.networks import ActorCritic, Params


@struct.dataclass
class Trajectory:
    """Per-step arrays with leading axes [T, N].

    `obs` [T, N, *obs_shape] float32 (the policy's input); `action` [T, N] int32 or [T, N, A] float32 (what was
    executed); `log_prob` [T, N] float32 of the executed action under the acting policy; `reward` [T, N] float32
    the env's reward as learned from (scaled where the env normalises rewards); `raw_reward` the env's own;
    `terminated` / `truncated` / `episode_done` [T, N] bool (a time limit truncates: bootstrap from `final_obs`,
    the true next observation before auto-reset); `extras`: what the modulator recorded ([T, N, ...] arrays)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    episode_done: jax.Array
    final_obs: jax.Array
    extras: dict[str, Any] = struct.field(default_factory=dict)


def generate_unroll(
    env: VecEnv,
    policy: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]],
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    record: Callable[[VecEnvState, jax.Array, jax.Array, Any, StepResult], Any],
    reset_cores: CoreState | None = None,
    unroll_steps: int = 1,
) -> tuple[VecEnvState, jax.Array, Any]:
    """The one env-step loop of training, collection and evaluation (Brax's `acting.generate_unroll` is the model).

    Per step: `policy(obs [N, *obs_shape], key) -> (action, extra)` acts, the env steps (finished envs restart from
    `reset_cores`, or fresh draws where None), and `record(state before the step, obs, action, extra, StepResult)`
    gives the step's outputs, stacked to [T, N, ...]. Returns the final env state, policy inputs and the records.
    Each step splits its key into (action key, env key)."""

    def step(carry, step_key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(step_key)
        action, extra = policy(obs, act_key)
        next_state, res = env.step(env_key, env_state, action, reset_cores)
        return (next_state, res.obs), record(env_state, obs, action, extra, res)

    (env_state, obs), records = jax.lax.scan(step, (env_state, obs), jax.random.split(key, num_steps),
                                             unroll=unroll_steps)
    return env_state, obs, records


def collect(
    net: ActorCritic,
    env: VecEnv,
    params: Params,
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    unroll: int = 1,
    reset_cores: CoreState | None = None,
) -> tuple[VecEnvState, jax.Array, Trajectory]:
    """Run the current policy for `num_steps` steps in every env (plain PPO's rollout, through `generate_unroll`).

    Returns the final env state, the last policy inputs [N, *obs_shape] and the trajectory. `reset_cores`: the
    initial states finished envs restart from (None: drawn per step from the env's own distribution). Values are
    not computed here: the learner evaluates the critic on the whole rollout at once, which keeps the sequential
    loop short (a latency win at small batch sizes)."""

    def policy(obs, key):
        return net.sample(params, net.policy_head(params, obs), key)

    def record(state, obs, action, log_prob, res):
        return Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                          terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                          final_obs=res.final_obs)

    return generate_unroll(env, policy, env_state, obs, key, num_steps, record, reset_cores, unroll)


def collect_modulated(
    net: ActorCritic,
    env: VecEnv,
    params: Params,
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    modulator: Modulator,
    aux: Any,
    plan: Plan,
    spec: LearnerSpec,
    update_step: jax.Array,
    advice: Any,
    unroll: int = 1,
    reset_cores: CoreState | None = None,
) -> tuple[VecEnvState, jax.Array, Any, Plan, Trajectory]:
    """The same unroll with `modulator`'s hooks: `prepare` (per-step inputs in `plan["xs"]`, leading axis T; the
    per-env loop carry's start in `plan["carry"]`), per step `step` (action override, restart states) and
    `after_step`, then `finish` on the whole trajectory (the loop's final carry back in `plan["carry"]`).
    Returns the final env state, policy inputs, aux, plan and trajectory."""
    key, mod_key = jax.random.split(key)
    ctx = RolloutContext(env_state=env_state, update_step=update_step, key=mod_key, num_steps=num_steps)
    aux, plan = modulator.prepare(aux, advice, plan, ctx, spec)
    xs_all = plan.pop("xs", {})
    carry = plan.pop("carry", {})

    def step(loop, xs):
        env_state, obs, carry = loop
        step_key, xs = xs
        act_key, env_key, reset_key = jax.random.split(step_key, 3)
        head = net.policy_head(params, obs)
        action, _ = net.sample(params, head, act_key)  # the log-prob is taken once, of what is executed
        fresh = reset_cores if reset_cores is not None else env.fresh_cores(reset_key)
        s = StepState(obs=obs, time=env_state.core.time, action=action, key=act_key, reset=fresh,
                      cut=jnp.zeros(env.num_envs, jnp.bool_), carry=carry, extras={})
        s = modulator.step(aux, plan, xs, s, spec)
        log_prob = net.log_prob(params, head, s.action)
        env_state, res = env.step(env_key, env_state, s.action, s.reset, s.cut)
        s = modulator.after_step(aux, plan, xs, s, res.episode_done, spec)
        tr = Trajectory(obs=obs, action=s.action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                        terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                        final_obs=res.final_obs, extras=s.extras)
        return (env_state, res.obs, s.carry), tr

    (env_state, obs, carry), traj = jax.lax.scan(step, (env_state, obs, carry),
                                                 (jax.random.split(key, num_steps), xs_all), unroll=unroll)
    aux, traj = modulator.finish(aux, {**plan, "carry": carry}, traj, spec)
    return env_state, obs, aux, plan, traj


def where_envs(where: jax.Array, replacement: jax.Array, action: jax.Array) -> jax.Array:
    """Per env, `replacement` where `where` [N] holds, else `action` ([N] or [N, A]): action overrides."""
    return jnp.where(where.reshape(where.shape + (1,) * (action.ndim - 1)), replacement, action)


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout (int32 scalar)."""
    return jnp.sum(traj.episode_done)
