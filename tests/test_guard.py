"""The outcome guard (`jaxmod.ultra.guard`): an advised method that falls below PPO fine-tuning ends with
fine-tuning's agents, through the product's own run; its patience rule on given gaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmod.advice.modulation import ModulationConfig
from jaxmod.ultra.config import UltraConfig
from jaxmod.ultra.guard import GUARD_EVALUATIONS, FineTuningRecord, OutcomeGuard
from jaxmod.ultra.pipeline import UltraRun

pytestmark = pytest.mark.timeout(600)

# advice that wrecks the agents: the constant advisor ("always the same action") trusted in full at every state
# (matching radius 100 stds), with a strong KL pull and a large refinement rate: CartPole-v1's policy collapses to
# one action (return ~9) within a chunk while fine-tuning improves
HARMFUL = dict(seeds=5, pretrain_steps=4 * 128 * 16, refine_steps=4 * 128 * 12, chunks=3, collect_envs=4,
               collect_steps=96, eval_envs=8, episodes_per_round=3, advisor="constant",
               variants=("RA", "PPO"), sync_advice=True, verify_samples=0, match_radius=100.0, kl_coef=20.0,
               refine_lr=3e-3)


def test_guard_restores_fine_tuning_when_advice_harms(tmp_path):
    logs: list[str] = []
    run = UltraRun(UltraConfig.flat(**HARMFUL), tmp_path / "run", log=logs.append)
    assert run.order == ("PPO", "RA")  # fine-tuning first: the guard compares with it
    results = run.run()
    ppo, ra = results["PPO"], results["RA"]
    g = ra.guard_restored
    # the harm was real: after the first chunk the advised agents were below their fine-tuned twins on the guard's
    # episodes beyond the interval, and the guard acted then
    assert g is not None and g["chunk"] == 1 and g["seeds"] == 5 and g["ci"][1] < 0 and g["gap"] < -20
    assert g["level"] == pytest.approx(1 - 0.05 / 3)  # a look before the last: the Bonferroni bound
    # from the chunk the guard acted on, the method's agents and evaluations are fine-tuning's, exactly
    assert ra.eval_returns[1:] == ppo.eval_returns[1:]
    rows = ra.chunk_metrics
    assert rows[0]["guard_restored"] and rows[0]["guard_gap"] == g["gap"] and rows[0]["guard_verdict"] == "worse"
    # the method's own (collapsed) evaluation of that chunk is kept beside fine-tuning's, which stands for it
    assert rows[0]["own_eval_return"] < 20 < rows[0]["eval_return"]
    assert all(r.get("fine_tuning") for r in rows[1:]) and "guard_gap" not in rows[-1]
    assert [r["eval_return"] for r in rows] == [r["eval_return"] for r in ppo.chunk_metrics]  # the rows' means too
    assert sum("the outcome guard acted after chunk 1/3" in m for m in logs) == 1
    summary = json.loads((tmp_path / "run" / "ultra.json").read_text())
    assert summary["RA"]["guard_restored"]["chunk"] == 1 and summary["PPO"]["guard_restored"] is None
    assert summary["RA"]["gain_vs_ppo"]["iqm"] == 0.0 and summary["RA"]["gain_vs_ppo"]["verdict"] == "same"
    assert summary["config"]["outcome_guard"] is True


class _Program:
    """Guard evaluations given in advance, one [S] array per call (the guard's only use of its program)."""

    def __init__(self, returns):
        self.returns = [np.asarray(r, np.float64) for r in returns]

    def evaluate_on(self, state, keys):
        return self.returns.pop(0)


def _guard(gaps: list[float], acts: bool = True) -> OutcomeGuard:
    base = np.linspace(100.0, 140.0, 6)  # 6 seeds, each chunk's gap with a seed-to-seed spread of +-10
    noise = np.array([-10.0, 10.0, -5.0, 5.0, 0.0, 2.0])
    reference = FineTuningRecord(None, None, guard_returns=[base] * len(gaps))
    evaluations = [base + g + noise for g in gaps for _ in range(GUARD_EVALUATIONS)]  # each decision's evaluations
    return OutcomeGuard(_Program(evaluations), np.zeros((6, 2), np.uint32), reference, len(gaps), acts=acts)


def test_guard_window():
    # one chunk's dip between good ones averages out over the two-chunk window: no action
    g = _guard([40.0, -40.0, 40.0])
    facts = [g.after_chunk(c, None) for c in (1, 2, 3)]
    assert not any(f.get("guard_restored") for f in facts) and g.tripped is None
    assert facts[1]["guard_gap"] == pytest.approx(0.0, abs=5.0)  # the window's average gap, not the chunk's
    # a lasting harm: acts once the window's interval lies below 0
    g = _guard([0.0, -60.0, -60.0])
    assert not g.after_chunk(1, None).get("guard_restored")
    f = g.after_chunk(2, None)
    assert f["guard_restored"] and g.tripped["chunk"] == 2 and f["guard_ci"][1] < 0
    assert g.tripped["gap"] == pytest.approx(-30.0, abs=5.0)
    # advice that helps is never touched
    g = _guard([50.0, 50.0, 50.0])
    assert not any(g.after_chunk(c, None).get("guard_restored") for c in (1, 2, 3))
    # a guard that may not act (too few seeds, short evaluations) reports the same gap and never acts
    g = _guard([0.0, -60.0, -60.0], acts=False)
    facts = [g.after_chunk(c, None) for c in (1, 2, 3)]
    assert g.tripped is None and facts[1]["guard_ci"][1] < 0 and facts[1]["guard_verdict"] == "not acting"
    # looks before the last decide on a wider interval than the last one
    assert facts[0]["guard_level"] == facts[1]["guard_level"] > facts[2]["guard_level"] == 0.95


def test_guard_needs_whole_episodes(tmp_path):
    """Evaluations shorter than the task's episodes score an agent that outlasts them 0: the guard says so before
    anything runs and does not act."""
    logs: list[str] = []
    run = UltraRun(UltraConfig.flat(**{**HARMFUL, "eval_steps": 40}), tmp_path / "run", log=logs.append)
    assert run.guarded and not run.guard_acts
    run._warn_if_unguarded()
    assert any("outcome guard needs evaluations of whole episodes (500 steps; --eval-steps is 40)" in m for m in logs)


def test_replay_of_a_run_before_the_guard_runs_as_it_ran(tmp_path):
    """A run recorded before the guard and trust_prior existed replays without them (they were not part of it), and
    a new run's config.json records the env family's knobs as the run used them."""
    config = UltraConfig.flat(**HARMFUL).to_dict()
    del config["outcome_guard"], config["modulation"]["trust_prior"]
    config["modulation"]["match_radius"] = 0.0
    (tmp_path / "ultra.json").write_text(json.dumps({"config": config}))
    replayed = UltraConfig.replay_of(tmp_path)
    assert replayed.outcome_guard is False and replayed.modulation.trust_prior == 0.0
    assert replayed.modulation.match_radius == 0.0
    UltraRun(UltraConfig.flat(env_id="Acrobot-v1", seeds=5), tmp_path / "new")
    recorded = json.loads((tmp_path / "new" / "config.json").read_text())
    assert recorded["modulation"]["trust_prior"] == 0.5 and recorded["modulation"]["match_radius"] == 0.5
    assert recorded["outcome_guard"] is True


@pytest.mark.parametrize("env_id, knob", [("CartPole-v1", 0.5), ("Acrobot-v1", 0.5), ("jaxmod/Pong", 0.5),
                                           ("jaxmod/Pong-OnePoint", 0.5), ("Pendulum-v1", 0.0),
                                           ("Asterix-MinAtar", 0.0), ("brax/hopper", 0.0), (None, 0.0)])
def test_family_defaults_of_the_advice_knobs(env_id, knob):
    """Unset match_radius and trust_prior take the env family's values: advice-first (0.5) on discrete classic control
    and Pong, evidence-first (0) on continuous classic control, MinAtar, brax and with no env; a set value stays."""
    resolved = ModulationConfig().for_env(env_id)
    assert resolved.match_radius == knob and resolved.trust_prior == knob
    assert ModulationConfig(trust_prior=0.25).for_env(env_id).trust_prior == 0.25
