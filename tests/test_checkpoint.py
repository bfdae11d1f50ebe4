"""Checkpoints: a restored run continues exactly like an uninterrupted one."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxmod.checkpoint import load_checkpoint, save_checkpoint
from jaxmod.parallel import MultiSeed, seed_keys
from jaxmod.ppo import PPOLearner

pytestmark = pytest.mark.timeout(300)


def test_single_run_roundtrip_and_exact_resume(tmp_path, tiny_config, tiny_output):
    learner = PPOLearner(tiny_config)
    half = tiny_config.num_updates // 2
    run = jax.jit(lambda s: learner.run(s, half))
    state, m1 = run(learner.init(jax.random.PRNGKey(0)))
    save_checkpoint(tmp_path / "ckpt", state, tiny_config, meta={"note": "half"})
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.config == tiny_config and ckpt.meta == {"note": "half"} and ckpt.num_seeds is None
    chex.assert_trees_all_equal(ckpt.state, jax.device_get(state))
    _, m2 = run(ckpt.state)
    np.testing.assert_array_equal(np.concatenate([m1["loss"], m2["loss"]]), tiny_output.metrics["loss"])
    np.testing.assert_array_equal(np.concatenate([m1["episode_return"], m2["episode_return"]]),
                                  tiny_output.metrics["episode_return"])


def test_multi_seed_checkpoint_keeps_normaliser(tmp_path, tiny_config):
    cfg = tiny_config.replace(normalize_obs=True)
    runner = MultiSeed(cfg, 2)
    state, _ = runner.runner(2)(runner.init(seed_keys(0, 2)))
    save_checkpoint(tmp_path / "c", state, cfg, num_seeds=2)
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.num_seeds == 2
    np.testing.assert_array_equal(ckpt.state.obs_normalizer.mean, np.asarray(state.obs_normalizer.mean))
    assert float(ckpt.state.obs_normalizer.count[0]) > 1


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no jaxmod checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_refinement_state_with_rnd_and_guide_roundtrips(tmp_path):
    """A baseline/ULTRA state (advice slots, JSRL guide, RICE's RND nets) restores exactly and resumes."""
    from jaxmod.advice.arrays import Advice
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.baselines import jsrl, rice
    from jaxmod.ppo import PPOConfig, PPOLearner
    from jaxmod.ppo.modulator import chain
    from tests.conftest import TOY_ID

    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 4, num_minibatches=2)
    mod = chain(ModulationConfig(capacity=2).modulator(), rice.modulator(TOY_ID), jsrl.GuideRollIn(3))
    learner = PPOLearner(cfg, mod)
    advice = Advice.empty(learner.env.core, 2)
    run = jax.jit(lambda s: learner.run(s, 2, advice))
    state, _ = run(learner.init(jax.random.PRNGKey(0)))
    save_checkpoint(tmp_path / "ck", state, cfg)
    ck = load_checkpoint(tmp_path / "ck", mod)
    chex.assert_trees_all_equal(ck.state, state)  # every modulator's aux (trust, RND nets, guide) restored
    with pytest.raises(ValueError, match="modulator it was trained with"):
        load_checkpoint(tmp_path / "ck")
    _, m_a = run(state)
    _, m_b = run(ck.state)
    np.testing.assert_array_equal(m_a["episode_return"], m_b["episode_return"])
    np.testing.assert_array_equal(m_a["rnd_loss"], m_b["rnd_loss"])
