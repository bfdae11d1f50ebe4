"""Matching live states to advice states on the device: the nearest trusted advice slot within a radius."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.envs.normalize import RunningMeanStd

SMALL_OBS = 8  # observations up to this size are matched with a broadcast product, larger ones with a matmul


@struct.dataclass
class Matcher:
    """Matching live states to advice states, prepared once per rollout so each step does only a small
    product (a broadcast one up to `SMALL_OBS` features, where a matmul call costs a CPU more). Normalised policy
    inputs are compared with the advice normalised by the statistics at the rollout's start (the running statistics move by a few thousandths of a std within a rollout once
    pre-training has filled them; renormalising the advice every step cost 2 of the 5 kernels of a matching
    step); raw ones in units of the advice `spread`.

    Squared distances come as |x|^2 - 2 x.p + |p|^2 (the radius is a few units, so float32 cancellation does
    not matter), and the nearest slot from ONE integer minimum: a non-negative float's bits order like the float,
    so each distance's bits with the slot index in the lowest ceil(log2 K) mantissa bits give the first slot at
    the minimum and that minimum together (distances equal to ~2^-17 relative, at K = 64, count as ties; the
    first slot wins). On a CPU `argmin`'s variadic reduction costs several times a plain minimum, and every op
    of the step loop runs T times per update."""

    points: jax.Array  # (K, D) advice observations in the units distances are measured in
    inv_spread: jax.Array | None  # (D,) for raw inputs; None where the policy's inputs are normalised
    offset: jax.Array  # (K,) |p|^2, plus inf for unusable slots
    radius_key: jax.Array  # int32: the squared radius's bits without the index bits (a distance's key compares to it)

    @classmethod
    def create(cls, advice: Advice, usable: jax.Array, obs_rms: RunningMeanStd | None, spread: jax.Array | None,
               radius: jax.Array) -> Matcher:
        """`obs_rms`: the normaliser of the policy's inputs (None where they are raw: then `spread` is the unit)."""
        points = advice.obs.reshape(advice.obs.shape[0], -1)
        inv_spread = None
        if obs_rms is not None:
            points = obs_rms.normalize(advice.obs).reshape(points.shape)
        else:
            inv_spread = 1.0 / spread.reshape(-1)
            points = points * inv_spread
        offset = jnp.sum(points * points, axis=1) + jnp.where(usable, 0.0, jnp.inf)
        radius_key = jax.lax.bitcast_convert_type(jnp.square(radius).astype(jnp.float32), jnp.int32)
        return cls(points=points, inv_spread=inv_spread, offset=offset,
                   radius_key=radius_key >> _index_bits(points.shape[0]))

    def match(self, obs: jax.Array) -> jax.Array:
        """Nearest usable advice slot within the radius of each env's observation (the policy input), else -1."""
        x = obs.reshape(obs.shape[0], -1)
        if self.inv_spread is not None:
            x = x * self.inv_spread
        k = self.points.shape[0]
        bits = _index_bits(k)
        if x.shape[1] <= SMALL_OBS:
            cross = jnp.sum(x[:, None, :] * self.points[None], axis=2)
        else:
            cross = jnp.matmul(x, self.points.T, precision="highest")  # TPUs, TF32 GPUs would round it to bf16/tf32
        dist_sq = jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * cross + self.offset, 0.0)
        key = (jax.lax.bitcast_convert_type(dist_sq, jnp.int32) >> bits << bits) | jnp.arange(k, dtype=jnp.int32)
        nearest = jnp.min(key, axis=1)
        return jnp.where(nearest >> bits <= self.radius_key, nearest & ((1 << bits) - 1), -1).astype(jnp.int32)


def _index_bits(k: int) -> int:
    """Low bits a slot index of `k` slots takes in a matching key."""
    return max(1, (k - 1).bit_length())
