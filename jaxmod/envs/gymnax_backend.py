"""Adapter from gymnax 1.0 environments to `EnvCore` (no auto-reset, termination only)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.envs.core import ActionSpace, CoreState, EnvCore, EnvError, EnvOptionError, cast_like


def gymnax_ids() -> list[str]:
    """All environment ids gymnax registers."""
    import gymnax

    return list(gymnax.registered_envs)


def _action_space(space: Any) -> ActionSpace:
    """A gymnax `Discrete` (or any space with an integer `n`) or `Box` (any space with `low`, `high`, `shape`)."""
    from gymnax.environments import spaces

    if isinstance(space, spaces.Discrete) or (hasattr(space, "n") and not hasattr(space, "low")):
        return ActionSpace(discrete=True, num_actions=int(space.n))
    if not all(hasattr(space, a) for a in ("low", "high", "shape")):
        raise EnvError(f"unsupported action space {type(space).__name__}: give the env a gymnax spaces.Discrete(n) "
                       "or spaces.Box(low, high, shape) action_space(params)")
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape)
    return ActionSpace(
        discrete=False,
        shape=tuple(space.shape),
        low=tuple(float(x) for x in low.reshape(-1)),
        high=tuple(float(x) for x in high.reshape(-1)),
    )


def make_gymnax(env_id: str, **options: Any) -> EnvCore:
    """Wrap gymnax `env_id`; `options` override fields of the env's default params (e.g. max_steps_in_episode)."""
    import gymnax

    env, params = gymnax.make(env_id)
    family = "minatar" if env_id.endswith("-MinAtar") else "classic" if "-v" in env_id else "gymnax"
    return wrap_gymnax(env_id, env, params, family, options=options)


def is_gymnax_env(env: Any) -> bool:
    """Whether `env` follows the gymnax API: `reset(key, params)`, `step(key, state, action, params)`,
    `default_params`, `action_space(params)`, `observation_space(params)`."""
    return all(hasattr(env, a) for a in ("reset", "step", "default_params", "action_space", "observation_space"))


def _with_options(env_id: str, params: Any, options: dict[str, Any] | None) -> Any:
    """`params` with the user's `options` replacing its fields; an unknown option is an `EnvOptionError` naming the
    valid ones."""
    if not options:
        return params
    fields = getattr(params, "__dataclass_fields__", {})
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise EnvOptionError(f"unknown option(s) {unknown} for {env_id}; valid options: {valid}")
    return params.replace(**{name: _check_option(env_id, name, getattr(params, name), value)
                             for name, value in options.items()})


def _check_option(env_id: str, name: str, default: Any, value: Any) -> Any:
    """`value` of the kind of the option's default (an integer option's whole float becomes an int): a boolean for
    a boolean, a whole number for an integer, a finite number for a float (not a boolean); else an `EnvOptionError`
    naming both. Ranges are the env's own (a value that makes its physics non-finite stops the run loudly)."""
    if name == "max_steps_in_episode":  # `_episode_limit` judges the episode length
        return value
    kind = np.asarray(default).dtype.kind
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "b":
        ok, what = isinstance(value, bool), "true or false"
    elif kind in "iu":
        ok, what = number and float(value).is_integer(), "a whole number"
    elif kind == "f":
        ok, what = number and math.isfinite(value), "a finite number"
    else:
        return value
    if not ok:
        raise EnvOptionError(f"{env_id}: option {name} takes {what} (default {np.asarray(default).item()!r}), "
                             f"got {value!r}")
    return int(value) if kind in "iu" else value


def _episode_limit(env_id: str, params: Any, max_steps: int | None) -> int:
    """Steps after which an episode is cut: `max_steps`, else `params.max_steps_in_episode`; a whole number in
    [1, 2^31) (int32 step counters), else an `EnvOptionError`."""
    if max_steps is None:
        if not hasattr(params, "max_steps_in_episode"):
            raise EnvError(f"{env_id}: how long is an episode? give its params a max_steps_in_episode field, or pass "
                           "max_steps=... when registering it")
        max_steps = params.max_steps_in_episode
    if (isinstance(max_steps, bool) or not isinstance(max_steps, (int, float)) or not 1 <= max_steps < 2**31
            or max_steps != int(max_steps)):
        raise EnvOptionError(f"{env_id}: an episode must last a whole number of steps in [1, 2^31), got {max_steps!r}")
    return int(max_steps)


def wrap_gymnax(env_id: str, env: Any, params: Any, family: str, max_steps: int | None = None,
                options: dict[str, Any] | None = None) -> EnvCore:
    """Adapt any gymnax-API environment object (gymnax's, jaxmod's own such as Pong, or a user's) to `EnvCore`.

    The env's `reset_env` / `step_env` (gymnax's transitions without auto-reset) are used where it has them, else
    its `reset` / `step` (jaxmod resets an episode itself on termination or time limit, so an env's own auto-reset
    is never reached by the learner). `params` is the env's params (`default_params`); `options` replace fields of
    it (the user's `--env-option`s: `max_steps` is not one of them). Episodes are cut at `max_steps` (default:
    `params.max_steps_in_episode`; one of them is required)."""
    params = _with_options(env_id, params, options)
    action_space = _action_space(env.action_space(params))
    max_steps = _episode_limit(env_id, params, max_steps)
    reset_env = getattr(env, "reset_env", env.reset)
    step_env = getattr(env, "step_env", env.step)

    def reset_fn(key: jax.Array) -> CoreState:
        obs, inner = reset_env(key, params)
        return CoreState(inner=inner, obs=jnp.asarray(obs, jnp.float32), time=jnp.int32(0))

    # Reset and step states can differ in weak types; fix the step state's dtypes once.
    probe_key = jax.random.PRNGKey(0)
    probe = jax.eval_shape(reset_fn, probe_key)
    probe_action = jax.ShapeDtypeStruct((), jnp.int32) if action_space.discrete else jax.ShapeDtypeStruct(
        action_space.shape, jnp.float32
    )
    stepped = jax.eval_shape(lambda k, s, a: step_env(k, s.inner, a, params)[1], probe_key, probe, probe_action)

    def reset_typed(key: jax.Array) -> CoreState:
        state = reset_fn(key)
        return state.replace(inner=cast_like(state.inner, stepped))

    def step_fn(key: jax.Array, state: CoreState, action: jax.Array) -> tuple[CoreState, jax.Array, jax.Array]:
        obs, inner, reward, terminated, _ = step_env(key, state.inner, action, params)
        inner = cast_like(inner, stepped)
        nxt = CoreState(inner=inner, obs=jnp.asarray(obs, jnp.float32), time=state.time + 1)
        return nxt, jnp.asarray(reward, jnp.float32), jnp.asarray(terminated, jnp.bool_)

    obs_shape = tuple(probe.obs.shape)
    return EnvCore(
        env_id=env_id,
        obs_shape=obs_shape,
        action_space=action_space,
        max_steps=max_steps,
        reset_fn=reset_typed,
        step_fn=step_fn,
        family=family,
        cheap_reset=True,
        raw=(env, params),
    )
