"""PPO learner: GAE, distributions, shapes, determinism, vmaps over seeds and hyperparameters, chunking."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.ppo import PPOConfig, PPOLearner, make_train
from jaxmod.ppo import distributions as D
from jaxmod.ppo.config import ConfigError, default_config
from jaxmod.ppo.losses import gae, gae_reference

pytestmark = pytest.mark.timeout(600)


def test_gae_associative_scan_matches_reference():
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    T, N = 33, 5
    r = jax.random.normal(k[0], (T, N))
    v = jax.random.normal(k[1], (T, N))
    nv = jax.random.normal(k[2], (T, N))
    term = jax.random.bernoulli(k[3], 0.1, (T, N))
    done = jnp.logical_or(term, jax.random.bernoulli(k[4], 0.1, (T, N)))
    np.testing.assert_allclose(gae(r, v, nv, term, done, 0.99, 0.95),
                               gae_reference(r, v, nv, term, done, 0.99, 0.95), rtol=1e-5, atol=1e-5)


def test_gae_bootstraps_on_truncation_only():
    r = jnp.array([[1.0], [1.0]])
    v = jnp.array([[0.0], [0.0]])
    nv = jnp.array([[10.0], [10.0]])
    # step 0 ends by truncation: bootstrap from V(final obs) = 10, no carry-over from step 1
    adv_trunc = gae(r, v, nv, jnp.array([[False], [False]]), jnp.array([[True], [False]]), 0.9, 1.0)
    assert float(adv_trunc[0, 0]) == pytest.approx(1.0 + 0.9 * 10.0)
    # step 0 ends by termination: no bootstrap
    adv_term = gae(r, v, nv, jnp.array([[True], [False]]), jnp.array([[True], [False]]), 0.9, 1.0)
    assert float(adv_term[0, 0]) == pytest.approx(1.0)
    # no episode end: advantage flows back from step 1
    adv_cont = gae(r, v, nv, jnp.array([[False], [False]]), jnp.array([[False], [False]]), 0.9, 1.0)
    assert float(adv_cont[0, 0]) == pytest.approx((1.0 + 9.0) + 0.9 * (1.0 + 9.0))


def test_distributions_match_closed_forms():
    logits = jnp.array([[0.2, -1.0, 2.0]])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum()
    assert float(D.categorical_log_prob(logits, jnp.array([2]))[0]) == pytest.approx(math.log(p[0, 2]), rel=1e-5)
    assert float(D.categorical_entropy(logits)[0]) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    mean, log_std, a = jnp.array([[0.5, -1.0]]), jnp.array([[0.1, -0.3]]), jnp.array([[0.0, 0.0]])
    s = np.exp(np.asarray(log_std))
    ref = np.sum(-0.5 * ((np.asarray(a) - np.asarray(mean)) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
    assert float(D.gaussian_log_prob(mean, log_std, a)[0]) == pytest.approx(ref, rel=1e-5)
    target = jnp.array([[0.0, 0.0, 1.0]])
    assert float(D.categorical_kl(target, logits)[0]) == pytest.approx(-math.log(p[0, 2]), rel=1e-5)
    assert float(D.gaussian_kl(mean, log_std, mean, log_std)[0]) == pytest.approx(0.0, abs=1e-6)


def test_categorical_log_prob_and_its_gradient_equal_a_gather():
    """The one-hot pick (no scatter-add in the backward pass) is the gather's log-prob and gradient exactly."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (7, 5, 4))
    action = jax.random.randint(jax.random.PRNGKey(1), (7, 5), 0, 4)

    def gathered(lg):
        return jnp.take_along_axis(jax.nn.log_softmax(lg), action[..., None], axis=-1)[..., 0]

    chex.assert_shape(D.categorical_log_prob(logits, action), (7, 5))
    np.testing.assert_array_equal(D.categorical_log_prob(logits, action), gathered(logits))
    weights = jnp.arange(35.0).reshape(7, 5)
    np.testing.assert_allclose(jax.grad(lambda lg: jnp.sum(weights * D.categorical_log_prob(lg, action)))(logits),
                               jax.grad(lambda lg: jnp.sum(weights * gathered(lg)))(logits), rtol=1e-6, atol=1e-6)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="divisible"):
        PPOConfig(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ConfigError, match="activation"):
        PPOConfig(activation="sigmoid")
    with pytest.raises(ConfigError, match="unknown config field"):
        default_config("CartPole-v1", learning_rate=1.0)
    assert default_config("Breakout-MinAtar").num_envs == 64
    assert default_config("brax/hopper").normalize_obs
    assert default_config("MountainCar-v0").normalize_obs and not default_config("CartPole-v1").normalize_obs
    assert not default_config("MountainCar-v0", normalize_obs=False).normalize_obs  # overrides win


def test_train_output_shapes(tiny_config, tiny_output):
    u = tiny_config.num_updates
    for name in ("episode_return", "loss", "actor_loss", "value_loss", "entropy", "approx_kl", "lr", "env_steps"):
        chex.assert_shape(tiny_output.metrics[name], (u,))
    assert int(tiny_output.state.update_step) == u
    assert int(tiny_output.metrics["env_steps"][-1]) == u * tiny_config.batch_size
    chex.assert_tree_all_finite(tiny_output.state.params)
    chex.assert_shape(tiny_output.state.obs, (tiny_config.num_envs, 4))
    chex.assert_shape(tiny_output.state.params["actor"]["Dense_0"]["kernel"], (4, 64))
    # linear lr annealing
    np.testing.assert_allclose(tiny_output.metrics["lr"], tiny_config.lr * (1 - np.arange(u) / u), rtol=1e-6)


