"""jaxmod: JAX-native LLM-guided reinforcement learning (ULTRA policy modulation) on a jitted PPO learner.

Attributes load lazily so that host-only parts (`jaxmod.llm`) can be imported without jax.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "envs": ("jaxmod.envs", None),
    "register_env": ("jaxmod.envs.registry", "register_env"),
    "register_describer": ("jaxmod.envs.describers", "register_describer"),
    "Advice": ("jaxmod.advice.arrays", "Advice"),
    "AdviceBook": ("jaxmod.advice.arrays", "AdviceBook"),
    "ModulationConfig": ("jaxmod.advice.modulation", "ModulationConfig"),
    "Modulator": ("jaxmod.ppo.modulator", "Modulator"),
    "PPOLearner": ("jaxmod.ppo", "PPOLearner"),
    "chain": ("jaxmod.ppo.modulator", "chain"),
    "evaluate": ("jaxmod.ppo.acting", "evaluate"),
    "METHODS": ("jaxmod.methods", "METHODS"),
    "UltraConfig": ("jaxmod.ultra.config", "UltraConfig"),
    "HyperParams": ("jaxmod.ppo", "HyperParams"),
    "PPOConfig": ("jaxmod.ppo", "PPOConfig"),
    "TrainOutput": ("jaxmod.ppo", "TrainOutput"),
    "TrainState": ("jaxmod.ppo", "TrainState"),
    "default_config": ("jaxmod.ppo", "default_config"),
    "make_train": ("jaxmod.ppo", "make_train"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxmod' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)
