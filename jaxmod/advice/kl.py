"""A KL pull toward the advisor's suggestions at critical steps (`KLTarget`; jaxmod's extension of the paper).

The loss adds `kl_coef * trust * KL(target || pi)` summed over the minibatch's critical steps and divided by the
minibatch's size, as the surrogate weighs each sample (`trust`: the slot's trust weight in [0, 1] from
verification, `jaxmod.advice.verify`; 1 without it): for discrete actions the advisor's
distribution over the actions where it gave one (`Advice.target`: an LLM's probabilities of its multiple-choice
options, read from token log-probabilities by `jaxmod.llm.logprobs`; jaxmod's extension) and otherwise a one-hot
target (= -log pi(a*)); a Gaussian of std `target_std` half-ranges of the action box (`ActionSpace.unit`: the
same pull on [-1, 1] and [-2, 2]) around the suggestion for continuous ones, pulling the policy's mean only (its
std, one parameter for every state, is held: a pull at a few critical states must not narrow exploration
everywhere). With
`filter`, only on critical steps that executed the suggestion with a positive GAE advantage, i.e. where following
the advice turned out better than the critic expected (wrong advice then gets no pull).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.modulation import ModulationConfig
from jaxmod.advice.slots import take_slot
from jaxmod.advice.verify import advised_steps
from jaxmod.ppo import distributions as D
from jaxmod.ppo.modulator import Modulator


def advice_kl(net, params, head: jax.Array, suggested: jax.Array, target_std: float,
              target: jax.Array | None = None) -> jax.Array:
    """KL(target || pi) per sample ([B] float32). Discrete actions: the advisor's distribution `target` ([B, A]
    float32) where its row is nonzero (an LLM's probabilities over the actions), else the one-hot of `suggested`
    ([B] int32; KL = -log pi(a*)). Continuous ones: a Gaussian of std `target_std` x the action box's half-range
    per dimension (`ActionSpace.unit`) around `suggested` ([B, A] float32), with the policy's std held (no
    gradient: only its mean is pulled). `head`: the policy head's output for the samples (logits, or the
    Gaussian's mean)."""
    if net.action_space.discrete:
        one_hot = -D.categorical_log_prob(head, suggested)
        if target is None or target.shape[-1] != head.shape[-1]:
            return one_hot
        log_pi = jax.nn.log_softmax(head, axis=-1)
        positive = target > 0
        soft = jnp.sum(jnp.where(positive, target * (jnp.log(jnp.where(positive, target, 1.0)) - log_pi), 0.0),
                       axis=-1)
        return jnp.where(jnp.sum(target, axis=-1) > 0, soft, one_hot)
    # the pull moves the mean only: the policy's std is one parameter for every state (`params["log_std"]`), so a
    # gradient on it from a few critical steps would narrow exploration everywhere (Pendulum-v1, 10 seeds, teacher
    # advice: ULTRA-A fell from continued PPO's -1044 to -1220 with it, -1040 with no KL at all)
    log_std = jax.lax.stop_gradient(jnp.broadcast_to(params["log_std"], head.shape))
    target_log_std = jnp.broadcast_to(jnp.log(target_std * net.action_space.unit), head.shape)
    return D.gaussian_kl(suggested, target_log_std, head, log_std)


@struct.dataclass
class KLAux:
    kl_coef: jax.Array  # float32 scalar: beta, traced


@dataclass(frozen=True)
class KLTarget(Modulator):
    """Writes `masks["kl"]` (the critical steps pulled) and `fields["suggested"]`; its loss term is logged as
    `advice_kl` (the mean KL over those steps)."""

    kl_coef: float = ModulationConfig.kl_coef  # the config's defaults (one default per knob)
    target_std: float = ModulationConfig.kl_target_std
    filter: bool = ModulationConfig.kl_filter

    def init(self, key, spec, params):
        return KLAux(kl_coef=jnp.float32(self.kl_coef))

    def weigh(self, aux, plan, traj, advantage, values, next_values, spec):
        critical = traj.extras["critical"]
        if self.filter:  # pull only where executing the suggestion beat the critic's expectation
            critical = critical & advised_steps(plan, traj, spec) & (advantage > 0)
        slot = traj.extras["slot"]
        suggested = take_slot(plan["advice"].action, slot)
        target = take_slot(plan["advice"].target, slot)  # [T, N, A]: zeros where the target is the one-hot
        # the pull scales with the slot's trust weight (verification's; 1 without it), averaged over all critical
        # steps pulled: an unproven slot pulls nothing
        trust = take_slot(plan.get("trust_weight", jnp.ones(plan["advice"].capacity)), slot)
        fields = {"suggested": suggested, "kl_trust": trust}
        if target.shape[-1]:  # discrete actions (a static shape)
            fields["kl_target"] = target
        return aux, {"kl": critical.astype(jnp.float32)}, fields

    def loss(self, aux, net, params, head, batch):
        kl = advice_kl(net, params, head, batch.fields["suggested"], self.target_std, batch.fields.get("kl_target"))
        mean = batch.masked_mean("kl", batch.fields["kl_trust"] * kl)  # over the critical steps (logged)
        # each critical step pulls as much as one sample weighs in the surrogate (a mean over the minibatch): a
        # mean over the critical steps alone gave ~1.5 critical steps of a 512-sample minibatch ~340x a sample's
        # weight (Pendulum-v1, 10 seeds, teacher advice, sync: ULTRA-A -1186 vs continued PPO -1044; per sample
        # -1043; CartPole-v1 RA +106 [+3.5, +219] before, +125 [-13.5, +251] after: the gain holds)
        share = jnp.sum(batch.masks["kl"]) / batch.masks["kl"].shape[0]
        return aux.kl_coef * mean * share, {"advice_kl": mean}
