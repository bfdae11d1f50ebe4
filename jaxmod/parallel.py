"""Many seeds in one program, sharded over all local devices.

Seeds are independent, so sharding the seed axis of the vmapped program over a 1-D `jax.sharding.Mesh` needs no
communication. What is guaranteed (and tested, tests/test_parallel.py): a run is bit-identical to itself on the
same devices; on another number of devices each seed computes the same maths in a differently batched program,
so results agree to floating-point rounding (every metric of the first update within 1e-6 + 1e-4 x its value),
and, as with any change of summation order, trajectories may drift apart over many updates (RL amplifies small
differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmod.ppo.config import HyperParams, PPOConfig
from jaxmod.ppo.train import Metrics, PPOLearner, TrainState

SEED_AXIS = "seeds"


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """One raw PRNG key per seed, derived from a base seed."""
    return jax.random.split(jax.random.PRNGKey(seed), num_seeds)


def seed_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all local devices) whose axis is the seed axis."""
    devices = jax.local_devices() if devices is None else devices
    return Mesh(np.asarray(devices), (SEED_AXIS,))


@dataclass(frozen=True)
class MultiSeed:
    """Jitted init and chunked training over a leading seed axis, sharded when it divides the mesh."""

    config: PPOConfig
    num_seeds: int
    mesh: Mesh | None = None

    def __post_init__(self) -> None:
        _ = self.learner  # the env and network are built now, never first inside a trace (some envs need
        # concrete arrays to build: gymnax's continuous action spaces)

    @cached_property
    def learner(self) -> PPOLearner:
        return PPOLearner(self.config)

    @cached_property
    def sharding(self) -> NamedSharding | None:
        mesh = self.mesh if self.mesh is not None else seed_mesh()
        if mesh.size == 1 or self.num_seeds % mesh.size:
            return None  # one device, or seeds do not split evenly: plain single-device program
        return NamedSharding(mesh, PartitionSpec(SEED_AXIS))

    def _jit(self, fn: Callable, donate: bool = False) -> Callable:
        kwargs = {"donate_argnums": (0,)} if donate else {}
        if self.sharding is None:
            return jax.jit(fn, **kwargs)
        return jax.jit(fn, in_shardings=self.sharding, out_shardings=self.sharding, **kwargs)

    @cached_property
    def _init(self) -> Callable:
        return self._jit(jax.vmap(self.learner.init))

    def init(self, keys: jax.Array, hparams: HyperParams | None = None) -> TrainState:
        """Per-seed train states; `hparams` (optional) must carry a leading seed axis."""
        if keys.shape[0] != self.num_seeds:
            raise ValueError(f"expected {self.num_seeds} keys, got {keys.shape[0]}")
        if hparams is None:
            return self._init(keys)
        fn = self._jit(jax.vmap(lambda k, h: self.learner.init(k, None, h)))
        return fn(keys, hparams)

    def runner(self, num_updates: int) -> Callable[[TrainState], tuple[TrainState, Metrics]]:
        """A jitted `state -> (state, metrics)` that runs `num_updates` updates for every seed (one per
        `num_updates`, kept: calling it again compiles nothing)."""
        runners = self.__dict__.setdefault("_runners", {})
        if num_updates not in runners:
            runners[num_updates] = self._jit(jax.vmap(lambda s: self.learner.run(s, num_updates)), donate=True)
        return runners[num_updates]

    def train(self, keys: jax.Array) -> tuple[TrainState, Metrics]:
        """Whole training for every seed in one call."""
        return self.runner(self.config.num_updates)(self.init(keys))
