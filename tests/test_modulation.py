"""ULTRA refinement in the compiled update: packing, restarts, action override, shaping, KL, no recompiles."""

from __future__ import annotations

import dataclasses
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.arrays import Advice, AdviceBook, AdviceItem
from jaxmod.advice.consensus import consensus
from jaxmod.advice.kl import advice_kl
from jaxmod.advice.modulation import ModulationConfig, ModulationError
from jaxmod.advice.restarts import CriticalStates, choose_restarts
from jaxmod.advice.shaping import ShapingAux, shaping_bonus
from jaxmod.advice.slots import advice_spread
from jaxmod.advice.verify import AdviceTrust, Verification, advised_steps
from jaxmod.envs import make_core
from jaxmod.llm.answers import Advised, Rejected
from jaxmod.ppo import PPOConfig, PPOLearner, make_train
from jaxmod.ppo.losses import Batch, mask_counts, ppo_loss
from jaxmod.ppo.modulator import Modulator, chain
from jaxmod.ppo.rollout import collect_modulated
from tests.conftest import TINY, TOY_ID

pytestmark = pytest.mark.timeout(300)


def _snapshot(core, seed: int, steps: int, action: int = 1):
    state = core.reset(jax.random.PRNGKey(seed))
    for i in range(steps):
        state, _, _ = core.step(jax.random.PRNGKey(100 + i), state, jnp.int32(action))
    return jax.device_get(state)


def _book(env_id: str, n: int, capacity: int = 4, action: int = 1, reward: float = 0.5) -> AdviceBook:
    core = make_core(env_id)
    book = AdviceBook(core, capacity)
    for i in range(n):
        snap = _snapshot(core, i, 1 + i % 2)
        book.add(AdviceItem(episode=i, step=i % 2 + 1, obs=snap.obs, snapshot=snap, action=action, reward=reward))
    return book


def test_packing_dedupes_masks_and_replaces_oldest():
    core = make_core("CartPole-v1")
    book = AdviceBook(core, 3)
    empty = book.to_advice()
    chex.assert_shape(empty.obs, (3, 4))
    assert not bool(empty.valid.any())
    snaps = [_snapshot(core, i, 2) for i in range(5)]
    for i in range(3):
        book.add(AdviceItem(i, 7, snaps[i].obs, snaps[i], action=i % 2, reward=0.1 * i))
    book.add(AdviceItem(1, 7, snaps[1].obs, snaps[1], action=0, reward=-0.3))  # same (episode, step): update
    assert len(book) == 3 and book.replaced == 0
    book.add(AdviceItem(9, 1, snaps[4].obs, snaps[4], action=1, reward=2.0))  # full: replaces the oldest (ep 0)
    adv = book.to_advice()
    assert book.replaced == 1 and bool(adv.valid.all())
    assert sorted(np.asarray(adv.episode).tolist()) == [1, 2, 9]
    slot9 = int(np.nonzero(np.asarray(adv.episode) == 9)[0][0])
    assert float(adv.reward[slot9]) == 1.0  # clipped
    np.testing.assert_array_equal(np.asarray(adv.snapshot.obs[slot9]), np.asarray(snaps[4].obs))
    chex.assert_trees_all_equal_shapes_and_dtypes(adv, empty)


def test_books_stack_per_seed_into_one_advice_that_stays_a_copy():
    books = [_book("CartPole-v1", n, reward=0.1 * n) for n in (0, 2, 3)]
    stacked = AdviceBook.stacked(books)
    expected = jax.tree.map(lambda *xs: jnp.stack(xs), *(b.to_advice() for b in books))
    chex.assert_trees_all_equal_shapes_and_dtypes(stacked, expected)
    chex.assert_trees_all_equal(stacked, expected)
    snap = _snapshot(make_core("CartPole-v1"), 9, 1)
    books[0].add(AdviceItem(episode=9, step=1, obs=snap.obs, snapshot=snap, action=0, reward=1.0))  # later packing
    assert not bool(stacked.valid[0].any())  # does not reach arrays already handed to the device


def test_advice_of_another_capacity_is_one_clear_error_before_tracing():
    learner = PPOLearner(TINY, ModulationConfig.variant("RA", capacity=4).modulator())
    state = learner.init(jax.random.PRNGKey(0))
    with pytest.raises(ModulationError, match="capacity 4.*capacity 8"):
        jax.jit(lambda s, a: learner.run(s, 1, a))(state, Advice.empty(learner.env.core, 8))


@pytest.mark.parametrize("build", [lambda: ModulationConfig.variant("RA", capacity=4).modulator(),
                                   lambda: CriticalStates(restart_prob=1.0)], ids=["RA", "restarts-only"])
def test_no_advice_or_advice_of_another_env_is_one_clear_error_before_compiling(build):
    """`make_train(config, modulator)`'s train called without advice (plain PPO ignores it; a method that reads it
    cannot), or with advice of another env, names what to pass instead of failing on a None or a shape deep in
    the trace."""
    train = jax.jit(make_train(TINY, build()))
    with pytest.raises(ModulationError, match="reads advice but the learner was given NoneType"):
        train(jax.random.PRNGKey(0))
    other = Advice.empty(make_core("MountainCarContinuous-v0"), 4)
    with pytest.raises(ModulationError, match=r"observations \(2,\) and actions \(1,\).*\(4,\) and \(\)"):
        train(jax.random.PRNGKey(0), None, other)


