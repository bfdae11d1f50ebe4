"""Many seeds in one program, sharded over devices; optionally each seed's envs too (data parallel).

Seeds are independent, so sharding the seed axis of the vmapped program over a 1-D `jax.sharding.Mesh` needs no
communication. What is guaranteed (and tested, tests/test_parallel.py): a run is bit-identical to itself on the
same devices; on another number of devices each seed computes the same maths in a differently batched program,
so results agree to floating-point rounding (every metric of the first update within 1e-6 + 1e-4 x its value),
and, as with any change of summation order, trajectories may drift apart over many updates (RL amplifies small
differences).

Data parallel (`env_shards` > 1): a 2-D mesh ("seeds", "envs") of (devices / env_shards) x env_shards devices. Each
seed's N envs are split into `env_shards` blocks of N / env_shards, one per device of its row: the rollout, the
critic and GAE run on each device's own envs; every minibatch is split the same way (`PPOLearner(env_axis=...)`
constrains the minibatch's sample axis to the "envs" axis), so each device computes the loss and gradient of its
slice and the partitioner sums them across the row (an all-reduce: the gradient step's average over the whole
minibatch). The program is the one-device program partitioned by XLA (GSPMD, jaxmod's choice over a hand-written
`shard_map`): the same minibatches, the same random numbers (threefry is partitionable), the same normaliser
statistics and metrics over all N envs. Only the order of floating-point sums changes (per-device partial sums,
then the all-reduce), so a data-parallel run equals the one-device run to rounding (tested on 4 emulated CPU
devices: every metric of every update within 1e-5 + 1e-4 x its value on a tiny CartPole run, see
tests/test_data_parallel.py), and, like any change of summation order, may drift apart over long runs.

`jaxmod ultra`: `SeedPrograms` lays out every program of a run (pretraining, refinement chunks, evaluations,
advisor recordings) by the same rules, seeds over a 1-D mesh or seeds x envs over a 2-D one; its agreement with one
device is tested in tests/test_ultra_mesh.py. Multi-process, process 0 alone runs the advisor: the recordings are
gathered to the hosts (`gather`), and process 0's swap decisions and advice arrays reach the others by
`broadcast_from_primary` (`jaxmod.ultra.multihost`); tested against one process in tests/test_multihost_ultra.py.

Multi-host: after `jax.distributed.initialize` (`init_distributed`), `jax.devices()` lists every process's devices
and the mesh spans them all; each process runs the same program on its own devices. Inputs enter as global arrays
(`global_array`), metrics come back replicated on every process, and `gather` brings a sharded state to every host
(for the checkpoint that process 0 writes).
"""

from __future__ import annotations

import itertools
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmod.ppo.config import ConfigError, HyperParams, PPOConfig
from jaxmod.ppo.train import Metrics, PPOLearner, TrainState, params_finite, seeds_params_finite

SEED_AXIS = "seeds"
ENV_AXIS = "envs"


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """One raw PRNG key per seed, derived from a base seed."""
    return jax.random.split(jax.random.PRNGKey(seed), num_seeds)


def seed_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices, every process's) whose axis is the seed axis."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (SEED_AXIS,))


def seed_sharding(num_seeds: int, mesh: Mesh) -> NamedSharding | None:
    """The seed axis's sharding over a 1-D seed `mesh` (`seed_mesh`): None, i.e. one device's plain program, when the
    mesh has one device or `num_seeds` does not split evenly over its devices (the rule of `MultiSeed` and of
    `SeedPrograms`, so of `jaxmod train` and `jaxmod ultra`)."""
    if mesh.size == 1 or num_seeds % mesh.size:
        return None
    return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def check_layout(num_seeds: int, num_envs: int, env_shards: int, num_devices: int) -> None:
    """Raise `ConfigError` (one line, what to change) unless `env_shards` splits `num_envs` evenly and the devices
    form a (seed shards) x `env_shards` mesh with `num_seeds` a multiple of the seed shards."""
    if isinstance(env_shards, bool) or not isinstance(env_shards, int) or env_shards < 1:
        raise ConfigError(f"env_shards must be an integer >= 1, got {env_shards!r}")
    if env_shards == 1:
        return
    if num_envs % env_shards:
        raise ConfigError(f"env_shards={env_shards} must divide num_envs={num_envs} (each device steps "
                          f"num_envs / env_shards envs of every seed): change --num-envs or --env-shards")
    if num_devices % env_shards:
        raise ConfigError(f"env_shards={env_shards} must divide the {num_devices} device(s) available (the mesh is "
                          f"seed shards x env shards): use --env-shards {math.gcd(num_devices, env_shards)} or more devices")
    seed_shards = num_devices // env_shards
    if num_seeds % seed_shards:
        raise ConfigError(f"seeds={num_seeds} must be a multiple of the {seed_shards} seed shard(s) ({num_devices} "
                          f"devices / env_shards={env_shards}): change --seeds, or --env-shards to {num_devices}")


