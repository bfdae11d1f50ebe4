"""Adapter from brax environments (`brax/<name>`) to `EnvCore`.

We use brax's environments only, never `brax.training` (broken on jax >= 0.10). Time limits and
auto-reset come from `VecEnv`, so brax's own Episode/AutoReset wrappers are not used.

brax is an optional dependency (the `brax` extra): this module imports without it, and brax itself is imported
only when a brax env is built or listed (`brax_envs`), quietly (see `brax_envs`).
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from jaxmod.envs.core import ActionSpace, CoreState, EnvCore, EnvError, EnvOptionError, cast_like
from jaxmod.envs.sparse import SPARSE_SUFFIX, SPARSE_THRESHOLDS

BRAX_BACKENDS = ("positional", "spring", "generalized", "mjx")
DEFAULT_BRAX_BACKEND = "positional"  # fastest step on CPU and GPU among the stable ones (anchors.md)
DEFAULT_EPISODE_LENGTH = 1000


# install from the repository only: the name jaxmod on the package registry belongs to an unrelated project
BRAX_INSTALL = "pip install -e '.[brax]' in a jaxmod clone, or pip install 'jaxmod[brax] @ git+REPOSITORY_URL'"
# what mujoco's MJX prints (to stdout) when the optional NVIDIA warp package is absent: noise for a brax user
_WARP_NOISE = ("Failed to import warp:", "Failed to import mujoco_warp:")


class BraxMissingError(EnvError):
    """A `brax/<name>` env was asked for, but brax (the `brax` extra) is not installed; the message says how."""


def brax_available() -> bool:
    """Whether brax can be imported (without importing it when it is not yet loaded)."""
    import importlib.util

    if "brax" in sys.modules:
        return sys.modules["brax"] is not None
    try:
        return importlib.util.find_spec("brax") is not None
    except (ImportError, ValueError):
        return False


def brax_envs() -> Any:
    """`brax.envs`, imported on first use. Raises `BraxMissingError` (one line naming the extra) without brax.

    The import is quiet about known harmless messages, and only those: the "Failed to import warp" lines that
    mujoco's MJX prints when NVIDIA warp is not installed (other printed lines pass through), brax's "Brax System,
    piplines and environments are not actively being maintained" UserWarning on every env build, its use of a
    deprecated mujoco fields (`ncon`, `contact`) and jaxopt's "no longer maintained" notice (warnings filters on those
    messages; every other warning is shown as usual)."""
    warnings.filterwarnings("ignore", message="Brax System, piplines and environments", category=UserWarning,
                            module="brax")
    warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
    for field in ("ncon", "contact"):  # brax reads both mujoco fields the deprecated way
        warnings.filterwarnings("ignore", message=f"Accessing `{field}` directly from `Data` is deprecated",
                                category=DeprecationWarning, module="brax")
    if "brax.envs" in sys.modules:
        return sys.modules["brax.envs"]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            from brax import envs
    except ImportError as err:
        if (err.name or "").split(".")[0] == "brax":  # brax itself is absent (not one of its own imports)
            raise BraxMissingError(f"brax envs need the brax extra, which is not installed: {BRAX_INSTALL}") from None
        raise BraxMissingError(f"brax is installed but does not import ({err}): reinstall the brax extra: "
                               f"{BRAX_INSTALL}") from None
    finally:
        kept = [line for line in printed.getvalue().splitlines() if not line.startswith(_WARP_NOISE)]
        if kept:
            print("\n".join(kept))
    return envs


# what MuJoCo's model compiler warns about brax's own model files (halfcheetah's `settotalmass`): noise for a user
_MODEL_NOISE = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def _quiet_model_compile() -> Any:
    """Within: MuJoCo's warnings about brax's model files (`_MODEL_NOISE`) are dropped; every other MuJoCo warning is
    printed to stderr as MuJoCo prints it ("WARNING: ..."). The previous warning handler is restored after."""
    import mujoco

    previous = mujoco.get_mju_user_warning()

    def warn(message: str) -> None:
        if not message.startswith(_MODEL_NOISE):
            print(f"WARNING: {message}", file=sys.stderr, flush=True)

    mujoco.set_mju_user_warning(warn)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def brax_names() -> list[str]:
    """Names brax registers (used as `brax/<name>`), plus RICE's sparse variants (`hopper-sparse`, ...).
    Raises `BraxMissingError` without brax."""
    envs = brax_envs()
    names = sorted(envs._envs)  # noqa: SLF001 - brax exposes no public listing
    return names + [n + SPARSE_SUFFIX for n in SPARSE_THRESHOLDS if n in names]


def make_brax(name: str, backend: str = DEFAULT_BRAX_BACKEND, episode_length: int = DEFAULT_EPISODE_LENGTH,
              sparse_threshold: float | None = None, **options: Any) -> EnvCore:
    """Wrap brax env `name` on `backend`; other `options` go to the brax env constructor.

    `<name>-sparse` is RICE's sparse variant of `name`: reward = x-position once x > threshold, else 0
    (`sparse_threshold` overrides the threshold); termination is the dense env's. Raises `BraxMissingError`
    without brax.
    """
    envs = brax_envs()
    sparse = name.endswith(SPARSE_SUFFIX)
    base = name[: -len(SPARSE_SUFFIX)] if sparse else name
    if sparse_threshold is not None and not sparse:
        raise EnvOptionError(f"sparse_threshold applies to sparse ids only, e.g. brax/{name}{SPARSE_SUFFIX}")
    threshold = (SPARSE_THRESHOLDS[base] if sparse_threshold is None else float(sparse_threshold)) if sparse else 0.0
    if backend not in BRAX_BACKENDS:
        raise EnvOptionError(f"unknown brax backend {backend!r}; choose one of {', '.join(BRAX_BACKENDS)}")
    try:
        with _quiet_model_compile():
            env = envs.get_environment(base, backend=backend, **options)
    except TypeError as err:
        raise EnvOptionError(f"bad option for brax/{name}: {err}") from None
    return wrap_brax(f"brax/{name}", env, episode_length, family="brax",
                     sparse_threshold=threshold if sparse else None)


def is_brax_env(env: Any) -> bool:
    """Whether `env` is a brax `Env` instance (checked without importing brax: an instance implies it is loaded)."""
    base = sys.modules.get("brax.envs.base")
    return base is not None and isinstance(env, base.Env)


def wrap_brax(env_id: str, env: Any, episode_length: int = DEFAULT_EPISODE_LENGTH, family: str = "brax",
              sparse_threshold: float | None = None) -> EnvCore:
    """Adapt a brax `Env` instance (`reset(rng)`, `step(state, action)`, `observation_size`, `action_size`; actions
    in [-1, 1]) to `EnvCore` under `env_id`. Episodes are cut at `episode_length` steps (by `VecEnv`).
    `sparse_threshold`: RICE's sparse reward (x-position of the root once past it, else 0); None: brax's reward."""
    sparse, threshold = sparse_threshold is not None, float(sparse_threshold or 0.0)

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
        env_id=env_id,
        obs_shape=(int(env.observation_size),),
        action_space=ActionSpace(
            discrete=False, shape=(int(env.action_size),),
            low=(-1.0,) * int(env.action_size), high=(1.0,) * int(env.action_size),
        ),
        max_steps=int(episode_length),
        reset_fn=reset_fn,
        step_fn=step_fn,
        family=family,
        cheap_reset=False,
        raw=env,
    )
