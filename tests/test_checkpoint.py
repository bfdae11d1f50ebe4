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


def _toy_states():
    """A toy learner's init state, as if saved after updates 2, 4 and 6 (params differ per step)."""
    from jaxmod.ppo import PPOConfig
    from tests.conftest import TOY_ID

    cfg = PPOConfig(env_id=TOY_ID, num_envs=2, num_steps=4, total_timesteps=2 * 4 * 6, num_minibatches=1)
    state = PPOLearner(cfg).init(jax.random.PRNGKey(0))
    states = {s: state.replace(update_step=jax.numpy.asarray(s, state.update_step.dtype),
                               params=jax.tree.map(lambda x, s=s: x + s, state.params)) for s in (2, 4, 6)}
    return cfg, states


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)


def test_the_manager_keeps_the_last_k_and_a_damaged_newest_falls_back(tmp_path):
    """Through orbax's CheckpointManager: the newest `keep` steps stay; a bit flipped in the newest step's array data
    (which orbax restores silently to other numbers) or its meta deleted is one warning naming the file, and the
    previous step is restored; with every step damaged, CheckpointError names the newest one's file."""
    from jaxmod.checkpoint import CheckpointError, load_checkpoint, read_meta

    cfg, states = _toy_states()
    d = tmp_path / "ck"
    for step, state in states.items():
        save_checkpoint(d, state, cfg, meta={"updates_done": step}, keep=2)
    assert sorted(p.name for p in d.iterdir()) == ["4", "6"]
    ck = load_checkpoint(d)
    assert ck.step == 6 and ck.meta == {"updates_done": 6} and read_meta(d)["meta"] == {"updates_done": 6}
    chex.assert_trees_all_equal(ck.state, jax.device_get(states[6]))

    damaged = _largest_data_file(d / "6")
    _flip_a_bit(damaged)
    warnings: list[str] = []
    ck = load_checkpoint(d, warn=warnings.append)
    assert ck.step == 4 and len(warnings) == 1 and str(damaged) in warnings[0] and "update 4 instead" in warnings[0]
    chex.assert_trees_all_equal(ck.state, jax.device_get(states[4]))

    import shutil

    shutil.rmtree(d / "4" / "meta")  # the previous step's meta is missing too: nothing left to restore
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d)
    assert str(damaged) in str(err.value) and "earlier checkpoint(s) there are damaged too" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_truncated_file_or_an_unfinished_save_falls_back(tmp_path):
    from jaxmod.checkpoint import DIGEST_FILE, load_checkpoint

    cfg, states = _toy_states()
    d = tmp_path / "ck"
    for step in (2, 4):
        save_checkpoint(d, states[step], cfg, keep=3)
    cut = d / "4" / "state" / "_METADATA"
    cut.write_bytes(cut.read_bytes()[:20])
    warnings: list[str] = []
    assert load_checkpoint(d, warn=warnings.append).step == 2 and str(cut) in warnings[0]
    save_checkpoint(d, states[4], cfg, keep=3)  # a save at an existing step replaces it
    (d / "4" / DIGEST_FILE).unlink()  # killed after orbax finished the step, before its digest was written
    warnings.clear()
    assert load_checkpoint(d, warn=warnings.append).step == 2 and "save did not finish" in warnings[0]


def test_a_save_replaces_later_steps_and_converts_an_old_single_checkpoint_folder(tmp_path):
    """An earlier jaxmod's `state/` + `meta.json` folder loads (read path only); the next save writes the manager's
    layout and removes the old files. A save at update 4 drops a killed run's later step 6."""
    import json

    import orbax.checkpoint as ocp

    from jaxmod.checkpoint import load_checkpoint

    cfg, states = _toy_states()
    old = tmp_path / "old"
    old.mkdir()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(old / "state", jax.device_get(states[6]))
    checkpointer.wait_until_finished()
    checkpointer.close()
    (old / "meta.json").write_text(json.dumps({"config": cfg.to_dict(), "num_seeds": None, "meta": {"a": 1}}))
    ck = load_checkpoint(old)
    assert ck.step is None and ck.meta == {"a": 1}
    chex.assert_trees_all_equal(ck.state, jax.device_get(states[6]))
    save_checkpoint(old, states[6], cfg)
    assert sorted(p.name for p in old.iterdir()) == ["6"]
    save_checkpoint(old, states[4], cfg)
    assert sorted(p.name for p in old.iterdir()) == ["4"] and load_checkpoint(old).step == 4
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        save_checkpoint(old, states[4], cfg, keep=0)
