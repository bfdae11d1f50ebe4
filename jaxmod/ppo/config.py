"""PPO configuration: a frozen dataclass of static sizes and default hyperparameters, plus presets.

Numeric hyperparameters are copied into a traced `HyperParams` pytree at train time, so one compiled
program can be vmapped over, e.g., a vector of learning rates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class ConfigError(ValueError):
    """A user mistake in a config; the message says what to change."""


ACTIVATIONS = ("tanh", "relu", "gelu", "silu")
TORSOS = ("mlp", "cnn")  # cnn: a small conv torso before the MLP, for image observations (H, W, C)
# Counter-based PRNGs with 2 x uint32 keys, so a user's jax.random.PRNGKey feeds either directly.
# threefry (jax's default) measured fastest for the whole CartPole program on the CPU (philox made
# the rollout cheaper but the minibatch permutations dearer: 3.5 s vs 3.2 s).
PRNG_IMPLS = ("threefry2x32", "philox4x32")


@dataclass(frozen=True)
class PPOConfig:
    """Everything that defines a PPO run. Defaults: PureJaxRL's CartPole-v1 config."""

    env_id: str = "CartPole-v1"
    env_options: tuple[tuple[str, Any], ...] = ()  # backend options, e.g. (("backend", "spring"),)
    num_envs: int = 4  # parallel envs per seed
    num_steps: int = 128  # rollout length per update
    total_timesteps: int = 500_000  # env steps per seed
    update_epochs: int = 4  # epochs over each rollout
    num_minibatches: int = 4  # minibatches per epoch
    lr: float = 2.5e-4  # learning rate (Adam)
    anneal_lr: bool = True  # linear decay of lr to 0 over training
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # PPO clip range
    ent_coef: float = 0.01  # entropy bonus coefficient
    vf_coef: float = 0.5  # value loss coefficient
    max_grad_norm: float = 0.5  # global gradient norm clip
    clip_value_loss: bool = True  # clip the value loss like the policy's
    hidden_sizes: tuple[int, ...] = (64, 64)  # widths of the MLP layers
    activation: str = "tanh"  # tanh, relu, gelu or silu
    torso: str = "mlp"  # "cnn" puts a small conv torso before the MLP (image observations such as Pong's pixels)
    normalize_obs: bool = False  # normalise observations with running statistics
    normalize_reward: bool = False  # scale rewards by a running return std
    clip_actions: bool = True  # clip continuous actions to the env bounds before stepping
    log_std_init: float = 0.0  # initial log std of the Gaussian head
    unroll: int = 1  # lax.scan unroll of the rollout loop (run time vs compile time)
    prng_impl: str = "threefry2x32"  # PRNG inside the training loop: threefry2x32 or philox4x32

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_timesteps", int(self.total_timesteps))
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "env_options", tuple((str(k), v) for k, v in dict(self.env_options).items()))
        positive = ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches", "unroll")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.total_timesteps > 2**31 - 1:  # (jaxmod.config.MAX_STEPS; ppo/ imports only envs/)
            raise ConfigError(f"total_timesteps must be at most {2**31 - 1:,} per seed (the learner counts env steps "
                              f"in int32), got {self.total_timesteps:,}")
        if self.total_timesteps < self.num_envs * self.num_steps:
            raise ConfigError(
                f"total_timesteps ({self.total_timesteps}) must be at least num_envs * num_steps "
                f"({self.num_envs * self.num_steps}) so that one update runs"
            )
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ConfigError(
                f"num_envs * num_steps ({self.num_envs * self.num_steps}) must be divisible by "
                f"num_minibatches ({self.num_minibatches})"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.torso not in TORSOS:
            raise ConfigError(f"torso must be one of {', '.join(TORSOS)}, got {self.torso!r}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma:g} and {self.gae_lambda:g}")
        for name in ("lr", "clip_eps", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name):g}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ConfigError(f"vf_coef and ent_coef must be >= 0, got {self.vf_coef:g} and {self.ent_coef:g}")
        if self.prng_impl not in PRNG_IMPLS:
            raise ConfigError(f"prng_impl must be one of {', '.join(PRNG_IMPLS)}, got {self.prng_impl!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError("hidden_sizes needs at least one layer of positive width")

    # ---------------------------------------------------------------- derived
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.env_options)

    def hparams(self) -> HyperParams:
        """The numeric hyperparameters as a traced pytree (vmappable)."""
        return HyperParams(
            lr=jnp.float32(self.lr),
            clip_eps=jnp.float32(self.clip_eps),
            ent_coef=jnp.float32(self.ent_coef),
            vf_coef=jnp.float32(self.vf_coef),
            gamma=jnp.float32(self.gamma),
            gae_lambda=jnp.float32(self.gae_lambda),
            max_grad_norm=jnp.float32(self.max_grad_norm),
        )

    def replace(self, **changes: Any) -> PPOConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["env_options"] = dict(self.env_options)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PPOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {', '.join(sorted(known))}")
        d = dict(d)
        if "env_options" in d:
            d["env_options"] = tuple(dict(d["env_options"]).items())
        if "hidden_sizes" in d:
            d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return cls(**d)


