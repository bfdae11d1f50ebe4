"""Do no harm: advice earns its influence (trust weights, the advisor switched off as a whole), and the control
advisors (random, constant) that measure it answer through the same validation as an LLM."""

from __future__ import annotations

import asyncio

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.arrays import AdviceBook, AdviceItem
from jaxmod.advice.restarts import CriticalStates
from jaxmod.advice.verify import EXPLORE_SHARE, AdviceTrust, Verification
from jaxmod.envs import make_core
from jaxmod.llm import Advised, Advisor, LocalBackend
from jaxmod.llm.control_advisors import ConstantAnswerer, RandomAnswerer
from jaxmod.ppo import PPOConfig, PPOLearner
from jaxmod.ultra.advise import advise_episodes
from jaxmod.ultra.collect import make_collector, split_episodes
from jaxmod.ultra.config import UltraConfig

pytestmark = pytest.mark.timeout(300)


def _episodes(env_id: str, steps: int):
    learner = PPOLearner(PPOConfig(env_id=env_id, num_envs=2, num_steps=8, total_timesteps=16, num_minibatches=2))
    state = learner.init(jax.random.PRNGKey(0))
    rec = jax.device_get(make_collector(learner.env, learner.net, steps)(state.params, state.env_state.obs_rms,
                                                                          jax.random.PRNGKey(1)))
    return learner.env.core, rec, split_episodes(rec, 0, 2)


def _ask(answerer, core, rec, episodes):
    advisor = Advisor(LocalBackend(answerer), max_critical=2)
    items, verdicts, _ = asyncio.run(advise_episodes(advisor, core, rec, episodes))
    assert items and advisor.stats.invalid == advisor.stats.failed == 0, advisor.stats
    assert all(isinstance(v, Advised) for v in verdicts)  # validated like an LLM's answers
    return items, verdicts


@pytest.mark.parametrize("env_id,steps", [("CartPole-v1", 128), ("Pendulum-v1", 210)])
def test_control_advisors_answer_through_the_advisors_validation(env_id, steps):
    core, rec, episodes = _episodes(env_id, steps)
    space = core.action_space
    items, verdicts = _ask(ConstantAnswerer(), core, rec, episodes)
    assert sorted({it.step for it in items}) == [0, 1]  # the first steps of every episode
    for v in verdicts:
        assert v.reward == 1.0
        if space.discrete:
            assert v.action == space.num_actions - 1
        else:
            np.testing.assert_array_equal(v.action, np.asarray(space.high, np.float32))
    first = _ask(RandomAnswerer(seed=3), core, rec, episodes)
    again = _ask(RandomAnswerer(seed=3), core, rec, episodes)
    other = _ask(RandomAnswerer(seed=4), core, rec, episodes)
    key = lambda out: [(it.episode, it.step, str(v.action), v.reward) for it, v in zip(*out, strict=True)]  # noqa: E731
    assert key(first) == key(again) and key(first) != key(other)  # seeded, a function of seed and question
    rewards = [v.reward for v in first[1]]
    assert all(-1.0 <= r <= 1.0 for r in rewards) and len(set(rewards)) > 1
    for v in first[1]:
        if not space.discrete:
            a = np.asarray(v.action)
            assert np.all(a >= np.asarray(space.low) - 1e-6) and np.all(a <= np.asarray(space.high) + 1e-6)


def test_control_advisors_are_named_on_the_command_line():
    for name in ("random", "constant"):
        assert UltraConfig.flat(advisor=name).advisor.spec == name


def _advice(n: int, capacity: int = 4):
    core = make_core("CartPole-v1")
    book = AdviceBook(core, capacity)
    snap = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    for i in range(n):
        book.add(AdviceItem(episode=i, step=0, obs=snap.obs, snapshot=snap, action=1, reward=0.5))
    return book, snap


def _record(trust: AdviceTrust, slot: int, advised: np.ndarray, control: np.ndarray) -> AdviceTrust:
    """Fold in samples of one slot: `advised` and `control` values (one rollout, one env)."""
    values = np.concatenate([advised, control]).astype(np.float32)[:, None]
    slots = jnp.full(values.shape, slot, jnp.int32)
    is_advised = jnp.asarray(np.arange(len(values)) < len(advised))[:, None]
    return trust.record(slots, is_advised, ~is_advised, jnp.asarray(values), memory=64)