def test_the_modulators_default_to_the_configs_values():
    """One default per knob: ULTRA's building blocks built with their own defaults are the chain the default
    `ModulationConfig` builds (Verification defaulted to capacity 64 against the config's 32: a hand-built chain
    refused the config's advice)."""
    from jaxmod.advice.consensus import Consensus
    from jaxmod.advice.kl import KLTarget
    from jaxmod.advice.override import ActionOverride
    from jaxmod.advice.shaping import ImplicitReward

    assert ModulationConfig().modulator() == chain(Consensus(), Verification(), CriticalStates(), ActionOverride(),
                                                   ImplicitReward(), KLTarget())


def test_invalid_answers_never_enter_the_arrays():
    core = make_core("CartPole-v1")
    book = AdviceBook(core, 4)
    snap = _snapshot(core, 0, 1)
    items = [AdviceItem(i, 0, snap.obs, snap, 0, 0.0, rated_action=i % 2) for i in range(4)]  # the agent's actions
    verdicts = [Advised(1, 0.5, "ok"), Rejected("action 7 out of range"), None, Advised(0, -1.0, "ok")]
    counts = book.add_answers(items, verdicts)
    adv = book.to_advice()
    assert counts == {"packed": 2, "dropped": 2}
    valid = np.asarray(adv.valid)
    assert int(valid.sum()) == 2 and np.asarray(adv.episode)[valid].tolist() == [0, 3]
    # the suggestion comes from the answer, the rated action stays the agent's
    assert np.asarray(adv.action)[valid].tolist() == [1, 0] and np.asarray(adv.rated_action)[valid].tolist() == [0, 1]


def test_variants_and_errors():
    assert ModulationConfig.variant("A").override_action and not ModulationConfig.variant("A").shape_reward
    assert ModulationConfig.variant("RA", kl_coef=0.1).uses_kl
    with pytest.raises(ModulationError):
        ModulationConfig.variant("B")
    with pytest.raises(ModulationError):
        ModulationConfig(restart_prob=1.5)
    assert "jaxmod_choices" in ModulationConfig().choices()


class _Trust(Modulator):
    """Test-only: overrides which slots are trusted, just before `CriticalStates` reads it."""

    def __init__(self, trusted: jax.Array) -> None:
        self.trusted = trusted

    def prepare(self, aux, advice, plan, ctx, spec):
        return aux, {**plan, "trusted": self.trusted}


def modulated_rollout(learner: PPOLearner, state, advice: Advice, key: jax.Array, steps: int):
    """One rollout of `learner`'s modulated unroll (the training path's), on the host: the trajectory's fields
    and extras as attributes, plus `advised` (the steps that ran their slot's suggestion)."""
    def run(state, advice):
        plan = {**learner.digest(state, advice), "hparams": state.hparams}
        _, _, _, plan, traj = collect_modulated(learner.net, learner.env, state.params, state.env_state, state.obs,
                                                key, steps, learner.modulator, state.aux, plan, learner.spec,
                                                state.update_step, advice)
        return traj, advised_steps(plan, traj, learner.spec) if "critical" in traj.extras else None

    traj, advised = jax.device_get(jax.jit(run)(state, advice))
    fields = {k: v for k, v in vars(traj).items() if k != "extras"}
    return types.SimpleNamespace(**fields, **traj.extras, advised=advised)


def _toy_rollout(modulation: ModulationConfig, advice: Advice, steps: int = 12, num_envs: int = 3,
                 trusted: jax.Array | None = None):
    cfg = PPOConfig(env_id=TOY_ID, num_envs=num_envs, num_steps=steps, total_timesteps=num_envs * steps,
                    num_minibatches=1)
    mod = dataclasses.replace(modulation, capacity=advice.capacity).modulator()
    if trusted is not None:
        parts = list(mod.parts)
        at = next(i for i, m in enumerate(parts) if isinstance(m, CriticalStates))
        mod = chain(*parts[:at], _Trust(trusted), *parts[at:])
    learner = PPOLearner(cfg, mod)
    state = learner.init(jax.random.PRNGKey(0))
    return learner, state, modulated_rollout(learner, state, advice, jax.random.PRNGKey(1), steps)


def _toy_advice(action: int = 0, reward: float = 0.75, weight: float = 0.8) -> Advice:
    core = make_core(TOY_ID)
    book = AdviceBook(core, 2)
    snap = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    snap = snap.replace(inner=np.float32(2.0), obs=np.array([2.0], np.float32), time=np.int32(1))
    book.add(AdviceItem(episode=5, step=1, obs=snap.obs, snapshot=snap, action=action, reward=reward, weight=weight))
    return book.to_advice()


