"""Environments: gymnax, brax (the optional `brax` extra), jaxmod's own and yours (`register_env`), behind one batched
wrapper stack; describers for prompts (`register_describer`).

Attributes load lazily, so the numpy-only describers (`jaxmod.envs.describe`, `jaxmod.envs.describers`) import
without jax (the text side, `jaxmod.llm`, reads prompts with them).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ActionSpace": "jaxmod.envs.core", "CoreState": "jaxmod.envs.core", "EnvCore": "jaxmod.envs.core",
    "EnvError": "jaxmod.envs.core", "EnvOptionError": "jaxmod.envs.core",
    "RunningMeanStd": "jaxmod.envs.normalize",
    "UnknownEnvError": "jaxmod.envs.registry", "list_env_ids": "jaxmod.envs.registry", "make": "jaxmod.envs.registry",
    "make_core": "jaxmod.envs.registry", "register": "jaxmod.envs.registry", "describer_of": "jaxmod.envs.registry",
    "check_describer": "jaxmod.envs.registry", "DescriberMismatchError": "jaxmod.envs.registry",
    "register_env": "jaxmod.envs.registry", "registered_family": "jaxmod.envs.registry",
    "BraxMissingError": "jaxmod.envs.brax_backend",
    "StepResult": "jaxmod.envs.vec_env", "VecEnv": "jaxmod.envs.vec_env", "VecEnvState": "jaxmod.envs.vec_env",
    "Describer": "jaxmod.envs.describe", "DescriberError": "jaxmod.envs.describe", "EnvCard": "jaxmod.envs.describe",
    "Feature": "jaxmod.envs.describe", "raw_feature": "jaxmod.envs.describe", "describer_for": "jaxmod.envs.describers",
    "register_describer": "jaxmod.envs.describers", "GenericDescriberWarning": "jaxmod.envs.describers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxmod.envs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
