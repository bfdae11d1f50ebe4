"""The method registry and the README's "add a method in one file" example, run through the learner."""

from __future__ import annotations

import re
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxmod import methods
from jaxmod.advice import Advice
from jaxmod.ppo import PPOConfig, make_train
from tests.conftest import TOY_ID

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_method() -> dict:
    """Execute the README's example method (both of its files) and return its namespace."""
    block = re.search(r"```python\n(# jaxmod/baselines/alive.py\n.*?)```", README.read_text(encoding="utf-8"),
                      re.S).group(1)
    module, registry = block.split("# jaxmod/methods.py\n")
    ns: dict = {}
    exec(compile(module, "alive.py", "exec"), ns)  # noqa: S102 - the README's own code
    ns["alive"] = type("alive", (), {"modulator": staticmethod(ns["modulator"])})
    ns.update(register=methods.register, Method=methods.Method)
    return ns, registry


def test_readme_example_method_registers_and_refines(monkeypatch):
    ns, registry = _readme_method()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the registry line, without leaking it
    exec(compile(registry, "methods.py", "exec"), ns)  # noqa: S102
    m = methods.method("Alive")
    assert m.critical == "advisor" and m.label == "Alive bonus"
    cfg = PPOConfig(env_id=TOY_ID, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 2, num_minibatches=2)
    mod = m.build(methods.MethodContext(TOY_ID))
    advice = Advice.empty(make_train(cfg).learner.env.core, 32)
    out = jax.jit(make_train(cfg, mod))(jax.random.PRNGKey(0), None, advice)
    chex.assert_tree_all_finite(out.state.params)
    plain = jax.jit(make_train(cfg, ns["CriticalStates"](restart_prob=0.5)))(jax.random.PRNGKey(0), None, advice)
    # the bonus changed the rewards, hence the value targets and the parameters
    assert not np.allclose(out.metrics["value_loss"], plain.metrics["value_loss"])


def test_registry_refuses_a_taken_name_and_lists_the_valid_ones():
    with pytest.raises(methods.MethodError, match="registered already"):
        methods.register(methods.METHODS["RICE"])
    with pytest.raises(methods.MethodError, match="choose from PPO, A, R, RA"):
        methods.method("SAC")


# ---------------------------------------------------------------- one compiled program for a group of methods
GROUP = ("PPO", "A", "R", "RA", "StateMask-R", "RICE", "JSRL", "Random")  # share_programs="all"


def _shared_learner(name: str, setup, group=GROUP):
    """`name`'s learner as a member of `group`, with the regression set's config and ULTRA knobs."""
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.ppo import PPOLearner

    cfg, _, _ = setup
    rcfg = cfg.replace(total_timesteps=cfg.batch_size * 10, lr=1e-4, anneal_lr=False)
    ultra = ModulationConfig(capacity=16, kl_coef=1.0, match_radius=0.5, verify_samples=1, verify_memory=64,
                             consensus_radius=2.0, trust_prior=0.0)  # tests/regression_learner.py's
    return PPOLearner(rcfg, methods.shared_modulator(group, name, methods.MethodContext("CartPole-v1", ultra,
                                                                                        guide_steps=10)))


@pytest.fixture(scope="module")
def cartpole_setup():
    from tests import regression_learner as rl

    return rl.agent_and_advice("CartPole-v1")


@pytest.mark.timeout(900)
def test_a_program_group_lowers_to_one_program(cartpole_setup):
    """Every member of a group has the same program: its values are data (what makes the group compile once)."""
    _, state, advice = cartpole_setup
    texts = {}
    for name in GROUP:
        learner = _shared_learner(name, cartpole_setup)
        start = learner.init(jax.random.PRNGKey(3), state.params)  # the method's values: data of the state
        texts[name] = jax.jit(lambda s, a, learner=learner: learner.run(s, 2, a)).lower(start, advice).as_text()
    assert all(t == texts["A"] for t in texts.values()), [n for n, t in texts.items() if t != texts["A"]]
    # and the values differ: a group whose members all had the same values would pass the line above trivially
    inits = {n: _shared_learner(n, cartpole_setup).init(jax.random.PRNGKey(3), state.params).aux for n in GROUP}
    flat = {n: np.concatenate([np.ravel(x) for x in jax.tree.leaves(a) if np.ndim(x) == 0]) for n, a in inits.items()}
    assert len({tuple(v.tolist()) for v in flat.values()}) == len(GROUP) - 1  # RICE and Random: the same pieces


