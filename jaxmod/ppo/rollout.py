"""Collect a (T, N) rollout with one `lax.scan` over env steps; only the actor runs inside the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmod.envs.core import CoreState
from jaxmod.envs.vec_env import VecEnv, VecEnvState
from jaxmod.ppo.networks import ActorCritic, Params


@struct.dataclass
class Trajectory:
    """Per-step arrays with leading axes (T, N)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    episode_done: jax.Array
    final_obs: jax.Array  # true next observation, pre auto-reset, for bootstrapping


def collect(
    net: ActorCritic,
    env: VecEnv,
    params: Params,
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    unroll: int = 1,
    reset_cores: CoreState | None = None,
) -> tuple[VecEnvState, jax.Array, Trajectory]:
    """Run the current policy for `num_steps` steps in every env.

    Values are not computed here: the learner evaluates the critic on the whole rollout at once,
    which keeps the sequential loop short (a latency win at small batch sizes).
    """

    def step(carry, step_key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(step_key)
        head = net.policy_head(params, obs)
        action, log_prob = net.sample(params, head, act_key)
        env_state, res = env.step(env_key, env_state, action, reset_cores)
        tr = Trajectory(
            obs=obs, action=action, log_prob=log_prob, reward=res.reward, raw_reward=res.raw_reward,
            terminated=res.terminated, truncated=res.truncated, episode_done=res.episode_done,
            final_obs=res.final_obs,
        )
        return (env_state, res.obs), tr

    (env_state, obs), traj = jax.lax.scan(step, (env_state, obs), jax.random.split(key, num_steps), unroll=unroll)
    return env_state, obs, traj


def episodes_finished(traj: Trajectory) -> jax.Array:
    """How many episodes ended in this rollout."""
    return jnp.sum(traj.episode_done)
