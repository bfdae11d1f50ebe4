"""Reading advice arrays per env on the device: gathers of per-slot fields, and the advice states' spread."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxmod.advice.arrays import Advice


def advice_spread(advice: Advice) -> jax.Array:
    """Per-feature std of the valid advice observations (1 where they do not vary): the matching unit
    where the policy sees raw observations."""
    w = advice.valid.astype(jnp.float32).reshape((-1,) + (1,) * (advice.obs.ndim - 1))
    n = jnp.maximum(w.sum(), 1.0)
    mean = jnp.sum(advice.obs * w, axis=0) / n
    std = jnp.sqrt(jnp.sum(jnp.square(advice.obs - mean) * w, axis=0) / n)
    return jnp.where(std > 1e-6, std, 1.0)


def take_slot(tree: Any, slot: jax.Array) -> Any:
    """Gather per-env rows of an advice field (slot -1 is clamped; mask the result yourself)."""
    idx = jnp.maximum(slot, 0)
    return jax.tree.map(lambda x: x[idx], tree)
