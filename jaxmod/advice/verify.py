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

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.slots import take_slot
from jaxmod.ppo.losses import td_errors
from jaxmod.ppo.modulator import Modulator

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


def advised_steps(plan, traj, spec) -> jax.Array:
    """[T, N] bool: critical steps that executed their slot's suggestion. Discrete: the action equals it (imposed
    or the policy's own); continuous: ULTRA-A imposed it (`traj.extras["forced"]`, none without ActionOverride)."""
    critical = traj.extras["critical"]
    if spec.env.action_space.discrete:
        return critical & (traj.action == take_slot(plan["advice"].action, traj.extras["slot"]))
    return traj.extras.get("forced", jnp.zeros_like(critical))


@dataclass(frozen=True)
class Verification(Modulator):
    """Per-slot verification as a modulator: before each rollout the slots refuted so far stop acting
    (`plan["trusted"]`, combined with `plan["agreed"]` from `Consensus`); after GAE each critical step's one-step
    TD error under the env's own reward is folded into its slot's advised or control group. `control` is the
    share of ULTRA-A's critical steps left to the policy (`plan["control_share"]`, read by `CriticalStates`)."""

    capacity: int = 64
    samples: int = 4
    control: float = 0.25
    memory: int = 64

    def init(self, key, spec, params):
        return AdviceTrust.create(self.capacity)

    def prepare(self, aux, advice, plan, ctx, spec):
        if advice.capacity != self.capacity:  # a Python check while tracing: before anything compiles
            from jaxmod.advice.modulation import ModulationError

            raise ModulationError(f"verification was built for advice of capacity {self.capacity}, but the advice "
                                  f"has capacity {advice.capacity}: build the advice book with the config's capacity")
        trust = aux.follow(advice)
        verified = trust.trusted(advice, self.samples)
        trusted = verified & plan.get("agreed", advice.valid)
        return trust, {**plan, "trusted": trusted, "verified": verified, "control_share": self.control}

    def weigh(self, aux, plan, traj, advantage, values, next_values, spec):
        # one-step TD error under the environment's reward alone (the advice's own implicit reward must not vouch
        # for it): low variance, and the critic's bias cancels between the two groups
        td = td_errors(traj.reward, values, next_values, traj.terminated, plan["hparams"].gamma)
        advised = advised_steps(plan, traj, spec)
        trust = aux.record(traj.extras["slot"], advised, traj.extras["critical"] & ~advised, td, self.memory)
        return trust, {}, {}

    def metrics(self, aux, plan, traj, spec):
        advice = plan["advice"]
        return {"advice_refuted": (advice.valid & ~plan["verified"]).sum().astype(jnp.int32)}
