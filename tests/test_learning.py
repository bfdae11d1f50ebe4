"""Learning: PPO solves CartPole-v1 like PureJaxRL; a brax env trains with finite losses."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxmod.parallel import MultiSeed, seed_keys
from jaxmod.ppo import PPOConfig, default_config, make_train


@pytest.mark.timeout(600)
def test_cartpole_reaches_450_for_3_of_4_seeds():
    cfg = PPOConfig(env_id="CartPole-v1", total_timesteps=500_000)
    _, metrics = MultiSeed(cfg, 4).train(seed_keys(0, 4))
    final = np.asarray(metrics["episode_return"])[:, -1]
    assert (final >= 450).sum() >= 3, final


@pytest.mark.timeout(600)
def test_brax_short_training_is_finite():
    # spring compiles fastest on the CPU; a tiny budget keeps this to one brax compile
    cfg = default_config("brax/inverted_pendulum", env_options=(("backend", "spring"),), num_envs=8,
                         num_steps=8, total_timesteps=8 * 8 * 3, num_minibatches=2, update_epochs=1,
                         hidden_sizes=(32, 32))
    out = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    chex.assert_tree_all_finite(out.metrics)
    chex.assert_tree_all_finite(out.state.params)
    assert out.metrics["loss"].shape == (3,)
    assert float(out.state.env_state.obs_rms.count) > 8 * 8 * 3  # obs normalised (brax preset)
