"""Critical states on the device: restarts from advice snapshots, and which steps are critical (`CriticalStates`).

On auto-reset, with probability `restart_prob` an env restarts exactly from a random valid advice snapshot
instead of the env's own initial distribution (a mixed initial distribution, as in RICE, ICML 2024, Alg. 2).
Where episodes outlast a refinement's rollouts (brax: 1000 steps against rollouts of 10), an env that drew a restart
is also cut mid-episode with probability `cut_prob` per step (a truncation: the learner bootstraps the cut
episode's value), so that restarts happen at all: `CUT_PROB` per env family (jaxmod's choice).
The step right after a restart from a trusted slot is critical for that slot, and with `match_radius` > 0 so is
any live state within that distance of a trusted advice state (`jaxmod.advice.matching`). Every critical step
carries its slot in `traj.extras["slot"]` ([T, N] int32, -1 elsewhere), which the other ULTRA modulators read
(`ActionOverride`, `ImplicitReward`, `KLTarget`, `Verification`). Restarts draw from all valid slots; only
trusted ones (`plan["trusted"]`, set by `Verification` / `Consensus` earlier in the chain) act.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice, require_advice
from jaxmod.advice.matching import Matcher
from jaxmod.advice.modulation import MAX_CAPACITY, ModulationConfig
from jaxmod.advice.slots import advice_spread, take_slot
from jaxmod.envs.vec_env import select_envs
from jaxmod.ppo.modulator import Modulator

SLOT_BITS = (MAX_CAPACITY + 1).bit_length()  # 15; step codes: bits 0-14 the restart slot + 1, 15-29 the critical
# slot after it + 1, bit 30 verification's control flag
# per-step chance that an env which drew a restart is cut mid-episode, per env family (others: 0, restarts at episode
# ends only). brax: with rho = 0.5, about one restart per env per 100 steps (a chunk of 10 updates x 10 steps)
CUT_PROB = {"brax": 0.02}
PREGATHER_BYTES = 16 << 20  # restart snapshots up to this size (all steps, all envs) are gathered before the loop


def pack_step_codes(restart_slot: jax.Array, restart_critical: jax.Array, control: jax.Array) -> jax.Array:
    """One int32 per step and env ([T, N]): the restart slot, the critical slot after that restart (-1: none) and
    verification's control flag (the policy keeps the step: `Verification`)."""
    return (restart_slot + 1) | ((restart_critical + 1) << SLOT_BITS) | (control.astype(jnp.int32) << (2 * SLOT_BITS))