def data_mesh(env_shards: int, devices: list | None = None) -> Mesh:
    """The 2-D ("seeds", "envs") mesh over `devices` (default: all devices, every process's): rows of `env_shards`
    devices that share one seed's envs."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices).reshape(len(devices) // env_shards, env_shards), (SEED_AXIS, ENV_AXIS))


def global_array(tree: Any, sharding: Any) -> Any:
    """Host values (numpy or single-device arrays, the same on every process) as global arrays laid out by
    `sharding` (one `Sharding`, or a tree of them matching `tree`): each process fills only its devices' blocks."""
    shardings = sharding if not isinstance(sharding, jax.sharding.Sharding) else jax.tree.map(lambda _: sharding, tree)

    def put(x: Any, s: jax.sharding.Sharding) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def check_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Whether the three multi-host settings ask for a multi-process run (all None: no); raises `ConfigError` (one
    line, what to pass) unless they are all given and consistent: `coordinator` HOST:PORT (the address of process
    0, reachable from every process), 1 <= `num_processes`, 0 <= `process_id` < `num_processes`."""
    values = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(v is None for v in values.values()):
        return False
    missing = [flag for flag, v in values.items() if v is None]
    if missing:
        raise ConfigError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I "
                          f"together; missing {', '.join(missing)}")
    host, _, port = str(coordinator).rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--coordinator must be HOST:PORT (process 0's address and a free port, e.g. "
                          f"node001:12345), got {coordinator!r}")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must lie in [0, {num_processes - 1}] (--num-processes {num_processes}), "
                          f"got {process_id}")
    try:  # a typo'd host fails here at once, not after the join timeout
        socket.getaddrinfo(host.strip("[]"), int(port))
    except (OSError, UnicodeError):
        raise ConfigError(f"--coordinator {coordinator}: the host {host!r} does not resolve here; give process 0's "
                          "hostname or IP address") from None
    return True


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                     timeout_s: int = 300, settings: str = "") -> bool:
    """Join JAX's distributed runtime (`jax.distributed.initialize`) when the settings ask for it (see
    `check_distributed`; call it before anything touches a device). Afterwards `jax.devices()` lists every
    process's devices. Returns whether it joined. `timeout_s`: how long to wait for the other processes;
    `settings`: a digest of the run's settings, which every process must share (`settings_digest`).

    First every process meets process 0 on the coordinator's port over plain TCP (`_gather_processes`,
    `_report_to_process_0`): JAX's own join aborts a process with a fatal log when a peer never comes, or when
    the processes disagree on their number or their programs; here each of those is one line (`DistributedError`)
    on every process, before JAX's runtime starts."""
    if not check_distributed(coordinator, num_processes, process_id):
        return False
    if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
        raise ConfigError(f"--join-timeout must be a whole number of seconds >= 1, got {timeout_s!r}")
    host, _, port = coordinator.rpartition(":")
    start, settings = time.monotonic(), settings or "-"
    if process_id == 0:
        _gather_processes(int(port), num_processes, timeout_s, settings)
    else:
        _report_to_process_0(host.strip("[]"), int(port), process_id, num_processes, timeout_s, settings)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=max(1, timeout_s - int(time.monotonic() - start)))
    return True


