"""Env layer: registry errors, shapes, truncation vs termination, normalisation, reset_to."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.envs import RunningMeanStd, UnknownEnvError, list_env_ids, make, make_core
from tests.conftest import TOY_ID, TOY_MAX_STEPS

pytestmark = pytest.mark.timeout(300)


def test_unknown_id_lists_valid_ids():
    with pytest.raises(UnknownEnvError) as err:
        make("CartPol-v1")
    msg = str(err.value)
    assert "Did you mean CartPole-v1" in msg and "Breakout-MinAtar" in msg and "brax/hopper" in msg
    assert "\n" not in msg


def test_unknown_brax_name():
    with pytest.raises(UnknownEnvError):
        make("brax/hoper")


def test_registry_lists_every_family():
    ids = list_env_ids()
    for env_id in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Breakout-MinAtar", "SpaceInvaders-MinAtar",
                   "brax/hopper", "brax/walker2d", "brax/halfcheetah", "brax/ant", "brax/reacher",
                   "brax/inverted_pendulum"):
        assert env_id in ids


@pytest.mark.parametrize("env_id,obs_shape,discrete,dim", [
    ("CartPole-v1", (4,), True, 2),
    ("MountainCar-v0", (2,), True, 3),
    ("Acrobot-v1", (6,), True, 3),
    ("Breakout-MinAtar", (10, 10, 4), True, 3),
    ("Pendulum-v1", (3,), False, 1),
])
def test_gymnax_shapes_and_dtypes(env_id, obs_shape, discrete, dim):
    env = make(env_id, num_envs=3)
    assert env.obs_shape == obs_shape and env.action_space.discrete == discrete and env.action_space.dim == dim
    state, obs = env.reset(jax.random.PRNGKey(0))
    chex.assert_shape(obs, (3,) + obs_shape)
    chex.assert_type(obs, jnp.float32)
    action = jnp.zeros((3,), jnp.int32) if discrete else jnp.zeros((3, dim), jnp.float32)
    state, res = jax.jit(env.step)(jax.random.PRNGKey(1), state, action)
    chex.assert_shape([res.obs, res.final_obs], (3,) + obs_shape)
    chex.assert_shape([res.reward, res.terminated, res.truncated, res.episode_done], (3,))
    chex.assert_type([res.terminated, res.truncated], jnp.bool_)
    chex.assert_type(res.reward, jnp.float32)


def _toy_rollout(actions):
    env = make(TOY_ID, num_envs=1)
    state, obs = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    out = []
    for i, a in enumerate(actions):
        state, res = step(jax.random.PRNGKey(i + 1), state, jnp.array([a]))
        out.append((state, res))
    return out


def test_time_limit_is_truncation_not_termination():
    out = _toy_rollout([0] * TOY_MAX_STEPS)  # never reaches the terminal position
    for _, res in out[:-1]:
        assert not bool(res.truncated[0]) and not bool(res.terminated[0])
    state, last = out[-1]
    assert bool(last.truncated[0]) and not bool(last.terminated[0]) and bool(last.episode_done[0])
    assert int(state.core.time[0]) == 0  # auto-reset happened
    assert float(state.last_return[0]) == TOY_MAX_STEPS and int(state.last_length[0]) == TOY_MAX_STEPS


def test_termination_and_final_obs_before_reset():
    out = _toy_rollout([1, 1, 1])  # reaches position >= 3 on the third step
    _, res = out[2]
    assert bool(res.terminated[0]) and not bool(res.truncated[0])
    assert float(res.final_obs[0, 0]) >= 3.0  # the true terminal observation
    assert float(res.obs[0, 0]) < 1.0  # the policy sees the reset observation


def test_termination_at_time_limit_counts_as_termination():
    env = make(TOY_ID, num_envs=1)
    state, _ = env.reset(jax.random.PRNGKey(0))
    for i, a in enumerate([0, 1, 1, 1]):  # terminal exactly on step 4 == max_steps
        state, res = env.step(jax.random.PRNGKey(i), state, jnp.array([a]))
    assert bool(res.terminated[0]) and not bool(res.truncated[0])


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 5)).astype(np.float32) for n in (7, 1, 30, 12)]
    rms = RunningMeanStd.create((5,))
    for b in batches:
        rms = rms.update(jnp.asarray(b))
    allx = np.concatenate(batches)
    # the prior (mean 0, var 1, count 1e-4) is negligible
    np.testing.assert_allclose(rms.mean, allx.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rms.var, allx.var(0), rtol=1e-3)
    assert float(rms.count) == pytest.approx(len(allx), abs=1e-3)
    z = rms.normalize(jnp.asarray(allx))
    np.testing.assert_allclose(np.asarray(z).mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(z).std(0), 1.0, atol=1e-3)


def test_observation_normalisation_is_in_the_state():
    env = make("CartPole-v1", num_envs=8, normalize_obs=True)
    state, obs = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for i in range(20):
        state, res = step(jax.random.PRNGKey(i), state, jnp.zeros(8, jnp.int32) + (i % 2))
    assert float(state.obs_rms.count) > 8 * 20
    expected = np.clip((np.asarray(state.core.obs) - np.asarray(state.obs_rms.mean))
                       / np.sqrt(np.asarray(state.obs_rms.var) + 1e-8), -10, 10)
    np.testing.assert_allclose(res.obs, expected, rtol=1e-5, atol=1e-6)


def test_continuous_actions_are_clipped():
    env = make("Pendulum-v1", num_envs=2)
    state, _ = env.reset(jax.random.PRNGKey(0))
    _, big = env.step(jax.random.PRNGKey(1), state, jnp.full((2, 1), 100.0))
    _, edge = env.step(jax.random.PRNGKey(1), state, jnp.full((2, 1), env.action_space.high[0]))
    np.testing.assert_allclose(big.final_obs, edge.final_obs)


def test_reset_to_restores_a_snapshot_exactly():
    env = make("CartPole-v1", num_envs=3)
    state, _ = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for i in range(5):
        state, _ = step(jax.random.PRNGKey(i), state, jnp.array([0, 1, 1]))
    snapshot = state.core  # what ULTRA stores for a critical state
    later = state
    for i in range(7):
        later, _ = step(jax.random.PRNGKey(100 + i), later, jnp.array([1, 0, 1]))
    mask = jnp.array([True, False, True])
    restored, obs = jax.jit(env.reset_to)(later, snapshot, mask)
    for leaf_r, leaf_s, leaf_l in zip(jax.tree.leaves(restored.core), jax.tree.leaves(snapshot),
                                      jax.tree.leaves(later.core), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf_r)[[0, 2]], np.asarray(leaf_s)[[0, 2]])
        np.testing.assert_array_equal(np.asarray(leaf_r)[1], np.asarray(leaf_l)[1])
    np.testing.assert_array_equal(np.asarray(obs)[[0, 2]], np.asarray(snapshot.obs)[[0, 2]])
    # stepping from the restored state reproduces stepping from the snapshot
    _, a = step(jax.random.PRNGKey(9), restored, jnp.array([1, 1, 1]))
    _, b = step(jax.random.PRNGKey(9), state, jnp.array([1, 1, 1]))
    np.testing.assert_array_equal(np.asarray(a.final_obs)[[0, 2]], np.asarray(b.final_obs)[[0, 2]])


@pytest.mark.parametrize("env_id", ["Acrobot-v1", "Breakout-MinAtar"])
def test_snapshot_saved_to_host_numpy_restores_into_a_fresh_env_bit_for_bit(env_id, tmp_path):
    """A snapshot taken mid-episode, copied to host numpy and written to disk, restored by `reset_to` into a fresh
    env state that never saw it: the next step is bit-identical to stepping the original state."""
    env = make(env_id, num_envs=2)
    step = jax.jit(env.step)
    state, _ = env.reset(jax.random.PRNGKey(3))
    for i in range(6):
        state, _ = step(jax.random.PRNGKey(10 + i), state, jnp.array([2, 1]) % env.action_space.num_actions)
    leaves, treedef = jax.tree.flatten(jax.device_get(state.core))
    np.savez(tmp_path / "snapshot.npz", *[np.asarray(x) for x in leaves])
    with np.load(tmp_path / "snapshot.npz") as saved:
        snapshot = jax.tree.unflatten(treedef, [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(leaves))])
    fresh, _ = env.reset(jax.random.PRNGKey(99))
    assert not np.array_equal(np.asarray(fresh.core.obs), np.asarray(state.core.obs))
    restored, obs = jax.jit(env.reset_to)(fresh, snapshot, jnp.array([True, True]))
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(state.core.obs))
    action = jnp.array([0, 1]) % env.action_space.num_actions
    after_restore, res_restore = step(jax.random.PRNGKey(7), restored, action)
    after_original, res_original = step(jax.random.PRNGKey(7), state, action)
    chex.assert_trees_all_equal(after_restore.core, after_original.core)
    for field in ("obs", "final_obs", "raw_reward", "terminated", "truncated"):
        np.testing.assert_array_equal(np.asarray(getattr(res_restore, field)), np.asarray(getattr(res_original, field)),
                                      err_msg=field)


def test_sparse_brax_variant_pays_x_position_beyond_the_threshold():
    """RICE's sparse hopper: 0 until the torso's x exceeds the threshold, then x itself."""
    assert "brax/hopper-sparse" in list_env_ids() and "brax/halfcheetah-sparse" in list_env_ids()
    dense_like = make_core("brax/hopper-sparse", backend="spring", sparse_threshold=-1.0)  # always paid
    sparse = make_core("brax/hopper-sparse", backend="spring")
    action = jnp.full((3,), 0.5)
    for core, always_paid in ((dense_like, True), (sparse, False)):
        state, step = core.reset(jax.random.PRNGKey(0)), jax.jit(core.step)
        for t in range(3):
            state, reward, _ = step(jax.random.PRNGKey(t), state, action)
            x = float(state.inner.pipeline_state.q[0])
            assert float(reward) == pytest.approx(x if always_paid else 0.0, abs=1e-6)
    from jaxmod.envs import EnvOptionError

    with pytest.raises(EnvOptionError, match="sparse"):
        make_core("brax/hopper", sparse_threshold=1.0)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Breakout-MinAtar"])
def test_discrete_actions_are_checked_at_the_env_boundary(env_id):
    """Eager use: an out-of-range or non-integer action is a one-line EnvError (before: CartPole's action 2 pushed
    3x, Breakout took 9); compiled code clips into range, as continuous actions are clipped to their box."""
    from jaxmod.envs.core import EnvError
    from jaxmod.envs.registry import make, make_core

    core = make_core(env_id)
    n = core.action_space.num_actions
    state = core.reset(jax.random.PRNGKey(0))
    for bad, says in ((n, "out of range"), (-1, "out of range"), (0.5, "must be integers"), (True, "must be integers")):
        with pytest.raises(EnvError, match=says):
            core.step(jax.random.PRNGKey(1), state, bad)
    env = make(env_id, num_envs=2)
    st, _ = env.reset(jax.random.PRNGKey(0))
    with pytest.raises(EnvError, match="out of range"):
        env.step(jax.random.PRNGKey(1), st, jnp.array([0, n]))
    step = jax.jit(lambda s, a: env.step(jax.random.PRNGKey(1), s, a))
    clipped, legal = step(st, jnp.array([0, n + 3])), step(st, jnp.array([0, n - 1]))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), clipped, legal))
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))  # noqa: E731
    # clipped in the action's own dtype: uint32's maximum is the top action (an int32 cast first made it -1 -> 0)
    assert same(step(st, jnp.array([0, 2**32 - 1], jnp.uint32)), legal)
    assert same(step(st, jnp.array([-128, n - 1], jnp.int8)), step(st, jnp.array([0, n - 1])))
    # shapes: one env takes a scalar, a VecEnv one action per env (eager and traced: shapes are static)
    for bad in (jnp.array([0, 1]), jnp.array([[0]])):
        with pytest.raises(EnvError, match=re.escape(f"a single env takes a scalar action, got shape {tuple(bad.shape)}")):
            core.step(jax.random.PRNGKey(1), state, bad)
        with pytest.raises(EnvError, match="a single env takes a scalar action"):
            jax.jit(lambda a: core.step(jax.random.PRNGKey(1), state, a))(bad)
    with pytest.raises(EnvError, match=r"2 envs take actions of shape \(2,\), got shape \(3,\)"):
        env.step(jax.random.PRNGKey(1), st, jnp.array([0, 1, 0]))
