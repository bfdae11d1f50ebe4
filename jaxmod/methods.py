"""Every refinement method by name: a plot label, where its critical states come from, and its modulator.

All methods run the same jitted learner (`PPOLearner`) from the same sub-optimal agents for the same steps; only
the modulator differs. Each method also states its pieces as values (`Pieces`): `shared_modulator` builds, for a
group of methods, the union of their pieces with one method's values as traced data, so the whole group runs
through one compiled program (a brax program compiles in 40-55 s on a 2-core CPU; jaxmod's choice). Labels follow RICE (ICML 2024), whose Table 1 columns the baselines are; see
`../shared/paper.md` sections 5-6. Adding a method is one file (its modulator) plus one `register` line here:

    register(Method("MyMethod", "My method", "advisor", "what it does", lambda ctx: my_module.modulator(ctx)))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jaxmod.advice.modulation import VARIANT_SWITCHES, ModulationConfig
from jaxmod.baselines import jsrl, rice, statemask
from jaxmod.ppo.modulator import Identity, Modulator, chain


@dataclass(frozen=True)
class MethodContext:
    """What a method's modulator may be built from: the env id, ULTRA's config (capacity, knobs), JSRL's initial
    roll-in horizon, RICE's p and lambda overrides (None: RICE Table 3). The knobs `modulation` leaves to the env
    family (`ModulationConfig.for_env`) are set for `env_id` here."""

    env_id: str
    modulation: ModulationConfig = ModulationConfig()
    guide_steps: int = 1
    rice_p: float | None = None
    rice_lambda: float | None = None

    def __post_init__(self) -> None:  # the knobs an env family sets (`ModulationConfig.for_env`), set for env_id
        object.__setattr__(self, "modulation", self.modulation.for_env(self.env_id))


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a name, a plot label, where its critical states come from ('none',
    'advisor' = the LLM / scripted / teacher advisor, 'mask' = RICE's mask net, 'random'), its modulator, and
    whether it needs a roll-in horizon (`rolls_in`)."""

    name: str
    label: str
    critical: str
    about: str
    build: Callable[[MethodContext], Modulator]
    pieces: Callable[[MethodContext], Pieces] | None = None  # its values in a shared program (None: none)
    rolls_in: bool = False  # a guide rolls in for an initial horizon (JSRL): a run measures the pre-trained agents'
    # mean episode length and builds the method with it as `MethodContext.guide_steps` (others get 1)


@dataclass(frozen=True)
class Pieces:
    """A method as values of the union chain `shared_modulator` builds (0 / False: the piece does nothing for it):
    ULTRA's judged advice (consensus and verification bind), the restart probability from critical states, ULTRA-A's
    override, ULTRA-R's reward scale lambda, the KL coefficient, RICE's RND coefficient and JSRL's roll-in horizon."""

    judged: bool = False
    restart_prob: float = 0.0
    override: bool = False
    reward_scale: float = 0.0
    kl_coef: float = 0.0
    rnd_coef: float = 0.0
    guide_steps: int = 0


class MethodError(ValueError):
    """An unknown method name; the message lists the valid ones."""


METHODS: dict[str, Method] = {}