def unpack_step_codes(codes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The inverse of `pack_step_codes`: (restart slot, critical slot after it, control flag)."""
    mask = (1 << SLOT_BITS) - 1
    return (codes & mask) - 1, ((codes >> SLOT_BITS) & mask) - 1, (codes >> (2 * SLOT_BITS)) != 0


def uniforms_from_bits(bits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Three independent float32 uniforms in [0, 1) from two random uint32 words per step and env ([T, N, 2]): the
    restart draw with 24 bits (as a float32 uniform has), the restart slot's and the verification control's with
    16 each. A [T, N, 3] float uniform draw cost a CPU ~0.1 ms more per MountainCar rollout (of ~2.2 ms)."""
    word0, word1 = bits[..., 0], bits[..., 1]
    return ((word0 >> 8).astype(jnp.float32) * 2.0**-24, (word1 & 0xFFFF).astype(jnp.float32) * 2.0**-16,
            (word1 >> 16).astype(jnp.float32) * 2.0**-16)


def choose_restarts(u_use: jax.Array, u_slot: jax.Array, advice: Advice, restart_prob: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """Per env (any leading shape), from two uniforms in [0, 1): whether its next reset restarts from advice,
    and from which valid slot, uniformly (-1 if not). Uniforms instead of keys: the rollout draws them for
    all steps at once, outside its sequential loop."""
    valid = advice.valid
    n_valid = valid.sum()
    use = (u_use < restart_prob) & (n_valid > 0)
    rank = jnp.minimum(jnp.floor(u_slot * n_valid), n_valid - 1).astype(jnp.int32)  # which valid slot, in order
    slot = jnp.argmax(jnp.cumsum(valid) > rank[..., None], axis=-1)
    return use, jnp.where(use, slot, -1).astype(jnp.int32)


@struct.dataclass
class CriticalAux:
    """`CriticalStates`' state: each env's pending critical slot ([N] int32: set by a restart, read by the next
    step; -1 none), whether its episode just began from an advice snapshot ([N] bool: a restart that ends at its
    first step is followed by a fresh reset), and the traced knobs (float32 scalars), so sweeps share one compile."""

    pending: jax.Array
    just_restarted: jax.Array
    restart_prob: jax.Array
    match_radius: jax.Array
    cut_prob: jax.Array


@dataclass(frozen=True)
class CriticalStates(Modulator):
    """Restarts from advice snapshots (probability `restart_prob` per reset) and critical steps (after a restart
    from a trusted slot; with `match_radius` > 0, also near a trusted advice state). Reads `plan["trusted"]`
    ([K] bool, default the valid slots), for ULTRA-A's control group `plan["control_share"]` (a scalar, or [K] per
    slot with `plan["control_share_matched"]`, a scalar or [K]: the share at steps only matching makes critical)
    and `plan["advisor_off"]` (no restarts once set); writes `traj.extras["slot"]` ([T, N] int32), `["critical"]`
    and `["restarted"]` ([T, N] bool), with per-slot matched shares `["control"]` ([T, N] bool: the policy keeps
    the step), and the per-step codes `xs["critical_codes"]` ([T, N] int32, `unpack_step_codes`) other modulators
    may read."""

    restart_prob: float = ModulationConfig.restart_prob  # the config's default (one default per knob)
    match_radius: float = 0.0  # in normalised-observation std units, or the advice states' spread for raw ones
    matches: bool | None = None  # whether the program matches at all (None: match_radius > 0); with True, a
    # radius of 0 (traced) matches nothing: a method that does not match in a program shared with methods that do
    cut_prob: float | None = None  # per-step mid-episode restart chance; None: the env family's (`CUT_PROB`)

    def cut_for(self, spec) -> float:
        """The per-step cut probability on `spec`'s env: `cut_prob`, or its family's default."""
        if self.cut_prob is not None:
            return self.cut_prob
        return CUT_PROB.get(getattr(getattr(spec.env, "core", None), "family", None), 0.0)

    @property
    def matching(self) -> bool:
        return self.match_radius > 0 if self.matches is None else self.matches

    def init(self, key, spec, params):
        return CriticalAux(pending=jnp.full((spec.env.num_envs,), -1, jnp.int32),
                           just_restarted=jnp.zeros((spec.env.num_envs,), jnp.bool_),
                           restart_prob=jnp.float32(self.restart_prob), match_radius=jnp.float32(self.match_radius),
                           cut_prob=jnp.float32(self.cut_for(spec)))

    def digest(self, aux, advice, plan, spec):
        require_advice(advice, spec, "CriticalStates (restarts from critical states)")
        if self.matching and not spec.env.normalize_obs and "spread" not in plan:
            plan = {**plan, "spread": advice_spread(advice)}
        return plan

    def prepare(self, aux, advice: Advice, plan, ctx, spec):
        env, num_steps = spec.env, ctx.num_steps
        trusted = plan.get("trusted", advice.valid)

        def trusted_only(slot: jax.Array) -> jax.Array:
            """`slot` where it is trusted advice, else -1 (untrusted slots restart but do not act)."""
            return jnp.where(take_slot(trusted, slot), slot, -1)

        # Everything that does not depend on the states reached is drawn or prepared here, for all steps at once:
        # the sequential loop keeps only what must run step by step (a latency win on small batches)
        bits = jax.random.bits(ctx.key, (num_steps, env.num_envs, 2), jnp.uint32)
        u_use, u_slot, u_control = uniforms_from_bits(bits)
        # an advisor switched off as a whole (`Verification`) restarts nothing either
        restart_prob = jnp.where(plan.get("advisor_off", False), 0.0, aux.restart_prob)
        use, restart_slot = choose_restarts(u_use, u_slot, advice, restart_prob)
        # the slot whose first step is critical after each step's possible restart: all valid slots restart, only
        # trusted ones act (looked up here for all steps, so the loop carries slots that are trusted already)
        restart_critical = trusted_only(restart_slot)
        control = u_control >= self.control_shares(plan, trusted_only(aux.pending), restart_critical)
        # the loop reads these per-step facts from one int32: each array a scan slices per step cost a CPU more than
        # the work it feeds (the control mask as its own array: +0.3 ms per MountainCar rollout of 2.2 ms)
        codes = pack_step_codes(restart_slot, restart_critical, control)
        cuts = None  # cut draws only where cuts can happen (a static fact): other programs draw what they did
        if self.cut_for(spec) > 0:
            cuts = jax.random.uniform(jax.random.fold_in(ctx.key, 7), (num_steps, env.num_envs)) < aux.cut_prob
        # the restart snapshots of every step, gathered at once where they are small (classic control: a few
        # floats per env; a physics state is not copied T times): a gather per snapshot field per step is
        # most of what restarts cost a CPU
        snapshots = None
        slot_bytes = sum(x.dtype.itemsize * math.prod(x.shape[1:]) for x in jax.tree.leaves(advice.snapshot))
        if slot_bytes * num_steps * env.num_envs <= PREGATHER_BYTES:  # from shapes: no op traced for it
            snapshots = take_slot(advice.snapshot, restart_slot)
        matcher = None
        if self.matching:
            matcher = Matcher.create(advice, trusted, ctx.env_state.obs_rms if env.normalize_obs else None,
                                     plan.get("spread"), aux.match_radius)
        xs = {**plan.get("xs", {}), "critical_codes": codes, "critical_snapshot": snapshots, "critical_cut": cuts}
        if self.matching and jnp.ndim(plan.get("control_share_matched", 0.0)):  # per slot: decided as matched
            xs["critical_control_draw"] = u_control
        carry = {**plan.get("carry", {}), "critical_slot": trusted_only(aux.pending),  # trust may have changed
                 "just_restarted": aux.just_restarted}
        return aux, {**plan, "xs": xs, "carry": carry, "trusted": trusted, "control": control,
                     "matcher": matcher, "advice": advice}

    @staticmethod
    def control_shares(plan, pending: jax.Array, restart_critical: jax.Array) -> jax.Array:
        """The share of each step's critical step ULTRA-A leaves to the policy: `plan["control_share"]` as a scalar,
        or per slot ([K]) for the slot that a restart at the step before makes critical (`pending` [N] at the first
        step); steps that only matching makes critical use `plan["control_share_matched"]` where it is a scalar;
        per slot ([K]), their slot is found live, so `step` decides them from the same draws."""
        share = plan.get("control_share", 0.0)
        if jnp.ndim(share) == 0:
            return share
        before = jnp.concatenate([pending[None], restart_critical[:-1]], axis=0)
        matched = plan["control_share_matched"]
        if jnp.ndim(matched):  # per slot: the step loop decides matched steps (`step`); the policy keeps the rest
            matched = 1.0
        return jnp.where(before >= 0, take_slot(share, before), matched)

    def step(self, aux, plan, xs, s, spec):
        restart_slot, _, _ = unpack_step_codes(xs["critical_codes"])
        slot = s.carry["critical_slot"]  # CRITICAL STEPS: right after a restart from trusted advice, or near it
        extras = dict(s.extras)
        if plan["matcher"] is not None:  # a radius of 0 matches nothing (a program shared with methods that match)
            matched = jnp.where(aux.match_radius > 0, plan["matcher"].match(s.obs), -1)
            if "critical_control_draw" in xs:  # ULTRA-A's control group at a matched step: its slot's share
                _, _, control = unpack_step_codes(xs["critical_codes"])
                matched_control = xs["critical_control_draw"] >= take_slot(plan["control_share_matched"], matched)
                extras["control"] = jnp.where(slot >= 0, control, matched_control)
            slot = jnp.where(slot >= 0, slot, matched)
        snapshot = xs["critical_snapshot"]
        if snapshot is None:
            snapshot = take_slot(plan["advice"].snapshot, restart_slot)
        # RESTARTS: finished envs restart from the advice snapshot drawn for this step (slot -1: a fresh reset)
        restarts = _restarts(restart_slot, s.carry)
        reset = select_envs(restarts, snapshot, s.reset)
        cut = s.cut if xs["critical_cut"] is None else s.cut | (xs["critical_cut"] & restarts)  # mid-episode
        return s.replace(reset=reset, cut=cut, extras={**extras, "slot": slot})

    def after_step(self, aux, plan, xs, s, done, spec):
        restart_slot, restart_critical, _ = unpack_step_codes(xs["critical_codes"])
        restarted = done & _restarts(restart_slot, s.carry)
        return s.replace(carry={**s.carry, "critical_slot": jnp.where(restarted, restart_critical, -1),
                                "just_restarted": restarted},
                         extras={**s.extras, "restarted": restarted})

    def finish(self, aux, plan, traj, spec):
        # per-step facts that follow from the trajectory, computed on the whole [T, N] batch (outside the
        # sequential loop, each is one op per rollout instead of one per step)
        critical = traj.extras["slot"] >= 0
        extras = {**traj.extras, "critical": critical}
        carry = plan["carry"]
        return (aux.replace(pending=carry["critical_slot"], just_restarted=carry["just_restarted"]),
                traj.replace(extras=extras))

    def metrics(self, aux, plan, traj, spec):
        return {"critical_frac": traj.extras["critical"].mean(),
                "restarts": traj.extras["restarted"].sum().astype(jnp.int32),
                "advice_valid": plan["advice"].valid.sum().astype(jnp.int32)}


def _restarts(restart_slot: jax.Array, carry: dict[str, jax.Array]) -> jax.Array:
    """[N] bool: envs that restart from advice if their episode ends at this step: those that drew a slot, unless
    their episode began from an advice snapshot at the previous step. A snapshot whose episode ends at its first
    step (a state that terminates at once) is then followed by a fresh reset, not by another restart: restarts
    cannot chain from step to step, so they stay a share of the episodes the agent plays (jaxmod's choice)."""
    return (restart_slot >= 0) & ~carry["just_restarted"]


def executes_suggestion(slot: jax.Array, control: jax.Array) -> jax.Array:
    """ULTRA-A's rule: where the suggestion is executed (critical steps, less verification's control group:
    `control` is all true where nothing verifies)."""
    return (slot >= 0) & control
