"""`make(env_id)`: one entry point for gymnax ids, `brax/<name>` ids and jaxmod's own envs; `register` adds an env,
`register_describer` (from `jaxmod.envs.describers`, numpy only) its describer for prompts."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from jaxmod.envs.core import EnvCore, EnvError
from jaxmod.envs.describe import Describer
from jaxmod.envs.describers import describer_for, register_describer
from jaxmod.envs.vec_env import VecEnv

__all__ = ["UnknownEnvError", "describer_for", "describer_of", "list_env_ids", "make", "make_core", "register",
           "register_describer"]

BRAX_PREFIX = "brax/"

# jaxmod's own JAX environments register here: id -> factory(**options) -> EnvCore
_OWN_ENVS: dict[str, Callable[..., EnvCore]] = {}


class UnknownEnvError(EnvError):
    """Raised for an env id no backend knows; the message lists the valid ids."""


def register(env_id: str, factory: Callable[..., EnvCore]) -> None:
    """Add a jaxmod-native environment factory under `env_id`."""
    _OWN_ENVS[env_id] = factory


def describer_of(core: EnvCore) -> Describer:
    """The describer for an env core, looked up by its id and family, built for its observation shape and action
    space (a continuous env without a describer gets a generic one with its action bounds)."""
    space = core.action_space
    return describer_for(core.env_id, core.obs_shape, space.dim, family=core.family,
                         action_bounds=None if space.discrete else (space.low, space.high))


def list_env_ids() -> list[str]:
    """Every id `make` accepts."""
    from jaxmod.envs.brax_backend import brax_names
    from jaxmod.envs.gymnax_backend import gymnax_ids

    return gymnax_ids() + [BRAX_PREFIX + n for n in brax_names()] + sorted(_OWN_ENVS)


def make_core(env_id: str, **options: Any) -> EnvCore:
    """The unbatched `EnvCore` for `env_id`; `options` are backend options (e.g. backend='spring')."""
    if env_id in _OWN_ENVS:
        return _OWN_ENVS[env_id](**options)
    if env_id.startswith(BRAX_PREFIX):
        from jaxmod.envs.brax_backend import brax_names, make_brax

        name = env_id[len(BRAX_PREFIX):]
        if name not in brax_names():
            _unknown(env_id)
        return make_brax(name, **options)
    from jaxmod.envs.gymnax_backend import gymnax_ids, make_gymnax

    if env_id not in gymnax_ids():
        _unknown(env_id)
    return make_gymnax(env_id, **options)


def make(
    env_id: str,
    *,
    num_envs: int = 1,
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    reward_gamma: float = 0.99,
    clip_actions: bool = True,
    **options: Any,
) -> VecEnv:
    """A batch of `num_envs` copies of `env_id` behind the shared wrapper stack (see `VecEnv`)."""
    if num_envs < 1:
        raise EnvError(f"num_envs must be >= 1, got {num_envs}")
    return VecEnv(
        core=make_core(env_id, **options),
        num_envs=num_envs,
        normalize_obs=normalize_obs,
        normalize_reward=normalize_reward,
        reward_gamma=reward_gamma,
        clip_actions=clip_actions,
    )


def _pong(one_point: bool) -> Callable[..., EnvCore]:
    def factory(obs_type: str = "vector", **options: Any) -> EnvCore:
        from jaxmod.envs.gymnax_backend import wrap_gymnax
        from jaxmod.envs.pong import Pong

        env = Pong(obs_type=obs_type, one_point=one_point)
        return wrap_gymnax(PONG_ONE_POINT if one_point else PONG, env, env.default_params, "pong", **options)

    return factory


PONG, PONG_ONE_POINT = "jaxmod/Pong", "jaxmod/Pong-OnePoint"
register(PONG, _pong(one_point=False))
register(PONG_ONE_POINT, _pong(one_point=True))


def _unknown(env_id: str) -> None:
    valid = list_env_ids()
    close = difflib.get_close_matches(env_id, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownEnvError(f"unknown env id {env_id!r}.{hint} Valid ids: {', '.join(valid)}")