def settings_digest(settings: dict[str, Any]) -> str:
    """A short digest of a run's settings (a config's `to_dict()`), the same on every process of one run: the
    canonical-JSON sha256 of `jaxmod.llm.cache.request_key`, cut to 16 hex digits."""
    from jaxmod.llm.cache import request_key

    return request_key(settings)[:16]


JOIN = "jaxmod-join"  # the first word of a process's hello to process 0


def _gather_processes(port: int, num_processes: int, timeout_s: int, settings: str) -> None:
    """Process 0: wait on `port` until every other process has said hello with the same process count and settings,
    then tell them all to go. Raises `ConfigError` (the port is taken) or `DistributedError` (one line: who did not
    come in time, or who disagrees); the processes that did come are told why and stop too."""
    deadline = time.monotonic() + timeout_s
    joined: dict[int, socket.socket] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as err:
            raise ConfigError(f"--coordinator's port {port} cannot be served here ({err.strerror}): choose a free "
                              "port, the same for every process") from None
        server.listen(max(1, num_processes))
        try:
            while len(joined) < num_processes - 1:
                if time.monotonic() >= deadline:
                    missing = [i for i in range(1, num_processes) if i not in joined]
                    raise DistributedError(
                        f"process 0 waited {timeout_s} s for process(es) {', '.join(map(str, missing))} of "
                        f"{num_processes} to join at port {port}: start them with the same --coordinator and "
                        f"--num-processes {num_processes}, or give a longer --join-timeout")
                server.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                hello = _hello(conn)
                if hello is None:  # not a jaxmod process (a port probe, a stray client): ignored
                    conn.close()
                    continue
                problem = _disagreement(hello, num_processes, settings, joined)
                if problem:
                    try:
                        conn.sendall(f"stop {problem}\n".encode())
                    except OSError:
                        pass
                    conn.close()
                    raise DistributedError(problem)
                joined[hello[0]] = conn
            for conn in joined.values():
                conn.sendall(b"go\n")
            for conn in joined.values():  # they close first: no lingering connection on process 0's port
                conn.settimeout(10.0)
                try:
                    while conn.recv(64):
                        pass
                except OSError:
                    pass
        except DistributedError as err:
            for conn in joined.values():
                try:
                    conn.sendall(f"stop {err}\n".encode())
                except OSError:
                    pass
            raise
        finally:
            for conn in joined.values():
                conn.close()


def _hello(conn: socket.socket) -> tuple[int, int, str] | None:
    """(process id, process count, settings digest) from a process's hello line, or None if it is not one."""
    conn.settimeout(5.0)
    try:
        words = _read_line(conn).split()
    except OSError:
        return None
    if len(words) != 4 or words[0] != JOIN or not (words[1].isdigit() and words[2].isdigit()):
        return None
    return int(words[1]), int(words[2]), words[3]


def _disagreement(hello: tuple[int, int, str], num_processes: int, settings: str,
                  joined: dict[int, socket.socket]) -> str | None:
    """Why process 0 refuses a hello (None: it does not)."""
    pid, count, theirs = hello
    if count != num_processes:
        return (f"process {pid} was started with --num-processes {count}, process 0 with {num_processes}: give every "
                "process the same --num-processes")
    if not 1 <= pid < num_processes or pid in joined:
        return f"a second process was started with --process-id {pid}: give each process its own id"
    if theirs != settings:
        return (f"process {pid} was started with other run settings than process 0: give every process the same "
                "flags and config (only --process-id and --out may differ)")
    return None


def _read_line(conn: socket.socket, limit: int = 512) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        piece = conn.recv(limit - len(data))
        if not piece:
            break
        data += piece
    return data.decode("utf-8", "replace").strip()