def test_a_bad_share_programs_value_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "jaxmod.cli", "ultra", "--share-programs", "some", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "off, methods, all" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["A", "RICE", "JSRL"])
def test_a_group_member_refines_as_its_own_chain(cartpole_setup, name):
    """A member of the shared program computes its own method: 3 updates from the regression set's agent and advice
    give the parameters and metrics of its own chain, to floating-point rounding (pieces switched off add zeros;
    a policy mask of ones averages in another order)."""
    from tests import regression_learner as rl

    _, state, advice = cartpole_setup
    own = rl.run_method("CartPole-v1", name, cartpole_setup)
    learner = _shared_learner(name, cartpole_setup)
    st, metrics = jax.jit(lambda k, p: learner.run(learner.init(k, p), rl.UPDATES, advice))(jax.random.PRNGKey(3),
                                                                                             state.params)
    shared = rl.digest(st.params, metrics)
    for key in ("param_sum", "param_sq", "value_loss", "entropy", "episode_return", "restarts", "guided_frac",
                "rnd_bonus", "critical_frac"):
        if key in own:
            assert shared[key] == pytest.approx(own[key], rel=1e-4, abs=1e-5), key


def test_restart_cut_reaches_every_restarting_method_alone_or_in_a_shared_program():
    """`ModulationConfig.restart_cut` sets the mid-episode cuts of every method that restarts (ULTRA's, StateMask-R,
    RICE, Random) the same way whether it runs its own chain or a shared program; unset, each takes the family's."""
    from jaxmod.advice.modulation import ModulationConfig
    from jaxmod.advice.restarts import CriticalStates

    def cut_of(modulator):
        parts = getattr(modulator, "parts", (modulator,))
        return next(p for p in parts if isinstance(p, CriticalStates)).cut_prob

    restarting = ("A", "RA", "StateMask-R", "RICE", "Random")
    for cut in (None, 0.3):
        ctx = methods.MethodContext(env_id="CartPole-v1", modulation=ModulationConfig(restart_cut=cut))
        for name in restarting:
            assert cut_of(methods.method(name).build(ctx)) == cut, name
            assert cut_of(methods.shared_modulator(restarting, name, ctx)) == cut, name