def register(m: Method) -> Method:
    """Add a method to the table (its name must be new)."""
    if m.name in METHODS:
        raise MethodError(f"a method named {m.name!r} is registered already")
    METHODS[m.name] = m
    return m


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order (read at call time: methods registered later count)."""
    return tuple(METHODS)


def method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def _ultra(variant: str) -> Callable[[MethodContext], Modulator]:
    return lambda ctx: ctx.modulation.with_variant(variant).modulator()


def _ultra_pieces(variant: str) -> Callable[[MethodContext], Pieces]:
    override, shape = VARIANT_SWITCHES[variant]

    def pieces(ctx: MethodContext) -> Pieces:
        m = ctx.modulation
        return Pieces(judged=True, restart_prob=m.restart_prob, override=override,
                      reward_scale=m.reward_scale if shape else 0.0, kl_coef=m.kl_coef)
    return pieces


def _rice_pieces(ctx: MethodContext) -> Pieces:
    p, lam = rice.rice_values(ctx.env_id)
    return Pieces(restart_prob=p if ctx.rice_p is None else ctx.rice_p, rnd_coef=lam if ctx.rice_lambda is None
                  else ctx.rice_lambda)


def check_group(names: tuple[str, ...]) -> None:
    """Raise `MethodError` (one line) unless the methods `names` can share one compiled program: each is registered
    and states its `pieces` (a method registered with its modulator alone runs in a program of its own)."""
    missing = [method(n).name for n in names if method(n).pieces is None]
    if missing:
        raise MethodError(f"method(s) {', '.join(missing)} cannot share a compiled program with other methods "
                          "(registered without pieces): run with --share-programs off, or register them with `pieces`")


def shared_modulator(names: tuple[str, ...], name: str, ctx: MethodContext) -> Modulator:
    """Method `name`'s modulator as a member of the group `names`: the union of the group's pieces (`Pieces`), in
    one order, with `name`'s values as traced data. Every member's chain has the same static structure, so their
    `PPOLearner.run` programs are the same program (tests/test_methods.py compares their lowered text): the group
    compiles once. A member's numbers equal its own chain's up to floating-point rounding (e.g. ULTRA-A's policy
    mask is all ones for a member without the override, where its own chain averages without one) and it computes
    the pieces it switches off (JSRL's guide action, RICE's RND predictor), which costs run time instead of compiles.
    jaxmod's choice."""
    from jaxmod.advice.consensus import Consensus
    from jaxmod.advice.kl import KLTarget
    from jaxmod.advice.override import ActionOverride
    from jaxmod.advice.restarts import CriticalStates
    from jaxmod.advice.shaping import ImplicitReward
    from jaxmod.advice.verify import JudgeGate, Verification
    from jaxmod.baselines.rnd import RNDBonus

    if name not in names:
        raise MethodError(f"method {name!r} is not in the group {', '.join(names)}")
    check_group(names)
    every = [method(n).pieces(ctx) for n in names]
    me = method(name).pieces(ctx)
    m = ctx.modulation
    judged = any(p.judged for p in every)
    parts: list[Modulator] = []
    if judged and m.votes:
        parts.append(Consensus(m.consensus_radius, m.consensus_action_tol))
    if judged and m.verifies:
        parts.append(Verification(m.capacity, m.verify_samples, m.verify_control, m.verify_memory, m.trust_prior))
    if judged and (m.votes or m.verifies) and not all(p.judged for p in every):
        parts.append(JudgeGate(me.judged))
    if judged or any(p.restart_prob > 0 for p in every):
        # only judged advice (ULTRA's) is matched: the others' critical steps stay the steps after their restarts
        parts.append(CriticalStates(me.restart_prob, m.match_radius if me.judged else 0.0,
                                    matches=judged and m.matching, cut_prob=m.restart_cut))
    if any(p.override for p in every):
        parts.append(ActionOverride(switch=me.override))
    if any(p.reward_scale > 0 for p in every):
        parts.append(ImplicitReward(me.reward_scale, m.kl_target_std))
    if any(p.kl_coef > 0 for p in every):
        parts.append(KLTarget(me.kl_coef, m.kl_target_std, m.kl_filter))
    if any(p.rnd_coef > 0 for p in every):
        parts.append(RNDBonus(coef=me.rnd_coef))
    if any(p.guide_steps > 0 for p in every):
        parts.append(jsrl.GuideRollIn(me.guide_steps))
    return chain(*parts)


register(Method("PPO", "PPO fine-tune", "none", "continued PPO from the agent at the refinement learning rate",
                lambda ctx: Identity(), lambda ctx: Pieces()))
register(Method("A", "ULTRA-A", "advisor", "advisor's action executed at critical states", _ultra("A"),
                _ultra_pieces("A")))
register(Method("R", "ULTRA-R", "advisor", "advisor's implicit reward added at critical states", _ultra("R"),
                _ultra_pieces("R")))
register(Method("RA", "ULTRA-RA", "advisor", "both", _ultra("RA"), _ultra_pieces("RA")))
register(Method("restart", "ULTRA restarts only", "advisor", "mixed restarts from the advisor's critical states",
                _ultra("restart"), _ultra_pieces("restart")))
register(Method("StateMask-R", "StateMask-R", "mask", "always restart from the mask net's critical states",
                lambda ctx: statemask.modulator(ctx.modulation.restart_cut), lambda ctx: Pieces(restart_prob=1.0)))
register(Method("RICE", "RICE", "mask", "mixed restarts from mask-net critical states (p) + RND bonus (lambda)",
                lambda ctx: rice.modulator(ctx.env_id, ctx.rice_p, ctx.rice_lambda, ctx.modulation.restart_cut),
                _rice_pieces))
register(Method("JSRL", "JSRL", "none", "the frozen agent rolls in for h steps per episode, h shrinking to 0",
                lambda ctx: jsrl.GuideRollIn(max(1, ctx.guide_steps)),
                lambda ctx: Pieces(guide_steps=max(1, ctx.guide_steps)), rolls_in=True))
register(Method("Random", "Random critical", "random", "RICE with uniformly random critical states (ablation)",
                lambda ctx: rice.modulator(ctx.env_id, ctx.rice_p, ctx.rice_lambda, ctx.modulation.restart_cut),
                _rice_pieces))
BASELINES = ("StateMask-R", "RICE", "JSRL", "Random")