def _report_to_process_0(host: str, port: int, process_id: int, num_processes: int, timeout_s: int,
                         settings: str) -> None:
    """Process `process_id`: say hello to process 0 at host:port (retrying until it listens) and wait for its go.
    Raises `DistributedError` (one line) when it cannot be reached in `timeout_s` seconds, does not answer as a
    jaxmod process 0, or stops the run (its reason given)."""
    deadline = time.monotonic() + timeout_s
    who = f"process {process_id} of {num_processes}"
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            break
        except OSError as err:
            why = err.strerror or type(err).__name__
        if time.monotonic() + 0.5 >= deadline:
            raise DistributedError(
                f"{who} could not reach the coordinator at {host}:{port} within {timeout_s} s ({why}): start "
                "process 0 (--process-id 0) on that host, check that the port is open between the hosts, or give "
                "a longer --join-timeout")
        time.sleep(0.5)
    with conn:
        try:
            conn.sendall(f"{JOIN} {process_id} {num_processes} {settings}\n".encode())
            conn.settimeout(max(1.0, deadline - time.monotonic()) + 10.0)  # process 0 waits for the others first
            answer = _read_line(conn)
        except OSError as err:
            answer = f"(no answer: {err.strerror or type(err).__name__})"
    if answer == "go":
        return
    if answer.startswith("stop "):
        raise DistributedError(f"process 0 stopped the run before it started: {answer[5:]}")
    raise DistributedError(f"{who}: the coordinator at {host}:{port} did not answer as a jaxmod process 0 "
                           f"({answer[:80] or 'it closed the connection'}): give process 0's host and --coordinator "
                           "port, the same for every process")


class DistributedError(RuntimeError):
    """A multi-process run could not start: the processes did not meet at the coordinator in time (one line)."""


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always true in a single-process run)."""
    return jax.process_index() == 0


_BARRIERS = itertools.count()


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait until every process reaches this point (the distributed runtime's coordination barrier: no device
    collective). A no-op in a single-process run. Every process calls the same barriers in the same order."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the runtime's client (orbax waits at its barriers the same way)

    distributed.global_state.client.wait_at_barrier(f"jaxmod-{name}-{next(_BARRIERS)}", timeout_in_ms=timeout_s * 1000)


def run_synced(jitted: Callable, *args: Any, name: str = "run") -> Any:
    """`jitted(*args)`, but in a multi-process run compiled first and run only once every process has compiled it:
    a CPU's collectives (gloo) give up on a peer that joins more than 30 s late, and compile times differ."""
    if jax.process_count() == 1:
        return jitted(*args)
    compiled = jitted.lower(*args).compile()
    barrier(name)
    return compiled(*args)


