"""Collect a (T, N) rollout with one `lax.scan` over env steps; only the actor runs inside the loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.modulation import (
    MAX_CAPACITY,
    Matcher,
    ModulationConfig,
    ModulationParams,
    choose_restarts,
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


SLOT_BITS = (MAX_CAPACITY + 1).bit_length()  # 15; step codes: bits 0-14 the restart slot + 1, 15-29 the critical
# slot after it + 1, bit 30 verification's control flag


def pack_step_codes(restart_slot: jax.Array, restart_critical: jax.Array, control: jax.Array) -> jax.Array:
    """One int32 per step and env: the restart slot, the critical slot after that restart (-1: none) and
    verification's control flag."""
    return (restart_slot + 1) | ((restart_critical + 1) << SLOT_BITS) | (control.astype(jnp.int32) << (2 * SLOT_BITS))


def unpack_step_codes(codes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mask = (1 << SLOT_BITS) - 1
    return (codes & mask) - 1, ((codes >> SLOT_BITS) & mask) - 1, (codes >> (2 * SLOT_BITS)) != 0


PREGATHER_BYTES = 16 << 20  # restart snapshots up to this size (all steps, all envs) are gathered before the loop


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

    matcher = use = None
    if modulation is not None:
        def trusted_only(slot: jax.Array) -> jax.Array:
            """`slot` where it is trusted advice, else -1 (untrusted slots restart but do not act)."""
            return jnp.where(take_slot(mod.trusted, slot), slot, -1)

        # Everything that does not depend on the states reached is drawn or prepared here, for all steps at once:
        # the sequential loop keeps only what must run step by step (a latency win on small batches)
        key, u_key = jax.random.split(key)
        u_use, u_slot, u_control = _uniforms_from_bits(jax.random.bits(u_key, (num_steps, env.num_envs, 2), jnp.uint32))
        use, restart_slot = choose_restarts(u_use, u_slot, mod.advice, mod.params.restart_prob)
        control = u_control >= modulation.verify_control
        # the slot whose first step is critical after each step's possible restart: all valid slots restart, only
        # trusted ones act (looked up here for all steps, so the loop carries slots that are trusted already)
        restart_critical = trusted_only(restart_slot)
        # the loop reads these per-step facts from one int32: each array a scan slices per step cost a CPU more than
        # the work it feeds (the control mask as its own array: +0.3 ms per MountainCar rollout of 2.2 ms)
        step_codes = pack_step_codes(restart_slot, restart_critical, control)
        # the restart snapshots of every step, gathered at once where they are small (classic control: a few
        # floats per env; a physics state is not copied T times): a gather per snapshot field per step is
        # most of what restarts cost a CPU
        snapshots = None
        slot_bytes = sum(x.dtype.itemsize * math.prod(x.shape[1:]) for x in jax.tree.leaves(mod.advice.snapshot))
        snapshot_bytes = slot_bytes * num_steps * env.num_envs  # from shapes: no op traced for it
        if snapshot_bytes <= PREGATHER_BYTES:
            snapshots = take_slot(mod.advice.snapshot, restart_slot)
        if modulation.matching:
            matcher = Matcher.create(mod.advice, mod.trusted, env_state.obs_rms if env.normalize_obs else None,
                                     mod.spread, mod.params.match_radius)

    def step(carry, xs):
        env_state, obs, pending = carry
        if modulation is None:
            act_key, env_key = jax.random.split(xs)
            head = net.policy_head(params, obs)
            action, log_prob = net.sample(params, head, act_key)
            env_state, res = env.step(env_key, env_state, action, reset_cores)
            tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                            terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                            final_obs=res.final_obs)
            return (env_state, res.obs, pending), tr

        step_key, codes, snapshot = xs  # per-step draws made before the loop
        restart_slot, restart_critical, control = unpack_step_codes(codes)
        act_key, env_key, reset_key = jax.random.split(step_key, 3)
        head = net.policy_head(params, obs)
        action, _ = net.sample(params, head, act_key)  # the log-prob is taken once, of what is executed
        guided = None
        if modulation.uses_guide:  # JSRL roll-in: the frozen guide acts early in every episode; its steps train
            # the learner as its own (the learner's log-prob of the guide's action), as JSRL's off-policy learners
            # use guide data. With the guide's log-prob as the behaviour's (a true importance ratio) PPO's clip
            # stops learning from them once the learner drifts: Pong win rate 0.25 instead of 0.50 (6 seeds)
            guide_action, _ = net.sample(mod.guide_params, net.policy_head(mod.guide_params, obs),
                                         jax.random.fold_in(act_key, 1))
            guided = env_state.core.time < mod.guide_horizon
            action = _where_envs(guided, guide_action, action)
        # CRITICAL STEPS: right after a restart from trusted advice, or (optionally) near a trusted advice state
        slot = pending
        if matcher is not None:
            slot = jnp.where(slot >= 0, slot, matcher.match(obs))
        if modulation.override_action:  # ULTRA-A: execute the suggestion (the ratio uses its log-prob)
            executes = executes_suggestion(modulation, slot, control)
            action = _where_envs(executes, take_slot(mod.advice.action, slot), action)
        log_prob = net.log_prob(params, head, action)
        # RESTARTS: finished envs restart from the advice snapshot drawn for this step (slot -1: a fresh reset)
        fresh = reset_cores if reset_cores is not None else env.fresh_cores(reset_key)
        if snapshot is None:
            snapshot = take_slot(mod.advice.snapshot, restart_slot)
        resets = select_envs(restart_slot >= 0, snapshot, fresh)
        env_state, res = env.step(env_key, env_state, action, resets)
        pending = jnp.where(res.episode_done, restart_critical, -1)
        tr = Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                        terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                        final_obs=res.final_obs, slot=slot, guided=guided)
        return (env_state, res.obs, pending), tr

    if modulation is None:
        (env_state, obs, pending), traj = jax.lax.scan(step, (env_state, obs, None), jax.random.split(key, num_steps),
                                                       unroll=unroll)
        return env_state, obs, pending, traj

    pending = trusted_only(mod.critical_slot)  # trust may have changed since the last rollout
    xs = (jax.random.split(key, num_steps), step_codes, snapshots)
    (env_state, obs, pending), traj = jax.lax.scan(step, (env_state, obs, pending), xs, unroll=unroll)

    # per-step facts that follow from the trajectory, computed on the whole (T, N) batch (outside the sequential
    # loop, each is one op per rollout instead of one per step)
    critical = traj.slot >= 0
    forced = executes_suggestion(modulation, traj.slot, control)  # ULTRA-A imposed these actions
    if env.action_space.discrete:  # verification's groups: the suggestion ran, or the policy's own choice
        advised = critical & (traj.action == take_slot(mod.advice.action, traj.slot))
    else:
        advised = forced
    shaping = None
    if modulation.shape_reward:  # ULTRA-R: implicit reward on critical steps (added by the learner)
        shaping = shaping_bonus(mod.params, mod.advice, traj.slot, critical, traj.action, modulation.kl_target_std)
    traj = traj.replace(critical=critical, restarted=traj.episode_done & use, shaping=shaping, advised=advised,
                        forced=forced)
    return env_state, obs, pending, traj