def test_restart_snapshots_gathered_per_step_or_before_the_loop_give_the_same_rollout(monkeypatch):
    """Large snapshots (physics states) are gathered step by step instead of for the whole rollout at once:
    the same trajectory either way."""
    from jaxmod.advice import restarts

    advice = _toy_advice()
    mod = ModulationConfig.variant("RA", restart_prob=0.5, match_radius=0.5)
    _, _, before_loop = _toy_rollout(mod, advice)
    monkeypatch.setattr(restarts, "PREGATHER_BYTES", 0)
    _, _, per_step = _toy_rollout(mod, advice)
    assert before_loop.restarted.any()
    for a, b in zip(jax.tree.leaves(vars(before_loop)), jax.tree.leaves(vars(per_step)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restart_returns_exactly_the_stored_state_and_marks_the_next_step_critical():
    advice = _toy_advice()
    _, _, traj = _toy_rollout(ModulationConfig.variant("restart", restart_prob=1.0), advice)
    restarted = traj.restarted  # (T, N): the env's next episode starts at the advice snapshot
    assert restarted.any()
    t, n = np.argwhere(restarted)[0]
    assert traj.obs[t + 1, n, 0] == 2.0  # the stored observation, exactly
    assert traj.critical[t + 1, n] and traj.slot[t + 1, n] == 0
    assert not traj.critical[0].any()  # nothing critical before any restart
    assert traj.critical.sum() == restarted[:-1].sum()  # only first steps after restarts


def test_action_override_keeps_the_ratio_correct():
    advice = _toy_advice(action=0)
    learner, state, traj = _toy_rollout(ModulationConfig.variant("A", restart_prob=1.0, verify_samples=0), advice)
    crit = traj.critical
    assert crit.any()
    assert (traj.action[crit] == 0).all()
    head = learner.net.policy_head(state.params, jnp.asarray(traj.obs))
    logp = np.asarray(learner.net.log_prob(state.params, head, jnp.asarray(traj.action)))
    np.testing.assert_allclose(traj.log_prob, logp, rtol=1e-5, atol=1e-6)
    # with verification a random share of critical steps is left to the policy (the control group)
    mod = ModulationConfig.variant("A", restart_prob=1.0, verify_samples=2, verify_control=0.5)
    learner, state, traj = _toy_rollout(mod, advice, steps=64, num_envs=8)
    crit, advised = traj.critical, traj.advised
    np.testing.assert_array_equal(advised, crit & (traj.action == 0))  # exactly the steps that ran the suggestion
    assert (advised.sum() < crit.sum()) and (traj.action[crit & ~advised] == 1).all()
    forced = traj.forced  # imposed actions: a subset of the advised steps (the policy may agree by itself)
    assert forced.any() and not (forced & ~crit).any() and not (forced & ~advised).any()
    head = learner.net.policy_head(state.params, jnp.asarray(traj.obs))
    logp = np.asarray(learner.net.log_prob(state.params, head, jnp.asarray(traj.action)))
    np.testing.assert_allclose(traj.log_prob, logp, rtol=1e-5, atol=1e-6)


def test_reward_shaping_only_on_critical_steps_that_take_the_rated_action():
    """The implicit reward rates one action (the agent's at the source step; here the suggestion, the
    default): critical steps that take it get lambda * weight * r_llm, other steps nothing."""
    advice = _toy_advice(action=0, reward=0.75, weight=0.8)
    mod = ModulationConfig.variant("R", restart_prob=1.0, reward_scale=2.0, verify_samples=0)  # every answer trusted
    _, _, traj = _toy_rollout(mod, advice, steps=32, num_envs=4)
    np.testing.assert_array_equal(traj.reward, traj.raw_reward)  # the env's reward stays the env's
    bonus, rated = traj.shaping, traj.critical & (traj.action == 0)
    assert rated.any() and (traj.critical & ~rated).any()  # the policy acts: both cases occur
    np.testing.assert_allclose(bonus[rated], 2.0 * 0.75 * 0.8, rtol=1e-6)
    np.testing.assert_array_equal(bonus[~rated], 0.0)


def test_continuous_shaping_weighs_the_rated_action_by_a_kernel():
    core = make_core("Pendulum-v1")
    book = AdviceBook(core, 2)
    snap = _snapshot_cont(core)
    book.add(AdviceItem(0, 1, snap.obs, snap, action=[1.0], reward=-0.5, rated_action=[-1.0]))
    advice = book.to_advice()
    slot, critical = jnp.array([0, 0, 0, -1]), jnp.array([True, True, True, False])
    action = jnp.array([[-1.0], [-0.8], [1.0], [-1.0]])
    bonus = np.asarray(shaping_bonus(jnp.float32(2.0), advice, slot, critical, action, 0.2))
    np.testing.assert_allclose(bonus, [-1.0, -1.0 * np.exp(-0.5), -1.0 * np.exp(-50.0), 0.0], rtol=1e-5)


def test_matching_marks_states_near_advice():
    advice = _toy_advice()  # advice obs = [2.0]; the toy walk passes position 2 when pushing right
    mod = ModulationConfig.variant("A", restart_prob=0.0, match_radius=0.25)
    _, _, traj = _toy_rollout(mod, advice, steps=16)
    near = np.abs(traj.obs[..., 0] - 2.0) <= 0.25
    np.testing.assert_array_equal(traj.critical, near)


class _MatchedShare(Modulator):
    """Test-only: sets ULTRA-A's per-slot control share at matched steps, just before `CriticalStates` reads it."""

    def __init__(self, share: jax.Array) -> None:
        self.share = share

    def prepare(self, aux, advice, plan, ctx, spec):
        return aux, {**plan, "control_share_matched": self.share}


def test_matched_steps_execute_a_suggestion_only_as_far_as_its_slot_is_trusted():
    """Matching makes every state near the advice critical; ULTRA-A executes an unproven slot's suggestion at none
    of those (verification on, the default: a fresh slot has trust 0) and at every one without verification. A
    slot's per-slot matched share (verification's, for a trusted slot 1 - verify_control) leaves that share of its
    matched steps to the policy."""
    advice = _toy_advice(action=0)
    near = dict(restart_prob=0.0, match_radius=0.25)
    _, _, traj = _toy_rollout(ModulationConfig.variant("A", **near), advice, steps=64, num_envs=8)
    assert traj.critical.sum() > 20 and not traj.forced.any()  # untrusted: the policy acts at every matched step
    _, _, traj = _toy_rollout(ModulationConfig.variant("A", **near, verify_samples=0), advice, steps=64, num_envs=8)
    np.testing.assert_array_equal(traj.forced, traj.critical)  # every answer trusted: executed everywhere
    mod = dataclasses.replace(ModulationConfig.variant("A", **near), capacity=advice.capacity).modulator()
    parts = list(mod.parts)
    at = next(i for i, m in enumerate(parts) if isinstance(m, CriticalStates))
    learner = PPOLearner(PPOConfig(env_id=TOY_ID, num_envs=8, num_steps=64, total_timesteps=512, num_minibatches=1),
                         chain(*parts[:at], _MatchedShare(jnp.array([0.25, 1.0])), *parts[at:]))
    traj = modulated_rollout(learner, learner.init(jax.random.PRNGKey(0)), advice, jax.random.PRNGKey(1), 64)
    crit, forced = traj.critical, traj.forced
    assert not (forced & ~crit).any() and (traj.action[forced] == 0).all()
    assert 0.5 < forced.sum() / crit.sum() < 0.95  # about 3/4 executed, 1/4 left to the policy (control)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("small_obs", [8, 0])  # the broadcast product (small observations) and the matmul
def test_matcher_finds_the_nearest_usable_slot_within_the_radius(normalize, small_obs, monkeypatch):
    """The rollout's matching against a brute-force nearest neighbour: unusable slots never match, ties go
    to the first slot, distances are in normalised units or in units of the advice spread."""
    from jaxmod.advice import matching
    from jaxmod.advice.matching import Matcher
    from jaxmod.envs.normalize import RunningMeanStd

    monkeypatch.setattr(matching, "SMALL_OBS", small_obs)

    rng = np.random.default_rng(0)
    core = make_core("CartPole-v1")
    book = AdviceBook(core, 8)
    points = rng.normal(size=(8, 4)).astype(np.float32) * np.array([1.0, 2.0, 0.1, 0.5], np.float32)
    points[5] = points[2]  # a tie: the first of the two slots wins
    for i, p in enumerate(points):
        snap = jax.device_get(core.reset(jax.random.PRNGKey(i))).replace(obs=p)
        book.add(AdviceItem(episode=i, step=0, obs=p, snapshot=snap, action=0, reward=0.0))
    advice = book.to_advice()
    usable = jnp.asarray(np.arange(8) != 3)
    rms = RunningMeanStd.create((4,)).update(jnp.asarray(rng.normal(size=(64, 4)).astype(np.float32) * 2 + 1))
    spread = advice_spread(advice)
    obs = points[[0, 2, 3, 7, 1, 6]] + rng.normal(size=(6, 4)).astype(np.float32) * 0.005
    obs[4] += 10.0  # far from everything
    x = np.asarray(rms.normalize(jnp.asarray(obs))) if normalize else obs
    matcher = Matcher.create(advice, usable, rms if normalize else None, None if normalize else spread,
                             jnp.float32(0.5))
    got = np.asarray(matcher.match(jnp.asarray(x)))
    chex.assert_shape(got, (6,))
    if normalize:
        x_cmp, p_cmp = x, np.asarray(rms.normalize(jnp.asarray(points)))
    else:
        x_cmp, p_cmp = obs / np.asarray(spread), points / np.asarray(spread)
    dist = np.linalg.norm(x_cmp[:, None] - p_cmp[None], axis=-1)
    dist[:, 3] = np.inf
    want = np.where(dist.min(1) <= 0.5, dist.argmin(1), -1)
    np.testing.assert_array_equal(got, want)
    assert got[1] == 2 and got[2] != 3 and got[4] == -1  # tie to the first slot; slot 3 unusable; far: none


def test_kl_gradient_pulls_toward_the_suggestion():
    learner = PPOLearner(TINY)
    params = learner.net.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (32, 4))
    target = jnp.ones((32,), jnp.int32)

    def kl(p):
        return advice_kl(learner.net, p, learner.net.policy_head(p, obs), target, 0.2).mean()

    def logp(p):
        head = learner.net.policy_head(p, obs)
        return learner.net.log_prob(p, head, target).mean()

    grads = jax.grad(kl)(params)
    stepped = jax.tree.map(lambda p, g: p - 1.0 * g, params, grads)
    assert float(kl(stepped)) < float(kl(params)) and float(logp(stepped)) > float(logp(params))


def test_continuous_kl_target_and_modulated_training_run():
    cfg = TINY.replace(env_id="Pendulum-v1", ent_coef=0.0, env_options=(("max_steps_in_episode", 10),))
    mod = ModulationConfig.variant("RA", kl_coef=0.5, restart_prob=0.5, capacity=3)
    core = make_core("Pendulum-v1")
    book = AdviceBook(core, 3)
    snap = _snapshot_cont(core)
    book.add(AdviceItem(0, 3, snap.obs, snap, action=[1.5], reward=0.5))
    out = jax.jit(make_train(cfg, mod.modulator()))(jax.random.PRNGKey(0), None, book.to_advice())
    chex.assert_tree_all_finite(out.metrics)
    assert float(out.metrics["critical_frac"].sum()) > 0 and "advice_kl" in out.metrics


def _snapshot_cont(core):
    state = core.reset(jax.random.PRNGKey(0))
    state, _, _ = core.step(jax.random.PRNGKey(1), state, jnp.array([0.5], jnp.float32))
    return jax.device_get(state)


def test_new_advice_never_recompiles():
    mod = ModulationConfig.variant("RA", kl_coef=0.1, capacity=4)
    learner = PPOLearner(TINY, mod.modulator())
    traces = []

    def run(state, advice):
        traces.append(1)
        return learner.run(state, 2, advice)

    run_jit = jax.jit(run)
    state = learner.init(jax.random.PRNGKey(0))
    a1 = Advice.empty(learner.env.core, 4)
    a2 = _book("CartPole-v1", 2).to_advice()
    a3 = _book("CartPole-v1", 4, action=0, reward=-0.5).to_advice()
    state, m1 = run_jit(state, a1)
    state, m2 = run_jit(state, a2)
    state, m3 = run_jit(state, a3)
    assert len(traces) == 1 and run_jit._cache_size() == 1
    assert int(m1["advice_valid"][0]) == 0 and int(m3["advice_valid"][0]) == 4


def test_kl_filter_drops_the_pull_where_advice_did_badly():
    """Advice whose steps end up with negative advantage (here: a large negative implicit reward) gets no
    KL pull under `kl_filter`; without the filter it does."""
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=16, total_timesteps=4 * 16 * 2, num_minibatches=2)
    advice = _toy_advice(action=0, reward=-1.0, weight=1.0)
    kls = {}
    for kl_filter in (False, True):
        mod = ModulationConfig.variant("RA", restart_prob=1.0, reward_scale=100.0, kl_coef=1.0, capacity=2,
                                       kl_filter=kl_filter, verify_samples=0)
        out = jax.jit(make_train(cfg, mod.modulator()))(jax.random.PRNGKey(0), None, advice)
        assert float(out.metrics["critical_frac"].sum()) > 0
        kls[kl_filter] = float(out.metrics["advice_kl"].mean())
    assert kls[False] > 0.1 and kls[True] == 0.0


