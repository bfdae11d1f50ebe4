"""Actor-critic networks (separate actor and critic, PureJaxRL-style: MLPs, optionally behind a small conv
torso for image observations) and the policy factory.

The orthogonal initialiser runs its QR through `jax.custom_batching.sequential_vmap`, so
`jax.vmap(train)` over seeds never batches a QR: that batched QR deadlocks XLA's CPU runtime on
2-core machines (DEVELOPERS.md), and this makes every user immune.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.envs.core import ActionSpace
from jaxmod.ppo import distributions as D

Params = dict[str, Any]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
}


def orthogonal(scale: float = 1.0) -> Callable[..., jax.Array]:
    """Orthogonal initialiser whose QR is computed per key, even under vmap (no batched QR)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        n_rows, n_cols = math.prod(shape[:-1]), shape[-1]

        @jax.custom_batching.sequential_vmap
        def one(k: jax.Array) -> jax.Array:
            return jax.random.orthogonal(k, max(n_rows, n_cols), dtype=dtype)[:n_rows, :n_cols]

        q = one(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
        return (scale * q).reshape(shape).astype(dtype)

    return init


class MLP(nn.Module):
    """Dense layers with orthogonal init; the last layer's scale is `out_scale`."""

    hidden_sizes: tuple[int, ...]
    out_dim: int
    activation: str = "tanh"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = act(nn.Dense(width, kernel_init=orthogonal(math.sqrt(2.0)), bias_init=nn.initializers.zeros)(x))
        return nn.Dense(self.out_dim, kernel_init=orthogonal(self.out_scale), bias_init=nn.initializers.zeros)(x)


CONV_LAYERS = ((16, 5), (32, 3))  # (channels, kernel) of the conv torso; stride 2, VALID padding, ReLU


class ConvMLP(MLP):
    """The conv torso (`CONV_LAYERS`) over (..., H, W, C) images, flattened into an `MLP` with the same fields."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for channels, kernel in CONV_LAYERS:
            x = jax.nn.relu(nn.Conv(channels, (kernel, kernel), strides=(2, 2), padding="VALID",
                                    kernel_init=orthogonal(math.sqrt(2.0)), bias_init=nn.initializers.zeros)(x))
        x = MLP(self.hidden_sizes, self.out_dim, self.activation, self.out_scale)(x.reshape(x.shape[0], -1))
        return x.reshape(lead + (self.out_dim,))


class NetworkError(ValueError):
    """A network that does not fit the env (e.g. a conv torso on vector observations)."""


class ActorCritic:
    """Pure functions over a params dict {"actor", "critic", "log_std"?}; no state of its own."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: ActionSpace, hidden_sizes: tuple[int, ...],
                 activation: str = "tanh", log_std_init: float = 0.0, torso: str = "mlp") -> None:
        if torso == "cnn" and len(obs_shape) != 3:
            raise NetworkError(f"torso 'cnn' needs image observations (H, W, C), got shape {obs_shape}; "
                               "use torso 'mlp' (or the env's pixel observation, e.g. obs_type=pixels)")
        self.obs_shape = obs_shape
        self.action_space = action_space
        self.log_std_init = log_std_init
        self.torso = torso
        body = ConvMLP if torso == "cnn" else MLP
        self.actor = body(hidden_sizes, action_space.dim, activation, out_scale=0.01)
        self.critic = body(hidden_sizes, 1, activation, out_scale=1.0)

    def _flat(self, obs: jax.Array) -> jax.Array:
        """The network input: images as they are for the conv torso, else flattened observations."""
        if self.torso == "cnn":
            return obs
        return obs.reshape(obs.shape[: obs.ndim - len(self.obs_shape)] + (-1,))

    def init(self, key: jax.Array) -> Params:
        """Fresh params {"actor", "critic"[, "log_std" [A] for continuous actions]} from a PRNG key."""
        k_actor, k_critic = jax.random.split(key)
        dummy = self._flat(jnp.zeros((1,) + tuple(self.obs_shape), jnp.float32))
        params: Params = {
            "actor": self.actor.init(k_actor, dummy)["params"],
            "critic": self.critic.init(k_critic, dummy)["params"],
        }
        if not self.action_space.discrete:
            params["log_std"] = jnp.full((self.action_space.dim,), self.log_std_init, jnp.float32)
        return params

    def policy_head(self, params: Params, obs: jax.Array) -> jax.Array:
        """Logits [..., K] (discrete) or Gaussian means [..., A] (continuous) of observations [..., *obs_shape]."""
        return self.actor.apply({"params": params["actor"]}, self._flat(obs))

    def value(self, params: Params, obs: jax.Array) -> jax.Array:
        """The critic's values [...] float32 of observations [..., *obs_shape]."""
        return self.critic.apply({"params": params["critic"]}, self._flat(obs))[..., 0]

    # Distribution helpers on the head's output --------------------------------
    def sample(self, params: Params, head: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(action, log-prob) from the head's output."""
        if self.action_space.discrete:
            action = D.categorical_sample(key, head)
            return action, D.categorical_log_prob(head, action)
        log_std = jnp.broadcast_to(params["log_std"], head.shape)
        action = D.gaussian_sample(key, head, log_std)
        return action, D.gaussian_log_prob(head, log_std, action)

    def log_prob(self, params: Params, head: jax.Array, action: jax.Array) -> jax.Array:
        """log pi(action) [...] float32 of actions [...] int32 or [..., A] float32 under the head's output."""
        if self.action_space.discrete:
            return D.categorical_log_prob(head, action)
        return D.gaussian_log_prob(head, jnp.broadcast_to(params["log_std"], head.shape), action)

    def entropy(self, params: Params, head: jax.Array) -> jax.Array:
        """The policy's entropy [...] float32 (nats) at the head's output."""
        if self.action_space.discrete:
            return D.categorical_entropy(head)
        return D.gaussian_entropy(head, jnp.broadcast_to(params["log_std"], head.shape))

    def mode(self, head: jax.Array) -> jax.Array:
        """The greedy action: argmax logits or the Gaussian mean."""
        return jnp.argmax(head, axis=-1).astype(jnp.int32) if self.action_space.discrete else head

    def action_dtype_shape(self) -> tuple[Any, tuple[int, ...]]:
        """(dtype, shape) of one action: (int32, ()) discrete, (float32, (A,)) continuous."""
        if self.action_space.discrete:
            return jnp.int32, ()
        return jnp.float32, self.action_space.shape


def make_policy(net: ActorCritic, params: Params, deterministic: bool = False
                ) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
    """Brax-style policy factory: `policy(obs, key) -> (action, extras)` where extras hold the log-prob."""

    def policy(obs: jax.Array, key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        head = net.policy_head(params, obs)
        if deterministic:
            action = net.mode(head)
            return action, {"log_prob": net.log_prob(params, head, action)}
        action, logp = net.sample(params, head, key)
        return action, {"log_prob": logp}

    return policy
