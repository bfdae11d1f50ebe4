"""Running mean/variance statistics (parallel Welford), kept in the env state and saved with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningMeanStd:
    """Mean and variance of everything seen so far; `count` starts at a tiny epsilon like gym's."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningMeanStd:
        return cls(mean=jnp.zeros(shape, jnp.float32), var=jnp.ones(shape, jnp.float32), count=jnp.float32(1e-4))

    def update(self, batch: jax.Array) -> RunningMeanStd:
        """Fold a batch (leading axis = samples) into the statistics (Chan et al. parallel update)."""
        batch = batch.astype(jnp.float32)
        b_mean = batch.mean(axis=0)
        b_var = batch.var(axis=0)
        b_count = jnp.float32(batch.shape[0])
        delta = b_mean - self.mean
        total = self.count + b_count
        mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        return RunningMeanStd(mean=mean, var=m2 / total, count=total)

    def normalize(self, x: jax.Array, clip: float = 10.0) -> jax.Array:
        """(x - mean) / std, clipped to +-clip."""
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)
