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
- ULTRA-R (`shape_reward`): the reward there gets `reward_scale * weight * trust * r_llm` when the action taken is
  the one the implicit reward rates (the agent's own at the source step), in units of the running RMS of the env's
  raw per-step reward (so the same lambda means the same with and without reward normalisation);
- KL (`kl_coef` > 0): the loss adds `kl_coef * KL(target || pi)` on critical steps (one-hot target for
  discrete actions, a Gaussian of std `kl_target_std` around the suggestion for continuous ones); with
  `kl_filter`, only on critical steps that executed the suggestion with a positive GAE advantage, i.e. where
  following the advice turned out better than the critic expected (wrong advice then gets no pull);
- verification (`verify_samples` > 0, on by default, `jaxmod.advice.verify`): advice earns its influence. Each
  slot's trust weight in [0, 1] (the evidence that its suggestion beats the policy's own action at the same
  critical steps, pooled with the advisor's record) scales ULTRA-R's bonus and the KL pull, and ULTRA-A executes
  an unproven slot's suggestion on half its critical steps after restarts (none of its matched ones), a proven
  one's on 1 - `verify_control`; a slot shown
  to do worse is switched off until the host replaces it, and an advisor shown to do worse as a whole is switched
  off for the rest of the run (no action, reward, KL or restarts: plain PPO), which the run reports;
- consensus (`consensus_radius` > 0, on by default, `jaxmod.advice.consensus`): a slot whose suggestion most
  of the advice about nearby states contradicts stops acting the same way, judged from the advice alone.
Imposed actions (ULTRA-A's override) train the critic and the KL term but give no policy gradient: they
are not samples of the policy (JSRL's roll-in steps are trained on, as JSRL's off-policy learners do).
The paper fixes A/R/RA; restarts, matching, the KL term, verification, consensus and that last rule are
jaxmod's choices where it is silent.
Each piece is a modulator (`jaxmod.ppo.modulator`) in its own module of `jaxmod.advice`, and
`ModulationConfig.modulator()` chains the ones a config switches on: `Consensus`, `Verification`,
`CriticalStates` (restarts and matching), `ActionOverride` (A), `ImplicitReward` (R), `KLTarget`.
The baselines (`jaxmod.baselines`) chain `CriticalStates` with their own pieces.
Numeric knobs are traced data in the modulators' aux state, so sweeps and new advice share one compile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jaxmod.ppo.modulator import Modulator, chain

# knobs whose default is the env family's (`ModulationConfig.for_env`; jaxmod's choice, measured in
# docs/results.md): in discrete-action classic control and Pong advice acts before verification has evidence (a
# slot's trust starts at 0.5; live states within 0.5 stds of an advice state are critical): with the outcome guard
# (`jaxmod.ultra.guard`) behind it, the teacher's RA beats fine-tuning on MountainCar-v0 (+55, where evidence-first
# advice never acts), CartPole-v1 and Pong-OnePoint (+0.2 return), and is within noise of it on the whole game of
# Pong and Acrobot-v1. Continuous classic control (Pendulum-v1: matched states executing the teacher's action for
# another state cost it ~100), MinAtar (Asterix-MinAtar: the teacher's RA -0.1, worse) and brax stay evidence-first
# (`UNSET_DEFAULTS`)
ADVICE_FIRST = {"match_radius": 0.5, "trust_prior": 0.5}
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {"classic": ADVICE_FIRST, "pong": ADVICE_FIRST}
UNSET_DEFAULTS: dict[str, float] = {"match_radius": 0.0, "trust_prior": 0.0}  # every other family's

# the variants' switches (override_action = ULTRA-A, shape_reward = ULTRA-R); "restart": restarts only
VARIANT_SWITCHES = {"A": (True, False), "R": (False, True), "RA": (True, True), "restart": (False, False)}
VARIANTS = tuple(VARIANT_SWITCHES)
MAX_CAPACITY = 32766  # advice slots: the rollout packs a slot + 1 into 15 bits (`jaxmod.advice.restarts.SLOT_BITS`)


class ModulationError(ValueError):
    """A bad modulation config; the message says what to change."""


@dataclass(frozen=True)
class ModulationConfig:
    """Static switches and default values of ULTRA's refinement (default: ULTRA-RA). These defaults are the
    product's: `jaxmod ultra` and `jaxmod.ultra.UltraConfig` take theirs from here."""

    capacity: int = 32  # K advice slots per seed
    override_action: bool = True  # ULTRA-A
    shape_reward: bool = True  # ULTRA-R
    restart_prob: float = 0.5  # rho: chance an episode restarts from a critical state (RICE-style mixed restarts)
    restart_cut: float | None = None  # per-step chance that an env which drew a restart is cut mid-episode to take
    # it (a truncation, bootstrapped); unset: the env family's (`jaxmod.advice.restarts.CUT_PROB`: brax 0.02, else 0)
    match_radius: float | None = None  # epsilon: live states this close to an advice state (in observation stds,
    # or the advice states' spread for raw observations) are critical too; 0 disables matching; unset: the env
    # family's (`FAMILY_DEFAULTS`: discrete classic control and Pong 0.5, the others 0)
    reward_scale: float = 1.0  # lambda: weight of the advisor's implicit reward (ULTRA-R), in units of the running
    # RMS of the env's raw per-step reward (1: a critical step's bonus as large as a typical step's reward), the same
    # with and without reward normalisation
    kl_coef: float = 1.0  # beta: weight of KL(advice || policy) at each critical step, as one sample of the
    # surrogate weighs (the sum over critical steps over the minibatch's size; jaxmod's extension; 0: off)
    kl_target_std: float = 0.2  # std of the Gaussian target around a continuous suggestion
    kl_filter: bool = False  # KL only on advised steps whose advantage is positive (robustness to bad advice)
    verify_samples: int = 4  # advice verification: samples per group before a slot can be refuted (0: off, every
    # answer trusted in full); trust weights scale ULTRA-R, ULTRA-A and the KL pull with the evidence for the advice
    verify_control: float = 0.25  # share of a trusted slot's ULTRA-A critical steps left to the policy
    # (verification's control group; an unproven slot's: half)
    verify_memory: int = 64  # samples a slot's running mean remembers
    trust_prior: float | None = None  # trust of a slot before evidence: its weight is the larger of this and what
    # the evidence shows (0: advice acts only once shown to beat the policy's own actions; 1: every slot acts in full
    # until refuted); refuted slots and a switched-off advisor still stop acting; unset: the env family's
    # (`FAMILY_DEFAULTS`: discrete classic control and Pong 0.5, the others 0)
    consensus_radius: float = 2.0  # advice out-voted by the advice within this many spreads stops acting (0: off)
    consensus_action_tol: float = 0.25  # continuous suggestions agree within this RMS share of the action range

    def __post_init__(self) -> None:
        from jaxmod.config import check_fields

        check_fields(self, ModulationError)  # ints are ints, floats finite (nan passes every comparison below)
        if not 1 <= self.capacity <= MAX_CAPACITY:
            raise ModulationError(f"capacity must lie in [1, {MAX_CAPACITY}], got {self.capacity}")
        if not 0.0 <= self.restart_prob <= 1.0:
            raise ModulationError(f"restart_prob must lie in [0, 1], got {self.restart_prob:g}")
        if self.restart_cut is not None and not 0.0 <= self.restart_cut <= 1.0:
            raise ModulationError(f"restart_cut must lie in [0, 1] (or be unset: the env family's), got "
                                  f"{self.restart_cut:g}")
        for name in ("match_radius", "kl_coef", "consensus_radius"):
            if (getattr(self, name) or 0.0) < 0:
                raise ModulationError(f"{name} must be >= 0 (0: off), got {getattr(self, name):g}")
        for name in ("kl_target_std", "consensus_action_tol"):
            if getattr(self, name) <= 0:
                raise ModulationError(f"{name} must be > 0, got {getattr(self, name):g}")
        if self.verify_samples < 0:
            raise ModulationError(f"verify_samples must be >= 0, got {self.verify_samples}")
        if self.verify_memory < max(1, self.verify_samples):
            raise ModulationError(f"verify_memory must be >= max(1, verify_samples) = {max(1, self.verify_samples)}, "
                                  f"got {self.verify_memory}")
        if self.trust_prior is not None and not 0.0 <= self.trust_prior <= 1.0:
            raise ModulationError(f"trust_prior must lie in [0, 1] (a slot's trust before evidence), got "
                                  f"{self.trust_prior:g}")
        if not 0.0 <= self.verify_control < 1.0:
            raise ModulationError(f"verify_control must lie in [0, 1), got {self.verify_control:g}")

    @classmethod
    def variant(cls, name: str, **overrides: Any) -> ModulationConfig:
        """Preset for ULTRA-A, ULTRA-R, ULTRA-RA, or 'restart' (restarts only, StateMask-R-like)."""
        return cls(**overrides).with_variant(name)

    def with_variant(self, name: str) -> ModulationConfig:
        """These knobs with `name`'s switches (A, R, RA or restart)."""
        if name not in VARIANT_SWITCHES:
            raise ModulationError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
        override, shape = VARIANT_SWITCHES[name]
        return dataclasses.replace(self, override_action=override, shape_reward=shape)

    def for_env(self, env_id: str | None) -> ModulationConfig:
        """These knobs with the unset ones (None) set to `env_id`'s family's (`FAMILY_DEFAULTS`; None, a family
        without entries or continuous classic control: `UNSET_DEFAULTS`). `jaxmod.methods.MethodContext` resolves
        its config this way, so every method of a run (and `UltraConfig`) gets its env's."""
        values = dict(UNSET_DEFAULTS)
        if env_id is not None:
            from jaxmod.ppo.config import CONTINUOUS_GYMNAX, family_of

            if env_id not in CONTINUOUS_GYMNAX:  # continuous classic control keeps the evidence-first values
                values.update(FAMILY_DEFAULTS.get(family_of(env_id), {}))
        return dataclasses.replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None})

    @property
    def matching(self) -> bool:
        return (self.match_radius or 0.0) > 0

    @property
    def uses_kl(self) -> bool:
        return self.kl_coef > 0

    @property
    def verifies(self) -> bool:
        return self.verify_samples > 0

    @property
    def votes(self) -> bool:
        return self.consensus_radius > 0

    def modulator(self) -> Modulator:
        """The chain of ULTRA's modulators this config switches on (one code path for A, R, RA, restarts). Knobs
        left unset take `UNSET_DEFAULTS` here (no env is known): `for_env(env_id).modulator()` gives an env's."""
        return self.for_env(None)._chain()

    def _chain(self) -> Modulator:
        from jaxmod.advice.consensus import Consensus
        from jaxmod.advice.kl import KLTarget
        from jaxmod.advice.override import ActionOverride
        from jaxmod.advice.restarts import CriticalStates
        from jaxmod.advice.shaping import ImplicitReward
        from jaxmod.advice.verify import Verification

        parts: list[Modulator] = []
        if self.votes:
            parts.append(Consensus(self.consensus_radius, self.consensus_action_tol))
        if self.verifies:
            parts.append(Verification(self.capacity, self.verify_samples, self.verify_control, self.verify_memory,
                                      self.trust_prior))
        parts.append(CriticalStates(self.restart_prob, self.match_radius, cut_prob=self.restart_cut))
        if self.override_action:
            parts.append(ActionOverride())
        if self.shape_reward:
            parts.append(ImplicitReward(self.reward_scale, self.kl_target_std))
        if self.uses_kl:
            parts.append(KLTarget(self.kl_coef, self.kl_target_std, self.kl_filter))
        return chain(*parts)

    def choices(self) -> dict[str, Any]:
        """What a run used, with the paper's and jaxmod's parts labelled (for logs)."""
        return {
            "paper": {"override_action (ULTRA-A)": self.override_action,
                      "shape_reward (ULTRA-R)": self.shape_reward, "reward_scale": self.reward_scale},
            "jaxmod_choices": {"restart_prob": self.restart_prob, "restart_cut": self.restart_cut,
                               "match_radius": self.match_radius,
                               "kl_coef": self.kl_coef, "kl_target_std": self.kl_target_std,
                               "kl_filter": self.kl_filter, "verify_samples": self.verify_samples,
                               "verify_control": self.verify_control, "verify_memory": self.verify_memory,
                               "trust_prior": self.trust_prior,
                               "consensus_radius": self.consensus_radius,
                               "consensus_action_tol": self.consensus_action_tol,
                               "capacity": self.capacity},
        }
