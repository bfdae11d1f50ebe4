"""No NaN, ever (issue 18): imposed continuous actions far from the policy keep the update finite, a run that goes
non-finite stops with one line naming method, seed and chunk, and summaries never average a non-finite seed away."""

from __future__ import annotations

import contextlib
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.arrays import AdviceBook, AdviceItem
from jaxmod.advice.modulation import ModulationConfig
from jaxmod.cli import EXIT_NON_FINITE, main
from jaxmod.envs import make_core
from jaxmod.llm import Advisor, LocalBackend
from jaxmod.ppo import PPOConfig, PPOLearner
from jaxmod.ppo.losses import Batch, mask_counts, ppo_loss
from jaxmod.reporting import PARAMS_FINITE, NonFiniteError, first_non_finite, plot_curves, seed_summary
from jaxmod.ultra.config import UltraConfig
from jaxmod.ultra.pipeline import UltraRun

pytestmark = pytest.mark.timeout(600)

# a policy with std exp(-5) = 0.0067 around a mean near 0: a suggestion of 1.9 lies ~280 stds away (log-prob ~ -4e4)
PENDULUM = PPOConfig(env_id="Pendulum-v1", num_envs=4, num_steps=16, total_timesteps=4 * 16 * 20, update_epochs=2,
                     num_minibatches=2, log_std_init=-5.0, ent_coef=0.0, env_options=(("max_steps_in_episode", 10),))


def _far_advice(capacity: int = 3):
    core = make_core("Pendulum-v1")
    state = core.reset(jax.random.PRNGKey(0))
    state = jax.device_get(core.step(jax.random.PRNGKey(1), state, jnp.array([0.5]))[0])
    book = AdviceBook(core, capacity)
    book.add(AdviceItem(0, 1, state.obs, state, action=[1.9], reward=0.5))
    return book.to_advice()


@pytest.mark.parametrize("variant,kl_coef", [("A", 0.0), ("RA", 1.0)])
def test_an_imposed_action_far_from_the_policy_keeps_the_update_finite(variant, kl_coef):
    """ULTRA-A's imposed action ~280 policy stds from the mean: its log-prob moves by hundreds per SGD step, and
    before the fix exp() of its log-ratio was inf and 0 (its policy mask) * inf made every parameter NaN in the
    first update."""
    mod = ModulationConfig.variant(variant, kl_coef=kl_coef, restart_prob=1.0, capacity=3, verify_samples=0,
                                   consensus_radius=0)
    learner = PPOLearner(PENDULUM, mod.modulator())
    state, metrics = jax.jit(lambda st, adv: learner.run(st, 5, adv))(learner.init(jax.random.PRNGKey(0)),
                                                                       _far_advice())
    assert int(np.sum(metrics["restarts"])) > 0 and float(np.sum(metrics["critical_frac"])) > 0  # it imposed
    chex.assert_tree_all_finite((state.params, metrics))
    # over the policy's own samples only: ~1 here (the KL pull toward a target 280 stds away moves the policy), where
    # the imposed samples' ratios made it ~1e35 before the parameters went NaN
    assert float(np.max(metrics["approx_kl"])) < 10.0


def test_the_surrogate_ignores_an_imposed_actions_log_ratio_whatever_it_is():
    """A batch whose imposed sample has a log-ratio of +1e4 (its behaviour log-prob far below the current one):
    loss, gradient and metrics are finite, and equal those of the same batch with that sample's ratio at 1."""
    learner, hp = PPOLearner(PENDULUM), PENDULUM.hparams()
    params = learner.net.init(jax.random.PRNGKey(0))
    n = 8
    obs = jax.random.normal(jax.random.PRNGKey(1), (n, 3))
    action = jnp.full((n, 1), 1.9)
    head = learner.net.policy_head(params, obs)
    log_prob = learner.net.log_prob(params, head, action)
    imposed = jnp.arange(n) == 0
    adv = jnp.linspace(-1.0, 1.0, n)

    def loss_and_grad(behaviour_log_prob):
        batch = Batch(obs=obs, action=action, log_prob=behaviour_log_prob, value=jnp.zeros(n), advantage=adv,
                      target=adv, masks={"policy": (~imposed).astype(jnp.float32)},
                      mask_counts=mask_counts({"policy": (~imposed).astype(jnp.float32)}))
        return jax.value_and_grad(lambda p: ppo_loss(learner.net, p, batch, hp), has_aux=True)(params)

    (loss, info), grad = loss_and_grad(jnp.where(imposed, log_prob - 1e4, log_prob))
    chex.assert_tree_all_finite((loss, info, grad))
    (loss1, info1), grad1 = loss_and_grad(log_prob)
    np.testing.assert_array_equal(loss, loss1)
    chex.assert_trees_all_equal((info, grad), (info1, grad1))


def test_a_non_finite_advice_state_is_dropped_and_counted():
    from jaxmod.llm.answers import Advised

    core = make_core("Pendulum-v1")
    state = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    bad = jax.tree.map(lambda x: np.full_like(x, np.nan) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
                       state)
    book = AdviceBook(core, 4)
    items = [AdviceItem(0, 1, state.obs, state, [0.5], 0.5), AdviceItem(0, 2, bad.obs, bad, [0.5], 0.5)]
    verdict = Advised(action=[0.5], reward=0.5, reason="")
    assert book.add_answers(items, [verdict, verdict]) == {"packed": 1, "dropped": 1}
    assert int(book.to_advice().valid.sum()) == 1


TINY = dict(seeds=2, pretrain_steps=4 * 128 * 4, refine_steps=4 * 128 * 6, chunks=3, collect_envs=4,
            collect_steps=96, eval_envs=4, eval_steps=128, episodes_per_round=3)


