"""Fixed-capacity advice arrays the compiled update reads, and host-side packing into them.

`Advice` has capacity K fixed by config: new advice only changes array values (and the `valid`
mask), never shapes, so swapping advice between training chunks never recompiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmod.envs.core import CoreState, EnvCore


@struct.dataclass
class Advice:
    """K critical states with the advisor's suggestion; invalid slots are masked out."""

    obs: jax.Array  # (K, *obs_shape) raw observation at the critical state
    snapshot: CoreState  # (K, ...) restorable env state at the critical state
    action: jax.Array  # (K,) int32 suggested action, or (K, A) float32
    reward: jax.Array  # (K,) implicit reward in [-1, 1]
    rated_action: jax.Array  # (K,) or (K, A): the action the implicit reward rates (the agent's, at the source step)
    weight: jax.Array  # (K,) confidence weight in [0, 1]
    target: jax.Array  # (K, num_actions) float32 for discrete actions: the advisor's distribution over the actions
    # (from an LLM's token log-probabilities, `jaxmod.llm.logprobs`), a row of zeros where it gave none (the KL target
    # is then the one-hot of `action`); (K, 0) for continuous actions
    valid: jax.Array  # (K,) bool
    episode: jax.Array  # (K,) int32 source episode id (traceability)
    step: jax.Array  # (K,) int32 source step within that episode

    @property
    def capacity(self) -> int:
        return int(self.valid.shape[0])

    @staticmethod
    def empty(core: EnvCore, capacity: int) -> Advice:
        """All-invalid advice with the right shapes and dtypes for `core`."""
        snap = jax.eval_shape(core.reset, jax.random.PRNGKey(0))
        snapshot = jax.tree.map(lambda s: jnp.zeros((capacity,) + s.shape, s.dtype), snap)
        space = core.action_space
        action = jnp.zeros((capacity,), jnp.int32) if space.discrete else jnp.zeros((capacity,) + space.shape, jnp.float32)
        target = jnp.zeros((capacity, space.num_actions if space.discrete else 0), jnp.float32)
        return Advice(obs=jnp.zeros((capacity,) + core.obs_shape, jnp.float32), snapshot=snapshot, action=action,
                      rated_action=action, reward=jnp.zeros((capacity,), jnp.float32), weight=jnp.zeros((capacity,), jnp.float32),
                      target=target,
                      valid=jnp.zeros((capacity,), jnp.bool_), episode=jnp.full((capacity,), -1, jnp.int32),
                      step=jnp.full((capacity,), -1, jnp.int32))


def require_advice(advice: Any, spec: Any, who: str) -> Advice:
    """`advice` if it is an `Advice` of `spec`'s env (a `LearnerSpec`: observations [K, *obs_shape], actions [K] or
    [K, *action_shape]); else `ModulationError` (one line, raised while tracing, before anything compiles) saying
    what to pass. `who` names the modulator that reads it."""
    from jaxmod.advice.modulation import ModulationError

    if not isinstance(advice, Advice):
        raise ModulationError(f"{who} reads advice but the learner was given {type(advice).__name__}: pass an Advice "
                              "(`AdviceBook(env.core, capacity).to_advice()`; `Advice.empty(env.core, capacity)` for "
                              "none) as `advice` to `make_train`'s train or `PPOLearner.run`")
    env = spec.env
    space = env.action_space
    action_shape = () if space.discrete else tuple(space.shape)
    got = (tuple(advice.obs.shape[1:]), tuple(advice.action.shape[1:]))
    if got != (tuple(env.obs_shape), action_shape):
        raise ModulationError(f"{who}: the advice holds observations {got[0]} and actions {got[1]}, but the env has "
                              f"{tuple(env.obs_shape)} and {action_shape} (advice of another env? build it with "
                              "this learner's env.core)")
    return advice


@dataclass(frozen=True)
class AdviceItem:
    """One validated answer about one critical state, ready to pack (host-side numpy)."""

    episode: int
    step: int
    obs: np.ndarray
    snapshot: Any  # CoreState of numpy arrays, unbatched
    action: int | Sequence[float]
    reward: float
    weight: float = 1.0
    reason: str = ""
    rated_action: int | Sequence[float] | None = None  # what the implicit reward rates; None: the suggestion
    target: Sequence[float] | None = None  # discrete: the advisor's distribution over the actions; None: one-hot


