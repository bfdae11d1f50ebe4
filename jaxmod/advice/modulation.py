"""ULTRA policy modulation inside the compiled update: which steps are critical, what happens there.

One code path, switched by a frozen config (the variants are presets):
- restarts: on auto-reset, with probability `restart_prob` an env restarts exactly from a random valid
  advice snapshot (a mixed initial distribution, as in RICE);
- critical steps: the first step after such a restart and, if `match_radius` > 0, any live state whose
  normalised observation lies within that distance of an advice observation (nearest valid slot);
- ULTRA-A (`override_action`): the suggested action is executed there; its log-probability under the
  behaviour policy is stored, so the PPO ratio stays correct;
- ULTRA-R (`shape_reward`): the reward there gets `reward_scale * weight * r_llm`;
- KL (`kl_coef` > 0): the loss adds `kl_coef * KL(target || pi)` on critical steps (one-hot target for
  discrete actions, a Gaussian of std `kl_target_std` around the suggestion for continuous ones); with
  `kl_filter`, only on critical steps whose GAE advantage is positive, i.e. where following the advice
  turned out better than the critic expected (wrong advice then gets no pull, only PPO's own gradient).
The paper fixes A/R/RA; restarts, matching and the KL term are jaxmod's choices where it is silent.
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
    kl_filter: bool = False  # KL only on critical steps whose advantage is positive (robustness to bad advice)
    rnd_coef: float = 0.0  # RICE's lambda: RND exploration bonus on every step (0 disables)
    guide_steps: int = 0  # JSRL: initial roll-in horizon of the frozen guide policy (0 disables)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ModulationError("capacity must be >= 1")
        if not 0.0 <= self.restart_prob <= 1.0:
            raise ModulationError("restart_prob must lie in [0, 1]")
        if self.match_radius < 0 or self.kl_coef < 0 or self.kl_target_std <= 0:
            raise ModulationError("match_radius and kl_coef must be >= 0, kl_target_std > 0")
        if self.rnd_coef < 0 or self.guide_steps < 0:
            raise ModulationError("rnd_coef and guide_steps must be >= 0")

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
                               "kl_filter": self.kl_filter, "capacity": self.capacity},
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


def choose_restarts(key: jax.Array, advice: Advice, num_envs: int, restart_prob: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """Per env: whether its next reset restarts from advice, and from which valid slot (-1 if not)."""
    k_use, k_slot = jax.random.split(key)
    any_valid = advice.valid.any()
    use = jnp.logical_and(jax.random.uniform(k_use, (num_envs,)) < restart_prob, any_valid)
    logits = jnp.where(advice.valid, 0.0, -jnp.inf)
    slot = jax.random.categorical(k_slot, logits, shape=(num_envs,))
    return use, jnp.where(use, slot, -1).astype(jnp.int32)


def match_slots(obs_norm: jax.Array, advice: Advice, obs_rms: RunningMeanStd, normalize: bool,
                radius: jax.Array) -> jax.Array:
    """Nearest valid advice slot within `radius` of each env's normalised observation, else -1."""
    adv_obs = obs_rms.normalize(advice.obs) if normalize else advice.obs
    diff = obs_norm.reshape(obs_norm.shape[0], 1, -1) - adv_obs.reshape(1, adv_obs.shape[0], -1)
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    dist = jnp.where(advice.valid[None, :], dist, jnp.inf)
    nearest = jnp.argmin(dist, axis=1)
    return jnp.where(jnp.min(dist, axis=1) <= radius, nearest, -1).astype(jnp.int32)


def take_slot(tree: Any, slot: jax.Array) -> Any:
    """Gather per-env rows of an advice field (slot -1 is clamped; mask the result yourself)."""
    idx = jnp.maximum(slot, 0)
    return jax.tree.map(lambda x: x[idx], tree)
