"""Every refinement method by name: a plot label, where its critical states come from, and its modulator.

All methods run the same jitted learner (`PPOLearner`) from the same sub-optimal agents for the same steps; only
the modulator differs. Labels follow RICE (ICML 2024), whose Table 1 columns the baselines are; see
`../shared/paper.md` sections 5-6. Adding a method is one file (its modulator) plus one `register` line here:

    register(Method("MyMethod", "My method", "advisor", "what it does", lambda ctx: my_module.modulator(ctx)))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jaxmod.advice.modulation import ModulationConfig
from jaxmod.baselines import jsrl, rice, statemask
from jaxmod.ppo.modulator import Identity, Modulator


@dataclass(frozen=True)
class MethodContext:
    """What a method's modulator may be built from: the env id, ULTRA's config (capacity, knobs), JSRL's initial
    roll-in horizon, RICE's p and lambda overrides (None: RICE Table 3)."""

    env_id: str
    modulation: ModulationConfig = ModulationConfig()
    guide_steps: int = 1
    rice_p: float | None = None
    rice_lambda: float | None = None


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a name, a plot label, where its critical states come from ('none',
    'advisor' = the LLM / scripted / teacher advisor, 'mask' = RICE's mask net, 'random'), and its modulator."""

    name: str
    label: str
    critical: str
    about: str
    build: Callable[[MethodContext], Modulator]


class MethodError(ValueError):
    """An unknown method name; the message lists the valid ones."""


METHODS: dict[str, Method] = {}


def register(m: Method) -> Method:
    """Add a method to the table (its name must be new)."""
    if m.name in METHODS:
        raise MethodError(f"a method named {m.name!r} is registered already")
    METHODS[m.name] = m
    return m


def method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def _ultra(variant: str) -> Callable[[MethodContext], Modulator]:
    return lambda ctx: ctx.modulation.with_variant(variant).modulator()


register(Method("PPO", "PPO fine-tune", "none", "continued PPO from the agent at the refinement learning rate",
                lambda ctx: Identity()))
register(Method("A", "ULTRA-A", "advisor", "advisor's action executed at critical states", _ultra("A")))
register(Method("R", "ULTRA-R", "advisor", "advisor's implicit reward added at critical states", _ultra("R")))
register(Method("RA", "ULTRA-RA", "advisor", "both", _ultra("RA")))
register(Method("restart", "ULTRA restarts only", "advisor", "mixed restarts from the advisor's critical states",
                _ultra("restart")))
register(Method("StateMask-R", "StateMask-R", "mask", "always restart from the mask net's critical states",
                lambda ctx: statemask.modulator()))
register(Method("RICE", "RICE", "mask", "mixed restarts from mask-net critical states (p) + RND bonus (lambda)",
                lambda ctx: rice.modulator(ctx.env_id, ctx.rice_p, ctx.rice_lambda)))
register(Method("JSRL", "JSRL", "none", "the frozen agent rolls in for h steps per episode, h shrinking to 0",
                lambda ctx: jsrl.GuideRollIn(max(1, ctx.guide_steps))))
register(Method("Random", "Random critical", "random", "RICE with uniformly random critical states (ablation)",
                lambda ctx: rice.modulator(ctx.env_id, ctx.rice_p, ctx.rice_lambda)))
BASELINES = ("StateMask-R", "RICE", "JSRL", "Random")
