"""Environments: gymnax, brax and jaxmod's own, behind one batched wrapper stack."""

from jaxmod.envs.core import ActionSpace, CoreState, EnvCore, EnvError, EnvOptionError
from jaxmod.envs.normalize import RunningMeanStd
from jaxmod.envs.registry import UnknownEnvError, list_env_ids, make, make_core, register
from jaxmod.envs.vec_env import StepResult, VecEnv, VecEnvState

__all__ = [
    "ActionSpace", "CoreState", "EnvCore", "EnvError", "EnvOptionError", "RunningMeanStd", "StepResult", "UnknownEnvError", "VecEnv",
    "VecEnvState", "list_env_ids", "make", "make_core", "register",
]
