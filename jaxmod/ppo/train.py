"""The pure PPO training function: `train = make_train(config)`, `jax.jit(train)(rng)`.

Read top to bottom like PureJaxRL: INIT, then one UPDATE = COLLECT TRAJECTORIES -> CALCULATE
ADVANTAGE -> UPDATE NETWORK, scanned over updates. Everything is a pure function of its inputs:
jit it, vmap it over seeds or hyperparameters, or call `learner.run` in chunks (the CLI does, for
its progress bar and checkpoints; chunked and single-call runs give identical results).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from jaxmod.envs import VecEnv, VecEnvState, make
from jaxmod.ppo.config import ConfigError, HyperParams, PPOConfig
from jaxmod.ppo.losses import Batch, gae, mask_counts, ppo_loss
from jaxmod.ppo.modulator import Identity, LearnerSpec, Modulator, Plan
from jaxmod.ppo.networks import ActorCritic, NetworkError, Params
from jaxmod.ppo.rollout import collect, collect_modulated

Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    """Everything needed to continue training exactly: save it, restore it, resume.

    `params`: the actor-critic's pytree; `opt_state`: Adam's over the flattened params; `env_state`: the envs
    and the observation / reward normalisers; `obs`: [N, *obs_shape] current policy inputs; `rng`: uint32[2] raw
    key data of the loop PRNG (`config.prng_impl`); `update_step`: int32 updates done; `hparams`: the traced
    numeric hyperparameters; `aux`: the modulator's state (`Modulator.init`; `()` for plain PPO)."""

    params: Params
    opt_state: optax.OptState  # over the flattened params (one fused Adam update, see `update`)
    env_state: VecEnvState  # includes the observation/reward normalisers
    obs: jax.Array  # current policy input for each env
    rng: jax.Array  # raw uint32[2] key data of the loop PRNG (`config.prng_impl`)
    update_step: jax.Array  # int32, updates done so far
    hparams: HyperParams
    aux: Any = ()

    @property
    def obs_normalizer(self):
        """The running observation statistics the policy was trained with."""
        return self.env_state.obs_rms


@struct.dataclass
class TrainOutput:
    """Final state plus metrics stacked over updates (leading axis = update)."""

    state: TrainState
    metrics: Metrics


def params_finite(params: Params) -> jax.Array:
    """bool scalar: every parameter is finite (NaN or inf nowhere); vmap it over a seed axis."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


_SEEDS_PARAMS_FINITE = jax.jit(jax.vmap(params_finite))


def seeds_params_finite(params: Params) -> np.ndarray:
    """[S] bool on the host: each seed's parameters (a leading seed axis) are all finite (`params_finite`)."""
    return np.asarray(jax.device_get(_SEEDS_PARAMS_FINITE(params)))


def make_optimizer(config: PPOConfig, hp: HyperParams) -> optax.GradientTransformation:
    """Grad-norm clipping + Adam with (optionally) linearly annealed lr; built inside the trace so
    `hp` may be traced (vmapped sweeps)."""
    steps_per_update = config.update_epochs * config.num_minibatches
    if config.anneal_lr:
        def lr(count: jax.Array) -> jax.Array:
            frac = 1.0 - (count // steps_per_update) / config.num_updates
            return hp.lr * frac
    else:
        lr = hp.lr
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(lr, eps=1e-5))


def optimise(c: PPOConfig, net: ActorCritic, hp: HyperParams, params: Params, opt_state: optax.OptState,
             batch: Batch, key: jax.Array, extra_loss: Callable | None = None, sample_axis: str | None = None
             ) -> tuple[Params, optax.OptState, Metrics]:
    """Epochs x minibatches of clipped-PPO SGD on one flat batch (leading axis `c.batch_size`; its loss masks
    0/1, counted per minibatch here). The optimiser works on the params raveled into one vector, so
    Adam is a few fused ops instead of a few per leaf. `extra_loss`: see `ppo_loss`. Returns the new params,
    optimiser state and per-SGD-step metrics [epochs, minibatches]. `sample_axis`: a mesh axis (of the mesh in
    context, `jax.sharding.use_abstract_mesh`) that each minibatch's sample axis is split over, so every device
    computes the loss and gradient of its slice and the partitioner sums them across the axis (data parallel,
    `jaxmod.parallel`); None (the default) adds nothing to the program."""
    tx = make_optimizer(c, hp)
    flat_params, unravel = ravel_pytree(params)
    grad_fn = jax.value_and_grad(
        lambda p, mb: ppo_loss(net, unravel(p), mb, hp, c.clip_value_loss, extra_loss), has_aux=True)

    def sgd_step(carry, mb):
        flat, opt_state = carry
        (loss, info), grads = grad_fn(flat, mb)
        updates, opt_state = tx.update(grads, opt_state, flat)
        return (flat + updates, opt_state), {**info, "loss": loss}

    def epoch(carry, key):
        perm = jax.random.permutation(key, c.batch_size)
        mbs = jax.tree.map(lambda x: x[perm].reshape((c.num_minibatches, c.minibatch_size) + x.shape[1:]), batch)
        if sample_axis is not None:  # data parallel: each device runs its slice of every minibatch
            mbs = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(None, sample_axis)), mbs)
        mbs = mbs.replace(mask_counts=mask_counts(mbs.masks))  # [minibatches] per mask (whole minibatches), per epoch
        return jax.lax.scan(sgd_step, carry, mbs)

    (flat_params, opt_state), infos = jax.lax.scan(epoch, (flat_params, opt_state),
                                                   jax.random.split(key, c.update_epochs))
    return unravel(flat_params), opt_state, infos


