"""Baselines on the shared learner: RICE's mask net and RND, JSRL's roll-in, per-episode critical states."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.arrays import Advice
from jaxmod.advice.restarts import CriticalStates
from jaxmod.baselines.explain import MaskConfig, critical_advice, make_mask_trainer, mask_importance
from jaxmod.baselines.jsrl import GuideRollIn
from jaxmod.baselines.rice import rice_values
from jaxmod.baselines.rnd import RNDBonus, rnd_bonus, rnd_error, rnd_init, rnd_train
from jaxmod.envs import CoreState, make_core
from jaxmod.methods import BASELINES, METHODS, MethodContext, MethodError, method
from jaxmod.parallel import seed_keys
from jaxmod.ppo import ConfigError, PPOConfig, PPOLearner
from jaxmod.ppo.acting import Recording
from tests.conftest import TOY_ID

pytestmark = pytest.mark.timeout(300)


def _recording() -> Recording:
    """T=6, N=2: env 0 has episodes [0..2] and [3..5]; env 1 one episode [0..5] (unfinished)."""
    t_len, n = 6, 2
    done = np.zeros((t_len, n), bool)
    done[2, 0] = True
    time = np.array([[0, 0], [1, 1], [2, 2], [0, 3], [1, 4], [2, 5]], np.int32)
    core = CoreState(inner=jnp.arange(t_len * n, dtype=jnp.float32).reshape(t_len, n),
                     obs=jnp.arange(t_len * n, dtype=jnp.float32).reshape(t_len, n, 1), time=jnp.asarray(time))
    return Recording(core=core, obs=core.obs, action=jnp.ones((t_len, n), jnp.int32),
                     reward=jnp.zeros((t_len, n)), terminated=jnp.asarray(done), truncated=jnp.zeros((t_len, n), bool))


def test_critical_advice_takes_the_most_important_step_of_each_episode():
    rec = _recording()
    scores = jnp.array([[0.1, 0.0], [0.9, 0.2], [0.3, 0.8], [0.5, 0.1], [0.2, 0.1], [0.6, 0.3]])
    adv = jax.jit(lambda r, s: critical_advice(r, s, 4))(rec, scores)
    chex.assert_shape([adv.reward, adv.valid, adv.step], (4,))
    assert int(adv.valid.sum()) == 3  # three episodes, one state each
    picked = sorted(zip(np.asarray(adv.obs[adv.valid][:, 0]).tolist(), np.asarray(adv.step[adv.valid]).tolist(), strict=True))
    # (t=1, env 0) -> obs 2, step 1; (t=5, env 0) -> obs 10, step 2; (t=2, env 1) -> obs 5, step 2
    assert picked == [(2.0, 1), (5.0, 2), (10.0, 2)]
    snap = jax.tree.map(lambda x: x[adv.valid], adv.snapshot)
    np.testing.assert_array_equal(np.sort(np.asarray(snap.inner)), [2.0, 5.0, 10.0])  # restorable states
    top2 = critical_advice(rec, scores, 2)  # capacity below the episode count: the highest scores win
    assert sorted(np.asarray(top2.obs[:, 0]).tolist()) == [2.0, 5.0]


def test_critical_advice_fills_a_capacity_larger_than_the_recording():
    """`--capacity 4096` with the default recording (8 envs x 256 steps) asked top_k for more steps than there are;
    the slots past the recording stay empty."""
    rec = _recording()  # 6 steps x 2 envs
    scores = jnp.array([[0.1, 0.0], [0.9, 0.2], [0.3, 0.8], [0.5, 0.1], [0.2, 0.1], [0.6, 0.3]])
    small, large = critical_advice(rec, scores, 4), jax.jit(lambda r, s: critical_advice(r, s, 16))(rec, scores)
    chex.assert_shape([large.reward, large.valid, large.step], (16,))
    assert int(large.valid.sum()) == 3
    np.testing.assert_array_equal(np.asarray(large.obs[:4]), np.asarray(small.obs))


def test_rnd_bonus_is_normalised_per_step_and_training_lowers_the_error():
    state = rnd_init(jax.random.PRNGKey(0), 3)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 3))
    bonus = rnd_bonus(state, obs)
    chex.assert_shape(bonus, (5, 4))
    np.testing.assert_allclose(bonus.min(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(bonus.max(axis=1), 1.0, atol=1e-5)
    before = float(rnd_error(state, obs.reshape(-1, 3)).mean())
    batches = jnp.broadcast_to(obs.reshape(1, 20, 3), (50, 20, 3))
    trained, loss = jax.jit(rnd_train)(state, batches)
    after = float(rnd_error(trained, obs.reshape(-1, 3)).mean())
    assert after < 0.5 * before and np.isfinite(float(loss))
    np.testing.assert_array_equal(jax.tree.leaves(trained.target)[0], jax.tree.leaves(state.target)[0])


def test_jsrl_guide_acts_only_within_the_horizon():
    from tests.test_modulation import modulated_rollout

    cfg = PPOConfig(env_id=TOY_ID, num_envs=3, num_steps=12, total_timesteps=36, num_minibatches=1)
    learner = PPOLearner(cfg, GuideRollIn(guide_steps=2))  # one update: the horizon stays at 2 in its rollout
    state = learner.init(jax.random.PRNGKey(0))
    # a guide that always moves (+1): huge logit on action 1
    guide = jax.tree.map(jnp.copy, state.aux.guide)
    guide["actor"]["Dense_2"]["bias"] = jnp.array([-50.0, 50.0])
    state = state.replace(aux=state.aux.replace(guide=guide))
    traj = modulated_rollout(learner, state, Advice.empty(learner.env.core, 2), jax.random.PRNGKey(1), 12)
    pos = traj.obs[..., 0]
    step_in_episode = np.zeros_like(pos, dtype=int)  # rebuild each step's time from episode ends
    for n in range(pos.shape[1]):
        t_ep = 0
        for t in range(pos.shape[0]):
            step_in_episode[t, n] = t_ep
            t_ep = 0 if traj.episode_done[t, n] else t_ep + 1
    np.testing.assert_array_equal(traj.guided, step_in_episode < 2)
    assert (traj.action[traj.guided] == 1).all()
    head = learner.net.policy_head(state.params, jnp.asarray(traj.obs))
    np.testing.assert_allclose(traj.log_prob, learner.net.log_prob(state.params, head, jnp.asarray(traj.action)),
                               rtol=1e-5, atol=1e-6)  # the learner's log-prob of what was executed
    assert not hasattr(traj, "forced")  # roll-in steps are trained on (only ULTRA-A's overrides are masked)


def test_rice_and_jsrl_train_in_the_shared_update():
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3, num_minibatches=2)
    for name in ("RICE", "JSRL"):
        learner = PPOLearner(cfg, method(name).build(MethodContext(TOY_ID, guide_steps=3)))
        state = learner.init(jax.random.PRNGKey(0))
        state, metrics = jax.jit(lambda s, ln=learner: ln.run(s, 3, Advice.empty(ln.env.core, 2)))(state)
        key = "rnd_bonus" if name == "RICE" else "guided_frac"
        assert np.all(np.isfinite(np.asarray(metrics["loss"]))) and key in metrics
        if name == "JSRL":  # the horizon shrinks: 3, 2, 1 steps of guidance per episode
            assert np.all(np.diff(np.asarray(metrics["guided_frac"])) <= 0) and metrics["guided_frac"][0] > 0


def test_mask_net_trains_for_many_seeds_in_one_program():
    """Blinding pays alpha per step and costs the toy walk nothing: the mask nets (eight seeds, one program, trained
    by `PPOLearner` on the keep/blind env) learn to blind, so the importance P(keep | s) they report falls; with a
    cost per blinded step they learn to keep. PPO without an entropy bonus leaves the odd seed stuck early (the
    old hand-written update did too), so the claims are about the seeds' median."""
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=8, total_timesteps=64)
    learner = PPOLearner(cfg)
    agents = jax.vmap(learner.init)(seed_keys(0, 8))
    obs = jnp.array([[0.05], [1.05]])  # states the walk visits (start near 0, +1 per move)
    blind = {}
    for alpha in (-1.0, 1.0):
        mc = MaskConfig(alpha=alpha, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 30, lr=1e-2)
        mask_net, train_mask = make_mask_trainer(learner.env, learner.net, mc)
        res = jax.jit(jax.vmap(train_mask))(seed_keys(1, 8), agents.params, agents.env_state.obs_rms)
        chex.assert_shape(res.blind_frac, (8, 30))
        chex.assert_shape(res.episode_return, (8, 30))
        imp = jax.vmap(lambda p, net=mask_net: mask_importance(net, p, obs))(res.params)
        chex.assert_shape(imp, (8, 2))
        blind[alpha] = (np.asarray(res.blind_frac)[:, -5:].mean(1), np.asarray(imp).mean(1))
    frac, imp = blind[1.0]
    assert np.median(frac) > 0.8 and np.median(imp) < 0.2  # learned to blind: low importance
    frac, imp = blind[-1.0]
    assert (frac < 0.2).all() and np.median(imp) > 0.8  # blinding costs: every seed keeps, high importance