def executes_suggestion(modulation: ModulationConfig, slot: jax.Array, control: jax.Array) -> jax.Array:
    """ULTRA-A's rule: where the suggestion is executed (critical steps, less verification's control group)."""
    if not modulation.override_action:
        return jnp.zeros(slot.shape, bool)
    critical = slot >= 0
    return critical & control if modulation.verifies else critical


def _uniforms_from_bits(bits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Three independent uniforms in [0, 1) from two random words per step and env: the restart draw with 24 bits
    (as a float32 uniform has), the restart slot's and the verification control's with 16 each. A (T, N, 3) float
    uniform draw cost a CPU ~0.1 ms more per MountainCar rollout (of ~2.2 ms)."""
    word0, word1 = bits[..., 0], bits[..., 1]
    return ((word0 >> 8).astype(jnp.float32) * 2.0**-24, (word1 & 0xFFFF).astype(jnp.float32) * 2.0**-16,
            (word1 >> 16).astype(jnp.float32) * 2.0**-16)


def _where_envs(where: jax.Array, replacement: jax.Array, action: jax.Array) -> jax.Array:
    """Per env, `replacement` where `where` (N,) holds, else `action` (ULTRA-A's overrides, JSRL's roll-in)."""
    return jnp.where(where.reshape(where.shape + (1,) * (action.ndim - 1)), replacement, action)


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout."""
    return jnp.sum(traj.episode_done)
