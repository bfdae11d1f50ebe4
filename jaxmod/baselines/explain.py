"""Explanations that find critical states without an LLM: RICE's StateMask-style mask network, and random.

The mask network (RICE Alg. 1, a simplified StateMask) is a binary policy over "keep the agent's action"
(0) and "blind it" (1, a uniformly random action instead), trained with our PPO to maximise the return
plus alpha per blinded step. A step's importance is P(keep | s): where blinding would cost return the
mask learns to keep. Everything is a pure function of (key, agent params, normaliser), so mask nets for
many seeds train in one vmapped program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxmod.advice.arrays import Advice
from jaxmod.envs import ActionSpace, RunningMeanStd, VecEnv
from jaxmod.ppo.acting import Recording
from jaxmod.ppo.config import PPOConfig
from jaxmod.ppo.losses import Batch, gae
from jaxmod.ppo.networks import ActorCritic, Params
from jaxmod.ppo.train import make_optimizer, optimise

KEEP_BLIND = ActionSpace(discrete=True, num_actions=2)


@dataclass(frozen=True)
class MaskConfig:
    """The mask net's PPO run. alpha: RICE's training script uses 0.01 (its Table 3 says 1e-4; the
    method is reported insensitive to it)."""

    alpha: float = 0.01
    num_envs: int = 16
    num_steps: int = 128
    total_timesteps: int = 200_000
    lr: float = 3e-4
    hidden_sizes: tuple[int, ...] = (64, 64)

    def ppo(self, env_id: str) -> PPOConfig:
        return PPOConfig(env_id=env_id, num_envs=self.num_envs, num_steps=self.num_steps,
                         total_timesteps=self.total_timesteps, lr=self.lr, hidden_sizes=self.hidden_sizes,
                         ent_coef=0.0, anneal_lr=False)


@struct.dataclass
class MaskResult:
    params: Params
    blind_frac: jax.Array  # (updates,) share of blinded steps
    episode_return: jax.Array  # (updates,) the masked agent's return: close to the agent's = a faithful mask


def random_actions(key: jax.Array, space: ActionSpace, n: int) -> jax.Array:
    if space.discrete:
        return jax.random.randint(key, (n,), 0, space.num_actions)
    return jax.random.uniform(key, (n,) + space.shape, minval=jnp.asarray(space.low), maxval=jnp.asarray(space.high))


def make_mask_trainer(env: VecEnv, agent_net: ActorCritic, mc: MaskConfig
                      ) -> tuple[ActorCritic, Callable[[jax.Array, Params, RunningMeanStd], MaskResult]]:
    """(mask net, `train_mask(key, agent_params, obs_rms) -> MaskResult`); the agent acts greedily and is
    frozen, its observation normaliser fixed at `obs_rms`."""
    cfg = mc.ppo(env.core.env_id)
    env = dataclasses.replace(env, num_envs=mc.num_envs, update_stats=False, normalize_reward=False)
    mask_net = ActorCritic(env.obs_shape, KEEP_BLIND, mc.hidden_sizes, "tanh")
    space = env.action_space
    hp = cfg.hparams()

    def train_mask(key: jax.Array, agent_params: Params, obs_rms: RunningMeanStd) -> MaskResult:
        k_init, k_env, k_loop = jax.random.split(key, 3)
        params = mask_net.init(k_init)
        opt_state = make_optimizer(cfg, hp).init(ravel_pytree(params)[0])
        env_state, _ = env.reset(k_env)
        env_state = env_state.replace(obs_rms=obs_rms)

        def update(carry, key):
            params, opt_state, env_state = carry
            k_roll, k_perm = jax.random.split(key)

            def step(env_state, k):
                k_mask, k_rand, k_env = jax.random.split(k, 3)
                obs = env.observe(obs_rms, env_state.core.obs)
                agent_action = agent_net.mode(agent_net.policy_head(agent_params, obs))
                blind, log_prob = mask_net.sample(params, mask_net.policy_head(params, obs), k_mask)
                wide = blind.reshape(blind.shape + (1,) * (agent_action.ndim - 1))
                executed = jnp.where(wide == 1, random_actions(k_rand, space, env.num_envs), agent_action)
                env_state, res = env.step(k_env, env_state, executed)
                reward = res.raw_reward + mc.alpha * blind.astype(jnp.float32)
                return env_state, (obs, blind, log_prob, reward, res.terminated, res.episode_done, res.final_obs)

            env_state, (obs, blind, log_prob, reward, term, done, final_obs) = jax.lax.scan(
                step, env_state, jax.random.split(k_roll, cfg.num_steps))
            values = mask_net.value(params, obs)
            advantages = gae(reward, values, mask_net.value(params, final_obs), term, done, hp.gamma, hp.gae_lambda)
            batch = Batch(obs=obs, action=blind, log_prob=log_prob, value=values, advantage=advantages,
                          target=advantages + values)
            batch = jax.tree.map(lambda x: x.reshape((cfg.batch_size,) + x.shape[2:]), batch)
            params, opt_state, _ = optimise(cfg, mask_net, hp, params, opt_state, batch, k_perm)
            return (params, opt_state, env_state), (blind.mean(), env_state.last_return.mean())

        (params, _, _), (blind_frac, ret) = jax.lax.scan(update, (params, opt_state, env_state),
                                                         jax.random.split(k_loop, cfg.num_updates))
        return MaskResult(params=params, blind_frac=blind_frac, episode_return=ret)

    return mask_net, train_mask


def mask_importance(mask_net: ActorCritic, mask_params: Params, obs: jax.Array) -> jax.Array:
    """P(keep the agent's action | s) for (policy-normalised) observations: RICE's step importance."""
    return jax.nn.softmax(mask_net.policy_head(mask_params, obs), axis=-1)[..., 0]


def critical_advice(rec: Recording, scores: jax.Array, capacity: int, num_actions: int = 0) -> Advice:
    """The most important step of every episode in a (T, N) recording (RICE: one critical state per
    trajectory), the `capacity` highest-scoring of them packed as restart advice (the agent's own
    action, no implicit reward, no distribution over the `num_actions` discrete actions: 0 for continuous ones).
    Fixed shapes: jittable and vmappable."""
    done = jnp.logical_or(rec.terminated, rec.truncated)
    t_len, n_envs = done.shape
    episode = jnp.cumsum(done, axis=0) - done  # episode index within each env at each step
    segment = (episode + jnp.arange(n_envs)[None, :] * t_len).reshape(-1)
    # break ties towards the earliest step so each episode contributes exactly one state
    flat = scores.reshape(-1).astype(jnp.float32) - 1e-6 * jnp.tile(jnp.arange(t_len)[:, None], (1, n_envs)).reshape(-1)
    best = jax.ops.segment_max(flat, segment, num_segments=t_len * n_envs)
    candidate = jnp.where(flat == best[segment], flat, -jnp.inf)
    top, idx = jax.lax.top_k(candidate, capacity)
    valid = jnp.isfinite(top)
    t_idx, n_idx = idx // n_envs, idx % n_envs
    pick = lambda x: x[t_idx, n_idx]  # noqa: E731
    return Advice(obs=pick(rec.obs), snapshot=jax.tree.map(pick, rec.core), action=pick(rec.action),
                  rated_action=pick(rec.action),
                  reward=jnp.zeros((capacity,), jnp.float32), weight=valid.astype(jnp.float32),
                  target=jnp.zeros((capacity, num_actions), jnp.float32), valid=valid,
                  episode=pick(episode).astype(jnp.int32) * n_envs + n_idx.astype(jnp.int32),
                  step=pick(rec.core.time).astype(jnp.int32))
