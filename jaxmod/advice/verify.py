"""Advice verification on the device: advice earns its influence from what actually happened (jaxmod's choice; the
paper trusts every answer).

Untrusted advice (a hallucinating LLM, a `NoisyAdvisor`, a degenerate "always the same action" answer) must not
steer training. At a slot's critical steps there are two groups: steps that executed the slot's suggestion
("advised") and steps where the policy's own, different action ran ("control": the policy chose otherwise, or
ULTRA-A left a random share of its critical steps to the policy). Both groups start from the same states, so the
difference of their mean GAE advantages under the environment's own reward (no ULTRA-R shaping, no exploration
bonus) estimates Q(s, a_advised) - Q(s, a_policy) free of the critic's bias at those states.

Running moments live in the train state, per slot (forgotten when the host replaces the slot, which then joins the
advisor's record of retired slots) and for the advisor as a whole. The advisor is judged by its slots, each one
unit weighed by its precision (a random effects meta-analysis): all critical steps of a slot start from the same
state and share its true gap, so samples pooled over slots as if independent turn a few slots' chance average into
false certainty. Per slot:

- trust weight in [0, 1] (`trust_weights`): the evidence that the slot's suggestion beats the policy's own action,
  as the z-score of a normal posterior of its gap, with the advisor's distribution of slot gaps as the prior (the
  random effects mean of its slots' gaps; their true spread tau^2 plus that mean's squared standard error as the
  variance: what a new slot of this advisor is expected to do) and the slot's own samples as the likelihood; 0 up
  to `TRUST_Z_LO` standard errors, 1 from `TRUST_Z_HI`, linear between. An unproven advisor's slots start at 0, and
  so do a random advisor's (its slots' gaps scatter around 0 or below, a large tau^2). ULTRA-R's implicit reward and
  the KL pull are multiplied by it, and ULTRA-A executes the suggestion on a share of the slot's critical steps that
  grows from `EXPLORE_SHARE` (untrusted: equal groups, the most evidence per visit) to 1 - `verify_control`
  (trusted) after a restart from the slot's state, and from 0 (untrusted) to the same 1 - `verify_control` at live
  states that matching makes critical (near the slot's state, not at it: an untrusted suggestion tried at every
  matched step cost Pendulum-v1 -81 against fine-tuning at match_radius 1, 4 seeds, with trust ~0);
- refutation: once both groups hold `min_samples` steps and the advised mean is below the control mean by more than
  `REFUTE_Z` standard errors (one-sided), the slot stops acting until the host replaces it;
- the advisor switched off as a whole: once `ADVISOR_MIN_SLOTS` of its slots have samples in both groups and their
  random effects mean gap is below 0 by more than `ADVISOR_REFUTE_Z` standard errors of that mean (stricter than a slot's bound: the test is
  repeated after every rollout and its verdict is final), every slot stops acting and restarts from its states stop
  too, for the rest of the run (sticky; the run reports it).

With continuous actions only ULTRA-A's overrides execute a suggestion exactly, so ULTRA-R alone gathers no evidence
there and its slots keep trust 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.advice.modulation import ModulationConfig
from jaxmod.advice.slots import take_slot
from jaxmod.ppo.losses import gae
from jaxmod.ppo.modulator import Modulator

REFUTE_Z = 2.0  # standard errors by which the advised mean must fall below the control mean
TRUST_Z_LO, TRUST_Z_HI = 1.5, 3.5  # posterior z-scores of a positive gap at which a slot's trust starts / is full
ADVISOR_REFUTE_Z = 3.0  # the advisor's pooled gap is tested after every rollout: a stricter bound than a slot's
EXPLORE_SHARE = 0.5  # share of an untrusted slot's critical steps on which ULTRA-A executes its suggestion
ADVISOR_MIN_SLOTS = 8  # the advisor may be switched off once this many of its slots have samples in both groups
PRIOR_MIN_SLOTS = 4  # slots before the advisor's record says anything (a prior for new slots, its z)
SLOT_MEMORY = 4  # the advisor's record keeps the last SLOT_MEMORY x K retired slots
ADVISED, CONTROL = 0, 1  # rows of the statistics


def _fold(count: jax.Array, mean: jax.Array, square: jax.Array, sums: jax.Array, memory: float
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fold per-group sums [3, ...] (count, sum, sum of squares) into running moments capped at `memory` samples."""
    n, total_adv, total_square = sums
    old = jnp.minimum(count, jnp.maximum(memory - n, 0.0))  # older evidence gives way
    total = jnp.maximum(old + n, 1.0)
    seen = old + n > 0
    mean = jnp.where(seen, (mean * old + total_adv) / total, mean)
    square = jnp.where(seen, (square * old + total_square) / total, square)
    return jnp.minimum(old + n, memory), mean, square


