"""GAE with time-limit bootstrapping and the clipped PPO loss (policy + value + entropy), plus whatever extra
term the learner's modulator adds (`Modulator.loss`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.ppo.config import HyperParams
from jaxmod.ppo.networks import ActorCritic, Params


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
    """One flattened training batch, leading axis B = samples: `obs` [B, *obs_shape], `action` [B] int32 or
    [B, A] float32, `log_prob` / `value` / `advantage` / `target` [B] float32 (behaviour log-prob, critic value
    at collection, GAE advantage, value target).

    `masks`: per-sample 0/1 float32 masks [B] of loss terms, built by the modulator (`Modulator.weigh`);
    `mask_counts`: each mask's number of set samples in the minibatch (at least 1; float32 scalars, counted by
    `optimise` once per epoch, not in every SGD step). The surrogate reads `masks["policy"]` where present (the
    samples whose action the policy chose: others get no policy gradient), else averages over all samples.
    `fields`: other per-sample arrays a modulator's loss term reads."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    masks: dict[str, jax.Array] = struct.field(default_factory=dict)
    fields: dict[str, jax.Array] = struct.field(default_factory=dict)
    mask_counts: dict[str, jax.Array] = struct.field(default_factory=dict)

    def masked_mean(self, name: str, value: jax.Array) -> jax.Array:
        """The mean of `value` [B] float32 over the samples mask `name` sets (scalar float32; 0 where none is)."""
        return masked_mean(self.masks[name], self.mask_counts[name], value)


LOG_RATIO_LIMIT = 20.0  # |log pi/pi_old| bound of the surrogate (ratio up to ~5e8): exp() never overflows. PPO's clip
# gives a ratio beyond 1 +- clip_eps no gradient in the clipped direction anyway; every method's regression updates
# (tests/test_regression.py) are bit for bit the same with it (jaxmod's choice)


def masked_mean(mask: jax.Array, count: jax.Array, value: jax.Array) -> jax.Array:
    """sum(value where mask) / count (`mask` 0/1 and `value` [B] float32, `count` the mask's sum, at least 1: see
    `mask_counts`; scalar float32). With `jnp.where`, not a product: 0 * inf is NaN, so a masked-out sample's value
    (a loss term at a step the mask excludes) never reaches the sum, whatever it is. Its gradient gets a 0 cotangent
    there, which stays 0 only where the value's own derivative is finite: bound the inputs first where it may not
    be (as `ppo_loss` does with an imposed action's log-ratio). A mask that sets every sample gives `value.mean()`
    bit for bit (the same sum divided by the same count): a modulator that masks nothing out changes no number."""
    return jnp.sum(jnp.where(mask > 0, value, 0.0)) / count


def mask_counts(masks: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Each 0/1 mask's (leading axes ..., sample) number of set samples over the last axis, at least 1."""
    return {name: jnp.maximum(1.0, jnp.sum(m, axis=-1)) for name, m in masks.items()}


def ppo_loss(
    net: ActorCritic,
    params: Params,
    batch: Batch,
    hp: HyperParams,
    clip_value_loss: bool = True,
    extra: Callable[[Params, jax.Array, Batch], tuple[jax.Array | None, dict[str, Any]]] | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Clipped surrogate + vf_coef * (clipped) value loss - ent_coef * entropy, advantages normalised per
    minibatch (PureJaxRL / Brax `losses.py`), scalar float32. With `batch.masks["policy"]` (see `Batch`)
    the surrogate, `approx_kl` and `clip_frac` average over those samples only: an imposed action has no behaviour
    probability to correct with, so its policy gradient would be biased, and its log-ratio is set to 0 (continuous
    actions far from the policy's mean have log-ratios whose exp() overflows). Every log-ratio is bounded by
    +-`LOG_RATIO_LIMIT`. `extra(params, head, batch) -> (term or None, info)` adds a
    modulator's term (e.g. a KL pull toward advice). Returns (loss, info of scalar metrics)."""
    head = net.policy_head(params, batch.obs)
    log_prob = net.log_prob(params, head, batch.action)
    log_ratio = log_prob - batch.log_prob
    policy_mask = batch.masks.get("policy")
    if policy_mask is not None:
        # an imposed action has no behaviour probability: its log-ratio means nothing and can be huge (a continuous
        # action 50 stds from the policy's mean has a log-prob near -1250, which moves by hundreds per SGD step), and
        # exp() of it is inf, which a 0 weight turns into NaN in the loss and its gradient
        log_ratio = jnp.where(policy_mask > 0, log_ratio, 0.0)
    log_ratio = jnp.clip(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = jnp.exp(log_ratio)

    def sample_mean(x: jax.Array) -> jax.Array:
        """Mean over the policy's own samples (the surrogate's): imposed actions say nothing of the policy's step."""
        return x.mean() if policy_mask is None else batch.masked_mean("policy", x)

    adv = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - hp.clip_eps, 1.0 + hp.clip_eps) * adv)
    actor_loss = -sample_mean(surrogate)

    value = net.value(params, batch.obs)
    value_err = jnp.square(value - batch.target)
    if clip_value_loss:
        clipped = batch.value + jnp.clip(value - batch.value, -hp.clip_eps, hp.clip_eps)
        value_err = jnp.maximum(value_err, jnp.square(clipped - batch.target))
    value_loss = 0.5 * value_err.mean()

    entropy = net.entropy(params, head).mean()
    total = actor_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
    extra_info: dict[str, Any] = {}
    if extra is not None:
        term, extra_info = extra(params, head, batch)
        if term is not None:
            total = total + term
    info = {
        **extra_info,
        "actor_loss": actor_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": sample_mean((ratio - 1.0) - log_ratio),
        "clip_frac": sample_mean((jnp.abs(ratio - 1.0) > hp.clip_eps).astype(jnp.float32)),
    }
    return total, info
