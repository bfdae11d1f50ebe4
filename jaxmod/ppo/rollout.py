"""Collect a (T, N) rollout with one `lax.scan` over env steps; only the actor runs inside the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.modulation import (
    ModulationConfig,
    ModulationParams,
    choose_restarts,
    match_slots,
    shaping_bonus,
    take_slot,
)
from jaxmod.envs.core import CoreState
from jaxmod.envs.vec_env import VecEnv, VecEnvState, select_envs
from jaxmod.ppo.networks import ActorCritic, Params


@struct.dataclass
class Trajectory:
    """Per-step arrays with leading axes (T, N)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array  # the environment's reward (normalised if the env normalises rewards)
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    episode_done: jax.Array
    final_obs: jax.Array  # true next observation, pre auto-reset, for bootstrapping
    critical: jax.Array | None = None  # bool: a critical step under advice (modulated runs only)
    slot: jax.Array | None = None  # int32: the advice slot of a critical step, else -1
    restarted: jax.Array | None = None  # bool: the env's next episode restarts from an advice snapshot
    guided: jax.Array | None = None  # bool: the JSRL guide chose this step's action
    shaping: jax.Array | None = None  # ULTRA-R's implicit reward added on critical steps (0 elsewhere)
    advised: jax.Array | None = None  # bool: a critical step that executed its slot's suggestion
    forced: jax.Array | None = None  # bool: ULTRA-A imposed the action (no behaviour probability: not a sample)


@struct.dataclass
class Modulated:
    """What a modulated rollout needs besides the policy: config, traced knobs, advice, which slots are
    trusted, and each env's pending critical slot (set by a restart, consumed by the next step)."""

    params: ModulationParams
    advice: Advice
    critical_slot: jax.Array  # (N,) int32
    trusted: jax.Array  # (K,) bool: valid slots not refuted by verification (they act; all valid ones restart)
    spread: jax.Array | None = None  # matching unit for raw observations (`advice_spread`)
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

    def step(carry, xs):
        env_state, obs, pending = carry
        if modulation is None:
            act_key, env_key = jax.random.split(xs)
        else:
            step_key, u = xs  # u: (N, 3) uniforms for restart, restart slot and verification control
            act_key, env_key, reset_key = jax.random.split(step_key, 3)
        head = net.policy_head(params, obs)
        action, log_prob = net.sample(params, head, act_key)
        if modulation is None:
            env_state, res = env.step(env_key, env_state, action, reset_cores)
            tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                            terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                            final_obs=res.final_obs)
            return (env_state, res.obs, pending), tr

        guided = None
        if modulation.uses_guide:  # JSRL roll-in: the frozen guide acts early in every episode; its steps train
            # the learner as its own (the learner's log-prob of the guide's action), as JSRL's off-policy learners
            # use guide data. With the guide's log-prob as the behaviour's (a true importance ratio) PPO's clip
            # stops learning from them once the learner drifts: Pong win rate 0.25 instead of 0.50 (6 seeds)
            guide_action, _ = net.sample(mod.guide_params, net.policy_head(mod.guide_params, obs),
                                         jax.random.fold_in(act_key, 1))
            guided = env_state.core.time < mod.guide_horizon
            action, log_prob = _execute_instead(net, params, head, action, guided, guide_action)
        # CRITICAL STEPS: right after a restart from trusted advice, or (optionally) near a trusted advice state
        slot = jnp.where(take_slot(mod.trusted, pending), pending, -1)
        if modulation.matching:
            near = match_slots(obs, mod.advice, mod.trusted, env_state.obs_rms, env.normalize_obs, mod.spread,
                               mod.params.match_radius)
            slot = jnp.where(slot >= 0, slot, near)
        critical = slot >= 0
        suggestion = take_slot(mod.advice.action, slot)
        executes = jnp.zeros_like(critical)
        if modulation.override_action:  # ULTRA-A: execute the suggestion, keep its log-prob for the ratio
            executes = critical
            if modulation.verifies:  # a random share of critical steps stays with the policy: the control group
                executes = critical & (u[:, 2] >= modulation.verify_control)
            action, log_prob = _execute_instead(net, params, head, action, executes, suggestion)
        if env.action_space.discrete:  # verification's groups: the suggestion ran, or the policy's own choice
            advised = critical & (action == suggestion)
        else:
            advised = executes
        # RESTARTS: finished envs restart from a random valid advice snapshot with probability rho
        use, restart_slot = choose_restarts(u[:, 0], u[:, 1], mod.advice, mod.params.restart_prob)
        fresh = reset_cores if reset_cores is not None else env.fresh_cores(reset_key)
        resets = select_envs(use, take_slot(mod.advice.snapshot, restart_slot), fresh)
        env_state, res = env.step(env_key, env_state, action, resets)
        shaping = None
        if modulation.shape_reward:  # ULTRA-R: implicit reward on critical steps (added by the learner)
            shaping = shaping_bonus(mod.params, mod.advice, slot, critical, action, modulation.kl_target_std)
        pending = jnp.where(res.episode_done, restart_slot, -1)
        tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                        terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                        final_obs=res.final_obs, critical=critical, slot=slot,
                        restarted=jnp.logical_and(res.episode_done, use), guided=guided, shaping=shaping,
                        advised=advised, forced=executes)
        return (env_state, res.obs, pending), tr

    pending0 = mod.critical_slot if mod is not None else None
    if modulation is None:
        xs = jax.random.split(key, num_steps)
    else:  # modulation's random numbers for all steps in one draw: fewer ops inside the loop
        key, u_key = jax.random.split(key)
        xs = (jax.random.split(key, num_steps), jax.random.uniform(u_key, (num_steps, env.num_envs, 3)))
    (env_state, obs, pending), traj = jax.lax.scan(step, (env_state, obs, pending0), xs, unroll=unroll)
    return env_state, obs, pending, traj


def _execute_instead(net: ActorCritic, params: Params, head: jax.Array, action: jax.Array, where: jax.Array,
                     replacement: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per env, execute `replacement` where `where` (N,) holds, else `action`, with the learner's own
    log-prob of what was executed (ULTRA-A's overrides, which the learner then masks out of its policy
    gradient, and JSRL's roll-in, which it trains on)."""
    mask = where.reshape(where.shape + (1,) * (action.ndim - 1))
    action = jnp.where(mask, replacement, action)
    return action, net.log_prob(params, head, action)


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout."""
    return jnp.sum(traj.episode_done)