def test_a_method_named_twice_is_one_line_and_exit_2(tmp_path, capsys):
    """`--variant A,A` would refine A twice and keep one result: refused before anything runs."""
    from jaxmod.cli import main

    assert main(["ultra", "--variant", "A,RA,A", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name A more than once" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_method_without_pieces_in_a_shared_program_is_refused_before_pretraining(tmp_path, capsys, monkeypatch):
    """The README's one-file method (registered with its modulator alone) runs in a program of its own; asked to share
    one (`--share-programs methods`), the run says so in one line before it pretrains, instead of after."""
    from jaxmod.cli import main

    ns, registry = _readme_method()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    exec(compile(registry, "methods.py", "exec"), ns)  # noqa: S102 - the README's registry line
    argv = ["ultra", "--variant", "Alive,RA", "--share-programs", "methods", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Alive cannot share a compiled program" in err[0], err
    assert not (tmp_path / "run").exists()


TINY_ULTRA = ["--env", "CartPole-v1", "--seeds", "2", "--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2",
              "--update-epochs", "2", "--pretrain-steps", "256", "--refine-steps", "256", "--chunks", "2",
              "--collect-envs", "4", "--collect-steps", "32", "--eval-envs", "2", "--eval-steps", "32",
              "--episodes-per-round", "2", "--quiet"]


@pytest.mark.timeout(300)
def test_readme_method_reports_its_own_metric_per_chunk(tmp_path, monkeypatch):
    """The README's one-file method declares `reports = ("alive_bonus",)`: `jaxmod ultra --variant Alive` shows it in
    every chunk row of ultra.json (the mean bonus: 0.1 on every step that does not terminate) and in the tracker
    (`advice/alive_bonus`), with no edit to the pipeline; PPO fine-tuning reports none."""
    import json

    from jaxmod.cli import main
    from jaxmod.tracking import read_events

    ns, registry = _readme_method()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    exec(compile(registry, "methods.py", "exec"), ns)  # noqa: S102 - the README's registry line
    out = tmp_path / "run"
    assert main(["ultra", "--variant", "Alive", "--advisor", "scripted", *TINY_ULTRA, "--out", str(out)]) == 0
    summary = json.loads((out / "ultra.json").read_text())
    rows = summary["Alive"]["chunks"]
    assert len(rows) == 2 and all(0.0 < row["alive_bonus"] <= 0.1 for row in rows), rows
    assert not any("alive_bonus" in row for row in summary["PPO"]["chunks"])
    logged = read_events(out, "Alive")["advice/alive_bonus"]
    assert [v for _, v in logged] == pytest.approx([row["alive_bonus"] for row in rows])


@pytest.mark.timeout(300)
def test_a_method_that_rolls_in_gets_the_agents_mean_episode_length(tmp_path, monkeypatch):
    """A guide-style method registered with `rolls_in=True` (as JSRL is) is built with the pre-trained agents' mean
    episode length as its roll-in horizon, through `UltraRun`; a method without it gets 1."""
    from jaxmod.baselines.jsrl import GuideRollIn
    from jaxmod.ppo.modulator import Identity
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    seen: dict[str, int] = {}

    def build(name, make):
        return lambda ctx: (seen.__setitem__(name, ctx.guide_steps), make(ctx))[1]

    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register(methods.Method("Guide", "guide", "none", "rolls in", build("Guide", lambda c: GuideRollIn(
        c.guide_steps)), rolls_in=True))
    methods.register(methods.Method("NoGuide", "no guide", "none", "plain", build("NoGuide", lambda c: Identity())))
    assert methods.method("JSRL").rolls_in and not methods.method("RICE").rolls_in
    cfg = UltraConfig.flat(variants=("Guide", "NoGuide"), seeds=2, pretrain_steps=256, refine_steps=256, chunks=1,
                           collect_envs=4, collect_steps=64, eval_envs=2, eval_steps=32,
                           ppo_overrides=dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2))
    run = UltraRun(cfg, tmp_path / "run")
    results = run.run()
    _, mean_length = run.agent_episodes(None)  # measured once per run (cached)
    assert seen == {"Guide": max(1, round(mean_length)), "NoGuide": 1} and seen["Guide"] > 1, (seen, mean_length)
    assert set(results) == {"Guide", "NoGuide"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("env_id,names,exact", [("CartPole-v1", ("A", "R", "RA", "restart"), True),
                                                ("Pendulum-v1", ("R", "RA"), False)])
def test_without_advice_every_ultra_method_refines_as_continued_ppo(env_id, names, exact):
    """Common random numbers: a method whose modulators have nothing to act on (empty advice: no critical state to
    restart from, override, shape or pull toward) steps through the same actions, env draws and minibatches as
    continued PPO, so two methods differ only by what their advice does, not by differing random streams. Through
    `UltraConfig`'s own learner config and modulators. Discrete actions: bit for bit. Continuous: the same draws,
    but ULTRA-A's `where` between suggestion and action sits before the env's reward (Pendulum's 0.001 u^2), and
    the compiler fuses (and contracts to FMA) differently around it: rewards differ in the last bit (1.2e-7) and the
    parameters after 8 updates by ~2e-6 relative; without ULTRA-A (R) bit for bit."""
    from jaxmod.ultra.config import UltraConfig

    base = UltraConfig(env_id=env_id)
    ppo = base.ppo.replace(num_envs=4, num_steps=32, update_epochs=2, num_minibatches=2)
    cfg = UltraConfig(env_id=env_id, ppo=ppo, refine_steps=4 * 32 * 8)
    rcfg = cfg.refine_config()
    plain = make_train(rcfg)
    advice = Advice.empty(plain.learner.env.core, cfg.modulation.capacity)
    key = jax.random.PRNGKey(7)
    params = plain.learner.net.init(jax.random.PRNGKey(1))  # the agent being refined
    ppo_out = jax.jit(plain)(key, params)
    for name in names:
        out = jax.jit(make_train(rcfg, cfg.modulator(name)))(key, params, advice)
        assert int(np.sum(out.metrics["episodes"])) > 0
        shared = {k: v for k, v in out.metrics.items() if k in ppo_out.metrics}
        assert set(shared) == set(ppo_out.metrics)
        if exact or name == "R":
            chex.assert_trees_all_equal(out.state.params, ppo_out.state.params)
            chex.assert_trees_all_equal(shared, ppo_out.metrics)
        else:
            chex.assert_trees_all_close(out.state.params, ppo_out.state.params, rtol=1e-4, atol=1e-7)
            for k in ("value_loss", "entropy", "episode_return", "rollout_reward"):
                np.testing.assert_allclose(shared[k], ppo_out.metrics[k], rtol=1e-4, err_msg=k)
