"""Collect a [T, N] rollout with one `lax.scan` over env steps; only the actor runs inside the loop.

`generate_unroll` is jaxmod's one env-step loop (training here, evaluation and collection in `acting.py`; a learner
on a wrapped env, e.g. a mask net's, trains through the same `PPOLearner`). `collect` is plain PPO's training
unroll; `collect_modulated` runs the same loop with a modulator's (`jaxmod.ppo.modulator`) step hooks: they may
override actions and choose what finished envs restart from, and everything they record per step lands in
`Trajectory.extras`.
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


@struct.dataclass
class Act:
    """What a policy decides for one step of `generate_unroll` (leading axis N): `action` [N] int32 or [N, A]
    float32 (what the env executes); `extra` (any pytree, handed to `after` and `record`); `reset` the batched
    `CoreState` finished envs restart from at this step (None: the unroll's `reset_cores`); `cut` [N] bool, episodes
    to end now as a time limit would (None: none); `carry` the per-env loop carry after this step."""

    action: jax.Array
    extra: Any = None
    reset: Any = None
    cut: Any = None
    carry: Any = ()


@struct.dataclass
class UnrollStep:
    """What a policy sees of the loop besides its input: the env state before the step (`VecEnvState`, leading axis
    N), the per-env loop carry, this step's slice of the per-step inputs `xs`, and the key the env steps with
    (`VecEnv.step_resets(env_key)` gives the fresh states this step restarts finished envs from)."""

    env_state: Any
    carry: Any
    xs: Any
    env_key: Any = None


def generate_unroll(
    env: VecEnv,
    policy: Callable[[jax.Array, jax.Array, UnrollStep], Act],
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    record: Callable[[VecEnvState, jax.Array, jax.Array, Any, StepResult], Any],
    reset_cores: CoreState | None = None,
    unroll_steps: int = 1,
    after: Callable[[Act, StepResult, Any], Act] | None = None,
    carry: Any = (),
    xs: Any = None,
) -> tuple[VecEnvState, jax.Array, Any, Any]:
    """The one env-step loop of `jaxmod` (training, collection, evaluation, the mask net; Brax's
    `acting.generate_unroll` is the model).

    Per step the step key splits into (action key, env key), the same for every caller: a policy or modulator that
    draws more derives its keys with `jax.random.fold_in`, so a modulated rollout whose hooks change nothing steps
    through the same actions and env draws as plain PPO's (common random numbers); `policy(obs [N, *obs_shape],
    action key, UnrollStep) -> Act` acts; the env steps (finished envs restart from `Act.reset`, else
    `reset_cores`, else fresh draws; `Act.cut` ends episodes now); `after(act, StepResult, xs slice) -> Act` (optional)
    updates the act from the step's outcome; `record(state before the step, obs, act.action, act.extra, StepResult)`
    gives the step's outputs, stacked to [T, N, ...]. `carry` starts the per-env loop carry (`Act.carry` continues
    it); `xs` holds per-step inputs with leading axis T (None: none). Returns the final env state, policy inputs,
    loop carry and the records."""

    def step(loop, inp):
        env_state, obs, carry = loop
        step_key, x = inp
        act_key, env_key = jax.random.split(step_key)
        act = policy(obs, act_key, UnrollStep(env_state=env_state, carry=carry, xs=x, env_key=env_key))
        reset = reset_cores if act.reset is None else act.reset
        next_state, res = env.step(env_key, env_state, act.action, reset, act.cut)
        if after is not None:
            act = after(act, res, x)
        return (next_state, res.obs, act.carry), record(env_state, obs, act.action, act.extra, res)

    (env_state, obs, carry), records = jax.lax.scan(step, (env_state, obs, carry),
                                                    (jax.random.split(key, num_steps), xs), unroll=unroll_steps)
    return env_state, obs, carry, records


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

    def policy(obs, key, _):
        action, log_prob = net.sample(params, net.policy_head(params, obs), key)
        return Act(action=action, extra=log_prob)

    def record(state, obs, action, log_prob, res):
        return Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                          terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                          final_obs=res.final_obs)

    env_state, obs, _, traj = generate_unroll(env, policy, env_state, obs, key, num_steps, record, reset_cores, unroll)
    return env_state, obs, traj


MODULATOR_STREAM = 0x4D4F44  # the modulator's random stream within a rollout key ("MOD"): `fold_in(key, it)`


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
    """`collect` with `modulator`'s hooks, through the same `generate_unroll`: `prepare` (per-step inputs in
    `plan["xs"]`, leading axis T; the per-env loop carry's start in `plan["carry"]`), per step `step` (action
    override, restart states, cuts) and `after_step`, then `finish` on the whole trajectory (the loop's final carry
    back in `plan["carry"]`). The log-probability is taken of the executed action, after the hooks. Common random
    numbers: the unroll's keys are `collect`'s (the modulator's come from `fold_in(key, MODULATOR_STREAM)`, the
    fresh restart states are the env's own draw), so a modulator that changes nothing gives plain PPO's rollout
    bit for bit, and two methods differ only by what their modulators do (tests/test_ppo.py). Returns the final
    env state, policy inputs, aux, plan and trajectory."""
    mod_key = jax.random.fold_in(key, MODULATOR_STREAM)
    ctx = RolloutContext(env_state=env_state, update_step=update_step, key=mod_key, num_steps=num_steps)
    aux, plan = modulator.prepare(aux, advice, plan, ctx, spec)
    xs_all = plan.pop("xs", {})
    carry = plan.pop("carry", {})

    def policy(obs, act_key, u: UnrollStep):
        head = net.policy_head(params, obs)
        action, _ = net.sample(params, head, act_key)  # the log-prob is taken once, of what is executed
        fresh = reset_cores if reset_cores is not None else env.step_resets(u.env_key)
        s = StepState(obs=obs, time=u.env_state.core.time, action=action, key=act_key, reset=fresh,
                      cut=jnp.zeros(env.num_envs, jnp.bool_), carry=u.carry, extras={})
        s = modulator.step(aux, plan, u.xs, s, spec)
        return Act(action=s.action, extra=(s, net.log_prob(params, head, s.action)), reset=s.reset, cut=s.cut,
                   carry=s.carry)

    def after(act: Act, res: StepResult, xs) -> Act:
        s, log_prob = act.extra
        s = modulator.after_step(aux, plan, xs, s, res.episode_done, spec)
        return act.replace(extra=(s, log_prob), carry=s.carry)

    def record(state, obs, action, extra, res):
        s, log_prob = extra
        return Trajectory(obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
                          terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
                          final_obs=res.final_obs, extras=s.extras)

    env_state, obs, carry, traj = generate_unroll(env, policy, env_state, obs, key, num_steps, record, reset_cores,
                                                  unroll, after=after, carry=carry, xs=xs_all)
    aux, traj = modulator.finish(aux, {**plan, "carry": carry}, traj, spec)
    return env_state, obs, aux, plan, traj


def where_envs(where: jax.Array, replacement: jax.Array, action: jax.Array) -> jax.Array:
    """Per env, `replacement` where `where` [N] holds, else `action` ([N] or [N, A]): action overrides."""
    return jnp.where(where.reshape(where.shape + (1,) * (action.ndim - 1)), replacement, action)


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout (int32 scalar)."""
    return jnp.sum(traj.episode_done)
