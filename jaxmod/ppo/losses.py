"""GAE with time-limit bootstrapping and the clipped PPO loss (policy + value + entropy)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.ppo import distributions as D
from jaxmod.ppo.config import HyperParams
from jaxmod.ppo.networks import ActorCritic, Params


def advice_kl(net: ActorCritic, params: Params, head: jax.Array, suggested: jax.Array, target_std: float) -> jax.Array:
    """KL(target || pi) per sample: a one-hot target (= -log pi(a*)) for discrete actions, a Gaussian of
    std `target_std` around the suggestion for continuous ones."""
    if net.action_space.discrete:
        return -D.categorical_log_prob(head, suggested)
    log_std = jnp.broadcast_to(params["log_std"], head.shape)
    return D.gaussian_kl(suggested, jnp.full_like(head, jnp.log(target_std)), head, log_std)


def td_errors(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
              gamma: jax.Array) -> jax.Array:
    """One-step TD errors r + gamma * V(s') - V(s), with no bootstrap past a termination (a truncation
    bootstraps from `next_values`, V of the true next state)."""
    return rewards + gamma * (1.0 - terminated.astype(jnp.float32)) * next_values - values


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    episode_done: jax.Array,
    gamma: jax.Array,
    gae_lambda: jax.Array,
) -> jax.Array:
    """Generalised advantage estimates over a (T, N) rollout.

    `next_values[t]` is V of the true next state s'_t (before auto-reset), so a time-limit
    truncation bootstraps from it while a termination does not; the advantage recursion is cut at
    every episode end. Computed with an associative scan: depth log T instead of T on accelerators.
    """
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    decay = gamma * gae_lambda * (1.0 - episode_done.astype(jnp.float32))

    # A_t = deltas_t + decay_t * A_{t+1}: a linear recurrence run forward over the reversed time axis.
    def combine(first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        a1, b1 = first
        a2, b2 = second
        return a2 * a1, a2 * b1 + b2

    _, adv_rev = jax.lax.associative_scan(combine, (decay[::-1], deltas[::-1]), axis=0)
    return adv_rev[::-1]


def gae_reference(rewards, values, next_values, terminated, episode_done, gamma, gae_lambda) -> jax.Array:
    """The same estimates with a plain reverse `lax.scan` (used to test `gae`)."""
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    decay = gamma * gae_lambda * (1.0 - episode_done.astype(jnp.float32))

    def body(carry, x):
        d, c = x
        carry = d + c * carry
        return carry, carry

    _, adv = jax.lax.scan(body, jnp.zeros_like(deltas[0]), (deltas, decay), reverse=True)
    return adv


@struct.dataclass
class Batch:
    """One flattened training batch (leading axis = samples). The optional weights are per-sample shares of a
    loss term: a batch is built with 0/1 masks, and `optimise` turns them into `mask_weights` per minibatch (once
    per epoch instead of a count, a division and its gradient in every SGD step)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    kl_weight: jax.Array | None = None  # advice KL: the steps under advice (modulated runs with a KL term)
    suggested: jax.Array | None = None  # the advice's action at those steps
    policy_weight: jax.Array | None = None  # surrogate: steps whose action was sampled, not imposed (None: all)


def mask_weights(mask: jax.Array) -> jax.Array:
    """0/1 masks (leading axes ..., sample) as weights summing to 1 over the last axis (all 0 where none is set)."""
    return mask / jnp.maximum(1.0, jnp.sum(mask, axis=-1, keepdims=True))


def ppo_loss(
    net: ActorCritic,
    params: Params,
    batch: Batch,
    hp: HyperParams,
    clip_value_loss: bool = True,
    kl_coef: jax.Array | None = None,
    kl_target_std: float = 0.2,
) -> tuple[jax.Array, dict[str, Any]]:
    """Clipped surrogate + (clipped) value loss - entropy bonus; advantages normalised per minibatch.
    With `policy_weight`, the surrogate averages over the steps whose action was sampled only: an action ULTRA-A
    imposed has no behaviour probability to correct with, so its policy gradient would be biased (it trains
    the critic, and the KL term, instead). With `kl_coef`, adds kl_coef * KL(target || pi)
    averaged over the batch's critical steps (`kl_weight`). Weights are `mask_weights` of the batch's masks."""
    head = net.policy_head(params, batch.obs)
    log_prob = net.log_prob(params, head, batch.action)
    log_ratio = log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    adv = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - hp.clip_eps, 1.0 + hp.clip_eps) * adv)
    if batch.policy_weight is None:
        actor_loss = -surrogate.mean()
    else:
        actor_loss = -jnp.sum(batch.policy_weight * surrogate)

    value = net.value(params, batch.obs)
    value_err = jnp.square(value - batch.target)
    if clip_value_loss:
        clipped = batch.value + jnp.clip(value - batch.value, -hp.clip_eps, hp.clip_eps)
        value_err = jnp.maximum(value_err, jnp.square(clipped - batch.target))
    value_loss = 0.5 * value_err.mean()

    entropy = net.entropy(params, head).mean()
    total = actor_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
    extra = {}
    if kl_coef is not None:
        kl = advice_kl(net, params, head, batch.suggested, kl_target_std)
        advice_kl_mean = jnp.sum(batch.kl_weight * kl)
        total = total + kl_coef * advice_kl_mean
        extra = {"advice_kl": advice_kl_mean}
    info = {
        **extra,
        "actor_loss": actor_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "clip_frac": jnp.mean((jnp.abs(ratio - 1.0) > hp.clip_eps).astype(jnp.float32)),
    }
    return total, info