def test_keep_blind_env_executes_the_agent_or_a_random_action_and_pays_alpha():
    """The keep/blind env steps the frozen agent's greedy action where the mask keeps (0) and a random action where
    it blinds (1); the learning reward is the env's plus alpha per blinded step, and blinded steps are counted."""
    from jaxmod.baselines.explain import KeepBlindEnv

    agent = PPOLearner(PPOConfig(env_id=TOY_ID, num_envs=64, num_steps=8, total_timesteps=512))
    params = agent.net.init(jax.random.PRNGKey(0))
    last = sorted(params["actor"])[-1]  # the output layer: a huge logit on "move" (+1)
    params["actor"][last]["bias"] = params["actor"][last]["bias"].at[1].add(50.0)
    mask = PPOLearner(PPOConfig(env_id=TOY_ID, num_envs=64, num_steps=8, total_timesteps=512),
                      vec_env=KeepBlindEnv(agent.env, agent.net, alpha=0.5))
    start = mask.init(jax.random.PRNGKey(1))
    state = mask.env.attach(start, params, start.env_state.obs_rms).env_state
    pos = np.asarray(state.inner.core.obs)[:, 0]
    nxt, res = mask.env.step(jax.random.PRNGKey(3), state, jnp.zeros((64,), jnp.int32))
    np.testing.assert_allclose(np.asarray(res.final_obs)[:, 0], pos + 1.0)  # kept: the agent moves everywhere
    np.testing.assert_allclose(np.asarray(res.reward), np.asarray(res.raw_reward))
    assert int(nxt.blinded) == 0
    nxt, res = mask.env.step(jax.random.PRNGKey(4), state, jnp.ones((64,), jnp.int32))
    moved = np.asarray(res.final_obs)[:, 0] - pos
    assert 10 < (moved == 0).sum() < 54  # blinded: uniformly random moves, about half stay
    np.testing.assert_allclose(np.asarray(res.reward), np.asarray(res.raw_reward) + 0.5)
    assert int(nxt.blinded) == 64
    with pytest.raises(ConfigError, match="num_envs"):
        PPOLearner(PPOConfig(env_id=TOY_ID, num_envs=4), vec_env=KeepBlindEnv(agent.env, agent.net, alpha=0.5))