def test_trust_starts_at_zero_and_grows_with_evidence_that_the_suggestion_wins():
    book, _ = _advice(5, capacity=5)
    advice = book.to_advice()
    trust = AdviceTrust.create(5).follow(advice)
    np.testing.assert_array_equal(trust.trust_weights(), 0.0)  # unproven: no influence
    rng = np.random.default_rng(0)
    weights = []
    for _ in range(6):  # slot 0's suggestion beats the policy's action by one noise std per sample
        trust = _record(trust, 0, rng.normal(1.0, 1.0, 4), rng.normal(0.0, 1.0, 4))
        weights.append(np.asarray(trust.trust_weights()))
    assert weights[0][0] < weights[-1][0] == 1.0
    # one winning slot proves that slot, not the advisor: a slot without samples of its own gets nothing yet
    assert weights[-1][1] == 0.0
    for slot in (1, 2, 3):  # more of the advisor's slots win: its new advice is expected to win too
        for _ in range(6):
            trust = _record(trust, slot, rng.normal(1.0, 1.0, 4), rng.normal(0.0, 1.0, 4))
    weights = np.asarray(trust.trust_weights())
    assert weights[4] > 0.5, weights
    assert not bool(trust.off) and bool(trust.trusted(advice)[4])


def test_a_random_advisor_lends_no_trust_to_its_new_slots_and_its_right_answers_earn_their_own():
    """A random advisor is right at some states and wrong at others: each slot's samples share its state's gap.
    Pooled as independent samples its few slots' average would look certain; slot by slot it is not."""
    book, _ = _advice(12, capacity=12)
    advice = book.to_advice()
    trust = AdviceTrust.create(12).follow(advice)
    rng = np.random.default_rng(3)
    truth = np.array([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # slot 11: no samples
    for _ in range(8):  # 32 samples per group and slot: every slot's own gap is clear
        for slot, gap in enumerate(truth):
            trust = _record(trust, slot, rng.normal(gap, 1.0, 4), rng.normal(0.0, 1.0, 4)).judge_advisor()
    weights = np.asarray(trust.trust_weights())
    assert weights[11] == 0.0 and abs(float(trust.advisor_z())) < 1.5 and not bool(trust.off)
    assert np.all(weights[:11][truth > 0] > 0.4) and np.all(weights[:11][truth < 0] == 0.0)  # own evidence
    refuted = ~np.asarray(trust.trusted(advice))
    assert np.array_equal(refuted[:11], truth < 0)  # the wrong ones stop acting


def test_an_advisor_whose_suggestions_keep_losing_is_switched_off_as_a_whole():
    book, snap = _advice(10, capacity=12)
    advice = book.to_advice()
    trust = AdviceTrust.create(12).follow(advice)
    rng = np.random.default_rng(1)
    for round_ in range(30):
        trust = _record(trust, round_ % 10, rng.normal(-1.0, 1.0, 4), rng.normal(0.0, 1.0, 4)).judge_advisor()
    assert bool(trust.off)
    np.testing.assert_array_equal(trust.trust_weights(), 0.0)
    for i in range(10, 12):  # the advisor's next round: fresh slots, still switched off
        book.add(AdviceItem(episode=10 + i, step=0, obs=snap.obs, snapshot=snap, action=0, reward=1.0))
    renewed = trust.follow(book.to_advice())
    assert bool(renewed.off) and not bool(renewed.trusted(book.to_advice()).any())


def test_retired_slots_stay_in_the_advisors_record():
    """A replaced slot's evidence leaves the slot but not the advisor: its new advice inherits it."""
    book, snap = _advice(4, capacity=5)
    trust = AdviceTrust.create(5).follow(book.to_advice())
    rng = np.random.default_rng(4)
    for _ in range(6):
        for slot in range(4):
            trust = _record(trust, slot, rng.normal(1.0, 1.0, 4), rng.normal(0.0, 1.0, 4))
    for i in range(5):  # a new round replaces every slot
        book.add(AdviceItem(episode=20 + i, step=0, obs=snap.obs, snapshot=snap, action=0, reward=1.0))
    renewed = trust.follow(book.to_advice())
    assert int(np.isfinite(np.asarray(renewed.retired_var)).sum()) == 4 and np.all(np.asarray(renewed.count) == 0.0)
    assert np.all(np.asarray(renewed.trust_weights()) > 0.5)


def test_a_few_slots_that_agree_by_chance_do_not_judge_the_advisor():
    """Two slots with nearly equal gaps: their spread is ~0, but the advisor is not judged on two slots."""
    book, _ = _advice(3)
    trust = AdviceTrust.create(4).follow(book.to_advice())
    for slot in (0, 1):
        trust = _record(trust, slot, np.array([1.0, -1.0, 1.0, -1.0]) - 2.0, np.array([1.0, -1.0, 1.0, -1.0]))
    assert float(trust.advisor_record()[0]) == 2.0 and float(trust.advisor_z()) == 0.0
    assert float(trust.trust_weights()[2]) == 0.0


def test_noise_alone_neither_trusts_nor_switches_off():
    book, _ = _advice(4)
    trust = AdviceTrust.create(4).follow(book.to_advice())
    rng = np.random.default_rng(2)
    for round_ in range(40):
        trust = _record(trust, round_ % 4, rng.normal(0.0, 1.0, 2), rng.normal(0.0, 1.0, 2)).judge_advisor()
    assert not bool(trust.off) and float(np.max(trust.trust_weights())) < 0.5


def test_ultra_a_executes_untrusted_suggestions_on_half_their_restarts_and_trusted_ones_more():
    """Through the verification modulator's plan: the control share per slot follows its trust weight, and the
    step after a restart uses the share of the slot it restarted from."""
    verification = Verification(capacity=4, samples=4, control=0.25, memory=64)
    book, _ = _advice(2)
    advice = book.to_advice()
    trust = AdviceTrust.create(4).follow(advice)
    rng = np.random.default_rng(0)
    for _ in range(10):  # slot 0 proven, slot 1 refuted
        trust = _record(trust, 0, rng.normal(3.0, 1.0, 4), rng.normal(0.0, 1.0, 4))
        trust = _record(trust, 1, rng.normal(-3.0, 1.0, 4), rng.normal(0.0, 1.0, 4))
    _, plan = verification.prepare(trust, advice, {}, None, None)
    share = np.asarray(plan["control_share"])
    weight = np.asarray(plan["trust_weight"])
    assert weight[0] > 0.5 and weight[1] == 0.0 and not bool(plan["trusted"][1])  # proven; refuted
    np.testing.assert_allclose(share, EXPLORE_SHARE + (0.25 - EXPLORE_SHARE) * weight, rtol=1e-6)
    assert 0.25 <= share[0] < share[1] == EXPLORE_SHARE
    pending = jnp.array([0, -1], jnp.int32)
    restart_critical = jnp.array([[1, -1], [-1, 0], [-1, -1]], jnp.int32)
    per_step = np.asarray(CriticalStates.control_shares(plan, pending, restart_critical))
    # steps no restart made critical: matching decides them in the step loop, from the slot's matched share
    # (an untrusted slot: none executed; a trusted one as after a restart); the policy keeps the others
    np.testing.assert_allclose(per_step, [[share[0], 1.0], [share[1], 1.0], [1.0, share[0]]])
    matched = np.asarray(plan["control_share_matched"])
    np.testing.assert_allclose(matched, 1.0 - 0.75 * weight, rtol=1e-6)
    assert matched[1] == 1.0 and matched[0] < 0.5


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["random", "constant"])
def test_control_advisors_answer_multiple_choice_questions_on_the_command_line(tmp_path, name):
    """`--advice-protocol candidates` asks the control advisors multiple-choice questions (an enum of the action
    names, as an LLM is asked): every one is answered validly (they crashed on the enum schema before)."""
    import json

    from jaxmod.cli import main

    out = tmp_path / name
    assert main(["ultra", "--env", "CartPole-v1", "--advisor", name, "--advice-protocol", "candidates", "--seeds",
                 "2", "--variant", "RA", "--pretrain-steps", "1024", "--refine-steps", "1024", "--chunks", "2",
                 "--num-envs", "4", "--num-steps", "32", "--episodes-per-round", "2", "--sync-advice", "--quiet",
                 "--out", str(out)]) == 0
    st = json.loads((out / "ultra.json").read_text())["advisor"][0]
    assert st["protocol"] == "candidates" and st["questions"] > 0 and st["valid"] == st["questions"], st