def test_trust_statistics_follow_the_slots():
    core = make_core(TOY_ID)
    book = AdviceBook(core, 3)
    snap = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    for episode in (1, 2):
        book.add(AdviceItem(episode=episode, step=0, obs=snap.obs, snapshot=snap, action=1, reward=0.0))
    advice = book.to_advice()
    trust = AdviceTrust.create(3).follow(advice)
    slot = jnp.array([[0, 0, 0, 1, 1, 1, -1]])
    advised = jnp.array([[True, True, False, True, True, False, False]])
    adv = jnp.array([[-1.0, -3.0, 2.0, 1.0, 0.5, 0.0, 9.0]])
    trust = trust.record(slot, advised, (slot >= 0) & ~advised, adv, 64)
    np.testing.assert_allclose(trust.count, [[2.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(trust.mean, [[-2.0, 0.75, 0.0], [2.0, 0.0, 0.0]])
    np.testing.assert_allclose(trust.mean_square, [[5.0, 0.625, 0.0], [4.0, 0.0, 0.0]], rtol=1e-6)
    gap, stderr = trust.gap()
    np.testing.assert_allclose(gap[:2], [-4.0, 0.75])
    np.testing.assert_array_equal(trust.trusted(advice, 2), [True, True, False])  # too few control samples yet
    np.testing.assert_array_equal(trust.trusted(advice, 1), [False, True, False])  # slot 0 refuted; 2 invalid
    noisy = AdviceTrust.create(3).follow(advice).record(  # advised worse than control, but not significantly
        jnp.zeros((6,), jnp.int32), jnp.array([True] * 3 + [False] * 3), jnp.array([False] * 3 + [True] * 3),
        jnp.array([-1.0, 0.8, -1.0, 0.9, -0.9, 0.0]), memory=64)
    assert float(noisy.gap()[0][0]) < 0 and bool(noisy.trusted(advice, 3)[0])
    capped = trust.record(slot, advised, (slot >= 0) & ~advised, adv + 10.0, memory=2)  # new evidence wins
    assert float(capped.count[0, 0]) == 2.0 and float(capped.mean[0, 0]) == 8.0
    book.add(AdviceItem(episode=3, step=0, obs=snap.obs, snapshot=snap, action=0, reward=0.0))  # fills slot 2
    book.add(AdviceItem(episode=4, step=0, obs=snap.obs, snapshot=snap, action=0, reward=0.0))  # replaces slot 0
    renewed = trust.follow(book.to_advice())
    np.testing.assert_allclose(renewed.count, [[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]])  # new advice starts unjudged


def test_refuted_advice_still_restarts_but_no_longer_acts():
    advice = _toy_advice(action=0)
    mod = ModulationConfig.variant("RA", restart_prob=1.0, match_radius=0.25)
    _, _, traj = _toy_rollout(mod, advice, steps=16, trusted=jnp.zeros_like(advice.valid))
    assert traj.restarted.any() and not traj.critical.any() and not traj.shaping.any()


def test_verification_refutes_bad_advice_and_keeps_good_advice():
    """In the toy walk, moving at position 2 ends the episode (bad), staying keeps the reward coming (good).
    Both answers claim a high implicit reward: only the environment's outcome may judge them."""
    core = make_core(TOY_ID)
    book = AdviceBook(core, 4)
    snap = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    snap = snap.replace(inner=np.float32(2.0), obs=np.array([2.0], np.float32), time=np.int32(1))
    book.add(AdviceItem(episode=5, step=1, obs=snap.obs, snapshot=snap, action=1, reward=1.0))  # bad
    book.add(AdviceItem(episode=6, step=1, obs=snap.obs, snapshot=snap, action=0, reward=1.0))  # good
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=16, total_timesteps=4 * 16 * 12, num_minibatches=2)
    pre = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))  # a critic that knows the walk
    mod = ModulationConfig.variant("RA", restart_prob=1.0, capacity=4, verify_samples=4)
    modulator = mod.modulator()
    out = jax.jit(make_train(cfg, modulator))(jax.random.PRNGKey(1), pre.state.params, book.to_advice())
    trust = next(a for m, a in zip(modulator.parts, out.state.aux, strict=True) if isinstance(m, Verification))
    gap = np.asarray(trust.gap()[0])
    assert gap[0] < 0.0 < gap[1]
    np.testing.assert_array_equal(trust.trusted(book.to_advice(), 4), [False, True, False, False])
    assert int(out.metrics["advice_refuted"][-1]) == 1


