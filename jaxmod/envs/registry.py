"""`make(env)`: one entry point for gymnax ids, `brax/<name>` ids, jaxmod's own envs, registered envs, and env
instances (gymnax-API or brax `Env`); `register_env` adds an env under an id (so configs, the CLI and ULTRA can name
it), `register_describer` (from `jaxmod.envs.describers`, numpy only) its describer for prompts.

brax is optional (the `brax` extra): nothing here imports it, and a `brax/<name>` id without it is one
`BraxMissingError` line naming the extra. A complete example: examples/custom_env.py."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from jaxmod.envs.brax_backend import BraxMissingError, brax_available, is_brax_env, wrap_brax
from jaxmod.envs.core import EnvCore, EnvError
from jaxmod.envs.describe import Describer
from jaxmod.envs.describers import describer_for, register_describer
from jaxmod.envs.vec_env import VecEnv

__all__ = ["BraxMissingError", "DescriberMismatchError", "UnknownEnvError", "check_describer", "describer_for",
           "describer_of", "list_env_ids", "load_env_module", "make", "make_core", "register", "register_describer",
           "register_env", "registered_family"]

BRAX_PREFIX = "brax/"

# jaxmod's own JAX environments and users' register here: id -> factory(**options) -> EnvCore
_OWN_ENVS: dict[str, Callable[..., EnvCore]] = {}
_FAMILIES: dict[str, str] = {}  # id -> the family an instance was registered with
CUSTOM_FAMILY = "custom"  # the family of a registered env instance unless told otherwise (jaxmod's choice)


class UnknownEnvError(EnvError):
    """Raised for an env id no backend knows; the message lists the valid ids."""


def register(env_id: str, factory: Callable[..., EnvCore]) -> None:
    """Add an `EnvCore` factory (`factory(**options) -> EnvCore`) under `env_id` (what `register_env` does with a
    factory)."""
    _OWN_ENVS[env_id] = factory


def register_env(env_id: str, env: Any, *, family: str = CUSTOM_FAMILY, max_steps: int | None = None) -> None:
    """Make `env` available as `env_id` to `make`, `jaxmod.default_config` / `make_train`, ULTRA (`UltraRun`) and
    checkpoints. A later registration under the same id replaces the earlier one.

    env: a gymnax-API env instance (`reset(key, params)`, `step(key, state, action, params)`, `default_params`,
    `action_space(params)`, `observation_space(params)`; gymnax's `reset_env` / `step_env` are used where present),
    a brax `Env` instance, an `EnvCore`, or a factory `(**options) -> EnvCore`. Options given to `make` (or
    `--env-option` on the CLI) replace fields of a gymnax env's params.
    family: the env's family (`EnvCore.family`): it selects the describer registered for the family, if any, and
    where it is one of jaxmod's preset families (classic, minatar, brax, pong) the PPO preset; default 'custom'
    (the classic-control preset, and the generic describer unless `register_describer` names one for `env_id`).
    max_steps: the episode length; default `default_params.max_steps_in_episode` for a gymnax env, 1000 for brax.

    Raises TypeError for anything else, `EnvError` if `env_id` is a `brax/` id or empty."""
    if not isinstance(env_id, str) or not env_id or env_id.startswith(BRAX_PREFIX):
        raise EnvError(f"register_env needs a non-empty id outside {BRAX_PREFIX!r} (brax's own tasks), got {env_id!r}")
    if isinstance(env, EnvCore):
        core = env

        def factory(**options: Any) -> EnvCore:
            if options:
                raise EnvError(f"{env_id} is a fixed EnvCore: it takes no options (got {sorted(options)})")
            return core
    elif _is_instance(env):
        def factory(**options: Any) -> EnvCore:
            return _wrap(env_id, env, family, max_steps, **options)
    elif callable(env):
        factory = env
    else:
        raise TypeError(f"register_env({env_id!r}, ...) needs a gymnax-API env, a brax Env, an EnvCore or a factory "
                        f"(**options) -> EnvCore; got {type(env).__name__}")
    _OWN_ENVS[env_id] = factory
    _FAMILIES[env_id] = family


def registered_family(env_id: str) -> str | None:
    """The family `env_id` was registered with by `register_env`, if it was (a `module:EnvId` id imports its
    module first, see `load_env_module`; one that cannot be loaded has none)."""
    try:
        load_env_module(env_id)
    except UnknownEnvError:
        return None
    return _FAMILIES.get(env_id)


def load_env_module(env_id: str) -> None:
    """For an id `module:EnvId` (what the CLI's `--env` takes for your own env): import `module` (a dotted module
    name, found on the Python path or in the current folder), which registers `EnvId` with `register_env` when
    imported, and register the env under the whole id too (so configs, checkpoints and `--resume` name it, and
    import it again in a new process). Other ids: nothing. Raises `UnknownEnvError` when the module cannot be
    imported or registers no `EnvId`."""
    if not isinstance(env_id, str) or env_id in _OWN_ENVS or ":" not in env_id:
        return
    module, name = env_id.split(":", 1)
    if not module.replace(".", "").replace("_", "").isalnum() or not name:
        return
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:  # the `jaxmod` script's path starts at its own folder
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module)
    except ImportError as err:
        if _missing_module(err, module):
            raise UnknownEnvError(f"env {env_id!r}: cannot import module {module!r} ({err}): put "
                                  f"{module.replace('.', '/')}.py in the current folder or on PYTHONPATH") from None
        raise UnknownEnvError(_import_failed(env_id, module, err)) from err
    except Exception as err:  # noqa: BLE001 - the user's module failing at import (any error, a SyntaxError too)
        raise UnknownEnvError(_import_failed(env_id, module, err)) from err
    if name not in _OWN_ENVS:
        raise UnknownEnvError(f"env {env_id!r}: importing {module} registered no env {name!r}; call "
                              f"jaxmod.register_env({name!r}, env) in {module} when it is imported")
    _OWN_ENVS[env_id] = _OWN_ENVS[name]
    if name in _FAMILIES:
        _FAMILIES[env_id] = _FAMILIES[name]


def _missing_module(err: ImportError, module: str) -> bool:
    """Whether `err` says `module` itself (or a package above it) was not found, not something it imports."""
    missing = getattr(err, "name", None)
    return isinstance(err, ModuleNotFoundError) and missing is not None and (
        module == missing or module.startswith(missing + "."))


def _import_failed(env_id: str, module: str, err: BaseException) -> str:
    """One line for a user's env module that raised while being imported: the error and where (its last frame, or
    a SyntaxError's file and line)."""
    import traceback

    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" at {err.filename}:{err.lineno}"
    else:
        frames = traceback.extract_tb(err.__traceback__)
        user = [f for f in frames if "importlib" not in f.filename and "<frozen" not in f.filename]
        if user:
            where = f" at {user[-1].filename}:{user[-1].lineno}"
    text = str(err).splitlines()[0] if str(err) else ""
    return (f"env {env_id!r}: importing module {module!r} raised {type(err).__name__}{where}"
            f"{': ' + text if text else ''}; fix the module (JAXMOD_DEBUG=1 shows the traceback)")


def _is_instance(env: Any) -> bool:
    from jaxmod.envs.gymnax_backend import is_gymnax_env

    return not isinstance(env, str) and (is_brax_env(env) or is_gymnax_env(env))


def _wrap(env_id: str, env: Any, family: str, max_steps: int | None, **options: Any) -> EnvCore:
    """An env instance as `EnvCore` under `env_id`."""
    if is_brax_env(env):
        if options:
            raise EnvError(f"{env_id} is a brax Env instance: build it with its options instead of passing {sorted(options)}")
        return wrap_brax(env_id, env, 1000 if max_steps is None else int(max_steps), family=family)
    from jaxmod.envs.gymnax_backend import wrap_gymnax

    return wrap_gymnax(env_id, env, env.default_params, family, max_steps=max_steps, options=options)


def describer_of(core: EnvCore) -> Describer:
    """The describer for an env core, looked up by its id and family, built for its observation shape and action
    space (a continuous env without a describer gets a generic one with its action bounds)."""
    space = core.action_space
    describer = describer_for(core.env_id, core.obs_shape, space.dim, family=core.family,
                              action_bounds=None if space.discrete else (space.low, space.high))
    check_describer(describer, core)
    return describer


def checked_describer_of(core: EnvCore) -> Describer:
    """`describer_of(core)`, and for an env registered with `register_env` (whose describer is the user's, or the
    generic one) its features evaluated on a reset observation (`check_describer`); for a run to call before it
    compiles anything, so the describer's mistakes and the generic describer's warning come first. Raises
    `DescriberMismatchError`."""
    describer = describer_of(core)
    if core.env_id in _OWN_ENVS:
        import jax

        check_describer(describer, core, jax.device_get(core.reset(jax.random.PRNGKey(0)).obs))
    return describer


class DescriberMismatchError(EnvError):
    """A registered describer that does not fit its env (not a `Describer`, wrong actions, features outside the
    observation, features that are not finite numbers); the message says what to fix."""


def check_describer(describer: Any, core: EnvCore, obs: Any = None) -> None:
    """Raise `DescriberMismatchError` (one line) unless `describer` fits `core`: a `Describer` whose card has the
    env's kind of actions (`action_names`, one per discrete action; or `action_dims`, `action_low`, `action_high`,
    one per continuous dimension), whose `obs_shape` (if set) is the env's, whose column features lie inside the
    flat observation, and, given `obs` (one raw observation of the env, e.g. a reset's), whose features turn it into
    finite numbers. `describer_of` checks all but `obs`; ULTRA checks with a reset observation before pre-training,
    so a user's `register_describer` mistake is one line then, not an error inside an advice round."""
    import math

    import numpy as np

    where = (f"the describer for {core.env_id} (jaxmod.register_describer; see examples/custom_env.py, or "
             "register none to get the generic one)")
    if not isinstance(describer, Describer):
        raise DescriberMismatchError(f"{where} is a {type(describer).__name__}, not a jaxmod.envs.Describer (a "
                                     "factory must return one)")
    card, space = describer.card, core.action_space
    if space.discrete:
        if not card.action_names and card.action_dims:
            raise DescriberMismatchError(f"{where} describes continuous actions (action_dims) but the env has "
                                         f"{space.num_actions} discrete actions: give action_names, one per action")
        if len(card.action_names) != space.num_actions:
            raise DescriberMismatchError(f"{where} names {len(card.action_names)} actions (action_names) but the "
                                         f"env has {space.num_actions} discrete actions: name each one")
    else:
        dim = space.dim
        sizes = (len(card.action_names), len(card.action_dims), len(card.action_low), len(card.action_high))
        if sizes != (0, dim, dim, dim):
            raise DescriberMismatchError(
                f"{where} describes continuous actions with {sizes[1]} action_dims, {sizes[2]} action_low and "
                f"{sizes[3]} action_high ({sizes[0]} action_names) but the env's actions have {dim} dimensions: give "
                f"{dim} of each and no action_names")
    shape = tuple(int(s) for s in core.obs_shape)
    if describer.obs_shape is not None and tuple(describer.obs_shape) != shape:
        raise DescriberMismatchError(f"{where} is for observations of shape {tuple(describer.obs_shape)}, the env's "
                                     f"are {shape}")
    if not describer.features:
        raise DescriberMismatchError(f"{where} has no features: name at least one (raw_feature(name, unit, column))")
    size = math.prod(shape)
    for f in describer.features:
        if f.column is not None and not 0 <= f.column < size:
            raise DescriberMismatchError(f"{where}: feature {f.name!r} reads column {f.column}, outside the flat "
                                         f"observation (size {size}, columns 0..{size - 1})")
    if obs is None:
        return
    obs = np.asarray(obs, np.float64)
    for f in describer.features:
        try:
            value = f.value(obs)
        except Exception as err:  # noqa: BLE001 - a user's feature function: any error is theirs to fix
            text = str(err).splitlines()[0][:120] if str(err) else ""
            raise DescriberMismatchError(f"{where}: feature {f.name!r} fails on the env's first observation "
                                         f"({type(err).__name__}: {text}): it must return a number") from err
        if not math.isfinite(value):
            raise DescriberMismatchError(f"{where}: feature {f.name!r} gives {value} for the env's first observation: "
                                         "a feature must be a finite number")


def list_env_ids() -> list[str]:
    """Every id `make` accepts (brax's only where brax is installed)."""
    from jaxmod.envs.brax_backend import brax_names
    from jaxmod.envs.gymnax_backend import gymnax_ids

    brax = [BRAX_PREFIX + n for n in brax_names()] if brax_available() else []
    return gymnax_ids() + brax + sorted(_OWN_ENVS)


def make_core(env: Any, **options: Any) -> EnvCore:
    """The unbatched `EnvCore` for `env`: an env id, or an env instance (gymnax-API or brax `Env`, see
    `register_env`; its id is its `name` attribute or its class name, its family 'custom'). `options` are backend
    options (e.g. backend='spring' for brax, params fields for gymnax). Raises `UnknownEnvError` for an unknown id,
    `BraxMissingError` for a brax id without brax installed."""
    if not isinstance(env, str):
        if not _is_instance(env):
            raise TypeError(f"make needs an env id or a gymnax-API / brax env instance, got {type(env).__name__}")
        name = getattr(env, "name", None)
        return _wrap(name if isinstance(name, str) and name else type(env).__name__, env, CUSTOM_FAMILY, None,
                     **options)
    env_id = env
    load_env_module(env_id)
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
    env_id: Any,
    *,
    num_envs: int = 1,
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    reward_gamma: float = 0.99,
    clip_actions: bool = True,
    **options: Any,
) -> VecEnv:
    """A batch of `num_envs` copies of `env_id` (an id or an env instance, see `make_core`) behind the shared wrapper
    stack (see `VecEnv`)."""
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
        return wrap_gymnax(PONG_ONE_POINT if one_point else PONG, env, env.default_params, "pong", options=options)

    return factory


PONG, PONG_ONE_POINT = "jaxmod/Pong", "jaxmod/Pong-OnePoint"
register(PONG, _pong(one_point=False))
register(PONG_ONE_POINT, _pong(one_point=True))


def _unknown(env_id: str) -> None:
    valid = list_env_ids()
    close = difflib.get_close_matches(env_id, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownEnvError(f"unknown env id {env_id!r}.{hint} Your own env: register it with "
                          "jaxmod.register_env(EnvId, env) in a module and name it as module:EnvId (e.g. --env "
                          f"myenvs:Hover-v0; examples/custom_env.py). Valid ids: {', '.join(valid)}")
