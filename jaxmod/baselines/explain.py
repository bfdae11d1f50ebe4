"""Explanations that find critical states without an LLM: RICE's StateMask-style mask network, and random.

The mask network (RICE Alg. 1, a simplified StateMask) is a binary policy over "keep the agent's action"
(0) and "blind it" (1, a uniformly random action instead), trained with jaxmod's own `PPOLearner` on a
keep/blind wrapped env (`KeepBlindEnv`: the frozen agent acts inside the env's step) to maximise the return
plus alpha per blinded step. A step's importance is P(keep | s): where blinding would cost return the mask
learns to keep. Everything is a pure function of (key, agent params, normaliser), so mask nets for many seeds
train in one vmapped program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.advice.arrays import Advice
from jaxmod.envs import ActionSpace, RunningMeanStd, VecEnv
from jaxmod.envs.core import CoreState
from jaxmod.envs.vec_env import StepResult, VecEnvState
from jaxmod.ppo.acting import Recording
from jaxmod.ppo.config import PPOConfig
from jaxmod.ppo.networks import ActorCritic, Params
from jaxmod.ppo.train import PPOLearner, TrainState

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
    """[n] int32 uniform discrete actions, or [n, *shape] float32 uniform in the box's bounds."""
    if space.discrete:
        return jax.random.randint(key, (n,), 0, space.num_actions)
    return jax.random.uniform(key, (n,) + space.shape, minval=jnp.asarray(space.low), maxval=jnp.asarray(space.high))


@struct.dataclass
class KeepBlindState:
    """The keep/blind env's state: the wrapped envs' (`inner`, leading axis N), the frozen agent's policy
    inputs `agent_obs` [N, *obs_shape] and parameters `agent` (one copy, not per env), and `blinded`, int32
    blinded steps so far (all envs)."""

    inner: VecEnvState
    agent_obs: jax.Array
    agent: Params
    blinded: jax.Array

    @property
    def last_return(self) -> jax.Array:
        return self.inner.last_return  # [N] the masked agent's last episode return (the env's own reward)

    @property
    def last_length(self) -> jax.Array:
        return self.inner.last_length

    @property
    def obs_rms(self) -> RunningMeanStd:
        return self.inner.obs_rms


@dataclass(frozen=True)
class KeepBlindEnv:
    """`inner` seen by a mask net (RICE Alg. 1): action 0 keeps the frozen agent's greedy action, 1 blinds it (a
    uniformly random action instead); the learning reward is the env's raw reward plus `alpha` per blinded step.
    The agent's observation normaliser is frozen (`inner.update_stats` is False) at what `attach` gives it, and
    the mask net sees the same normalised observations as the agent. Has `VecEnv`'s interface for `PPOLearner`."""

    inner: VecEnv
    agent_net: ActorCritic
    alpha: float

    @property
    def core(self):
        return self.inner.core

    @property
    def num_envs(self) -> int:
        return self.inner.num_envs

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.inner.obs_shape

    @property
    def action_space(self) -> ActionSpace:
        return KEEP_BLIND

    def fresh_cores(self, key: jax.Array) -> CoreState:
        return self.inner.fresh_cores(key)

    def reset(self, key: jax.Array) -> tuple[KeepBlindState, jax.Array]:
        """Start the envs with no agent attached (zero parameters): `attach` the agent before stepping."""
        inner, obs = self.inner.reset(key)
        agent = jax.tree.map(jnp.zeros_like, self.agent_net.init(jax.random.PRNGKey(0)))
        return KeepBlindState(inner=inner, agent_obs=obs, agent=agent, blinded=jnp.int32(0)), obs

    def attach(self, state: TrainState, agent: Params, obs_rms: RunningMeanStd) -> TrainState:
        """A mask learner's fresh `state` with the frozen agent's parameters and observation normaliser."""
        inner = state.env_state.inner.replace(obs_rms=obs_rms)
        obs = self.inner.observe(obs_rms, inner.core.obs)
        return state.replace(env_state=state.env_state.replace(inner=inner, agent_obs=obs, agent=agent), obs=obs)

    def step(self, key: jax.Array, state: KeepBlindState, blind: jax.Array, reset_cores: CoreState | None = None,
             cut: jax.Array | None = None) -> tuple[KeepBlindState, StepResult]:
        """Step every env with the agent's action or, where `blind` [N] is 1, a random one."""
        k_rand, k_env = jax.random.split(key)
        agent_action = self.agent_net.mode(self.agent_net.policy_head(state.agent, state.agent_obs))
        wide = blind.reshape(blind.shape + (1,) * (agent_action.ndim - 1))
        random = random_actions(k_rand, self.inner.action_space, self.num_envs)
        inner, res = self.inner.step(k_env, state.inner, jnp.where(wide == 1, random, agent_action), reset_cores,
                                     cut)
        res = res.replace(reward=res.raw_reward + self.alpha * blind.astype(jnp.float32))
        blinded = state.blinded + jnp.sum(blind).astype(jnp.int32)
        return KeepBlindState(inner=inner, agent_obs=res.obs, agent=state.agent, blinded=blinded), res


