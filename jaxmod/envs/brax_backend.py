"""Adapter from brax environments (`brax/<name>`) to `EnvCore`.

We use brax's environments only, never `brax.training` (broken on jax >= 0.10). Time limits and
auto-reset come from `VecEnv`, so brax's own Episode/AutoReset wrappers are not used.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxmod.envs.core import ActionSpace, CoreState, EnvCore, EnvOptionError, cast_like
from jaxmod.envs.sparse import SPARSE_SUFFIX, SPARSE_THRESHOLDS

BRAX_BACKENDS = ("positional", "spring", "generalized", "mjx")
DEFAULT_BRAX_BACKEND = "positional"  # fastest step on CPU and GPU among the stable ones (anchors.md)
DEFAULT_EPISODE_LENGTH = 1000


def brax_names() -> list[str]:
    """Names brax registers (used as `brax/<name>`), plus RICE's sparse variants (`hopper-sparse`, ...)."""
    from brax import envs

    names = sorted(envs._envs)  # noqa: SLF001 - brax exposes no public listing
    return names + [n + SPARSE_SUFFIX for n in SPARSE_THRESHOLDS if n in names]


def make_brax(name: str, backend: str = DEFAULT_BRAX_BACKEND, episode_length: int = DEFAULT_EPISODE_LENGTH,
              sparse_threshold: float | None = None, **options: Any) -> EnvCore:
    """Wrap brax env `name` on `backend`; other `options` go to the brax env constructor.

    `<name>-sparse` is RICE's sparse variant of `name`: reward = x-position once x > threshold, else 0
    (`sparse_threshold` overrides the threshold); termination is the dense env's.
    """
    from brax import envs

    sparse = name.endswith(SPARSE_SUFFIX)
    base = name[: -len(SPARSE_SUFFIX)] if sparse else name
    if sparse_threshold is not None and not sparse:
        raise EnvOptionError(f"sparse_threshold applies to sparse ids only, e.g. brax/{name}{SPARSE_SUFFIX}")
    threshold = (SPARSE_THRESHOLDS[base] if sparse_threshold is None else float(sparse_threshold)) if sparse else 0.0
    if backend not in BRAX_BACKENDS:
        raise EnvOptionError(f"unknown brax backend {backend!r}; choose one of {', '.join(BRAX_BACKENDS)}")
    try:
        env = envs.get_environment(base, backend=backend, **options)
    except TypeError as err:
        raise EnvOptionError(f"bad option for brax/{name}: {err}") from None

    def raw_reset(key: jax.Array) -> Any:
        return env.reset(key)

    probe_key = jax.random.PRNGKey(0)
    reset_shape = jax.eval_shape(raw_reset, probe_key)
    act = jax.ShapeDtypeStruct((env.action_size,), jnp.float32)
    stepped = jax.eval_shape(env.step, reset_shape, act)

    def reset_fn(key: jax.Array) -> CoreState:
        inner = cast_like(env.reset(key), stepped)
        return CoreState(inner=inner, obs=inner.obs.astype(jnp.float32), time=jnp.int32(0))

    def step_fn(key: jax.Array, state: CoreState, action: jax.Array) -> tuple[CoreState, jax.Array, jax.Array]:
        del key  # brax dynamics are deterministic
        inner = cast_like(env.step(state.inner, action), stepped)
        nxt = CoreState(inner=inner, obs=inner.obs.astype(jnp.float32), time=state.time + 1)
        reward = inner.reward.astype(jnp.float32)
        if sparse:
            x = inner.pipeline_state.q[0]  # root slide joint: the torso's x-position
            reward = jnp.where(x > threshold, x, 0.0).astype(jnp.float32)
        return nxt, reward, inner.done > 0.5

    return EnvCore(
        env_id=f"brax/{name}",
        obs_shape=(int(env.observation_size),),
        action_space=ActionSpace(
            discrete=False, shape=(int(env.action_size),),
            low=(-1.0,) * int(env.action_size), high=(1.0,) * int(env.action_size),
        ),
        max_steps=int(episode_length),
        reset_fn=reset_fn,
        step_fn=step_fn,
        family="brax",
        cheap_reset=False,
        raw=env,
    )
