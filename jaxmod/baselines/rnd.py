"""Random Network Distillation (Burda et al. 2019) as RICE uses it: an exploration bonus for PPO (`RNDBonus`).

A frozen random target net f and a trained predictor f_hat; the bonus of a next state s' is
0.5 * |f(s') - f_hat(s')|^2, min-max normalised across the parallel envs at each step (RICE's code)
and scaled by lambda. The predictor learns by MSE with its own Adam (lr 1e-3), so the bonus decays
where the agent has been. Sizes follow RICE: target obs-128-64, predictor obs-128-128-64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxmod.ppo.modulator import Modulator
from jaxmod.ppo.networks import MLP, Params

RND_LR = 1e-3
TARGET = MLP((128,), 64, "relu", out_scale=math.sqrt(2.0))
PREDICTOR = MLP((128, 128), 64, "relu", out_scale=math.sqrt(2.0))


@struct.dataclass
class RNDState:
    """Frozen target params, trained predictor params and the predictor's optimiser state."""

    target: Params
    predictor: Params
    opt_state: optax.OptState


def _optimizer() -> optax.GradientTransformation:
    return optax.adam(RND_LR)


def rnd_init(key: jax.Array, obs_dim: int) -> RNDState:
    k_target, k_pred = jax.random.split(key)
    dummy = jnp.zeros((1, obs_dim), jnp.float32)
    target = TARGET.init(k_target, dummy)["params"]
    predictor = PREDICTOR.init(k_pred, dummy)["params"]
    return RNDState(target=target, predictor=predictor, opt_state=_optimizer().init(predictor))


def rnd_error(state: RNDState, obs: jax.Array, predictor: Params | None = None) -> jax.Array:
    """Per-sample 0.5 * squared prediction error; `obs` is (..., obs_dim)."""
    target = jax.lax.stop_gradient(TARGET.apply({"params": state.target}, obs))
    pred = PREDICTOR.apply({"params": state.predictor if predictor is None else predictor}, obs)
    return 0.5 * jnp.sum(jnp.square(pred - target), axis=-1)


def rnd_bonus(state: RNDState, next_obs: jax.Array) -> jax.Array:
    """(T, N) bonus in [0, 1]: the error min-max normalised across envs at each step."""
    err = rnd_error(state, next_obs.reshape(next_obs.shape[:2] + (-1,)))
    lo = err.min(axis=1, keepdims=True)
    hi = err.max(axis=1, keepdims=True)
    return (err - lo) / jnp.maximum(hi - lo, 1e-8)


def rnd_train(state: RNDState, obs_batches: jax.Array) -> tuple[RNDState, jax.Array]:
    """One Adam step of the predictor per minibatch in `obs_batches` (M, B, obs_dim); returns the mean loss."""
    tx = _optimizer()

    def step(carry, obs):
        predictor, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: rnd_error(state, obs, p).mean())(predictor)
        updates, opt_state = tx.update(grads, opt_state, predictor)
        return (optax.apply_updates(predictor, updates), opt_state), loss

    (predictor, opt_state), losses = jax.lax.scan(step, (state.predictor, state.opt_state), obs_batches)
    return state.replace(predictor=predictor, opt_state=opt_state), losses.mean()


@struct.dataclass
class RNDAux:
    rnd: RNDState
    coef: jax.Array  # float32 scalar: RICE's lambda, traced


@dataclass(frozen=True)
class RNDBonus(Modulator):
    """Adds `coef` times the RND bonus of each step's true next state to its reward before GAE, and trains the
    predictor on the rollout's next states (one Adam step per PPO minibatch, in a random order). Metrics:
    `rnd_bonus` (mean bonus before scaling), `rnd_loss`. RICE (ICML 2024) Alg. 2; lambda from its Table 3."""

    reports = ("rnd_bonus",)
    coef: float = 0.01

    def init(self, key, spec, params):
        return RNDAux(rnd=rnd_init(key, math.prod(spec.env.obs_shape)), coef=jnp.float32(self.coef))

    def reward(self, aux, plan, traj, reward, key, spec):
        c = spec.config
        bonus = rnd_bonus(aux.rnd, traj.final_obs)
        reward = reward + aux.coef * bonus
        flat_next = traj.final_obs.reshape((c.batch_size, -1))
        perm = jax.random.permutation(jax.random.fold_in(key, 1), c.batch_size)
        rnd, loss = rnd_train(aux.rnd, flat_next[perm].reshape((c.num_minibatches, c.minibatch_size, -1)))
        return aux.replace(rnd=rnd), reward, {"rnd_bonus": bonus.mean(), "rnd_loss": loss}
