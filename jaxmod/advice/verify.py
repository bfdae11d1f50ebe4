"""Advice verification on the device: each advice slot is tested against what actually happened.

Untrusted advice (a hallucinating LLM, a `NoisyAdvisor`) must not steer training. At a slot's critical
steps there are two groups: steps that executed the slot's suggestion ("advised") and steps where the
policy's own, different action ran ("control": the policy chose otherwise, or ULTRA-A left a random
`verify_control` share of its critical steps to the policy). Both groups start from the same states, so
the difference of their mean advantages, under the environment's own reward (no ULTRA-R shaping, no
exploration bonus), estimates Q(s, a_advised) - Q(s, a_policy) free of the critic's bias at those
states. Running moments per slot and group live in the train state; once both groups hold `min_samples`
steps and the advised mean is below the control mean by more than two standard errors (one-sided, so
noise refutes nothing where the reward says nothing yet), the slot is distrusted as a whole: its action,
its implicit reward, its KL pull and its matching are switched off until the host replaces it. Restarts
from its state continue: where the advisor saw a critical state is still worth practising from. With
continuous actions only ULTRA-A's overrides execute a suggestion exactly, so ULTRA-R alone is never judged
there. jaxmod's choice; the paper trusts every answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice

REFUTE_Z = 2.0  # standard errors by which the advised mean must fall below the control mean
ADVISED, CONTROL = 0, 1  # rows of the statistics


@struct.dataclass
class AdviceTrust:
    """Per advice slot: which advice the statistics belong to, and running moments of the advantage of
    its advised and control steps (rows ADVISED and CONTROL)."""

    episode: jax.Array  # (K,) int32 source episode of the advice these statistics describe
    step: jax.Array  # (K,) int32 source step
    count: jax.Array  # (2, K) float32 samples folded in (capped at the memory)
    mean: jax.Array  # (2, K) float32 mean advantage
    mean_square: jax.Array  # (2, K) float32 mean squared advantage

    @staticmethod
    def create(capacity: int) -> AdviceTrust:
        zeros = jnp.zeros((2, capacity), jnp.float32)
        return AdviceTrust(episode=jnp.full((capacity,), -1, jnp.int32), step=jnp.full((capacity,), -1, jnp.int32),
                           count=zeros, mean=zeros, mean_square=zeros)

    def follow(self, advice: Advice) -> AdviceTrust:
        """Forget the statistics of slots whose advice the host replaced (identity = source episode, step)."""
        same = (self.episode == advice.episode) & (self.step == advice.step) & advice.valid
        return AdviceTrust(episode=advice.episode, step=advice.step, count=jnp.where(same, self.count, 0.0),
                           mean=jnp.where(same, self.mean, 0.0), mean_square=jnp.where(same, self.mean_square, 0.0))

    def gap(self) -> tuple[jax.Array, jax.Array]:
        """(K,) advised minus control mean advantage, and its standard error."""
        var = jnp.maximum(self.mean_square - jnp.square(self.mean), 0.0) / jnp.maximum(self.count, 1.0)
        return self.mean[ADVISED] - self.mean[CONTROL], jnp.sqrt(var[ADVISED] + var[CONTROL])

    def trusted(self, advice: Advice, min_samples: int) -> jax.Array:
        """(K,) bool: valid slots not (yet) shown to do worse than the policy's own choices."""
        gap, stderr = self.gap()
        judged = jnp.all(self.count >= min_samples, axis=0)
        return advice.valid & ~(judged & (gap + REFUTE_Z * stderr < 0.0))

    def record(self, slot: jax.Array, advised: jax.Array, control: jax.Array, advantage: jax.Array,
               memory: int) -> AdviceTrust:
        """Fold in one rollout: `advantage` at the `advised` and the `control` steps of each `slot` (all (T, N)).
        Counts are capped at `memory`, so the means track a changing policy like exponential averages."""
        k = self.count.shape[1]
        advantage = advantage.reshape(-1)
        # per-slot sums of [1, A, A^2] over each group's steps as one small matrix product: a one-hot of the
        # slots times the masked moments (on a CPU a scatter-add per sum costs several times more)
        one_hot = (slot.reshape(-1, 1) == jnp.arange(k)).astype(jnp.float32)  # slot -1 matches no column
        moments = jnp.stack([jnp.ones_like(advantage), advantage, advantage * advantage], axis=1)
        groups = jnp.stack([advised.reshape(-1), control.reshape(-1)], axis=1).astype(jnp.float32)
        masked = (groups[:, :, None] * moments[:, None, :]).reshape(advantage.shape[0], 6)
        sums = jnp.matmul(one_hot.T, masked, precision="highest").T.reshape(2, 3, k)

        def fold(row: int) -> tuple[jax.Array, jax.Array, jax.Array]:
            n, total_adv, total_square = sums[row]
            old = jnp.minimum(self.count[row], jnp.maximum(memory - n, 0.0))  # older evidence gives way
            total = jnp.maximum(old + n, 1.0)
            seen = old + n > 0
            mean = jnp.where(seen, (self.mean[row] * old + total_adv) / total, self.mean[row])
            square = jnp.where(seen, (self.mean_square[row] * old + total_square) / total, self.mean_square[row])
            return jnp.minimum(old + n, float(memory)), mean, square

        rows = [fold(ADVISED), fold(CONTROL)]
        count, mean, square = (jnp.stack(parts) for parts in zip(*rows, strict=True))
        return self.replace(count=count, mean=mean, mean_square=square)
