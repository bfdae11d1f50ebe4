"""ULTRA-R on the device: the advisor's implicit reward as reward shaping at critical steps (`ImplicitReward`).

The reward of a critical step gets `reward_scale * weight * r_llm` (paper section 4, ULTRA-R: lambda times the
LLM's implicit reward, validated and clipped to [-1, 1] on the host) when the action taken is the one the
implicit reward rates: the agent's own at the source step, since the advisor judged that choice, not whatever
runs now (jaxmod's reading where the paper is silent). Continuous actions count as that action by a Gaussian
kernel of std `kernel_std`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.slots import take_slot
from jaxmod.ppo.modulator import Modulator


def shaping_bonus(reward_scale: jax.Array, advice: Advice, slot: jax.Array, critical: jax.Array,
                  action: jax.Array, kernel_std: float) -> jax.Array:
    """ULTRA-R: lambda * weight * r_llm on critical steps whose action is the one the implicit reward rates
    (the agent's own at the source step: the advisor judged that choice, not whatever runs now), 0 elsewhere.
    Continuous actions count as that action by a Gaussian kernel of std `kernel_std`."""
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


@dataclass(frozen=True)
class ImplicitReward(Modulator):
    """Adds `traj.extras["shaping"]` ([T, N] float32, 0 off critical steps) to the reward before GAE."""

    reward_scale: float = 1.0
    kernel_std: float = 0.2

    def init(self, key, spec, params):
        return ShapingAux(reward_scale=jnp.float32(self.reward_scale))

    def finish(self, aux, plan, traj, spec):
        shaping = shaping_bonus(aux.reward_scale, plan["advice"], traj.extras["slot"], traj.extras["critical"],
                                traj.action, self.kernel_std)
        return aux, traj.replace(extras={**traj.extras, "shaping": shaping})

    def reward(self, aux, plan, traj, reward, key, spec):
        return aux, reward + traj.extras["shaping"], {}
