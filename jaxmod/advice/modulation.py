"""ULTRA policy modulation inside the compiled update: which steps are critical, what happens there.

One code path, switched by a frozen config (the variants are presets):
- restarts: on auto-reset, with probability `restart_prob` an env restarts exactly from a random valid
  advice snapshot (a mixed initial distribution, as in RICE);
- critical steps: the first step after such a restart and, if `match_radius` > 0, any live state that
  lies within that distance of an advice observation (nearest trusted slot); distances are in units of
  the observation normaliser's std, or, where the policy sees raw observations, of the spread of the
  advice states themselves (so a small-valued feature such as MountainCar's velocity counts);
- ULTRA-A (`override_action`): the suggested action is executed there (no policy gradient from it, see
  below);
- ULTRA-R (`shape_reward`): the reward there gets `reward_scale * weight * r_llm` when the action taken is
  the one the implicit reward rates (the agent's own at the source step);
- KL (`kl_coef` > 0): the loss adds `kl_coef * KL(target || pi)` on critical steps (one-hot target for
  discrete actions, a Gaussian of std `kl_target_std` around the suggestion for continuous ones); with
  `kl_filter`, only on critical steps that executed the suggestion with a positive GAE advantage, i.e. where
  following the advice turned out better than the critic expected (wrong advice then gets no pull);
- verification (`verify_samples` > 0, on by default, `jaxmod.advice.verify`): a slot whose executed suggestion does
  significantly worse than the policy's own actions at the same critical steps (ULTRA-A leaves a random
  `verify_control` share of them to the policy as the control group) is switched off until the host
  replaces it: robustness to bad advisors;
- consensus (`consensus_radius` > 0, on by default, `jaxmod.advice.consensus`): a slot whose suggestion most
  of the advice about nearby states contradicts stops acting the same way, judged from the advice alone.
Imposed actions (ULTRA-A's override) train the critic and the KL term but give no policy gradient: they
are not samples of the policy (JSRL's roll-in steps are trained on, as JSRL's off-policy learners do).
The paper fixes A/R/RA; restarts, matching, the KL term, verification, consensus and that last rule are
jaxmod's choices where it is silent.
The same path runs the baselines (`jaxmod.baselines`): `rnd_coef` > 0 adds RICE's RND exploration bonus,
and `guide_steps` > 0 is JSRL's roll-in (the refinement's initial policy, frozen, acts for the first h
steps of every episode; h shrinks linearly from `guide_steps` to 0 over the run).
Numeric knobs are traced data (`ModulationParams`), so sweeps and new advice share one compile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.envs.normalize import RunningMeanStd

VARIANTS = ("A", "R", "RA", "restart")
MAX_CAPACITY = 32766  # advice slots: the rollout packs a slot + 1 into 15 bits (`rollout.SLOT_BITS`)


class ModulationError(ValueError):
    """A bad modulation config; the message says what to change."""


@dataclass(frozen=True)
class ModulationConfig:
    """Static switches and default values of ULTRA's refinement (default: ULTRA-RA)."""

    capacity: int = 64  # K advice slots
    override_action: bool = True  # ULTRA-A
    shape_reward: bool = True  # ULTRA-R
    restart_prob: float = 0.5  # rho (jaxmod's choice: RICE-style mixed restarts)
    match_radius: float = 0.0  # epsilon in normalised-observation distance; 0 disables matching
    reward_scale: float = 1.0  # lambda
    kl_coef: float = 0.0  # beta (jaxmod's extension, not in the paper)
    kl_target_std: float = 0.2  # std of the Gaussian target around a continuous suggestion
    kl_filter: bool = False  # KL only on advised steps whose advantage is positive (robustness to bad advice)
    rnd_coef: float = 0.0  # RICE's lambda: RND exploration bonus on every step (0 disables)
    guide_steps: int = 0  # JSRL: initial roll-in horizon of the frozen guide policy (0 disables)
    verify_samples: int = 4  # advice verification: samples per group before a slot can be refuted (0: off)
    verify_control: float = 0.25  # share of ULTRA-A's critical steps left to the policy (verification's control)
    verify_memory: int = 64  # samples a slot's running mean remembers
    consensus_radius: float = 2.0  # advice out-voted by the advice within this many spreads stops acting (0: off)
    consensus_action_tol: float = 0.25  # continuous suggestions agree within this RMS share of the action range

    def __post_init__(self) -> None:
        if not 1 <= self.capacity <= MAX_CAPACITY:
            raise ModulationError(f"capacity must lie in [1, {MAX_CAPACITY}]")
        if not 0.0 <= self.restart_prob <= 1.0:
            raise ModulationError("restart_prob must lie in [0, 1]")
        if self.match_radius < 0 or self.kl_coef < 0 or self.kl_target_std <= 0:
            raise ModulationError("match_radius and kl_coef must be >= 0, kl_target_std > 0")
        if self.rnd_coef < 0 or self.guide_steps < 0:
            raise ModulationError("rnd_coef and guide_steps must be >= 0")
        if self.verify_samples < 0 or self.verify_memory < max(1, self.verify_samples):
            raise ModulationError("verify_samples must be >= 0 and verify_memory >= max(1, verify_samples)")
        if not 0.0 <= self.verify_control < 1.0:
            raise ModulationError("verify_control must lie in [0, 1)")
        if self.consensus_radius < 0 or self.consensus_action_tol <= 0:
            raise ModulationError("consensus_radius must be >= 0 (0: off) and consensus_action_tol > 0")

    @classmethod
    def variant(cls, name: str, **overrides: Any) -> ModulationConfig:
        """Preset for ULTRA-A, ULTRA-R, ULTRA-RA, or 'restart' (restarts only, StateMask-R-like)."""
        switches = {"A": (True, False), "R": (False, True), "RA": (True, True), "restart": (False, False)}
        if name not in switches:
            raise ModulationError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
        override, shape = switches[name]
        return dataclasses.replace(cls(override_action=override, shape_reward=shape), **overrides)

    @property
    def matching(self) -> bool:
        return self.match_radius > 0

    @property
    def uses_kl(self) -> bool:
        return self.kl_coef > 0

    @property
    def uses_rnd(self) -> bool:
        return self.rnd_coef > 0

    @property
    def uses_guide(self) -> bool:
        return self.guide_steps > 0

    @property
    def verifies(self) -> bool:
        return self.verify_samples > 0

    @property
    def votes(self) -> bool:
        return self.consensus_radius > 0

    def params(self) -> ModulationParams:
        return ModulationParams(restart_prob=jnp.float32(self.restart_prob), match_radius=jnp.float32(self.match_radius),
                                reward_scale=jnp.float32(self.reward_scale), kl_coef=jnp.float32(self.kl_coef),
                                rnd_coef=jnp.float32(self.rnd_coef))

    def choices(self) -> dict[str, Any]:
        """What a run used, with the paper's and jaxmod's parts labelled (for logs)."""
        return {
            "paper": {"override_action (ULTRA-A)": self.override_action,
                      "shape_reward (ULTRA-R)": self.shape_reward, "reward_scale": self.reward_scale},
            "jaxmod_choices": {"restart_prob": self.restart_prob, "match_radius": self.match_radius,
                               "kl_coef": self.kl_coef, "kl_target_std": self.kl_target_std,
                               "kl_filter": self.kl_filter, "verify_samples": self.verify_samples,
                               "verify_control": self.verify_control, "verify_memory": self.verify_memory,
                               "consensus_radius": self.consensus_radius,
                               "consensus_action_tol": self.consensus_action_tol,
                               "capacity": self.capacity},
            "baselines": {"rnd_coef (RICE lambda)": self.rnd_coef, "guide_steps (JSRL)": self.guide_steps},
        }