def test_method_table_and_rice_defaults():
    assert set(BASELINES) <= set(METHODS) and method("RICE").critical == "mask"
    assert rice_values("brax/hopper-sparse") == (0.25, 0.001) and rice_values("brax/halfcheetah") == (0.5, 0.01)
    sm = method("StateMask-R").build(MethodContext("brax/hopper"))
    assert sm == CriticalStates(restart_prob=1.0)  # restarts only: no action, reward, KL or bonus
    rice = method("RICE").build(MethodContext("brax/walker2d"))
    assert rice.parts == (CriticalStates(restart_prob=0.25), RNDBonus(coef=0.01))
    assert method("RICE").build(MethodContext("brax/walker2d", rice_p=0.75)).parts[0].restart_prob == 0.75
    with pytest.raises(MethodError, match="choose from"):
        method("SAC")
    assert make_core(TOY_ID).action_space.num_actions == 2


def test_rnd_bonus_raises_rewards_and_advantages_and_trains_its_predictor():
    """RICE's bonus: coef * a per-step min-max normalised error in [0, 1] added to every step's reward, so GAE's
    advantages can only rise; the predictor takes its Adam steps on the rollout's next states."""
    from tests.test_modulation import _rollout_and_reward

    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=16, total_timesteps=64, num_minibatches=2)
    learner = PPOLearner(cfg, RNDBonus(coef=0.5))
    traj, reward, metrics, (adv, adv_env), aux0, aux1 = _rollout_and_reward(learner, Advice.empty(
        learner.env.core, 2), 16)
    bonus = (reward - traj.reward) / 0.5
    assert bonus.min() >= -1e-6 and bonus.max() <= 1 + 1e-6
    np.testing.assert_allclose(bonus.min(axis=1), 0.0, atol=1e-6)  # min-max normalised across envs per step
    np.testing.assert_allclose(bonus.max(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(metrics["rnd_bonus"]), bonus.mean(), rtol=1e-5)
    assert (adv >= adv_env - 1e-5).all() and (adv > adv_env + 1e-3).any()
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), aux1.rnd.predictor, aux0.rnd.predictor)
    assert max(jax.tree.leaves(moved)) > 0  # trained
    chex.assert_trees_all_equal(aux1.rnd.target, aux0.rnd.target)  # the target stays frozen
