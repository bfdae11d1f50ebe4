"""Every refinement method as data: where its critical states come from and its modulation switches.

All methods run the same jitted learner (`PPOLearner` + `ModulationConfig`) from the same sub-optimal
agents for the same steps; only this table differs. Labels and defaults follow RICE (ICML 2024),
whose Table 1 columns these are; see `../shared/paper.md` sections 5-6.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jaxmod.advice.modulation import ModulationConfig

# RICE Table 3: mixed-restart probability p and RND coefficient lambda per MuJoCo task.
RICE_TABLE3 = {"hopper": (0.25, 0.001), "walker2d": (0.25, 0.01), "reacher": (0.5, 0.001),
               "halfcheetah": (0.5, 0.01)}
RICE_DEFAULT = (0.5, 0.01)  # tasks RICE did not tune: its most common values


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a name, a plot label, and where its critical states come from
    ('none', 'advisor' = the LLM/scripted/teacher advisor, 'mask' = RICE's mask net, 'random')."""

    name: str
    label: str
    critical: str
    about: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("PPO", "PPO fine-tune", "none", "continued PPO from the agent at the refinement learning rate"),
    Method("A", "ULTRA-A", "advisor", "advisor's action executed at critical states"),
    Method("R", "ULTRA-R", "advisor", "advisor's implicit reward added at critical states"),
    Method("RA", "ULTRA-RA", "advisor", "both"),
    Method("restart", "ULTRA restarts only", "advisor", "mixed restarts from the advisor's critical states"),
    Method("StateMask-R", "StateMask-R", "mask", "always restart from the mask net's critical states"),
    Method("RICE", "RICE", "mask", "mixed restarts from mask-net critical states (p) + RND bonus (lambda)"),
    Method("JSRL", "JSRL", "none", "the frozen agent rolls in for h steps per episode, h shrinking to 0"),
    Method("Random", "Random critical", "random", "RICE with uniformly random critical states (ablation)"),
)}
BASELINES = ("StateMask-R", "RICE", "JSRL", "Random")


class MethodError(ValueError):
    """An unknown method name; the message lists the valid ones."""


def method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def rice_values(env_id: str) -> tuple[float, float]:
    """(p, lambda) for `env_id`: RICE's Table 3 for its MuJoCo tasks, else its common values."""
    from jaxmod.envs.brax_backend import SPARSE_SUFFIX

    task = env_id.removeprefix("brax/").removesuffix(SPARSE_SUFFIX)
    return RICE_TABLE3.get(task, RICE_DEFAULT)


def baseline_modulation(name: str, env_id: str, capacity: int, guide_steps: int, rice_p: float | None = None,
                        rice_lambda: float | None = None) -> ModulationConfig:
    """The modulation switches of a baseline method (restarts, RND, JSRL roll-in; never A/R, KL or
    ULTRA's advice verification and consensus).
    RICE's p and lambda default to `rice_values(env_id)`; either can be overridden."""
    table_p, table_lambda = rice_values(env_id)
    p = table_p if rice_p is None else rice_p
    lam = table_lambda if rice_lambda is None else rice_lambda
    base = ModulationConfig(capacity=capacity, override_action=False, shape_reward=False, restart_prob=0.0,
                            kl_coef=0.0, verify_samples=0, consensus_radius=0.0)
    if name == "StateMask-R":
        return dataclasses.replace(base, restart_prob=1.0)
    if name in ("RICE", "Random"):
        return dataclasses.replace(base, restart_prob=p, rnd_coef=lam)
    if name == "JSRL":
        return dataclasses.replace(base, guide_steps=max(1, guide_steps))
    raise MethodError(f"{name!r} is not a baseline; baselines: {', '.join(BASELINES)}")