def test_same_seed_is_bit_identical(tiny_train, tiny_output):
    again = tiny_train(jax.random.PRNGKey(0))
    chex.assert_trees_all_equal(again.metrics, tiny_output.metrics)
    chex.assert_trees_all_equal(again.state.params, tiny_output.state.params)
    other = tiny_train(jax.random.PRNGKey(1))
    assert not np.array_equal(other.metrics["loss"], tiny_output.metrics["loss"])


def test_continue_from_params(tiny_config, tiny_output):
    """Training continues from the given weights: at a vanishing learning rate they come back unchanged, while a
    run from fresh weights ends far from them."""
    learner = PPOLearner(tiny_config)
    trained = tiny_output.state.params
    state = learner.init(jax.random.PRNGKey(5), trained)
    chex.assert_trees_all_equal(state.params, trained)
    train = make_train(tiny_config)
    still = tiny_config.hparams().replace(lr=jnp.float32(1e-12))
    out = jax.jit(train)(jax.random.PRNGKey(5), trained, None, still)
    fresh = jax.jit(train)(jax.random.PRNGKey(5), None, None, still)
    chex.assert_trees_all_close(out.state.params, trained, atol=1e-6)
    far = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), fresh.state.params, trained)
    assert max(jax.tree.leaves(far)) > 0.1


def test_plain_ppo_ignores_advice(tiny_config, tiny_train, tiny_output):
    """The refinement loop hands every method an `Advice` (empty for continued PPO, so no caller branches):
    plain PPO must train exactly as without it."""
    from jaxmod.advice import Advice

    learner = make_train(tiny_config).learner
    advice = Advice.empty(learner.env.core, 4)
    out = jax.jit(make_train(tiny_config))(jax.random.PRNGKey(0), None, advice)
    chex.assert_trees_all_equal(out.metrics, tiny_output.metrics)
    chex.assert_trees_all_equal(out.state.params, tiny_output.state.params)


def test_chunked_run_equals_single_run(tiny_config, tiny_output):
    learner = PPOLearner(tiny_config)
    u = tiny_config.num_updates
    run_a = jax.jit(lambda s: learner.run(s, u // 2))
    state = learner.init(jax.random.PRNGKey(0))
    state, m1 = run_a(state)
    state, m2 = run_a(state)
    chex.assert_trees_all_equal(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), m1, m2), tiny_output.metrics)
    chex.assert_trees_all_equal(state.params, tiny_output.state.params)


def test_vmap_over_seeds(tiny_config, tiny_output):
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    outs = jax.jit(jax.vmap(make_train(tiny_config)))(keys)  # must not deadlock on 2-core CPUs
    chex.assert_shape(outs.metrics["episode_return"], (2, tiny_config.num_updates))
    # seed 0 of the batch follows the single-seed run (batched float math may differ in the last bits)
    np.testing.assert_allclose(outs.metrics["loss"][0, :2], tiny_output.metrics["loss"][:2], rtol=1e-3, atol=1e-5)
    assert not np.allclose(outs.metrics["loss"][0], outs.metrics["loss"][1])


def test_vmap_over_learning_rates(tiny_config):
    train = make_train(tiny_config)
    lrs = jnp.array([1e-4, 1e-3, 1e-2])

    def sweep(lr):
        return train(jax.random.PRNGKey(0), hparams=tiny_config.hparams().replace(lr=lr))

    outs = jax.jit(jax.vmap(sweep))(lrs)
    np.testing.assert_allclose(outs.metrics["lr"][:, 0], lrs, rtol=1e-6)
    assert not np.allclose(outs.state.params["actor"]["Dense_0"]["kernel"][0],
                           outs.state.params["actor"]["Dense_0"]["kernel"][2])


def test_continuous_actions_train(tiny_config):
    cfg = tiny_config.replace(env_id="Pendulum-v1", normalize_obs=True, normalize_reward=True, ent_coef=0.0)
    out = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    chex.assert_tree_all_finite(out.metrics)
    chex.assert_shape(out.state.params["log_std"], (1,))
    assert float(out.state.env_state.obs_rms.count) > cfg.num_updates * cfg.batch_size


def test_learner_builds_env_and_network_before_any_trace(tiny_config):
    """Built lazily inside a jit trace, a brax env (whose model loads with jnp ops) kept leaked tracers and
    broke the next program that used it (found by the paper-curves smoke preset). Under `jax.checking_leaks` a
    tracer that outlives its trace raises; two programs in a row use the same learner."""
    learner = PPOLearner(tiny_config)
    with jax.checking_leaks():
        for i in range(2):
            state, _ = jax.jit(lambda k: learner.run(learner.init(k), 1))(jax.random.PRNGKey(i))
            chex.assert_tree_all_finite(state.params)


def test_presets_and_the_command_line_parser_leave_the_xla_backend_unstarted():
    """A multi-process run must call jax.distributed.initialize before anything starts the XLA backend, and the
    command line builds presets while it parses: a preset (the continuous classic one included) builds no env."""
    import subprocess
    import sys

    code = ("from jax._src import xla_bridge as xb\nfrom jaxmod.ppo import default_config\n"
            "from jaxmod.cli import build_parser\n"
            "for env in ('Pendulum-v1', 'CartPole-v1', 'MountainCarContinuous-v0'): default_config(env)\n"
            "build_parser(['train', '--env', 'Pendulum-v1'])\nassert not xb.backends_are_initialized()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