@struct.dataclass
class HyperParams:
    """Numeric PPO hyperparameters as data, so sweeps share one compile (cf. optax.inject_hyperparams)."""

    lr: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    max_grad_norm: jax.Array


# Presets per env family. classic: PureJaxRL ppo.py CartPole; minatar: PureJaxRL MinAtar;
# brax: PureJaxRL ppo_continuous_action.py (2048 envs x 10 steps, 256x256, obs+reward normalised).
PRESETS: dict[str, PPOConfig] = {
    "classic": PPOConfig(),
    "minatar": PPOConfig(
        env_id="Breakout-MinAtar", num_envs=64, num_steps=128, total_timesteps=10_000_000,
        num_minibatches=8, lr=5e-3, activation="relu",
    ),
    # pong: jaxmod's own Pong (vector obs); one-point games reach a 0.6-0.9 win rate in 1e6 steps.
    "pong": PPOConfig(
        env_id="jaxmod/Pong-OnePoint", num_envs=16, num_steps=128, total_timesteps=1_000_000, lr=3e-4,
    ),
    "brax": PPOConfig(
        env_id="brax/hopper", num_envs=2048, num_steps=10, total_timesteps=20_000_000,
        num_minibatches=32, lr=3e-4, anneal_lr=False, ent_coef=0.0, hidden_sizes=(256, 256),
        normalize_obs=True, normalize_reward=True,
    ),
}


# Per-env changes to the family preset. MountainCar's velocity spans +-0.07 against a position range of 1.8:
# on raw inputs a policy barely sees it (and a refinement at a low learning rate never learns to use it).
ENV_PRESETS: dict[str, dict[str, Any]] = {
    "MountainCar-v0": {"normalize_obs": True},
}

# Continuous-action envs of the classic family take the knobs of PureJaxRL's ppo_continuous_action.py (the
# reference's own split between discrete and continuous actions): observations and rewards normalised, a constant
# learning rate of 3e-4, no entropy bonus, at a classic env count (16). ppo.py's CartPole knobs leave Pendulum-v1
# at a training return of -1348 after 4e5 steps (-922 after 1.6e6; normalisation alone: -946 after 4e5); these
# reach -208 after 4e5 (seed 123; jaxmod's measurement, 2026-12-01), so a teacher trained longer than the agents
# is stronger than them.
CONTINUOUS_CLASSIC: dict[str, Any] = {"normalize_obs": True, "normalize_reward": True, "num_envs": 16, "lr": 3e-4,
                                      "anneal_lr": False, "ent_coef": 0.0}


# gymnax's envs with continuous actions (all in the classic family). A static set, not a probe: building an env to
# read its action space starts the XLA backend, and `jax.distributed.initialize` must come first in a multi-process
# run, whose command line builds configs while parsing. An env registered with `jaxmod.register_env` keeps the
# family's preset (set these knobs yourself).
CONTINUOUS_GYMNAX = frozenset({"Pendulum-v1", "MountainCarContinuous-v0", "PointRobot-misc", "Reacher-misc",
                               "Swimmer-misc"})


def family_preset(env_id: str) -> dict[str, Any]:
    """The changes to `env_id`'s family preset: `CONTINUOUS_CLASSIC` for a continuous-action gymnax env of the
    classic family (`CONTINUOUS_GYMNAX`), then `ENV_PRESETS[env_id]`."""
    extra = dict(CONTINUOUS_CLASSIC) if env_id in CONTINUOUS_GYMNAX and family_of(env_id) == "classic" else {}
    return {**extra, **ENV_PRESETS.get(env_id, {})}


def family_of(env_id: str) -> str:
    """Which preset family an env id belongs to: brax, minatar, pong, or classic (everything else); an env added by
    `jaxmod.envs.register_env` with one of those families belongs to it."""
    from jaxmod.envs.describers import family_of as spelled_family
    from jaxmod.envs.registry import registered_family

    registered = registered_family(env_id)
    return registered if registered in PRESETS else spelled_family(env_id) or "classic"


def default_config(env_id: str, **overrides: Any) -> PPOConfig:
    """The preset for `env_id`'s family, with `family_preset(env_id)` (continuous classic control's knobs, then
    `ENV_PRESETS[env_id]`), `env_id` and `overrides` applied."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(PPOConfig)})
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}")
    return dataclasses.replace(PRESETS[family_of(env_id)], env_id=env_id, **{**family_preset(env_id), **overrides})


