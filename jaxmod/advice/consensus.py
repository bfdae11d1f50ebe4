"""Advice consensus on the device: a suggestion that most nearby advice contradicts is not followed.

A hallucinating advisor's mistakes are scattered, while good advice about similar states agrees. So each
valid slot is compared with the valid slots whose states lie within `radius` of its own (in units of the
advice states' per-feature spread, itself included): if fewer than half of them suggest the same action
(discrete: equal; continuous: root-mean-square difference within `action_tol` of the action range), the
slot is out-voted and, like a refuted slot, stops acting (no action, implicit reward, KL pull or matching)
until the host replaces it; restarts from its state continue. A slot without neighbours, or a tie, keeps
its vote: consensus only acts where there is evidence. This is label-noise-robust nearest-neighbour voting,
complementary to verification (`jaxmod.advice.verify`), which needs many visits of each slot before it can
judge; consensus judges from the advice alone, at once. jaxmod's choice; the paper trusts every answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxmod.advice.arrays import Advice, require_advice
from jaxmod.advice.modulation import ModulationConfig
from jaxmod.advice.slots import advice_spread
from jaxmod.ppo.modulator import Modulator


def pairwise_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """(M, K) Euclidean distances between the rows of x (M, ...) and y (K, ...), flattened per row."""
    diff = x.reshape(x.shape[0], 1, -1) - y.reshape(1, y.shape[0], -1)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def agreeing(advice: Advice, action_range: jax.Array | None, action_tol: float) -> jax.Array:
    """(K, K) bool: slot i's and slot j's suggestions agree."""
    if action_range is None:  # discrete
        return advice.action[:, None] == advice.action[None, :]
    a = advice.action.reshape(advice.action.shape[0], -1) / jnp.reshape(action_range, (1, -1))
    diff = a[:, None, :] - a[None, :, :]
    return jnp.sqrt(jnp.mean(jnp.square(diff), axis=-1)) <= action_tol


def consensus(advice: Advice, radius: float, action_range: jax.Array | None = None,
              action_tol: float = 0.25, spread: jax.Array | None = None) -> jax.Array:
    """(K,) bool: valid slots not out-voted by the valid advice within `radius` of their state.
    `action_range` (high - low per action dim) marks continuous actions; None means discrete. `spread` is
    `advice_spread(advice)` where the caller has it already."""
    spread = advice_spread(advice) if spread is None else spread
    x = advice.obs / spread
    near = (pairwise_distance(x, x) <= radius) & advice.valid[None, :] & advice.valid[:, None]
    votes_for = jnp.sum(near & agreeing(advice, action_range, action_tol), axis=1)
    return advice.valid & (2 * votes_for >= jnp.sum(near, axis=1))


@dataclass(frozen=True)
class Consensus(Modulator):
    """Consensus as a modulator: once per `run` call, `plan["agreed"]` ([K] bool) marks the valid slots not
    out-voted and `plan["trusted"]` starts from it; `plan["spread"]` is the advice states' spread (shared with
    matching on raw observations)."""

    radius: float = ModulationConfig.consensus_radius  # the config's defaults (one default per knob)
    action_tol: float = ModulationConfig.consensus_action_tol

    def digest(self, aux, advice, plan, spec):
        require_advice(advice, spec, "Consensus")
        spread = plan["spread"] if "spread" in plan else advice_spread(advice)
        space = spec.env.core.action_space
        agreed = consensus(advice, self.radius, space.span, self.action_tol, spread)
        return {**plan, "spread": spread, "agreed": agreed, "trusted": agreed}

    def metrics(self, aux, plan, traj, spec):
        advice = plan["advice"]
        return {"advice_outvoted": (advice.valid & ~plan["agreed"]).sum().astype(jnp.int32)}