def _local_factory():
    @contextlib.asynccontextmanager
    async def factory():
        yield Advisor(LocalBackend(), max_critical=2)

    return factory


def test_a_run_that_goes_non_finite_stops_with_one_line_and_keeps_its_summary(tmp_path):
    """An absurd refinement learning rate makes ULTRA-RA's parameters NaN in its first chunk (a NaN CartPole policy
    still acts and scores: only the parameters and losses show it): the run stops there with one line naming the
    method, the seed and the chunk; ultra.json says why and holds the evaluations that were finite."""
    run = UltraRun(UltraConfig.flat(variants=("RA",), refine_lr=1e30, **TINY), tmp_path / "run",
                   advisor_factory=_local_factory())
    with pytest.raises(NonFiniteError) as err:
        run.run()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("ULTRA-RA, seed 0, refinement chunk 1/3: non-finite ")
    assert "--refine-lr (now 1e+30)" in msg
    summary = json.loads((tmp_path / "run" / "ultra.json").read_text())
    assert summary["stopped"] == msg
    assert len(summary["RA"]["eval_returns"]) == 1  # the evaluation before refinement; chunk 1 was non-finite


def test_train_stops_at_a_non_finite_chunk_with_one_line(tmp_path, capsys):
    out = tmp_path / "t"
    code = main(["train", "--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "16", "--total-steps", "256",
                 "--chunks", "2", "--lr", "1e30", "--seeds", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_NON_FINITE and len(err) == 1
    assert err[0].startswith("jaxmod: error: PPO training, seed 0, chunk 1 (updates 1-2 of 4): non-finite ")
    assert not (out / "metrics.jsonl").exists()  # nothing non-finite was written


def test_the_first_non_finite_value_is_the_earliest_of_the_first_bad_seed():
    values = {"loss": np.array([[1.0, 1.0], [1.0, np.nan]]), "actor_loss": np.array([[1.0, 1.0], [np.inf, 1.0]]),
              "restarts": np.array([[3, 4], [5, 6]]), PARAMS_FINITE: np.array([True, False]),
              "eval_return": np.array([1.0, np.nan])}
    bad = first_non_finite(values)
    assert (bad.seed, bad.metric, bad.update) == (1, "actor_loss", 0)
    assert bad.describe() == "non-finite policy loss (inf) at update 1 of the chunk"
    assert first_non_finite({**values, "eval_return": np.array([np.nan, 1.0])}).describe() == \
        "non-finite evaluation return (nan) (also seed 1)"
    assert first_non_finite({"loss": np.ones((2, 3)), PARAMS_FINITE: np.array([True, True])}) is None


def test_summaries_name_non_finite_seeds_instead_of_averaging(tmp_path):
    from rich.console import Console

    from jaxmod.cli import _print_ultra_results
    from jaxmod.ultra.pipeline import VariantResult

    summary = seed_summary([100.0, float("nan"), 120.0])
    assert summary.mean is None and summary.non_finite == (1,)
    assert summary.cell() == ("NON-FINITE (seed 1 of 3)", "-")
    assert seed_summary([100.0, 120.0]).cell() == ("110.0", "10.0")
    results = {"PPO": VariantResult("PPO", [0, 1], [[1.0, 2.0], [3.0, 5.0]]),
               "A": VariantResult("A", [0, 1], [[1.0, 2.0], [np.nan, 5.0]])}
    console = Console(record=True, width=200)
    config = UltraConfig.flat(seeds=2)
    _print_ultra_results(console, config, type("Run", (), {"advice_stats": []})(), results, tmp_path)
    text = console.export_text()
    assert "NON-FINITE (seed 0 of 2)" in text and "4.0" in text and "nan" not in text.lower()
    plot_curves([("A", np.array([0, 1]), np.array(results["A"].eval_returns))], tmp_path / "c.png", title="t")
    assert (tmp_path / "c.png").exists()


def test_a_snapshot_that_ends_at_once_is_followed_by_a_fresh_reset():
    """Restarts cannot chain: with restart probability 1 and an advice state that terminates at its first step
    (the toy walk at 2.5 with suggested action 1 reaches 3), an env that restarted there and ended at once resets
    fresh, so restarts stay at most every other episode end instead of every step."""
    from tests.conftest import TOY_ID
    from tests.test_modulation import modulated_rollout

    core = make_core(TOY_ID)
    book = AdviceBook(core, 2)
    snap = jax.device_get(core.reset(jax.random.PRNGKey(0)))
    snap = snap.replace(inner=np.float32(2.5), obs=np.array([2.5], np.float32), time=np.int32(1))
    book.add(AdviceItem(episode=5, step=1, obs=snap.obs, snapshot=snap, action=1, reward=0.5))
    cfg = PPOConfig(env_id=TOY_ID, num_envs=3, num_steps=24, total_timesteps=3 * 24, num_minibatches=1)
    mod = ModulationConfig.variant("A", restart_prob=1.0, capacity=2, verify_samples=0, consensus_radius=0)
    learner = PPOLearner(cfg, mod.modulator())
    state = learner.init(jax.random.PRNGKey(0))
    traj = modulated_rollout(learner, state, book.to_advice(), jax.random.PRNGKey(1), 24)
    restarted = np.asarray(traj.restarted)
    assert restarted.any() and traj.critical.any()
    ends_at_once = restarted[:-1] & np.asarray(traj.episode_done)[1:]  # restarted, and that episode's step ended it
    assert ends_at_once.any()  # the advice state terminates at once ...
    assert not (ends_at_once & restarted[1:]).any()  # ... and is never restarted from again right away
    assert restarted.sum() < np.asarray(traj.episode_done).sum()