def test_restart_choice_picks_valid_slots_uniformly_from_uniforms():
    advice = Advice.empty(make_core(TOY_ID), 5)
    advice = advice.replace(valid=jnp.array([False, True, False, True, True]))
    use, slot = choose_restarts(jnp.array([0.1, 0.2, 0.3, 0.4, 0.9]), jnp.array([0.0, 0.34, 0.67, 0.999, 0.5]),
                                advice, jnp.float32(0.5))
    np.testing.assert_array_equal(use, [True, True, True, True, False])
    np.testing.assert_array_equal(slot, [1, 3, 4, 4, -1])
    use, slot = choose_restarts(jnp.zeros(3), jnp.zeros(3), Advice.empty(make_core(TOY_ID), 5), jnp.float32(1.0))
    assert not use.any() and (slot == -1).all()  # no valid advice: plain resets


def test_imposed_actions_give_no_policy_gradient():
    """The surrogate averages over the steps the policy sampled: what happened at imposed steps (their
    actions, their advantages) does not change the actor loss or its gradient."""
    learner, hp = PPOLearner(TINY), TINY.hparams()
    params = learner.net.init(jax.random.PRNGKey(0))
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    n = 16
    obs = jax.random.normal(k[0], (n, 4))
    imposed = jnp.arange(n) % 4 == 0
    head = learner.net.policy_head(params, obs)

    def actor_loss_grad(action, advantage):
        batch = Batch(obs=obs, action=action, log_prob=learner.net.log_prob(params, head, action),
                      value=jnp.zeros(n), advantage=advantage, target=advantage,
                      masks={"policy": (~imposed).astype(jnp.float32)},
                      mask_counts=mask_counts({"policy": (~imposed).astype(jnp.float32)}))
        return jax.value_and_grad(lambda p: ppo_loss(learner.net, p, batch, hp)[1]["actor_loss"])(
            jax.tree.map(lambda x: 1.1 * x, params))  # a moved policy: ratios differ from 1

    action = jax.random.randint(k[1], (n,), 0, 2)
    adv = jax.random.normal(k[2], (n,))
    loss, grad = actor_loss_grad(action, adv)
    swap = jnp.arange(n).at[0].set(4).at[4].set(0)  # imposed steps 0 and 4 swap advantages (same mean and std)
    loss2, grad2 = actor_loss_grad(jnp.where(imposed, 1 - action, action), adv[swap])
    np.testing.assert_allclose(loss2, loss, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(grad2, grad, rtol=1e-5, atol=1e-7)
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grad))