def make_mask_trainer(env: VecEnv, agent_net: ActorCritic, mc: MaskConfig
                      ) -> tuple[ActorCritic, Callable[[jax.Array, Params, RunningMeanStd], MaskResult]]:
    """(mask net, `train_mask(key, agent_params, obs_rms) -> MaskResult`); the agent acts greedily and is
    frozen, its observation normaliser fixed at `obs_rms`. The mask net is `PPOLearner`'s actor-critic on a
    `KeepBlindEnv` over `mc.num_envs` copies of `env` (no reward normalisation)."""
    cfg = mc.ppo(env.core.env_id)
    inner = dataclasses.replace(env, num_envs=mc.num_envs, update_stats=False, normalize_reward=False)
    learner = PPOLearner(cfg, vec_env=KeepBlindEnv(inner, agent_net, mc.alpha))

    def train_mask(key: jax.Array, agent_params: Params, obs_rms: RunningMeanStd) -> MaskResult:
        state = learner.env.attach(learner.init(key), agent_params, obs_rms)

        def update(state, _):
            before = state.env_state.blinded
            state, metrics = learner.update(state)
            blind_frac = (state.env_state.blinded - before).astype(jnp.float32) / cfg.batch_size
            return state, (blind_frac, metrics["episode_return"])

        state, (blind_frac, ret) = jax.lax.scan(update, state, None, length=cfg.num_updates)
        return MaskResult(params=state.params, blind_frac=blind_frac, episode_return=ret)

    return learner.net, train_mask


def mask_importance(mask_net: ActorCritic, mask_params: Params, obs: jax.Array) -> jax.Array:
    """P(keep the agent's action | s) for (policy-normalised) observations: RICE's step importance."""
    return jax.nn.softmax(mask_net.policy_head(mask_params, obs), axis=-1)[..., 0]


def critical_advice(rec: Recording, scores: jax.Array, capacity: int, num_actions: int = 0) -> Advice:
    """The most important step of every episode in a (T, N) recording (RICE: one critical state per
    trajectory), the `capacity` highest-scoring of them packed as restart advice (the agent's own
    action, no implicit reward, no distribution over the `num_actions` discrete actions: 0 for continuous ones).
    Fixed shapes ([capacity] slots, even where the recording holds fewer steps): jittable and vmappable."""
    done = jnp.logical_or(rec.terminated, rec.truncated)
    t_len, n_envs = done.shape
    episode = jnp.cumsum(done, axis=0) - done  # episode index within each env at each step
    segment = (episode + jnp.arange(n_envs)[None, :] * t_len).reshape(-1)
    # break ties towards the earliest step so each episode contributes exactly one state
    flat = scores.reshape(-1).astype(jnp.float32) - 1e-6 * jnp.tile(jnp.arange(t_len)[:, None], (1, n_envs)).reshape(-1)
    best = jax.ops.segment_max(flat, segment, num_segments=t_len * n_envs)
    candidate = jnp.where(flat == best[segment], flat, -jnp.inf)
    k = min(capacity, t_len * n_envs)  # a recording smaller than the capacity: the other slots stay empty
    top, idx = jax.lax.top_k(candidate, k)
    top = jnp.concatenate([top, jnp.full((capacity - k,), -jnp.inf, top.dtype)])
    idx = jnp.concatenate([idx, jnp.zeros((capacity - k,), idx.dtype)])
    valid = jnp.isfinite(top)
    t_idx, n_idx = idx // n_envs, idx % n_envs
    pick = lambda x: x[t_idx, n_idx]  # noqa: E731
    return Advice(obs=pick(rec.obs), snapshot=jax.tree.map(pick, rec.core), action=pick(rec.action),
                  rated_action=pick(rec.action),
                  reward=jnp.zeros((capacity,), jnp.float32), weight=valid.astype(jnp.float32),
                  target=jnp.zeros((capacity, num_actions), jnp.float32), valid=valid,
                  episode=pick(episode).astype(jnp.int32) * n_envs + n_idx.astype(jnp.int32),
                  step=pick(rec.core.time).astype(jnp.int32))
