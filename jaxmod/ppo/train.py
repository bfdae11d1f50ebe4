"""The pure PPO training function: `train = make_train(config)`, `jax.jit(train)(rng)`.

Read top to bottom like PureJaxRL: INIT, then one UPDATE = COLLECT TRAJECTORIES -> CALCULATE
ADVANTAGE -> UPDATE NETWORK, scanned over updates. Everything is a pure function of its inputs:
jit it, vmap it over seeds or hyperparameters, or call `learner.run` in chunks (the CLI does, for
its progress bar and checkpoints; chunked and single-call runs give identical results).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxmod.advice.arrays import Advice
from jaxmod.advice.consensus import consensus
from jaxmod.advice.modulation import ModulationConfig, ModulationParams, advice_spread, take_slot
from jaxmod.advice.verify import AdviceTrust
from jaxmod.envs import VecEnv, VecEnvState, make
from jaxmod.ppo.config import ConfigError, HyperParams, PPOConfig
from jaxmod.ppo.losses import Batch, gae, mask_weights, ppo_loss, td_errors
from jaxmod.ppo.networks import ActorCritic, NetworkError, Params
from jaxmod.ppo.rnd import RNDState, rnd_bonus, rnd_init, rnd_train
from jaxmod.ppo.rollout import Modulated, collect

Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    """Everything needed to continue training exactly: save it, restore it, resume."""

    params: Params
    opt_state: optax.OptState  # over the flattened params (one fused Adam update, see `update`)
    env_state: VecEnvState  # includes the observation/reward normalisers
    obs: jax.Array  # current policy input for each env
    rng: jax.Array  # raw uint32[2] key data of the loop PRNG (`config.prng_impl`)
    update_step: jax.Array  # int32, updates done so far
    hparams: HyperParams
    critical_slot: jax.Array | None = None  # (N,) advice slot of each env's next step, -1 if none (ULTRA)
    mod_params: ModulationParams | None = None  # traced ULTRA knobs (restart prob, lambda, beta, ...)
    guide_params: Params | None = None  # JSRL baseline: the frozen guide (the initial params)
    rnd: RNDState | None = None  # RICE baseline: the RND exploration bonus nets
    trust: AdviceTrust | None = None  # ULTRA: per-slot verification of the advice (`jaxmod.advice.verify`)

    @property
    def obs_normalizer(self):
        """The running observation statistics the policy was trained with."""
        return self.env_state.obs_rms


@struct.dataclass
class TrainOutput:
    """Final state plus metrics stacked over updates (leading axis = update)."""

    state: TrainState
    metrics: Metrics


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
             batch: Batch, key: jax.Array, kl_coef: jax.Array | None = None, kl_std: float = 0.2
             ) -> tuple[Params, optax.OptState, Metrics]:
    """Epochs x minibatches of clipped-PPO SGD on one flat batch (its weights given as 0/1 masks). The optimiser
    works on the params raveled into one vector, so Adam is a few fused ops instead of a few per leaf."""
    tx = make_optimizer(c, hp)
    flat_params, unravel = ravel_pytree(params)
    grad_fn = jax.value_and_grad(
        lambda p, mb: ppo_loss(net, unravel(p), mb, hp, c.clip_value_loss, kl_coef, kl_std), has_aux=True)

    def sgd_step(carry, mb):
        flat, opt_state = carry
        (loss, info), grads = grad_fn(flat, mb)
        updates, opt_state = tx.update(grads, opt_state, flat)
        return (flat + updates, opt_state), {**info, "loss": loss}

    def epoch(carry, key):
        perm = jax.random.permutation(key, c.batch_size)
        mbs = jax.tree.map(lambda x: x[perm].reshape((c.num_minibatches, c.minibatch_size) + x.shape[1:]), batch)
        mbs = mbs.replace(**{name: mask_weights(getattr(mbs, name)) for name in ("kl_weight", "policy_weight")
                             if getattr(mbs, name) is not None})  # masks -> per-minibatch weights
        return jax.lax.scan(sgd_step, carry, mbs)

    (flat_params, opt_state), infos = jax.lax.scan(epoch, (flat_params, opt_state),
                                                   jax.random.split(key, c.update_epochs))
    return unravel(flat_params), opt_state, infos


@dataclass(frozen=True)
class PPOLearner:
    """The learner's pure pieces for one config: `init`, `update`, `run`. With `modulation`, updates
    read an `Advice` pytree and apply ULTRA's policy modulation (see `jaxmod.advice.modulation`)."""

    config: PPOConfig
    modulation: ModulationConfig | None = None

    def __post_init__(self) -> None:
        # build (and validate) the env and network now: built lazily inside a jit trace, an env that computes
        # constants when constructed (brax loads its model with jnp ops) would keep leaked tracers
        _ = self.env, self.net

    @cached_property
    def env(self) -> VecEnv:
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

    # ------------------------------------------------------------------ INIT
    def init(self, rng: jax.Array, params: Params | None = None, hparams: HyperParams | None = None,
             mod_params: ModulationParams | None = None) -> TrainState:
        """Fresh train state; `params` continues from given weights (e.g. a checkpoint)."""
        hp = self.config.hparams() if hparams is None else hparams
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        rng, k_net, k_env = jax.random.split(rng, 3)
        if params is None:
            params = self.net.init(k_net)
        env_state, obs = self.env.reset(k_env)
        opt_state = make_optimizer(self.config, hp).init(ravel_pytree(params)[0])
        critical_slot = guide_params = rnd = trust = None
        modulation = self.modulation
        if modulation is not None:
            critical_slot = jnp.full((self.config.num_envs,), -1, jnp.int32)
            mod_params = modulation.params() if mod_params is None else mod_params
            guide_params = params if modulation.uses_guide else None
            rnd = rnd_init(jax.random.fold_in(k_net, 1), math.prod(self.env.obs_shape)) if modulation.uses_rnd \
                else None
            trust = AdviceTrust.create(modulation.capacity) if modulation.verifies else None
        else:
            mod_params = None
        return TrainState(params=params, opt_state=opt_state, env_state=env_state, obs=obs, rng=rng,
                          update_step=jnp.int32(0), hparams=hp, critical_slot=critical_slot, mod_params=mod_params,
                          guide_params=guide_params, rnd=rnd, trust=trust)

    # ---------------------------------------------------------------- UPDATE
    def advice_facts(self, advice: Advice) -> tuple[jax.Array | None, jax.Array]:
        """What the modulation derives from the advice alone: the advice states' spread (the unit of consensus,
        and of matching on raw observations; None where unused) and which valid slots consensus keeps. `run`
        computes them once per call instead of once per update."""
        modulation, env = self.modulation, self.env
        needs_spread = modulation.votes or (modulation.matching and not env.normalize_obs)
        spread = advice_spread(advice) if needs_spread else None
        agreed = advice.valid
        if modulation.votes:  # slots the advice about nearby states out-votes stop acting
            agreed = consensus(advice, modulation.consensus_radius, env.core.action_space.span,
                               modulation.consensus_action_tol, spread)
        return spread, agreed

    def update(self, state: TrainState, advice: Advice | None = None,
               facts: tuple[jax.Array | None, jax.Array] | None = None) -> tuple[TrainState, Metrics]:
        """One PPO update: collect T x N steps, compute GAE, run epochs x minibatches of SGD. `facts` is
        `advice_facts(advice)` where the caller has it already."""
        c, net, env, modulation = self.config, self.net, self.env, self.modulation
        if (modulation is None) != (advice is None):
            raise ValueError("advice is read only by a learner built with a modulation config, and such a "
                             "learner needs advice (jaxmod.advice.Advice.empty for none yet)")
        hp = state.hparams
        key = jax.random.wrap_key_data(state.rng, impl=c.prng_impl)
        key, k_pool, k_roll, k_perm = jax.random.split(key, 4)

        # COLLECT TRAJECTORIES
        reset_cores = None if env.core.cheap_reset else env.fresh_cores(k_pool)
        mod = trust = None
        if modulation is not None:
            spread, agreed = self.advice_facts(advice) if facts is None else facts
            verified = advice.valid
            if modulation.verifies:  # slots refuted by their measured advantage stop acting
                trust = state.trust.follow(advice)
                verified = trust.trusted(advice, modulation.verify_samples)
            trusted = verified & agreed
            horizon = None
            if modulation.uses_guide:  # JSRL curriculum: the roll-in shrinks linearly to 0 over the run
                frac = 1.0 - state.update_step.astype(jnp.float32) / c.num_updates
                horizon = jnp.ceil(modulation.guide_steps * frac).astype(jnp.int32)
            mod = Modulated(params=state.mod_params, advice=advice, critical_slot=state.critical_slot,
                            trusted=trusted, spread=spread, guide_params=state.guide_params, guide_horizon=horizon)
        env_state, obs, pending, traj = collect(net, env, state.params, state.env_state, state.obs, k_roll,
                                                c.num_steps, c.unroll, reset_cores, modulation, mod)

        # CALCULATE ADVANTAGE (critic on the whole rollout at once)
        values = net.value(state.params, traj.obs)
        next_values = net.value(state.params, traj.final_obs)
        reward = traj.reward if traj.shaping is None else traj.reward + traj.shaping
        rnd_state, rnd_metrics = state.rnd, {}
        if modulation is not None and modulation.uses_rnd:  # RICE: RND exploration bonus on every step
            bonus = rnd_bonus(state.rnd, traj.final_obs)
            reward = reward + state.mod_params.rnd_coef * bonus
            flat_next = traj.final_obs.reshape((c.batch_size, -1))
            perm = jax.random.permutation(jax.random.fold_in(k_perm, 1), c.batch_size)
            rnd_state, rnd_loss = rnd_train(state.rnd, flat_next[perm].reshape((c.num_minibatches, c.minibatch_size, -1)))
            rnd_metrics = {"rnd_bonus": bonus.mean(), "rnd_loss": rnd_loss}
        advantages = gae(reward, values, next_values, traj.terminated, traj.episode_done, hp.gamma, hp.gae_lambda)
        if modulation is not None and modulation.verifies:
            # one-step TD error under the environment's reward alone (the advice's own implicit reward must
            # not vouch for it): low variance, and the critic's bias cancels between the two groups
            td = td_errors(traj.reward, values, next_values, traj.terminated, hp.gamma)
            trust = trust.record(traj.slot, traj.advised, traj.critical & ~traj.advised, td,
                                 modulation.verify_memory)
        kl_coef = critical = suggested = None
        if modulation is not None and modulation.uses_kl:
            kl_coef = state.mod_params.kl_coef
            critical = traj.critical
            if modulation.kl_filter:  # pull only where executing the suggestion beat the critic's expectation
                critical = critical & traj.advised & (advantages > 0)
            critical = critical.astype(jnp.float32)
            suggested = take_slot(advice.action, traj.slot)
        # actions ULTRA-A imposed are no samples of any policy: no policy gradient from them
        on_policy = None if traj.forced is None else (~traj.forced).astype(jnp.float32)
        batch = Batch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=values,
                      advantage=advantages, target=advantages + values, kl_weight=critical, suggested=suggested,
                      policy_weight=on_policy)
        batch = jax.tree.map(lambda x: x.reshape((c.batch_size,) + x.shape[2:]), batch)

        # UPDATE NETWORK
        kl_std = modulation.kl_target_std if modulation is not None else 0.2
        params, opt_state, infos = optimise(c, net, hp, state.params, state.opt_state, batch, k_perm, kl_coef, kl_std)

        if c.anneal_lr:
            lr = hp.lr * (1.0 - state.update_step / c.num_updates)
        else:
            lr = hp.lr
        done = traj.episode_done
        metrics = {
            **jax.tree.map(jnp.mean, infos),
            "episode_return": env_state.last_return.mean(),
            "episode_length": env_state.last_length.astype(jnp.float32).mean(),
            "episodes": done.sum().astype(jnp.int32),
            "truncations": traj.truncated.sum().astype(jnp.int32),
            "rollout_reward": traj.raw_reward.mean(),
            "lr": jnp.asarray(lr, jnp.float32),
            "env_steps": (state.update_step + 1) * c.batch_size,
        }
        if modulation is not None:
            metrics["critical_frac"] = traj.critical.mean()
            metrics["restarts"] = traj.restarted.sum().astype(jnp.int32)
            metrics["advice_valid"] = advice.valid.sum().astype(jnp.int32)
            metrics["advice_refuted"] = (advice.valid & ~verified).sum().astype(jnp.int32)
            metrics["advice_outvoted"] = (advice.valid & ~agreed).sum().astype(jnp.int32)
            if modulation.uses_guide:
                metrics["guided_frac"] = traj.guided.mean()
            metrics.update(rnd_metrics)
        new_state = TrainState(params=params, opt_state=opt_state, env_state=env_state, obs=obs,
                               rng=jax.random.key_data(key),
                               update_step=state.update_step + 1, hparams=hp, critical_slot=pending,
                               mod_params=state.mod_params, guide_params=state.guide_params, rnd=rnd_state,
                               trust=trust)
        return new_state, metrics

    def run(self, state: TrainState, num_updates: int, advice: Advice | None = None) -> tuple[TrainState, Metrics]:
        """`num_updates` updates in one `lax.scan`; metrics stacked over updates. `advice` is an
        argument, not part of the state: swapping it between calls changes values, not shapes."""
        facts = self.advice_facts(advice) if self.modulation is not None and advice is not None else None
        return jax.lax.scan(lambda s, _: self.update(s, advice, facts), state, None, length=num_updates)


