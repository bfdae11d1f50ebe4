"""Collect a (T, N) rollout with one `lax.scan` over env steps; only the actor runs inside the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.modulation import ModulationConfig, ModulationParams, choose_restarts, match_slots, take_slot
from jaxmod.envs.core import CoreState
from jaxmod.envs.vec_env import VecEnv, VecEnvState, select_envs
from jaxmod.ppo.networks import ActorCritic, Params


@struct.dataclass
class Trajectory:
    """Per-step arrays with leading axes (T, N)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    episode_done: jax.Array
    final_obs: jax.Array  # true next observation, pre auto-reset, for bootstrapping
    critical: jax.Array | None = None  # bool: a critical step under advice (modulated runs only)
    slot: jax.Array | None = None  # int32: the advice slot of a critical step, else -1
    restarted: jax.Array | None = None  # bool: the env's next episode restarts from an advice snapshot
    guided: jax.Array | None = None  # bool: the JSRL guide chose this step's action


@struct.dataclass
class Modulated:
    """What a modulated rollout needs besides the policy: config, traced knobs, advice, and each env's
    pending critical slot (set by a restart, consumed by the next step)."""

    params: ModulationParams
    advice: Advice
    critical_slot: jax.Array  # (N,) int32
    guide_params: Params | None = None  # JSRL: the frozen guide policy
    guide_horizon: jax.Array | None = None  # JSRL: the guide acts while the episode's step < this


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
    modulation: ModulationConfig | None = None,
    mod: Modulated | None = None,
) -> tuple[VecEnvState, jax.Array, jax.Array | None, Trajectory]:
    """Run the current policy for `num_steps` steps in every env; returns the final env state, obs,
    pending critical slots (modulated runs) and the trajectory.

    Values are not computed here: the learner evaluates the critic on the whole rollout at once,
    which keeps the sequential loop short (a latency win at small batch sizes).
    """

    def step(carry, step_key):
        env_state, obs, pending = carry
        if modulation is None:
            act_key, env_key = jax.random.split(step_key)
        else:
            act_key, env_key, restart_key, reset_key = jax.random.split(step_key, 4)
        head = net.policy_head(params, obs)
        action, log_prob = net.sample(params, head, act_key)
        if modulation is None:
            env_state, res = env.step(env_key, env_state, action, reset_cores)
            tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                            terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                            final_obs=res.final_obs)
            return (env_state, res.obs, pending), tr

        guided = None
        if modulation.uses_guide:  # JSRL roll-in: the frozen guide acts early in every episode
            guide_action, _ = net.sample(mod.guide_params, net.policy_head(mod.guide_params, obs),
                                         jax.random.fold_in(act_key, 1))
            guided = env_state.core.time < mod.guide_horizon
            action, log_prob = _execute_instead(net, params, head, action, guided, guide_action)
        # CRITICAL STEPS: right after a restart from advice, or (optionally) near an advice state
        slot = pending
        if modulation.matching:
            near = match_slots(obs, mod.advice, env_state.obs_rms, env.normalize_obs, mod.params.match_radius)
            slot = jnp.where(slot >= 0, slot, near)
        critical = slot >= 0
        if modulation.override_action:  # ULTRA-A: execute the suggestion, keep its log-prob for the ratio
            action, log_prob = _execute_instead(net, params, head, action, critical,
                                                take_slot(mod.advice.action, slot))
        # RESTARTS: finished envs restart from a random valid advice snapshot with probability rho
        use, restart_slot = choose_restarts(restart_key, mod.advice, env.num_envs, mod.params.restart_prob)
        fresh = reset_cores if reset_cores is not None else env.fresh_cores(reset_key)
        resets = select_envs(use, take_slot(mod.advice.snapshot, restart_slot), fresh)
        env_state, res = env.step(env_key, env_state, action, resets)
        reward = res.reward
        if modulation.shape_reward:  # ULTRA-R: implicit reward on critical steps
            bonus = take_slot(mod.advice.reward, slot) * take_slot(mod.advice.weight, slot)
            reward = reward + jnp.where(critical, mod.params.reward_scale * bonus, 0.0)
        pending = jnp.where(res.episode_done, restart_slot, -1)
        tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=reward, raw_reward=res.raw_reward,
                        terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                        final_obs=res.final_obs, critical=critical, slot=slot,
                        restarted=jnp.logical_and(res.episode_done, use), guided=guided)
        return (env_state, res.obs, pending), tr

    pending0 = mod.critical_slot if mod is not None else None
    (env_state, obs, pending), traj = jax.lax.scan(step, (env_state, obs, pending0),
                                                   jax.random.split(key, num_steps), unroll=unroll)
    return env_state, obs, pending, traj


def _execute_instead(net: ActorCritic, params: Params, head: jax.Array, action: jax.Array, where: jax.Array,
                     replacement: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per env, execute `replacement` where `where` (N,) holds, else `action`; the log-prob is the
    learner's own of what was executed, so the PPO ratio stays correct (ULTRA-A, JSRL roll-in)."""
    mask = where.reshape(where.shape + (1,) * (action.ndim - 1))
    action = jnp.where(mask, replacement, action)
    return action, net.log_prob(params, head, action)


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout."""
    return jnp.sum(traj.episode_done)
