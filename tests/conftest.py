"""Shared tiny configs and compiled functions (session fixtures keep the CPU suite fast)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxmod.envs import ActionSpace, CoreState, EnvCore, register
from jaxmod.ppo import PPOConfig, make_train

TOY_ID = "jaxmod-test/Toy"
TOY_MAX_STEPS = 4


def make_toy(terminal_at: float = 3.0) -> EnvCore:
    """A 1-D walk: obs = position; action 1 moves +1, action 0 stays; reward 1 per step;
    terminates when the position reaches `terminal_at`, truncates after TOY_MAX_STEPS steps."""

    def reset_fn(key: jax.Array) -> CoreState:
        start = jax.random.randint(key, (), 0, 2).astype(jnp.float32) * 0.0 + jax.random.uniform(key) * 0.1
        return CoreState(inner=start, obs=jnp.array([start]), time=jnp.int32(0))

    def step_fn(key, state, action):
        pos = state.inner + action.astype(jnp.float32)
        nxt = CoreState(inner=pos, obs=jnp.array([pos]), time=state.time + 1)
        return nxt, jnp.float32(1.0), pos >= terminal_at

    return EnvCore(env_id=TOY_ID, obs_shape=(1,), action_space=ActionSpace(discrete=True, num_actions=2),
                   max_steps=TOY_MAX_STEPS, reset_fn=reset_fn, step_fn=step_fn, family="test")


register(TOY_ID, lambda **_: make_toy())

TINY = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 6, update_epochs=2, num_minibatches=2)


@pytest.fixture(scope="session")
def tiny_config() -> PPOConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_train():
    """jit(train) for the tiny CartPole config, compiled once per session."""
    return jax.jit(make_train(TINY))


@pytest.fixture(scope="session")
def tiny_output(tiny_train):
    return tiny_train(jax.random.PRNGKey(0))
