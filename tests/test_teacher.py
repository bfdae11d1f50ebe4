"""The teacher advisor in every env family: it answers from the exact observation of the critical state (its
suggestion is its own policy's mode action there, bit for bit), in-process through the question's NumericContext,
and over HTTP from the prompt text where the describer can rebuild observations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.advice.teacher import SMALL, TeacherBackend
from jaxmod.checkpoint import save_checkpoint
from jaxmod.llm import Advised, Advisor, Identified, LocalBackend
from jaxmod.llm.prompts import advice_messages, identify_messages
from jaxmod.llm.server import make_server
from jaxmod.ppo import PPOConfig, PPOLearner
from jaxmod.ultra.advise import advise_episodes, episode_views, state_query
from jaxmod.ultra.collect import make_collector, split_episodes

pytestmark = pytest.mark.timeout(300)

# env id -> (config overrides, steps collected per env: enough for two complete episodes of a random policy)
FAMILIES = {
    "CartPole-v1": ({"normalize_obs": True}, 128),
    "MountainCar-v0": ({}, 410),
    "Acrobot-v1": ({}, 510),
    "Pendulum-v1": ({"normalize_obs": True}, 210),
    "MountainCarContinuous-v0": ({}, 1000),
    "Breakout-MinAtar": ({"torso": "cnn"}, 256),
    "Asterix-MinAtar": ({}, 512),
    "jaxmod/Pong-OnePoint": ({}, 512),
}
BRAX = ("brax/hopper", ({"env_options": (("backend", "positional"), ("episode_length", 64))}, 130))


class Taught:
    """A teacher checkpoint (an untrained agent whose actor's last layer is scaled up, so its actions depend on the
    state) with the state it was saved from, and episodes of it collected on the device."""

    def __init__(self, env_id: str, overrides: dict, steps: int, folder: Path) -> None:
        config = PPOConfig(env_id=env_id, num_envs=2, num_steps=8, total_timesteps=16, num_minibatches=2,
                           hidden_sizes=(32,), **overrides)
        self.learner = learner = PPOLearner(config)
        state = learner.init(jax.random.PRNGKey(0))
        dim = learner.env.action_space.dim
        actor = jax.tree.map(lambda x: x * 100.0 if x.ndim == 2 and x.shape[-1] == dim else x, state.params["actor"])
        self.state = state.replace(params={**state.params, "actor": actor})
        self.folder = save_checkpoint(folder, self.state, config)
        self.teacher = TeacherBackend(folder)
        collect = make_collector(learner.env, learner.net, steps)
        self.rec = jax.device_get(collect(self.state.params, self.state.env_state.obs_rms, jax.random.PRNGKey(1)))
        self.episodes = split_episodes(self.rec, 0, 2)
        assert self.episodes, f"no complete episode of {env_id} in {steps} steps"
        net, env = learner.net, learner.env
        self._mode = jax.jit(lambda p, r, o: net.mode(net.policy_head(p, env.observe(r, o))))

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The teacher policy's own mode action at one exact raw observation (what a test can trust), computed in
        a batch of the teacher's `SMALL` rows (its one-state questions'): XLA's float results can differ in the last
        bit between batch shapes."""
        batch = np.zeros((SMALL, *np.shape(obs)), np.float32)
        batch[0] = obs
        return np.asarray(self._mode(self.state.params, self.state.env_state.obs_rms, jnp.asarray(batch)))[0]


@pytest.fixture(scope="session")
def taught(tmp_path_factory):
    cache: dict[str, Taught] = {}

    def get(env_id: str) -> Taught:
        if env_id not in cache:
            overrides, steps = FAMILIES[env_id] if env_id in FAMILIES else BRAX[1]
            cache[env_id] = Taught(env_id, overrides, steps, tmp_path_factory.mktemp("teacher") / "ckpt")
        return cache[env_id]

    return get


def _check_family(t: Taught) -> None:
    core = t.learner.env.core
    advisor = Advisor(LocalBackend(t.teacher), max_critical=2)
    items, verdicts, rows = asyncio.run(advise_episodes(advisor, core, t.rec, t.episodes))
    assert items and advisor.stats.invalid == advisor.stats.failed == 0, advisor.stats
    space = core.action_space
    by_uid = {ep.uid: ep for ep in t.episodes}
    for item, verdict in zip(items, verdicts, strict=True):
        assert isinstance(verdict, Advised), verdict  # passed the advisor's validation
        ep = by_uid[item.episode]
        mode = t.mode(ep.obs[item.step])
        if space.discrete:
            assert verdict.action == int(mode)
        else:
            expected = np.clip(mode, np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))
            np.testing.assert_array_equal(np.asarray(verdict.action, np.float32), expected)
        assert -1.0 <= verdict.reward <= 1.0
    # the critical steps are the teacher's own ranking of every step of the exact episode
    for ep in t.episodes:
        chosen = [it.step for it in items if it.episode == ep.uid]
        assert chosen == [c["step"] for c in t.teacher.identify(ep.obs, ep.actions, 2)["critical_steps"]]


