"""Categorical and diagonal-Gaussian policy heads: sample, log-prob, entropy, KL (a few lines of jax.nn)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def categorical_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Actions [...] int32 drawn from softmax(logits [..., K])."""
    return jax.random.categorical(key, logits).astype(jnp.int32)


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """log pi(action), picked with a one-hot mask instead of a gather: the gather's gradient is a scatter-add,
    one of the slowest kernels of a small PPO update on a CPU; the mask's is elementwise and fuses."""
    logp = jax.nn.log_softmax(logits)
    picked = action[..., None].astype(jnp.int32) == jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.sum(jnp.where(picked, logp, 0.0), axis=-1)


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """Entropy [...] float32 (nats) of softmax(logits [..., K])."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def categorical_kl(target_probs: jax.Array, logits: jax.Array) -> jax.Array:
    """KL(target || softmax(logits)), with 0 log 0 = 0."""
    logp = jax.nn.log_softmax(logits)
    safe = jnp.where(target_probs > 0, target_probs, 1.0)
    return jnp.sum(jnp.where(target_probs > 0, target_probs * (jnp.log(safe) - logp), 0.0), axis=-1)


def gaussian_sample(key: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """Actions [..., A] float32 from a diagonal Gaussian (`mean` [..., A], `log_std` broadcastable to it)."""
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    """log N(action; mean, exp(log_std)^2) [...] float32, summed over the last (action) axis of [..., A]."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """Entropy [...] float32 (nats) of a diagonal Gaussian, summed over the action axis of [..., A]."""
    return jnp.sum(jnp.broadcast_to(log_std + 0.5 * (1.0 + _LOG_2PI), mean.shape), axis=-1)


def gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array) -> jax.Array:
    """KL(N(mean_p, std_p) || N(mean_q, std_q)) summed over action dimensions."""
    var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5, axis=-1)