def gather(tree: Any) -> Any:
    """A tree of (possibly sharded, possibly multi-process) arrays as numpy arrays on every process: in a
    multi-process run every process must call it at the same point (the arrays that span other processes' devices
    are replicated by one compiled program, run once every process has compiled it: `run_synced`); single
    process: `jax.device_get`."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if spread:
        mesh = leaves[spread[0]].sharding.mesh
        got = run_synced(_replicator(mesh), [leaves[i] for i in spread], name="gather")
        for i, x in zip(spread, got, strict=True):
            leaves[i] = x
    return jax.device_get(jax.tree.unflatten(treedef, leaves))


_REPLICATORS: dict[Any, Callable] = {}


def _replicator(mesh: Mesh) -> Callable:
    """A jitted identity whose results are replicated over `mesh` (one per mesh, kept: traced once per shapes)."""
    if mesh not in _REPLICATORS:
        _REPLICATORS[mesh] = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))
    return _REPLICATORS[mesh]


ADVICE_WAIT_S = 6 * 3600  # how long a process waits for process 0 at a broadcast (its advisor may be slow)


def broadcast_from_primary(data: np.ndarray, name: str = "broadcast") -> np.ndarray:
    """Process 0's `data` (a 1-D uint8 buffer; every process passes one of the same size, whose contents are ignored
    except on process 0) on every process; `data` itself in a single-process run. Every process waits at a
    coordination barrier first (no device collective waits on a slow peer: a CPU's collectives give up after
    30 s), then one `multihost_utils.broadcast_one_to_all` copies the bytes (exact: an integer sum with zeros)."""
    if jax.process_count() == 1:
        return data
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError(f"broadcast_from_primary takes a 1-D uint8 buffer, got {data.dtype} {data.shape}")
    from jax.experimental import multihost_utils

    barrier(name, timeout_s=ADVICE_WAIT_S)
    return np.asarray(multihost_utils.broadcast_one_to_all(data))


def to_bytes(tree: Any) -> np.ndarray:
    """A tree of host arrays as one 1-D uint8 buffer (its leaves' bytes in order; `from_bytes` reads it back)."""
    parts = [np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8) for x in jax.tree.leaves(tree)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def from_bytes(data: np.ndarray, like: Any) -> Any:
    """`to_bytes`' inverse: the tree `like` (host arrays: the shapes and dtypes to read) with `data`'s values."""
    leaves, treedef = jax.tree.flatten(like)
    out, at = [], 0
    for x in leaves:
        x = np.asarray(x)
        out.append(data[at:at + x.nbytes].copy().view(x.dtype).reshape(x.shape))
        at += x.nbytes
    if at != data.size:
        raise ValueError(f"{data.size} bytes do not hold the tree ({at} bytes)")
    return jax.tree.unflatten(treedef, out)


class _SeedLayout:
    """The device layout `MultiSeed` and `SeedPrograms` share, read from their `num_seeds`, `mesh` and `env_shards`
    fields: the mesh (given, else every device: a 1-D `seed_mesh`, or with `env_shards` > 1 a 2-D `data_mesh`) and
    the seed axis's sharding."""

    num_seeds: int
    mesh: Mesh | None
    env_shards: int

    def _check_layout(self, num_envs: int) -> None:
        """`check_layout` for `num_envs` envs per seed on the mesh's devices, and the mesh's env axis against
        `env_shards`; raises `ConfigError`."""
        check_layout(self.num_seeds, num_envs, self.env_shards,
                     jax.device_count() if self.mesh is None else self.mesh.size)
        if self.mesh is not None and self.mesh.shape.get(ENV_AXIS) != self.env_shards:
            raise ConfigError(f"the mesh's {ENV_AXIS!r} axis has {self.mesh.shape.get(ENV_AXIS)} device(s), "
                              f"env_shards={self.env_shards}: build it with data_mesh(env_shards)")

    def _check_processes(self) -> None:
        """A multi-process run must spread the seeds over every process's devices (else every process would run
        the whole one-device program); raises `ConfigError`."""
        if jax.process_count() > 1 and self.sharding is None:
            raise ConfigError(f"a multi-process run spreads the seeds over the {self._mesh.size} devices of its "
                              f"{jax.process_count()} processes: --seeds must be a multiple of {self._mesh.size} "
                              f"(got {self.num_seeds})")

    def describe(self) -> str:
        """Where the seeds run, in words (for a run's header): '4 cpu devices', 'one gpu device', or one device with
        why the seeds were not spread."""
        mesh = self._mesh
        platform = mesh.devices.flat[0].platform
        processes = f" of {jax.process_count()} processes" if jax.process_count() > 1 else ""
        if self.data_parallel:
            return (f"{mesh.size} {platform} devices{processes} ({mesh.shape[SEED_AXIS]} seed shard(s) x "
                    f"{self.env_shards} env shards)")
        if self.sharding is not None:
            return f"{mesh.size} {platform} devices{processes}"
        if mesh.size == 1:
            return f"one {platform} device"
        return (f"one {platform} device ({self.num_seeds} seeds do not split evenly over {mesh.size} devices: use a "
                f"multiple of {mesh.size} seeds to spread them)")

    @property
    def data_parallel(self) -> bool:
        return self.env_shards > 1

    @cached_property
    def _mesh(self) -> Mesh:
        if self.mesh is not None:
            return self.mesh
        return data_mesh(self.env_shards) if self.data_parallel else seed_mesh()

    @cached_property
    def sharding(self) -> NamedSharding | None:
        """The seed axis's sharding (None: one device's plain program: one device, or the seeds do not split evenly
        over a 1-D mesh)."""
        if self.data_parallel:
            return NamedSharding(self._mesh, PartitionSpec(SEED_AXIS))
        return seed_sharding(self.num_seeds, self._mesh)


@dataclass(frozen=True)
class MultiSeed(_SeedLayout):
    """Jitted init and chunked training over a leading seed axis, sharded when it divides the mesh; with
    `env_shards` > 1 each seed's envs are sharded too (data parallel, see the module doc)."""

    config: PPOConfig
    num_seeds: int
    mesh: Mesh | None = None  # env_shards == 1: a 1-D seed mesh (default: all devices); else a 2-D data_mesh
    env_shards: int = 1  # devices that share one seed's envs (1: a seed's envs stay on one device)

    def __post_init__(self) -> None:
        if self.env_shards != 1 or (self.mesh is not None and ENV_AXIS in self.mesh.axis_names):
            self._check_layout(self.config.num_envs)
        self._check_processes()
        _ = self.learner  # the env and network are built now, never first inside a trace (some envs need
        # concrete arrays to build: gymnax's continuous action spaces)

    @cached_property
    def learner(self) -> PPOLearner:
        return PPOLearner(self.config, env_axis=ENV_AXIS if self.data_parallel else None)

    @cached_property
    def metrics_sharding(self) -> NamedSharding | None:
        """Metrics come back replicated on every device (every process can read them: they are small)."""
        return None if self.sharding is None else NamedSharding(self._mesh, PartitionSpec())

    def state_sharding(self, state: TrainState) -> Any:
        """A tree of shardings for a (seed-batched) train state: the seed axis over "seeds"; with data parallel,
        the env axis of the env state and the policy inputs over "envs" too (the normalisers, parameters,
        optimiser and modulator state are replicated along "envs")."""
        seeds = self.sharding
        if not self.data_parallel:
            return jax.tree.map(lambda _: seeds, state)
        return train_state_sharding(state, self._mesh)

    @cached_property
    def _state_sharding(self) -> Any:
        shapes = jax.eval_shape(jax.vmap(self.learner.init), jax.ShapeDtypeStruct((self.num_seeds, 2), np.uint32))
        return self.state_sharding(shapes)

    def _traced(self, fn: Callable) -> Callable:
        """`fn` traced with the mesh in context (the learner's sharding constraints name its axes) and its vmap
        over seeds mapped to the "seeds" axis."""
        if not self.data_parallel:
            return jax.vmap(fn)
        mapped = jax.vmap(fn, spmd_axis_name=SEED_AXIS)
        abstract = self._mesh.abstract_mesh

        def traced(*args: Any) -> Any:
            with jax.sharding.use_abstract_mesh(abstract):
                return mapped(*args)

        return traced

    def _jit(self, fn: Callable, donate: bool = False) -> Callable:
        kwargs = {"donate_argnums": (0,)} if donate else {}
        if self.sharding is None:
            return jax.jit(fn, **kwargs)
        return jax.jit(fn, in_shardings=self.sharding, out_shardings=self.sharding, **kwargs)

    def place(self, state: TrainState) -> TrainState:
        """A state from the host (a checkpoint's, or another layout's) laid out for this program."""
        if self.sharding is None:
            return state
        return global_array(state, self._state_sharding)

    @cached_property
    def _init(self) -> Callable:
        return self._init_fn(False)

    def _init_fn(self, with_hparams: bool) -> Callable:
        if with_hparams:
            def fn(k, h):
                return self.learner.init(k, None, h)
        else:
            fn = self.learner.init
        if self.sharding is None:
            return jax.jit(jax.vmap(fn))
        ins = (self.sharding, self.sharding) if with_hparams else (self.sharding,)
        return jax.jit(self._traced(fn), in_shardings=ins, out_shardings=self._state_sharding)

    def init(self, keys: jax.Array, hparams: HyperParams | None = None) -> TrainState:
        """Per-seed train states; `hparams` (optional) must carry a leading seed axis."""
        if keys.shape[0] != self.num_seeds:
            raise ValueError(f"expected {self.num_seeds} keys, got {keys.shape[0]}")
        if self.sharding is not None:
            keys = global_array(jax.device_get(keys), self.sharding)
            hparams = None if hparams is None else global_array(jax.device_get(hparams), self.sharding)
        if hparams is None:
            return run_synced(self._init, keys, name="init")
        return run_synced(self._init_fn(True), keys, hparams, name="init")

    def runner(self, num_updates: int) -> Callable[[TrainState], tuple[TrainState, Metrics]]:
        """A jitted `state -> (state, metrics)` that runs `num_updates` updates for every seed (one per
        `num_updates`, kept: calling it again compiles nothing)."""
        runners = self.__dict__.setdefault("_runners", {})
        if num_updates not in runners:
            fn = self._traced(lambda s: self.learner.run(s, num_updates))
            if self.sharding is None:
                runners[num_updates] = jax.jit(fn, donate_argnums=(0,))
            else:
                runners[num_updates] = jax.jit(fn, in_shardings=(self._state_sharding,), donate_argnums=(0,),
                                               out_shardings=(self._state_sharding, self.metrics_sharding))
        return runners[num_updates]

    def params_finite(self, state: TrainState) -> np.ndarray:
        """[S] bool on the host (every process): each seed's parameters are all finite."""
        if self.sharding is None:
            return seeds_params_finite(state.params)
        fn = self.__dict__.setdefault("_finite", jax.jit(jax.vmap(params_finite), out_shardings=self.metrics_sharding))
        return np.asarray(run_synced(fn, state.params, name="finite"))

    def train(self, keys: jax.Array) -> tuple[TrainState, Metrics]:
        """Whole training for every seed in one call."""
        return run_synced(self.runner(self.config.num_updates), self.init(keys), name="train")


@dataclass(frozen=True)
class SeedPrograms(_SeedLayout):
    """Programs vmapped over a leading seed axis (every argument and result [S, ...]) for `jaxmod ultra`
    (`jaxmod.ultra.pipeline.UltraRun`: its pretraining, the baselines' explanations, refinement chunks, evaluations
    and recordings), laid out over the devices as `MultiSeed` lays out `jaxmod train`'s (`mesh` defaults to every
    device of `jax.devices()`: in a multi-process run, every process's).

    Multi-process (after `init_distributed`): the mesh spans every process's devices and the seeds must split over
    it (else `ConfigError`: a plain one-device program would run whole on every process); every process calls the
    same programs in the same order, arguments enter through `put` (host values the same on every process), and
    results are read on the host through `gather` (every process, at the same point).

    `env_shards` == 1: the seed axis is sharded over a 1-D seed mesh when `num_seeds` splits evenly over its devices
    (`seed_sharding`); otherwise (one device, or e.g. 5 seeds on 4 devices) the programs are the plain one-device
    `jax.jit(jax.vmap(fn))`, unchanged, on the default device. Seeds are independent: no communication; each device
    computes its seeds in a smaller batch, so results equal the one-device program's to floating-point rounding.

    `env_shards` > 1 (data parallel): the 2-D ("seeds", "envs") `data_mesh`; `check_layout` must hold for
    `num_seeds`, `num_envs` (the learner's) and the devices, else `ConfigError`. Every train state in an argument or
    result has its env state and observations ([S, N, ...]) split over "envs" as well (`train_state_sharding`), so
    a learner built with `env_axis=ENV_AXIS` steps num_envs / env_shards envs of a seed per device and averages
    its minibatch gradients across them (see the module doc); everything else (advice, keys, parameters, the
    evaluation's and recording's own envs) is split over "seeds" only and replicated along "envs": an evaluation
    runs whole on each device of its seed's row."""

    num_seeds: int
    mesh: Mesh | None = None  # env_shards == 1: a 1-D seed mesh (`seed_mesh`), else a 2-D `data_mesh`; None: every device
    env_shards: int = 1  # devices that share one seed's envs (1: a seed's envs stay on one device)
    num_envs: int = 0  # the learner's envs per seed (checked against env_shards when data parallel)

    def __post_init__(self) -> None:
        if self.data_parallel:
            self._check_layout(self.num_envs)
        self._check_processes()

    @property
    def env_axis(self) -> str | None:
        """The mesh axis a learner's envs are split over (`PPOLearner.env_axis`); None: not split."""
        return ENV_AXIS if self.data_parallel else None

    @property
    def num_devices(self) -> int:
        """Devices the programs run on (1: one device's plain program)."""
        return 1 if self.sharding is None else self._mesh.size

    def shardings(self, tree: Any) -> Any:
        """The layout of `tree` (leaves [S, ...]; a prefix tree of shardings): the seed axis's sharding, and with data
        parallel each train state's `train_state_sharding`."""
        if not self.data_parallel:
            return self.sharding
        return jax.tree.map(lambda x: train_state_sharding(x, self._mesh) if isinstance(x, TrainState)
                            else jax.tree.map(lambda _: self.sharding, x), tree,
                            is_leaf=lambda x: isinstance(x, TrainState))

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """`jax.jit(jax.vmap(fn), **kwargs)`, with every argument and result laid out by `shardings` when sharded
        (arguments on the host, or uncommitted, are moved there by the call; committed device arrays of another
        layout must pass through `put` first). Data parallel: the layout is read from the first call's (or
        `lower`'s) arguments and results, and kept."""
        if self.sharding is None:
            return jax.jit(jax.vmap(fn), **kwargs)
        if not self.data_parallel:
            return jax.jit(jax.vmap(fn), in_shardings=self.sharding, out_shardings=self.sharding, **kwargs)
        return _LaidOut(self, fn, kwargs)

    def put(self, tree: Any) -> Any:
        """`tree` (leaves [S, ...]: host or device arrays of any layout) laid out for these programs' arguments; the
        identity on one device."""
        return tree if self.sharding is None else jax.device_put(tree, self.shardings(tree))

def train_state_sharding(state: TrainState, mesh: Mesh) -> Any:
    """A tree of shardings for a (seed-batched) train state on a 2-D `data_mesh`: the seed axis over "seeds", and
    the env axis of the env state and of the policy inputs over "envs" too (the normalisers, parameters, optimiser
    and modulator state are replicated along "envs")."""
    seeds = NamedSharding(mesh, PartitionSpec(SEED_AXIS))
    envs = NamedSharding(mesh, PartitionSpec(SEED_AXIS, ENV_AXIS))
    tree = jax.tree.map(lambda _: seeds, state)
    per_env = jax.tree.map(lambda _: envs, state.env_state.replace(obs_rms=None, return_rms=None))
    per_env = per_env.replace(obs_rms=tree.env_state.obs_rms, return_rms=tree.env_state.return_rms)
    return tree.replace(env_state=per_env, obs=envs)


class _LaidOut:
    """`SeedPrograms.jit` with data parallel: `jax.jit` of `fn` vmapped over seeds (the vmap mapped to the "seeds"
    axis, traced with the mesh in context: the learner's sharding constraints name its axes), its in and out
    shardings derived from the first call's arguments and results and kept (calling it again compiles nothing)."""

    def __init__(self, programs: SeedPrograms, fn: Callable, kwargs: dict[str, Any]) -> None:
        self.programs, self.kwargs, self._jitted = programs, kwargs, None
        mapped = jax.vmap(fn, spmd_axis_name=SEED_AXIS)
        abstract = programs._mesh.abstract_mesh

        def traced(*args: Any) -> Any:
            with jax.sharding.use_abstract_mesh(abstract):
                return mapped(*args)

        self.traced = traced

    def _jit(self, args: tuple) -> Any:
        if self._jitted is None:
            p = self.programs
            out = jax.eval_shape(self.traced, *args)
            self._jitted = jax.jit(self.traced, in_shardings=tuple(p.shardings(a) for a in args),
                                   out_shardings=p.shardings(out), **self.kwargs)
        return self._jitted

    def __call__(self, *args: Any) -> Any:
        return self._jit(args)(*args)

    def lower(self, *args: Any) -> Any:
        return self._jit(args).lower(*args)

    def _cache_size(self) -> int:
        return 0 if self._jitted is None else self._jitted._cache_size()