def finite_state(item: AdviceItem) -> bool:
    """Whether the item's observation and every floating leaf of its snapshot are finite (host-side numpy)."""
    leaves = [item.obs, *jax.tree.leaves(item.snapshot)]
    return all(np.all(np.isfinite(x)) for x in map(np.asarray, leaves) if np.issubdtype(x.dtype, np.inexact))


class AdviceBook:
    """Host-side table of advice: dedupes on (episode, step), replaces the oldest when full, and
    exports `Advice` arrays of fixed capacity."""

    def __init__(self, core: EnvCore, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("advice capacity must be >= 1")
        self.core = core
        self.capacity = capacity
        host = jax.device_get(Advice.empty(core, capacity))
        self._arrays = jax.tree.map(np.array, host)
        self._age = np.full(capacity, -1, np.int64)  # insertion counter per slot (-1 = empty)
        self._index: dict[tuple[int, int], int] = {}
        self._counter = 0
        self.reasons: dict[int, str] = {}
        self.replaced = 0

    def __len__(self) -> int:
        return len(self._index)

    def add(self, item: AdviceItem) -> int:
        """Insert or update; returns the slot used."""
        key = (int(item.episode), int(item.step))
        action = self._action(item.action)
        rated = action if item.rated_action is None else self._action(item.rated_action)
        slot = self._index.get(key)
        if slot is None:
            empty = np.nonzero(self._age < 0)[0]
            if len(empty):
                slot = int(empty[0])
            else:
                slot = int(np.argmin(self._age))
                old = (int(self._arrays.episode[slot]), int(self._arrays.step[slot]))
                self._index.pop(old, None)
                self.replaced += 1
            self._index[key] = slot
        a = self._arrays
        a.obs[slot] = np.asarray(item.obs, np.float32).reshape(self.core.obs_shape)
        for dst, src in zip(jax.tree.leaves(a.snapshot), jax.tree.leaves(item.snapshot), strict=True):
            dst[slot] = np.asarray(src, dst.dtype)
        a.action[slot] = action
        a.rated_action[slot] = rated
        a.reward[slot] = float(np.clip(item.reward, -1.0, 1.0))
        a.weight[slot] = float(np.clip(item.weight, 0.0, 1.0))
        a.target[slot] = 0.0
        if item.target is not None and a.target.shape[1]:
            dist = np.asarray(item.target, np.float64).reshape(-1)
            if dist.shape == (a.target.shape[1],) and np.all(np.isfinite(dist)) and np.all(dist >= 0) \
                    and dist.sum() > 0:  # else: the one-hot target
                a.target[slot] = dist / dist.sum()
        a.valid[slot] = True
        a.episode[slot] = key[0]
        a.step[slot] = key[1]
        self._age[slot] = self._counter
        self._counter += 1
        self.reasons[slot] = item.reason
        return slot

    def _action(self, action: int | Sequence[float]) -> np.ndarray:
        space = self.core.action_space
        if space.discrete:
            return np.int32(int(action))
        return np.asarray(action, np.float32).reshape(space.shape)

    def add_answers(self, items: Sequence[AdviceItem | None], verdicts: Sequence[Any]) -> dict[str, int]:
        """Pack the items whose verdict is a validated `Advised` and whose recorded state is finite; anything else
        (a `Rejected`, None, an exception, a state with a NaN or inf: restarting from it would poison the env and
        the observation normaliser) is counted and never enters the arrays."""
        from jaxmod.llm.answers import Advised

        counts = {"packed": 0, "dropped": 0}
        for item, verdict in zip(items, verdicts, strict=True):
            if item is None or not isinstance(verdict, Advised) or not finite_state(item):
                counts["dropped"] += 1
                continue
            # an LLM's confidence in its multiple choice (the chosen action's probability) weighs the advice
            self.add(AdviceItem(item.episode, item.step, item.obs, item.snapshot, verdict.action, verdict.reward,
                                item.weight * verdict.confidence, verdict.reason, item.rated_action,
                                verdict.distribution))
            counts["packed"] += 1
        return counts

    def to_advice(self) -> Advice:
        """Device arrays of the current table (same shapes every time)."""
        return jax.tree.map(jnp.asarray, self._arrays)

    @staticmethod
    def stacked(books: Sequence[AdviceBook]) -> Advice:
        """Device arrays of several books (one per seed) on a leading axis, stacked on the host and moved in
        one transfer: between training chunks, per-leaf device ops would cost host time on the critical path."""
        return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *(b._arrays for b in books)))
