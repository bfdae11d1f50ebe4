"""ULTRA-R on the device: the advisor's implicit reward as reward shaping at critical steps (`ImplicitReward`).

The reward of a critical step gets `reward_scale * weight * trust * r_llm` reward units (paper section 4, ULTRA-R:
lambda times the LLM's implicit reward, validated and clipped to [-1, 1] on the host) when the action taken is the
one the implicit reward rates: the agent's own at the source step, since the advisor judged that choice, not
whatever runs now (jaxmod's reading where the paper is silent). Continuous actions count as that action by a
Gaussian kernel of std `kernel_std` half-ranges of the action box (`ActionSpace.unit`). `trust` is the slot's trust weight in [0, 1] from verification
(`jaxmod.advice.verify`; 1 without it).

The reward unit (jaxmod's choice): the running root-mean-square of the env's own per-step reward (raw, before any
reward normalisation; 1 until a nonzero reward has been seen), kept in the train state. So lambda = 1 makes a
critical step's bonus as large as a typical step's reward, whatever the task's reward scale, and the bonus is
converted into the learner's units the way the env's reward is (divided by the reward normaliser's return std
at the rollout's start where `normalize_reward` is on): the same lambda has the same effect with and without
reward normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.modulation import ModulationConfig
from jaxmod.advice.slots import take_slot
from jaxmod.ppo.modulator import Modulator


def shaping_bonus(reward_scale: jax.Array, advice: Advice, slot: jax.Array, critical: jax.Array,
                  action: jax.Array, kernel_std: Any) -> jax.Array:
    """ULTRA-R: lambda * weight * r_llm on critical steps whose action is the one the implicit reward rates
    (the agent's own at the source step: the advisor judged that choice, not whatever runs now), 0 elsewhere.
    Continuous actions count as that action by a Gaussian kernel of std `kernel_std` (a float, or [A] per
    dimension). Shapes: `slot`, `critical`
    [T, N]; `action` [T, N] int32 or [T, N, A] float32; returns [T, N] float32 in reward units (see the module)."""
    bonus = take_slot(advice.reward, slot) * take_slot(advice.weight, slot)
    rated = take_slot(advice.rated_action, slot)
    if advice.action.ndim == 1:  # discrete
        same = (action == rated).astype(jnp.float32)
    else:
        diff = (action - rated) / kernel_std
        same = jnp.exp(-0.5 * jnp.mean(jnp.square(diff), axis=tuple(range(slot.ndim, action.ndim))))
    return jnp.where(critical, reward_scale * bonus * same, 0.0)


@struct.dataclass
class ShapingAux:
    reward_scale: jax.Array  # float32 scalar: lambda, traced
    reward_count: jax.Array  # float32 scalar: env steps whose raw reward was folded into `reward_square`
    reward_square: jax.Array  # float32 scalar: running mean of the env's raw per-step reward squared

    def unit(self) -> jax.Array:
        """The reward unit: RMS of the raw per-step reward, 1 while it is 0 (no reward seen yet)."""
        return jnp.where(self.reward_square > 0.0, jnp.sqrt(self.reward_square), 1.0)


@dataclass(frozen=True)
class ImplicitReward(Modulator):
    """Adds `traj.extras["shaping"]` ([T, N] float32 in the learner's reward units, 0 off critical steps) to the
    reward before GAE; `traj.extras["shaping_raw"]` is the same in the env's raw reward units. Reads
    `plan["trust_weight"]` ([K], default 1). Metrics: `shaping` (mean bonus per critical step, raw reward units)
    and `reward_unit` (the RMS the implicit reward is measured in)."""

    reports = ("shaping",)
    reward_scale: float = ModulationConfig.reward_scale  # the config's defaults (one default per knob)
    kernel_std: float = ModulationConfig.kl_target_std

    def init(self, key, spec, params):
        return ShapingAux(reward_scale=jnp.float32(self.reward_scale), reward_count=jnp.float32(0.0),
                          reward_square=jnp.float32(0.0))

    def prepare(self, aux, advice, plan, ctx, spec):
        # the env's own reward reaches the learner divided by the return std at each step; the bonus is divided by
        # the one at the rollout's start
        learner_unit = 1.0
        if spec.env.normalize_reward:
            learner_unit = 1.0 / jnp.sqrt(ctx.env_state.return_rms.var + 1e-8)
        return aux, {**plan, "learner_reward_unit": learner_unit}

    def finish(self, aux, plan, traj, spec):
        raw = traj.raw_reward
        n = jnp.float32(raw.size)
        total = aux.reward_count + n
        square = (aux.reward_square * aux.reward_count + jnp.sum(jnp.square(raw))) / total
        aux = aux.replace(reward_count=total, reward_square=square)
        advice = plan["advice"]
        trust = plan.get("trust_weight", jnp.ones_like(advice.reward))
        scaled = advice.replace(weight=advice.weight * trust)
        space = spec.env.core.action_space
        std = self.kernel_std if space.discrete else self.kernel_std * jnp.asarray(space.unit).reshape(
            traj.action.shape[traj.extras["slot"].ndim:])
        bonus = shaping_bonus(aux.reward_scale, scaled, traj.extras["slot"], traj.extras["critical"], traj.action,
                              std) * aux.unit()
        extras = {**traj.extras, "shaping": bonus * plan["learner_reward_unit"], "shaping_raw": bonus}
        return aux, traj.replace(extras=extras)

    def reward(self, aux, plan, traj, reward, key, spec):
        return aux, reward + traj.extras["shaping"], {}

    def metrics(self, aux, plan, traj, spec):
        critical = traj.extras["critical"].astype(jnp.float32)
        return {"shaping": jnp.sum(traj.extras["shaping_raw"]) / jnp.maximum(critical.sum(), 1.0),
                "reward_unit": aux.unit()}