def _variance(mean: jax.Array, square: jax.Array) -> jax.Array:
    return jnp.maximum(square - jnp.square(mean), 0.0)


@struct.dataclass
class AdviceTrust:
    """Per advice slot: which advice the statistics belong to, and running moments of the advantage of its advised
    and control steps (rows ADVISED and CONTROL); the same pooled over the advisor's slots and rounds (`pooled_*`,
    (2,) float32: only the per-sample spread is read from them), the gaps of the slots the advisor has retired (a
    ring of SLOT_MEMORY x K), and whether the advisor has been switched off (`off`, bool scalar, sticky).

    The advisor is judged by its slots, not by its samples: every critical step of a slot starts from the same
    state, so a slot's samples share that state's true gap, and pooling them as if independent would make the few
    slots' chance average look like overwhelming evidence (a random advisor reached a pooled z of 2.5 on Acrobot-v1
    and was trusted). Each slot with samples in both groups is one unit, weighed by its precision (`advisor_record`:
    a random effects model)."""

    episode: jax.Array  # (K,) int32 source episode of the advice these statistics describe
    step: jax.Array  # (K,) int32 source step
    count: jax.Array  # (2, K) float32 samples folded in (capped at the memory)
    mean: jax.Array  # (2, K) float32 mean advantage
    mean_square: jax.Array  # (2, K) float32 mean squared advantage
    pooled_count: jax.Array  # (2,) float32, the advisor's slots together (capped at K times the memory)
    pooled_mean: jax.Array  # (2,) float32
    pooled_square: jax.Array  # (2,) float32
    retired_gap: jax.Array  # (SLOT_MEMORY * K,) float32 gaps of retired slots (advantage units)
    retired_var: jax.Array  # (SLOT_MEMORY * K,) float32 their sampling variances (inf: an empty entry)
    retired_next: jax.Array  # int32 scalar: the ring's next entry
    off: jax.Array  # bool scalar: the advisor's suggestions were shown to lose; nothing of it acts any more
    min_samples: int = struct.field(pytree_node=False, default=4)  # samples per group before a slot can be refuted

    @staticmethod
    def create(capacity: int, min_samples: int = 4) -> AdviceTrust:
        zeros = jnp.zeros((2, capacity), jnp.float32)
        pooled = jnp.zeros((2,), jnp.float32)
        ring = SLOT_MEMORY * capacity
        return AdviceTrust(episode=jnp.full((capacity,), -1, jnp.int32), step=jnp.full((capacity,), -1, jnp.int32),
                           count=zeros, mean=zeros, mean_square=zeros, pooled_count=pooled, pooled_mean=pooled,
                           pooled_square=pooled, retired_gap=jnp.zeros((ring,), jnp.float32),
                           retired_var=jnp.full((ring,), jnp.inf, jnp.float32), retired_next=jnp.int32(0),
                           off=jnp.bool_(False), min_samples=max(1, int(min_samples)))

    def follow(self, advice: Advice) -> AdviceTrust:
        """Forget the statistics of slots whose advice the host replaced (identity = source episode, step); a
        replaced slot with samples in both groups joins the advisor's ring of retired slots (the oldest give way),
        and the pooled statistics stay."""
        same = (self.episode == advice.episode) & (self.step == advice.step) & advice.valid
        gone = self.informative() & ~same
        gap, var = self.slot_gaps()
        ring = self.retired_gap.shape[0]
        where = jnp.where(gone, (self.retired_next + jnp.cumsum(gone) - 1) % ring, ring)  # ring: dropped
        retired_gap = self.retired_gap.at[where].set(gap, mode="drop")
        retired_var = self.retired_var.at[where].set(var, mode="drop")
        return self.replace(episode=advice.episode, step=advice.step, count=jnp.where(same, self.count, 0.0),
                            mean=jnp.where(same, self.mean, 0.0), mean_square=jnp.where(same, self.mean_square, 0.0),
                            retired_gap=retired_gap, retired_var=retired_var,
                            retired_next=((self.retired_next + gone.sum()) % ring).astype(jnp.int32))

    def gap(self) -> tuple[jax.Array, jax.Array]:
        """(K,) advised minus control mean advantage, and its standard error (from each slot's own samples)."""
        var = _variance(self.mean, self.mean_square) / jnp.maximum(self.count, 1.0)
        return self.mean[ADVISED] - self.mean[CONTROL], jnp.sqrt(var[ADVISED] + var[CONTROL])

    def sample_variance(self) -> jax.Array:
        """Scalar: the variance of one critical step's advantage, from the advisor's pooled samples of both groups
        (steadier than a few samples of one slot; it includes the spread between states, so it errs large)."""
        return 0.5 * (_variance(self.pooled_mean[ADVISED], self.pooled_square[ADVISED])
                      + _variance(self.pooled_mean[CONTROL], self.pooled_square[CONTROL]))

    def slot_gaps(self) -> tuple[jax.Array, jax.Array]:
        """(K,) each slot's advised minus control mean advantage and that mean difference's sampling variance
        (`sample_variance` over the two-sample effective size; inf without samples in both groups)."""
        n_a, n_c = self.count[ADVISED], self.count[CONTROL]
        n_eff = n_a * n_c / jnp.maximum(n_a + n_c, 1.0)  # the two-sample mean difference's effective size
        var = jnp.where(n_eff > 0, jnp.maximum(self.sample_variance(), 1e-8) / jnp.maximum(n_eff, 1e-12), jnp.inf)
        return self.mean[ADVISED] - self.mean[CONTROL], var

    def informative(self) -> jax.Array:
        """(K,) bool: slots with samples in both groups (each one unit of evidence about the advisor)."""
        return jnp.all(self.count > 0, axis=0)

    def advisor_record(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Scalars over the advisor's slots with samples in both groups (current and retired): how many (m), their
        mean gap, that mean's squared standard error, and the spread of the slots' true gaps (tau^2). A random
        effects meta-analysis (DerSimonian-Laird; jaxmod's choice): each slot one unit weighed by 1 / (its sampling
        variance + tau^2), tau^2 from the gaps' scatter beyond their sampling noise. Below PRIOR_MIN_SLOTS slots the
        standard error is inf: the advisor is not judged yet (two slots that happened to agree gave z = -36 on
        CartPole-v1 with a plain mean over slots)."""
        gap, var = self.slot_gaps()
        g = jnp.concatenate([gap, self.retired_gap])
        v = jnp.concatenate([jnp.where(self.informative(), var, jnp.inf), self.retired_var])
        use = jnp.isfinite(v)
        m = use.sum().astype(jnp.float32)
        w = jnp.where(use, 1.0 / jnp.where(use, v, 1.0), 0.0)
        sw = jnp.maximum(w.sum(), 1e-30)
        fixed = jnp.sum(w * jnp.where(use, g, 0.0)) / sw
        q = jnp.sum(w * jnp.square(jnp.where(use, g - fixed, 0.0)))
        c = jnp.maximum(sw - jnp.sum(w * w) / sw, 1e-30)
        tau2 = jnp.maximum((q - (m - 1.0)) / c, 0.0)
        w_star = jnp.where(use, 1.0 / (jnp.where(use, v, 1.0) + tau2), 0.0)
        sw_star = jnp.maximum(w_star.sum(), 1e-30)
        mean = jnp.sum(w_star * jnp.where(use, g, 0.0)) / sw_star
        se2 = jnp.where(m >= PRIOR_MIN_SLOTS, 1.0 / sw_star, jnp.inf)
        return m, mean, se2, tau2

    def advisor_z(self) -> jax.Array:
        """Scalar: the advisor's mean slot gap over its standard error (0 below PRIOR_MIN_SLOTS slots)."""
        m, mean, se2, _ = self.advisor_record()
        return jnp.where(m >= PRIOR_MIN_SLOTS, mean / jnp.sqrt(jnp.maximum(se2, 1e-30)), 0.0)

    def trusted(self, advice: Advice, min_samples: int | None = None) -> jax.Array:
        """(K,) bool: valid slots not (yet) shown to do worse than the policy's own choices, of an advisor not
        switched off."""
        gap, stderr = self.gap()
        judged = jnp.all(self.count >= (self.min_samples if min_samples is None else min_samples), axis=0)
        return advice.valid & ~(judged & (gap + REFUTE_Z * stderr < 0.0)) & ~self.off

    def trust_weights(self) -> jax.Array:
        """(K,) float32 in [0, 1]: how far the evidence shows each slot's suggestion beating the policy's own
        action. The posterior of a slot's gap is normal: the prior is the advisor's distribution of slot gaps
        (`advisor_record`: the random effects mean, variance tau^2 plus that mean's squared standard error: what a
        new slot of this advisor is expected to do; a slot's own samples are in it too, a small double count), the
        likelihood the slot's own samples; its z-score maps to [0, 1] between TRUST_Z_LO and TRUST_Z_HI. An advisor
        whose slots win consistently lends a new slot trust before it has samples; one whose slots scatter around 0
        (a random advisor) lends none."""
        m, prior_gap, se2, tau2 = self.advisor_record()
        prior_precision = jnp.where(m >= PRIOR_MIN_SLOTS, 1.0 / jnp.maximum(tau2 + se2, 1e-12), 0.0)
        slot_gap, var = self.slot_gaps()
        slot_precision = jnp.where(jnp.isfinite(var), 1.0 / jnp.maximum(var, 1e-12), 0.0)
        precision = prior_precision + slot_precision
        z = (prior_precision * prior_gap + slot_precision * slot_gap) / jnp.sqrt(jnp.maximum(precision, 1e-30))
        return jnp.clip((z - TRUST_Z_LO) / (TRUST_Z_HI - TRUST_Z_LO), 0.0, 1.0)

    def judge_advisor(self) -> AdviceTrust:
        """Switch the advisor off (for good) once its mean slot gap is significantly negative over at least
        ADVISOR_MIN_SLOTS slots."""
        m = self.advisor_record()[0]
        return self.replace(off=self.off | ((m >= ADVISOR_MIN_SLOTS) & (self.advisor_z() < -ADVISOR_REFUTE_Z)))

    def record(self, slot: jax.Array, advised: jax.Array, control: jax.Array, advantage: jax.Array,
               memory: int) -> AdviceTrust:
        """Fold in one rollout: `advantage` at the `advised` and the `control` steps of each `slot` (all (T, N)).
        Counts are capped at `memory` per slot (K times that for the advisor's pooled counts), so the means track a
        changing policy like exponential averages."""
        k = self.count.shape[1]
        advantage = advantage.reshape(-1)
        # per-slot sums of [1, A, A^2] over each group's steps as one small matrix product: a one-hot of the
        # slots times the masked moments (on a CPU a scatter-add per sum costs several times more)
        one_hot = (slot.reshape(-1, 1) == jnp.arange(k)).astype(jnp.float32)  # slot -1 matches no column
        moments = jnp.stack([jnp.ones_like(advantage), advantage, advantage * advantage], axis=1)
        groups = jnp.stack([advised.reshape(-1), control.reshape(-1)], axis=1).astype(jnp.float32)
        masked = (groups[:, :, None] * moments[:, None, :]).reshape(advantage.shape[0], 6)
        sums = jnp.matmul(one_hot.T, masked, precision="highest").T.reshape(2, 3, k)
        rows = [_fold(self.count[r], self.mean[r], self.mean_square[r], sums[r], float(memory))
                for r in (ADVISED, CONTROL)]
        count, mean, square = (jnp.stack(parts) for parts in zip(*rows, strict=True))
        pooled = [_fold(self.pooled_count[r], self.pooled_mean[r], self.pooled_square[r], sums[r].sum(axis=-1),
                        float(memory * k)) for r in (ADVISED, CONTROL)]
        p_count, p_mean, p_square = (jnp.stack(parts) for parts in zip(*pooled, strict=True))
        return self.replace(count=count, mean=mean, mean_square=square, pooled_count=p_count, pooled_mean=p_mean,
                            pooled_square=p_square)


def advised_steps(plan, traj, spec) -> jax.Array:
    """[T, N] bool: critical steps that executed their slot's suggestion. Discrete: the action equals it (imposed
    or the policy's own); continuous: ULTRA-A imposed it (`traj.extras["forced"]`, none without ActionOverride)."""
    critical = traj.extras["critical"]
    if spec.env.action_space.discrete:
        return critical & (traj.action == take_slot(plan["advice"].action, traj.extras["slot"]))
    return traj.extras.get("forced", jnp.zeros_like(critical))


@dataclass(frozen=True)
class Verification(Modulator):
    """Per-slot verification as a modulator: before each rollout the slots refuted so far (and every slot, once the
    advisor is switched off) stop acting (`plan["trusted"]`, combined with `plan["agreed"]` from `Consensus`), each
    slot's trust weight goes to `plan["trust_weight"]` ([K] float32, read by `ImplicitReward` and `KLTarget`), the
    share of each slot's critical steps ULTRA-A leaves to the policy to `plan["control_share"]` (after restarts) and
    `plan["control_share_matched"]` (at matched steps) ([K] float32 each, read by
    `CriticalStates`) and the advisor's switch to `plan["advisor_off"]`; after GAE each critical step's GAE advantage
    under the env's own reward is folded into its slot's advised or control group. `control` is the share
    left to the policy at a fully trusted slot."""

    capacity: int = ModulationConfig.capacity  # the config's defaults (one default per knob)
    samples: int = ModulationConfig.verify_samples
    control: float = ModulationConfig.verify_control
    memory: int = ModulationConfig.verify_memory
    prior: float = 0.0  # a slot's trust weight before evidence, the floor of its weight (`trust_prior`)

    def init(self, key, spec, params):
        return AdviceTrust.create(self.capacity, self.samples)

    def prepare(self, aux, advice, plan, ctx, spec):
        if advice.capacity != self.capacity:  # a Python check while tracing: before anything compiles
            from jaxmod.advice.modulation import ModulationError

            raise ModulationError(f"verification was built for advice of capacity {self.capacity}, but the advice "
                                  f"has capacity {advice.capacity}: build the advice book with the config's capacity")
        trust = aux.follow(advice).judge_advisor()
        verified = trust.trusted(advice, self.samples)
        trusted = verified & plan.get("agreed", advice.valid)
        weight = jnp.where(trusted, jnp.maximum(trust.trust_weights(), self.prior), 0.0)
        control = EXPLORE_SHARE + (self.control - EXPLORE_SHARE) * weight  # untrusted: equal groups
        # steps only matching makes critical (near, not at, the advice state) execute a suggestion in proportion to
        # its trust: unproven advice is tried where it was given (restarts), proven advice spreads to nearby states
        matched = 1.0 - (1.0 - self.control) * weight
        return trust, {**plan, "trusted": trusted, "verified": verified, "trust_weight": weight,
                       "control_share": control, "control_share_matched": matched, "advisor_off": trust.off}

    def weigh(self, aux, plan, traj, advantage, values, next_values, spec):
        # GAE advantage under the environment's reward alone (the advice's own implicit reward must not vouch for
        # it): what followed the step over the GAE horizon, not only the critic's view of the next state; the
        # critic's bias at the step cancels between the two groups
        hp = plan["hparams"]
        env_advantage = gae(traj.reward, values, next_values, traj.terminated, traj.episode_done, hp.gamma,
                            hp.gae_lambda)
        advised = advised_steps(plan, traj, spec)
        trust = aux.record(traj.extras["slot"], advised, traj.extras["critical"] & ~advised, env_advantage,
                           self.memory)
        return trust, {}, {}

    def metrics(self, aux, plan, traj, spec):
        advice = plan["advice"]
        valid = advice.valid.astype(jnp.float32)
        return {"advice_refuted": (advice.valid & ~plan["verified"]).sum().astype(jnp.int32),
                "advice_trust": jnp.sum(plan["trust_weight"] * valid) / jnp.maximum(valid.sum(), 1.0),
                "advisor_z": aux.advisor_z(), "advisor_off": aux.off.astype(jnp.int32)}


@struct.dataclass
class GateAux:
    on: jax.Array  # bool scalar: the advice is judged (traced: judged and unjudged methods share one program)


@dataclass(frozen=True)
class JudgeGate(Modulator):
    """Whether `Consensus` and `Verification` (earlier in the chain) judge this method's advice: with `on` False
    (traced) their verdicts are dropped, every valid slot is trusted and the advisor is never switched off, as in a
    chain without them (the baselines' mask-net or random critical states are not an advisor's answers). Lets
    ULTRA's methods and the baselines share one compiled program (`jaxmod.methods.shared_modulator`)."""

    on: bool = True

    def init(self, key, spec, params):
        return GateAux(on=jnp.bool_(self.on))

    def prepare(self, aux, advice, plan, ctx, spec):
        return aux, {**plan, "trusted": jnp.where(aux.on, plan["trusted"], advice.valid),
                     "advisor_off": plan.get("advisor_off", False) & aux.on}