@pytest.mark.parametrize("env_id", list(FAMILIES))
def test_teacher_suggests_its_own_mode_action_at_the_exact_critical_state(env_id, taught):
    _check_family(taught(env_id))


def test_teacher_compiles_once_for_questions_of_any_length(taught):
    """The teacher compiles on loading and never again: questions of any length (identification over episodes of 1
    to 600 steps, advice at one state, agreement scoring) add no XLA compile, so a first round under a busy
    refinement is not held back by compiles; its blocks give the same numbers as one evaluation of the whole,
    unpadded episode."""
    t = taught("CartPole-v1")
    teacher = TeacherBackend(t.folder)
    compiles = []

    def listen(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    obs = np.random.default_rng(0).normal(0.0, 0.2, (600, 4)).astype(np.float32)
    actions = np.arange(600) % 2
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        answers = {n: teacher.head_and_value(obs[:n]) for n in (1, 8, 9, 37, 256, 257, 512, 600)}
        for n in (3, 37, 300, 600):
            teacher.identify(obs[:n], actions[:n], 2)
            teacher.agrees(obs[:n], actions[:n])
        teacher.advise(obs[5], 1)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    whole = teacher._evaluate(teacher.params, teacher.obs_rms, jnp.asarray(obs))
    for n, (head, value) in answers.items():
        assert head.shape == (n, 2) and value.shape == (n,)
        np.testing.assert_allclose(head, np.asarray(whole[0])[:n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(value, np.asarray(whole[1])[:n], rtol=1e-5, atol=1e-5)


def test_teacher_on_brax_hopper(taught):
    """brax: one small program (the collector) compiled once."""
    _check_family(taught(BRAX[0]))


def test_teacher_reads_numbers_not_the_rounded_text(taught):
    """In-process, a continuous teacher's suggestion is its mode at the exact state, which differs from its mode at
    the state rebuilt from the printed table (3 decimals): the side channel, not the text, reached it."""
    t = taught("Pendulum-v1")
    ep, d = t.episodes[0], t.teacher.describer
    rebuilt = d.observations(d.parse_rows("\n".join([d.header()] + d.rows(ep.obs, ep.actions, ep.rewards))).values)
    exact = [float(np.clip(t.mode(o)[0], -2, 2)) for o in ep.obs]
    from_text = [float(np.clip(t.mode(o)[0], -2, 2)) for o in rebuilt]
    assert exact != from_text
    query = state_query(d, t.learner.env.core, ep, 5)
    advice = asyncio.run(Advisor(LocalBackend(t.teacher)).advise([query]))[0]
    assert advice.action == (exact[5],)


def _post(url: str, messages) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": "teacher", "messages": messages}, timeout=30)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "jaxmod/Pong-OnePoint"])
def test_teacher_served_over_http_rebuilds_observations_from_the_table(env_id, taught):
    t = taught(env_id)
    core, d = t.learner.env.core, t.teacher.describer
    ep = t.episodes[0]
    view = episode_views(d, core, [ep])[0]
    step = ep.length // 2
    query = state_query(d, core, ep, step)
    with make_server("teacher", answer_fn=lambda messages, schema, body: (t.teacher.answer(messages), {})) as srv:
        ident = _post(srv.url, identify_messages(view, 2))
        advice = _post(srv.url, advice_messages(query))
    assert ident.status_code == advice.status_code == 200, (ident.text, advice.text)
    content = ident.json()["choices"][0]["message"]["content"]
    steps = [c["step"] for c in json.loads(content)["critical_steps"]]
    assert len(steps) == 2 and all(0 <= s < ep.length for s in steps)
    table = d.parse_rows(query.context)
    rebuilt = d.observations(table.values)[table.index_of(step)]
    np.testing.assert_allclose(rebuilt, ep.obs[step], atol=0.05)  # the printed precision, not the exact state
    got = json.loads(advice.json()["choices"][0]["message"]["content"])["action"]
    mode = t.mode(rebuilt)
    assert got == (int(mode) if core.action_space.discrete else [float(np.clip(mode[0], -2, 2))])


def test_teacher_over_http_refuses_image_envs_with_a_clear_error(taught):
    t = taught("Breakout-MinAtar")
    view = episode_views(t.teacher.describer, t.learner.env.core, t.episodes[:1])[0]
    with make_server("teacher", answer_fn=lambda messages, schema, body: (t.teacher.answer(messages), {})) as srv:
        resp = _post(srv.url, identify_messages(view, 2))
        other = _post(srv.url, [{"role": "user", "content": "Environment: CartPole-v1\n## Episode\n"}])
    assert resp.status_code == 400 and "in-process" in resp.json()["error"]["message"]
    assert other.status_code == 400 and "knows Breakout-MinAtar" in other.json()["error"]["message"]
    # in-process the same question is answered, from the exact images
    assert isinstance(asyncio.run(Advisor(LocalBackend(t.teacher), 2).identify([view]))[0], Identified)


def test_serve_advisor_refuses_an_image_teacher_before_listening(taught, capsys):
    from jaxmod.cli import main

    t = taught("Breakout-MinAtar")
    assert main(["serve-advisor", "--backend", "teacher", "--teacher", str(t.folder), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot be rebuilt" in err and f"--advisor teacher:{t.folder}" in err and "\n" == err[-1]


@pytest.mark.parametrize("noise, agreement", [(0.0, 1.0), (1.0, 0.0)])
def test_the_run_reports_the_advisors_agreement_with_a_reference(noise, agreement, taught, tmp_path, monkeypatch):
    """`jaxmod ultra --advisor-reference`: the teacher scored against itself agrees on every valid answer; with every
    answer corrupted (the other of CartPole's two actions) on none. Scoring is slowed by 1 s wherever it runs off
    the main thread (as on a busy machine, where CI once read 0/0 before a scoring callback on the advisor's thread
    had run): the report still counts every round that finished."""
    import threading
    import time

    from jaxmod.cli import main
    from jaxmod.ultra.rounds import AdviceRounds

    scored = AdviceRounds._scored

    def late(self, future):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(1.0)
        return scored(self, future)

    monkeypatch.setattr(AdviceRounds, "_scored", late)

    folder = taught("CartPole-v1").folder
    out = tmp_path / "run"
    assert main(["ultra", "--env", "CartPole-v1", "--variant", "RA", "--seeds", "1", "--pretrain-steps", "1024",
                 "--refine-steps", "1024", "--chunks", "1", "--collect-envs", "4", "--collect-steps", "96",
                 "--eval-envs", "2", "--eval-steps", "32", "--episodes-per-round", "3", "--noise", str(noise),
                 "--sync-advice",
                 "--advisor", f"teacher:{folder}", "--advisor-reference", str(folder), "--out", str(out)]) == 0
    stats = json.loads((out / "ultra.json").read_text())["advisor"]
    ra = next(s for s in stats if s["variant"] == "RA")
    assert 0 < ra["reference_judged"] <= ra["valid"] and ra["reference_agreement"] == agreement


def test_a_missing_or_foreign_teacher_is_refused_before_anything_runs(taught, tmp_path, capsys):
    from jaxmod.cli import main

    folder = taught("CartPole-v1").folder
    for flags, says in ((["--advisor", f"teacher:{tmp_path / 'none'}"], "no checkpoint there"),
                        (["--advisor-reference", str(folder), "--env", "Acrobot-v1"], "trained on CartPole-v1")):
        assert main(["ultra", "--out", str(tmp_path / "run"), *flags]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and captured.out == "", captured  # before the run's banner
        assert not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
def test_ultra_run_checks_the_advisor_files_before_it_writes(tmp_path):
    """`UltraConfig.check_advisor_files`, which `UltraRun` and `jaxmod ultra` call first: a teacher's checkpoint
    is read only where an advised method runs, the advisor reference's always."""
    from jaxmod.advice.modulation import ModulationError
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    missing = tmp_path / "none"
    with pytest.raises(ModulationError, match="no saved policy for the teacher at .*none \\(no checkpoint there\\)"):
        UltraRun(UltraConfig.flat(advisor=f"teacher:{missing}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    UltraConfig.flat(advisor=f"teacher:{missing}", variants=("PPO", "RICE")).check_advisor_files()
    with pytest.raises(ModulationError, match="advisor reference"):
        UltraConfig.flat(advisor_reference=str(missing), variants=("PPO", "RICE")).check_advisor_files()


def test_ultra_writes_tensorboard_events(taught, tmp_path):
    """`jaxmod ultra` logs each method's evaluation per chunk (eval/return in the method's sub-run) and its advice
    numbers; the teacher given as its train run's folder (as `jaxmod eval` takes it)."""
    from jaxmod.cli import main
    from jaxmod.tracking import read_events

    out = tmp_path / "run"
    teacher_run = tmp_path / "teacher-run"  # the teacher as a `jaxmod train --out` folder (its checkpoint/ inside)
    teacher_run.mkdir()
    (teacher_run / "checkpoint").symlink_to(taught("CartPole-v1").folder, target_is_directory=True)
    assert main(["ultra", "--env", "CartPole-v1", "--variant", "PPO,RA", "--seeds", "1", "--pretrain-steps", "1024",
                 "--refine-steps", "1024", "--chunks", "2", "--collect-envs", "4", "--collect-steps", "96",
                 "--eval-envs", "2", "--eval-steps", "32", "--episodes-per-round", "2",
                 "--advisor", f"teacher:{teacher_run}", "--out", str(out)]) == 0
    summary = json.loads((out / "ultra.json").read_text())
    for method in ("PPO", "RA"):  # the start (step 0, the pre-trained agents), then every chunk
        assert [v for _, v in read_events(out, method)["eval/return"][1:]] == pytest.approx(
            [c["eval_return"] for c in summary[method]["chunks"]])
    assert "advice/critical_frac" in read_events(out, "RA")