def _voting_advice(obs, action, valid=None) -> Advice:
    k = len(obs)
    advice = Advice.empty(make_core("CartPole-v1"), k)
    return advice.replace(obs=jnp.asarray(obs, jnp.float32), action=jnp.asarray(action),
                          valid=jnp.ones(k, bool) if valid is None else jnp.asarray(valid))


def test_consensus_outvotes_a_lone_contradiction():
    near = [[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0], [0.1, 0.1, 0.0, 0.0]]
    far = [[9.0, 9.0, 9.0, 9.0], [9.1, 9.0, 9.0, 9.0]]
    # three neighbours suggest 1, one says 0: out-voted; the far pair ties 1:1, so both keep their vote
    advice = _voting_advice(near + far, [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(consensus(advice, 2.0), [True, True, False, True, True, True])
    # an invalid slot neither votes nor is kept; radius 0 keeps only self-votes (nothing is out-voted)
    advice = _voting_advice(near + far, [1, 1, 0, 1, 0, 1], valid=[True, False, True, True, True, True])
    np.testing.assert_array_equal(consensus(advice, 2.0), [True, False, False, True, True, True])  # still 2:1
    np.testing.assert_array_equal(consensus(_voting_advice(near + far, [1, 1, 0, 1, 0, 1]), 1e-3), [True] * 6)


def test_consensus_with_continuous_suggestions():
    obs = [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [5.0, 5.0, 5.0]]
    advice = Advice.empty(make_core("Pendulum-v1"), 4)
    advice = advice.replace(obs=jnp.asarray(obs, jnp.float32), valid=jnp.ones(4, bool),
                            action=jnp.asarray([[1.0], [1.2], [-1.8], [0.0]], jnp.float32))
    span = make_core("Pendulum-v1").action_space.span  # 4.0: agreement within 0.25 * 4 = 1.0
    np.testing.assert_array_equal(consensus(advice, 2.0, span), [True, True, False, True])


def test_outvoted_advice_stops_acting_in_training():
    core = make_core("CartPole-v1")
    book = AdviceBook(core, 4)
    snap = _snapshot(core, 0, 1)
    for i, action in enumerate([1, 1, 0]):  # the same state three times: one answer contradicts two
        book.add(AdviceItem(i, 1, snap.obs, snap, action=action, reward=0.5))
    for radius, outvoted in ((2.0, 1), (0.0, 0)):
        mod = ModulationConfig.variant("RA", restart_prob=1.0, capacity=4, consensus_radius=radius)
        out = jax.jit(make_train(TINY, mod.modulator()))(jax.random.PRNGKey(0), None, book.to_advice())
        if radius > 0:
            assert int(out.metrics["advice_outvoted"][-1]) == outvoted
        else:  # consensus off: no Consensus modulator in the chain, nothing out-voted or reported
            assert "advice_outvoted" not in out.metrics


def test_step_codes_and_uniforms_from_bits_round_trip():
    """The rollout's packed per-step facts unpack exactly (slots up to the largest capacity); its uniforms from
    random words lie in [0, 1) and use every bit they claim."""
    from jaxmod.advice.modulation import MAX_CAPACITY
    from jaxmod.advice.restarts import pack_step_codes, unpack_step_codes
    from jaxmod.advice.restarts import uniforms_from_bits as _uniforms_from_bits

    rng = np.random.default_rng(0)
    top = MAX_CAPACITY - 1  # the largest slot of the largest capacity ModulationConfig accepts
    restart = jnp.asarray(np.r_[-1, top, rng.integers(-1, top + 1, 62)], jnp.int32)
    critical = jnp.where(jnp.asarray(rng.random(64) < 0.5), restart, -1)
    control = jnp.asarray(rng.random(64) < 0.5)
    got = unpack_step_codes(pack_step_codes(restart, critical, control))
    for a, b in zip(got, (restart, critical, control), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ModulationError):
        ModulationConfig(capacity=MAX_CAPACITY + 1)
    ones = _uniforms_from_bits(jnp.full((2,), 0xFFFFFFFF, jnp.uint32))
    zeros = _uniforms_from_bits(jnp.zeros((2,), jnp.uint32))
    np.testing.assert_allclose([float(u) for u in ones], [1 - 2.0**-24, 1 - 2.0**-16, 1 - 2.0**-16])
    assert all(float(u) == 0.0 for u in zeros)
    draws = _uniforms_from_bits(jax.random.bits(jax.random.PRNGKey(0), (4096, 2), jnp.uint32))
    means = [float(u.mean()) for u in draws]
    assert all(abs(m - 0.5) < 0.03 for m in means)
    assert abs(float(jnp.corrcoef(draws[1], draws[2])[0, 1])) < 0.05  # the two halves of one word are independent


def _rollout_and_reward(learner: PPOLearner, advice: Advice, steps: int, state=None):
    """A modulated rollout and the reward the learner's GAE then sees (`Modulator.reward`), through the learner's
    own pieces; also GAE's advantages with and without the modulator's reward. `state`: the learner's (default a
    fresh one)."""
    from jaxmod.ppo.losses import gae

    state = learner.init(jax.random.PRNGKey(0)) if state is None else state

    def go(state, advice):
        plan = {**learner.digest(state, advice), "hparams": state.hparams}
        _, _, aux, plan, traj = collect_modulated(learner.net, learner.env, state.params, state.env_state, state.obs,
                                                  jax.random.PRNGKey(1), steps, learner.modulator, state.aux, plan,
                                                  learner.spec, state.update_step, advice)
        aux, reward, metrics = learner.modulator.reward(aux, plan, traj, traj.reward, jax.random.PRNGKey(2),
                                                        learner.spec)
        v, nv = learner.net.value(state.params, traj.obs), learner.net.value(state.params, traj.final_obs)
        hp = state.hparams
        adv = [gae(r, v, nv, traj.terminated, traj.episode_done, hp.gamma, hp.gae_lambda) for r in (reward, traj.reward)]
        return traj, reward, metrics, adv, state.aux, aux

    return jax.device_get(jax.jit(go)(state, advice))


def test_the_same_lambda_has_the_same_effect_with_and_without_reward_normalisation():
    """ULTRA-R's implicit reward is measured in the env's reward scale (the running RMS of its raw per-step reward)
    and reaches the learner the way the env's reward does: divided by the return std where rewards are normalised.
    From the same agent (params and normalisers, as refinement starts), the bonus relative to the env's reward is
    the same with --normalize-reward on and off."""
    env_cfg = dict(env_id="Pendulum-v1", num_envs=4, num_steps=32, total_timesteps=4 * 32 * 2, num_minibatches=1,
                   env_options=(("max_steps_in_episode", 10),))
    agent = jax.jit(make_train(PPOConfig(**env_cfg, normalize_reward=True)))(jax.random.PRNGKey(0)).state
    core = make_core("Pendulum-v1")
    book = AdviceBook(core, 2)
    snap = _snapshot_cont(core)
    book.add(AdviceItem(0, 1, snap.obs, snap, action=[1.0], reward=0.75, weight=0.8, rated_action=[0.0]))
    runs = {}
    for normalize in (False, True):
        mod = ModulationConfig.variant("R", restart_prob=1.0, reward_scale=2.0, capacity=2, verify_samples=0)
        learner = PPOLearner(PPOConfig(**env_cfg, normalize_reward=normalize), mod.modulator())
        state = learner.init(jax.random.PRNGKey(1), agent.params)
        state = state.replace(env_state=state.env_state.replace(return_rms=agent.env_state.return_rms))
        runs[normalize] = (_rollout_and_reward(learner, book.to_advice(), 32, state), state)
    (off, _), (on, state_on) = runs[False], runs[True]
    traj_off, reward_off = off[:2]
    traj_on, reward_on = on[:2]
    np.testing.assert_array_equal(traj_on.action, traj_off.action)  # the same steps: only the rewards differ
    raw = traj_off.raw_reward
    unit = np.sqrt(np.mean(np.square(raw)))  # the RMS of the raw per-step reward
    assert abs(unit - 1.0) > 0.1  # Pendulum's scale is not 1: the unit matters
    np.testing.assert_allclose(reward_off - traj_off.reward, traj_off.extras["shaping"], atol=1e-5)  # added to GAE's
    np.testing.assert_allclose(reward_on - traj_on.reward, traj_on.extras["shaping"], atol=1e-5)  # reward
    bonus_off, bonus_on = traj_off.extras["shaping"], traj_on.extras["shaping"]
    rated = np.abs(bonus_off) > 1e-3  # the kernel's tails aside
    shaping_aux = next(a for a in off[5] if isinstance(a, ShapingAux))  # the unit kept in the train state
    assert rated.any() and float(shaping_aux.unit()) == pytest.approx(unit, rel=1e-5)
    np.testing.assert_allclose(traj_off.extras["shaping_raw"], traj_on.extras["shaping_raw"], rtol=1e-6)
    assert float(np.max(bonus_off)) <= 2.0 * 0.75 * 0.8 * unit * (1 + 1e-5)  # lambda * weight * r_llm reward units
    sigma = float(np.sqrt(state_on.env_state.return_rms.var + 1e-8))  # the normaliser's std at the rollout's start
    assert abs(sigma - 1.0) > 0.1  # normalisation changes the env's reward as the learner sees it ...
    np.testing.assert_allclose(bonus_on[rated] * sigma, bonus_off[rated], rtol=1e-5)  # ... and the bonus alike
    # relative to the env's own reward the bonus is the same, up to the normaliser's drift in the rollout (< 10% here)
    ratio_off = bonus_off[rated] / traj_off.reward[rated]
    ratio_on = bonus_on[rated] / traj_on.reward[rated]
    np.testing.assert_allclose(ratio_on, ratio_off, rtol=0.1)  # (the old definition: off by the factor sigma)



def test_restart_cut_truncates_episodes_mid_way_to_restart_from_advice():
    """`restart_cut`: an env that drew a restart is cut mid-episode (truncated, never terminated: the learner
    bootstraps it) and restarts from the snapshot at once; unset, only the env family's default cuts (none for this
    toy family, brax 0.02: `CUT_PROB`), so the rollout is the one without the knob."""
    from jaxmod.advice.restarts import CUT_PROB

    advice = _toy_advice(action=0)
    never = _toy_rollout(ModulationConfig.variant("restart", restart_prob=1.0), advice, steps=12)[2]
    zero = _toy_rollout(ModulationConfig.variant("restart", restart_prob=1.0, restart_cut=0.0), advice, steps=12)[2]
    cut = _toy_rollout(ModulationConfig.variant("restart", restart_prob=1.0, restart_cut=1.0), advice, steps=12)[2]
    for a, b in zip(jax.tree.leaves(vars(never)), jax.tree.leaves(vars(zero)), strict=True):
        np.testing.assert_array_equal(a, b)
    # with cuts, envs restart mid-episode: more restarts, truncations before the time limit (4 steps; the snapshot
    # starts at step 1, so its episode cannot reach the limit in two steps)
    assert cut.restarted.sum() > never.restarted.sum() and cut.truncated.sum() > never.truncated.sum()
    assert not (cut.truncated & cut.terminated).any()
    restarted_at = [(t, n) for t, n in np.argwhere(cut.restarted) if t + 1 < cut.obs.shape[0]]
    assert restarted_at and all(cut.obs[t + 1, n, 0] == 2.0 for t, n in restarted_at)  # the snapshot, exactly
    assert not any(cut.truncated[t + 1, n] for t, n in restarted_at)  # a restart's first step is never cut
    # a cut step bootstraps from where the step led (position + action), not from the restart's snapshot
    t, n = np.nonzero(cut.truncated)
    np.testing.assert_array_equal(np.asarray(cut.final_obs)[t, n, 0], cut.obs[t, n, 0] + cut.action[t, n].astype(np.float32))
    spec = types.SimpleNamespace(env=types.SimpleNamespace(core=types.SimpleNamespace(family="brax")))
    assert CriticalStates().cut_for(spec) == CUT_PROB["brax"] > 0
    assert CriticalStates(cut_prob=0.0).cut_for(spec) == 0.0
    with pytest.raises(ModulationError, match="restart_cut"):
        ModulationConfig(restart_cut=1.5)
