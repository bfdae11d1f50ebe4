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