def make_train(config: PPOConfig, modulation: ModulationConfig | None = None) -> Callable[..., TrainOutput]:
    """`train(rng, params=None, advice=None, hparams=None) -> TrainOutput`, pure and jittable.

    - `rng`: a `jax.random.PRNGKey`; vmap over a batch of keys for many seeds in one program.
    - `params`: initial network params to continue from (e.g. a checkpoint's `state.params`).
    - `advice`: an `Advice` pytree (fixed capacity) for ULTRA refinement; needs `modulation`, the
      refinement's switches (variants A / R / RA). Plain PPO takes none.
    - `hparams`: a `HyperParams` pytree (default `config.hparams()`); vmap over it for sweeps.
    """
    learner = PPOLearner(config, modulation)
    _ = learner.env, learner.net  # build (and validate) eagerly, outside any trace

    def train(rng: jax.Array, params: Params | None = None, advice: Advice | None = None,
              hparams: HyperParams | None = None) -> TrainOutput:
        if modulation is None and advice is not None:
            raise ValueError("plain PPO takes no advice: pass a ModulationConfig to make_train for ULTRA refinement")
        if modulation is not None and advice is None:
            advice = Advice.empty(learner.env.core, modulation.capacity)
        state = learner.init(rng, params, hparams)
        state, metrics = learner.run(state, config.num_updates, advice)
        return TrainOutput(state=state, metrics=metrics)

    train.learner = learner  # type: ignore[attr-defined]
    train.config = config  # type: ignore[attr-defined]
    return train
