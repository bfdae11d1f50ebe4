"""Backend-neutral single-environment interface that every wrapper builds on.

A backend (gymnax, brax, our own JAX envs) is adapted to `EnvCore`: a pure `reset(key)` and a
pure `step(key, state, action)` that never auto-resets and reports termination only. Time limits,
auto-reset, statistics and normalisation are added once, for all backends, by `VecEnv`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class EnvError(ValueError):
    """A user mistake about environments (unknown id, bad option); the message says what to do."""


class EnvOptionError(EnvError):
    """An option the env's backend does not accept."""


@dataclass(frozen=True)
class ActionSpace:
    """Discrete (`num_actions` > 0) or continuous box (`low`/`high` of shape `shape`)."""

    discrete: bool
    num_actions: int = 0
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def dim(self) -> int:
        """Number of network outputs for the policy head (logits or Gaussian means)."""
        return self.num_actions if self.discrete else math.prod(self.shape)

    @property
    def span(self) -> Any:
        """high - low per action dimension (a numpy array) for a box; None for discrete actions."""
        import numpy as np

        return None if self.discrete else np.asarray(self.high, np.float32) - np.asarray(self.low, np.float32)

    @property
    def unit(self) -> Any:
        """Half of high - low per action dimension where both bounds are finite, 1 elsewhere (numpy float32 [A]):
        the scale continuous advice is measured in (a target's or kernel's std of 0.2 is 0.2 half-ranges, so the
        same knob means the same on [-1, 1] and [-2, 2]); None for discrete actions."""
        import numpy as np

        if self.discrete:
            return None
        half = (np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64)) / 2
        return np.where(np.isfinite(half) & (half > 0), half, 1.0).astype(np.float32).reshape(-1)

    def contains(self, action: Any) -> bool:
        """Host-side check used to validate untrusted actions (LLM advice)."""
        import numpy as np

        a = np.asarray(action)
        if self.discrete:
            return a.shape == () and np.issubdtype(a.dtype, np.integer) and 0 <= int(a) < self.num_actions
        return (
            a.shape == self.shape
            and bool(np.all(np.isfinite(a)))
            and bool(np.all(a >= np.asarray(self.low)))
            and bool(np.all(a <= np.asarray(self.high)))
        )


def checked_action(space: ActionSpace, action: Any, shape: tuple[int, ...] | None = None) -> Any:
    """A discrete action at the env boundary: integers only (a float or bool dtype raises `EnvError`, also while
    tracing: dtypes are static); of `shape` when given (`()` for one env, `(num_envs,)` for a `VecEnv`; another
    shape raises `EnvError`, also while tracing: shapes are static); concrete values outside [0, num_actions) raise
    `EnvError` (eager use: a user's or a script's mistake); traced values are clipped into range in their own dtype
    and then cast (the documented rule inside compiled code, as continuous actions are clipped to their box: a
    negative value acts as 0, a value above the top action, even uint32's maximum, as num_actions - 1; a policy's
    samples are always in range). Returns int32. Continuous actions pass through (`VecEnv` clips them)."""
    if not space.discrete:
        return action
    dtype = jnp.result_type(action)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise EnvError(f"discrete actions must be integers in [0, {space.num_actions}), got dtype {dtype}: pass "
                       "integer actions (e.g. .astype(int))")
    if shape is not None and tuple(jnp.shape(action)) != tuple(shape):
        what = "a single env takes a scalar action" if shape == () else f"{shape[0]} envs take actions of shape {shape}"
        raise EnvError(f"{what}, got shape {tuple(jnp.shape(action))}")
    if not isinstance(action, jax.core.Tracer):
        import numpy as np

        a = np.asarray(action)
        if a.size and (a.min() < 0 or a.max() >= space.num_actions):
            raise EnvError(f"discrete action(s) {sorted(set(a[(a < 0) | (a >= space.num_actions)].tolist()))[:5]} "
                           f"out of range: this env's actions are 0..{space.num_actions - 1}")
    # clip in the action's own dtype (casting first would wrap uint32's maximum to -1), then cast
    top = min(space.num_actions - 1, int(jnp.iinfo(dtype).max))
    action = jnp.asarray(action, dtype)
    return jnp.clip(action, jnp.asarray(0, dtype), jnp.asarray(top, dtype)).astype(jnp.int32)


@struct.dataclass
class CoreState:
    """A restorable snapshot of one environment: backend state, raw observation, step count.

    This is exactly what `VecEnv.reset_to` accepts, so a stored `CoreState` restarts an env
    bit-for-bit where it was (ULTRA restarts from critical states).
    """

    inner: Any
    obs: jax.Array
    time: jax.Array


@dataclass(frozen=True)
class EnvCore:
    """One unbatched environment as pure functions plus static metadata."""

    env_id: str
    obs_shape: tuple[int, ...]
    action_space: ActionSpace
    max_steps: int
    reset_fn: Callable[[jax.Array], CoreState]
    step_fn: Callable[[jax.Array, CoreState, jax.Array], tuple[CoreState, jax.Array, jax.Array]]
    family: str
    cheap_reset: bool = True
    raw: Any = None  # the backend env object, for describers and rendering

    def reset(self, key: jax.Array) -> CoreState:
        """A fresh initial state from the env's own initial distribution."""
        return self.reset_fn(key)

    def step(self, key: jax.Array, state: CoreState, action: jax.Array) -> tuple[CoreState, jax.Array, jax.Array]:
        """One transition without auto-reset: (next state, reward, terminated). Discrete actions are checked
        and cast (`checked_action`): one env takes a scalar action."""
        return self.step_fn(key, state, checked_action(self.action_space, action, shape=()))


def cast_like(tree: Any, like: Any) -> Any:
    """Cast every leaf of `tree` to the dtype of the matching leaf of `like` (reset vs step states)."""
    return jax.tree.map(lambda x, y: jnp.asarray(x, dtype=jnp.result_type(y)), tree, like)