@struct.dataclass
class ModulationParams:
    """Traced numeric knobs."""

    restart_prob: jax.Array
    match_radius: jax.Array
    reward_scale: jax.Array
    kl_coef: jax.Array
    rnd_coef: jax.Array


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


def advice_spread(advice: Advice) -> jax.Array:
    """Per-feature std of the valid advice observations (1 where they do not vary): the matching unit
    where the policy sees raw observations."""
    w = advice.valid.astype(jnp.float32).reshape((-1,) + (1,) * (advice.obs.ndim - 1))
    n = jnp.maximum(w.sum(), 1.0)
    mean = jnp.sum(advice.obs * w, axis=0) / n
    std = jnp.sqrt(jnp.sum(jnp.square(advice.obs - mean) * w, axis=0) / n)
    return jnp.where(std > 1e-6, std, 1.0)


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


def shaping_bonus(params: ModulationParams, advice: Advice, slot: jax.Array, critical: jax.Array,
                  action: jax.Array, kernel_std: float) -> jax.Array:
    """ULTRA-R: lambda * weight * r_llm on critical steps whose action is the one the implicit reward rates
    (the agent's own at the source step: the advisor judged that choice, not whatever runs now), 0 elsewhere.
    Continuous actions count as that action by a Gaussian kernel of std `kernel_std`."""
    bonus = take_slot(advice.reward, slot) * take_slot(advice.weight, slot)
    rated = take_slot(advice.rated_action, slot)
    if advice.action.ndim == 1:  # discrete
        same = (action == rated).astype(jnp.float32)
    else:
        diff = (action - rated) / kernel_std
        same = jnp.exp(-0.5 * jnp.mean(jnp.square(diff), axis=tuple(range(slot.ndim, action.ndim))))
    return jnp.where(critical, params.reward_scale * bonus * same, 0.0)


def take_slot(tree: Any, slot: jax.Array) -> Any:
    """Gather per-env rows of an advice field (slot -1 is clamped; mask the result yourself)."""
    idx = jnp.maximum(slot, 0)
    return jax.tree.map(lambda x: x[idx], tree)