@dataclass(frozen=True)
class PPOLearner:
    """The learner's pure pieces for one config: `init`, `update`, `run`. A `modulator` (`jaxmod.ppo.modulator`:
    a refinement method, or a chain of them) hooks into every update; the learner knows no method."""

    config: PPOConfig
    modulator: Modulator = Identity()
    vec_env: Any = None  # the env to learn in; None: `make(config.env_id, ...)` from the config's env fields
    env_axis: str | None = None  # mesh axis the envs (and each minibatch's samples) are split over, data parallel
    # (`jaxmod.parallel`; trace under that mesh); None: a one-device program, nothing added (jaxmod's choice)

    def __post_init__(self) -> None:
        # build (and validate) the env and network now: built lazily inside a jit trace, an env that computes
        # constants when constructed (brax loads its model with jnp ops) would keep leaked tracers
        if self.vec_env is not None and self.vec_env.num_envs != self.config.num_envs:
            raise ConfigError(f"the env steps {self.vec_env.num_envs} envs but num_envs={self.config.num_envs}: "
                              "give the config the env's number of envs")
        _ = self.env, self.net

    @cached_property
    def env(self) -> VecEnv:
        """The vectorised env: `vec_env` if given (any object with `VecEnv`'s reset/step/fresh_cores interface,
        e.g. a wrapper whose actions mean something else), else the config's env id and env fields."""
        if self.vec_env is not None:
            return self.vec_env
        c = self.config
        return make(c.env_id, num_envs=c.num_envs, normalize_obs=c.normalize_obs,
                    normalize_reward=c.normalize_reward, reward_gamma=c.gamma, clip_actions=c.clip_actions,
                    **c.env_kwargs)

    @cached_property
    def net(self) -> ActorCritic:
        c = self.config
        try:
            return ActorCritic(self.env.obs_shape, self.env.action_space, c.hidden_sizes, c.activation,
                               c.log_std_init, c.torso)
        except NetworkError as err:
            raise ConfigError(f"{c.env_id}: {err}") from None

    @cached_property
    def spec(self) -> LearnerSpec:
        return LearnerSpec(env=self.env, net=self.net, config=self.config)

    # ------------------------------------------------------------------ INIT
    def init(self, rng: jax.Array, params: Params | None = None, hparams: HyperParams | None = None) -> TrainState:
        """Fresh train state from a PRNG key (raw uint32[2] or typed); `params` continues from given weights
        (e.g. a checkpoint's), `hparams` replaces `config.hparams()` (vmap over it for sweeps)."""
        hp = self.config.hparams() if hparams is None else hparams
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        rng, k_net, k_env = jax.random.split(rng, 3)
        if params is None:
            params = self.net.init(k_net)
        env_state, obs = self.env.reset(k_env)
        opt_state = make_optimizer(self.config, hp).init(ravel_pytree(params)[0])
        aux = self.modulator.init(jax.random.fold_in(k_net, 1), self.spec, params)
        return TrainState(params=params, opt_state=opt_state, env_state=env_state, obs=obs, rng=rng,
                          update_step=jnp.int32(0), hparams=hp, aux=aux)

    # ---------------------------------------------------------------- UPDATE
    def digest(self, state: TrainState, advice: Any) -> Plan:
        """What the modulator derives from the advice alone (`Modulator.digest`, starting from
        `{"advice": advice}`); `run` computes it once per call instead of once per update."""
        return self.modulator.digest(state.aux, advice, {"advice": advice}, self.spec)

    def update(self, state: TrainState, advice: Any = None, plan: Plan | None = None) -> tuple[TrainState, Metrics]:
        """One PPO update: collect T x N steps, compute GAE, run epochs x minibatches of SGD. `advice` is read by
        the modulator only; `plan` is `digest(state, advice)` where the caller has it already."""
        c, net, env, mod, spec = self.config, self.net, self.env, self.modulator, self.spec
        hp = state.hparams
        key = jax.random.wrap_key_data(state.rng, impl=c.prng_impl)
        key, k_pool, k_roll, k_perm = jax.random.split(key, 4)

        # COLLECT TRAJECTORIES (the modulator may override actions and restart states)
        reset_cores = None if env.core.cheap_reset else env.fresh_cores(k_pool)
        aux = state.aux
        plan: Plan
        if mod.identity:
            env_state, obs, traj = collect(net, env, state.params, state.env_state, state.obs, k_roll, c.num_steps,
                                           c.unroll, reset_cores)
            plan = {}
        else:  # the plan carries the advice passed to `run` and this update's hyperparameters
            plan = {**(self.digest(state, advice) if plan is None else plan), "hparams": hp}
            env_state, obs, aux, plan, traj = collect_modulated(
                net, env, state.params, state.env_state, state.obs, k_roll, c.num_steps, mod, aux, plan, spec,
                state.update_step, advice, c.unroll, reset_cores)

        # CALCULATE ADVANTAGE (critic on the whole rollout at once; the modulator may add to the reward)
        values = net.value(state.params, traj.obs)
        next_values = net.value(state.params, traj.final_obs)
        aux, reward, reward_metrics = mod.reward(aux, plan, traj, traj.reward, k_perm, spec)
        advantages = gae(reward, values, next_values, traj.terminated, traj.episode_done, hp.gamma, hp.gae_lambda)
        aux, masks, fields = mod.weigh(aux, plan, traj, advantages, values, next_values, spec)
        batch = Batch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=values,
                      advantage=advantages, target=advantages + values, masks=masks, fields=fields)
        batch = jax.tree.map(lambda x: x.reshape((c.batch_size,) + x.shape[2:]), batch)

        # UPDATE NETWORK
        extra_loss = None if mod.identity else (lambda p, head, mb: mod.loss(aux, net, p, head, mb))
        params, opt_state, infos = optimise(c, net, hp, state.params, state.opt_state, batch, k_perm, extra_loss,
                                            self.env_axis)

        if c.anneal_lr:
            lr = hp.lr * (1.0 - state.update_step / c.num_updates)
        else:
            lr = hp.lr
        metrics = {
            **jax.tree.map(jnp.mean, infos),
            "episode_return": env_state.last_return.mean(),
            "episode_length": env_state.last_length.astype(jnp.float32).mean(),
            "episodes": traj.episode_done.sum().astype(jnp.int32),
            "truncations": traj.truncated.sum().astype(jnp.int32),
            "rollout_reward": traj.raw_reward.mean(),
            "lr": jnp.asarray(lr, jnp.float32),
            "env_steps": (state.update_step + 1) * c.batch_size,
            **reward_metrics,
            **mod.metrics(aux, plan, traj, spec),
        }
        new_state = TrainState(params=params, opt_state=opt_state, env_state=env_state, obs=obs,
                               rng=jax.random.key_data(key), update_step=state.update_step + 1, hparams=hp, aux=aux)
        return new_state, metrics

    def run(self, state: TrainState, num_updates: int, advice: Any = None) -> tuple[TrainState, Metrics]:
        """`num_updates` updates in one `lax.scan`; metrics stacked over updates (leading axis = update).
        `advice` is an argument, not part of the state: swapping it between calls changes values, not shapes."""
        plan = None if self.modulator.identity else self.digest(state, advice)
        return jax.lax.scan(lambda s, _: self.update(s, advice, plan), state, None, length=num_updates)


def make_train(config: PPOConfig, modulator: Modulator | None = None) -> Callable[..., TrainOutput]:
    """`train(rng, params=None, advice=None, hparams=None) -> TrainOutput`, pure and jittable.

    - `rng`: a `jax.random.PRNGKey`; vmap over a batch of keys for many seeds in one program.
    - `params`: initial network params to continue from (e.g. a checkpoint's `state.params`).
    - `advice`: what `modulator` reads (e.g. an `Advice` pytree of fixed capacity); plain PPO ignores it.
    - `hparams`: a `HyperParams` pytree (default `config.hparams()`); vmap over it for sweeps.
    """
    learner = PPOLearner(config, modulator if modulator is not None else Identity())
    _ = learner.env, learner.net  # build (and validate) eagerly, outside any trace

    def train(rng: jax.Array, params: Params | None = None, advice: Any = None,
              hparams: HyperParams | None = None) -> TrainOutput:
        state = learner.init(rng, params, hparams)
        state, metrics = learner.run(state, config.num_updates, advice)
        return TrainOutput(state=state, metrics=metrics)

    train.learner = learner  # type: ignore[attr-defined]
    train.config = config  # type: ignore[attr-defined]
    return train
