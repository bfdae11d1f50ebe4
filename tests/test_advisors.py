"""Describers, scripted/teacher/noisy advisors, and the local advisor server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import jax
import numpy as np
import pytest

from jaxmod.envs import describer_for, make_core
from jaxmod.llm import Advisor, DelayedBackend, EpisodeView, LocalBackend, NoisyBackend, Rejected, StateQuery
from jaxmod.llm.answers import advice_schema, identify_schema, validate_advice, validate_identify
from jaxmod.llm.prompts import advice_messages, identify_messages
from jaxmod.llm.server import BackendUnavailable, ServerProcess, make_server

pytestmark = pytest.mark.timeout(300)


def _episode(env_id: str, n: int = 40, seed: int = 0):
    core = make_core(env_id)
    d = describer_for(env_id, core.obs_shape, core.action_space.dim)
    key = jax.random.PRNGKey(seed)
    state = core.reset(key)
    obs, acts, rews = [], [], []
    step = jax.jit(core.step)
    rng = np.random.default_rng(seed)
    for t in range(n):
        a = rng.integers(core.action_space.num_actions) if core.action_space.discrete else \
            rng.uniform(-1, 1, core.action_space.shape).astype(np.float32)
        obs.append(np.asarray(state.obs))
        state, r, term = step(jax.random.fold_in(key, t), state, jax.numpy.asarray(a))
        acts.append(a)
        rews.append(float(r))
        if bool(term):
            break
    return core, d, np.array(obs), np.array(acts), np.array(rews)


def _views_and_queries(env_id: str, n: int = 40):
    core, d, obs, acts, rews = _episode(env_id, n)
    table, shown = d.render_episode(obs, acts, rews, episode_id=0)
    view = EpisodeView(0, len(acts), d.card.text(), table)
    t = len(acts) - 1
    ctx, _ = d.render_episode(obs[: t + 1], acts[: t + 1], rews[: t + 1], title="Steps up to the critical state:")
    space = core.action_space
    query = StateQuery(0, t, d.card.text(), ctx, d.state_text(obs[t]), d.action_text(acts[t]), space.discrete,
                       space.num_actions, space.low, space.high)
    return core, view, query


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCar-v0", "Acrobot-v1", "Breakout-MinAtar",
                                    "Pendulum-v1", "jaxmod/Pong-OnePoint"])
def test_describers_render_named_unit_bearing_features(env_id):
    """Every feature of a real state shows as `name=value unit`, with a real name and a physical unit (only counts
    of points are unit-less); `tests/test_describers.py` checks the values themselves."""
    core, d, obs, acts, rews = _episode(env_id, 30)
    units = {"m", "m/s", "m/step", "rad", "rad/s", "link lengths", "cells", "cell", "px", "px/step"}
    parts = d.state_text(obs[0]).split(", ")
    assert len(parts) == len(d.features) >= 2
    for part, f, v in zip(parts, d.features, d.feature_values(obs[0]), strict=True):
        assert f.name.replace("_", "").isalnum() and not f.name.startswith("x"), f.name
        assert f.unit in units or f.name.endswith("_score"), (f.name, f.unit)
        assert part == f"{f.name}={v:+.{d.digits}f}" + (f" {f.unit}" if f.unit else ""), part
        assert (f"{f.name}[{f.unit}]" if f.unit else f.name) in d.header()
    table, shown = d.render_episode(obs, acts, rews, episode_id=1)
    lines = table.splitlines()
    assert lines[1].startswith("t | ") and len(lines) == 2 + len(acts)
    assert d.card.text().startswith(f"Environment: {env_id}")


def test_long_episodes_are_windowed_to_the_budget():
    _, d, obs, acts, rews = _episode("CartPole-v1", 200)
    reps = 1000 // len(acts) + 1
    obs, acts = np.tile(obs, (reps, 1))[:1000], np.tile(acts, reps)[:1000]
    table, shown = d.render_episode(obs, acts, np.ones(1000), budget_chars=3000)
    assert len(table) < 3600 and shown[:3] == [0, 1, 2] and shown[-1] == 999 and "omitted" in table


def test_brax_describer_names_qpos_qvel():
    d = describer_for("brax/hopper", (11,), 3)
    assert d.features[0].name == "torso_height" and d.features[5].name == "forward_velocity"
    assert d.card.action_dims == ("thigh_torque", "leg_torque", "foot_torque")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCar-v0", "Acrobot-v1", "Breakout-MinAtar",
                                    "Pendulum-v1", "jaxmod/Pong-OnePoint"])
def test_scripted_advisor_answers_in_schema(env_id):
    core, view, query = _views_and_queries(env_id)
    adv = Advisor(LocalBackend(), max_critical=3)
    ident = asyncio.run(adv.identify([view]))[0]
    advice = asyncio.run(adv.advise([query]))[0]
    assert not isinstance(ident, Rejected), ident
    assert not isinstance(advice, Rejected), advice
    assert all(0 <= s.step < view.length for s in ident.steps)
    assert -1.0 <= advice.reward <= 1.0
    assert adv.stats.valid == 2 and adv.stats.invalid == 0


def test_scripted_cartpole_suggests_pushing_under_the_lean():
    _, d, _, _, _ = _episode("CartPole-v1", 5)
    rows = np.array([[0.0, 0.0, 0.15, 0.5]] * 3)
    ctx, _ = d.render_episode(rows, np.zeros(3, int), np.ones(3))
    q = StateQuery(0, 2, d.card.text(), ctx, d.state_text(rows[2]), "push_left", True, 2)
    adv = asyncio.run(Advisor(LocalBackend()).advise([q]))[0]
    assert adv.action == 1 and adv.reward < 0  # push right; the agent's push_left was harmful


def test_scripted_pong_moves_towards_the_ball_and_ignores_lost_points():
    d = describer_for("jaxmod/Pong-OnePoint", (8,), 3)
    # ball incoming high (y=120 -> obs (120-80)/80), paddle low (y=40): move up; obs is the scaled 8-vector
    rows = np.array([[0.5, 0.5, 0.375, 0.0, -0.5, 0.0, 0.0, 0.0]] * 3)
    ctx, _ = d.render_episode(rows, np.zeros(3, int), np.zeros(3))
    q = StateQuery(0, 2, d.card.text(), ctx, d.state_text(rows[2]), "stay", True, 3)
    adv = asyncio.run(Advisor(LocalBackend()).advise([q]))[0]
    assert adv.action == 1 and adv.reward < 0
    lost = np.array([[0.95, 0.5, 0.375, 0.0, -0.5, 0.0, 0.0, 0.0]] * 3)  # ball past the paddle
    table, _ = d.render_episode(np.concatenate([rows, lost]), np.zeros(6, int), np.zeros(6))
    view = EpisodeView(0, 6, d.card.text(), table)
    ident = asyncio.run(Advisor(LocalBackend(), max_critical=1).identify([view]))[0]
    assert ident.steps[0].step < 3  # a reachable moment, not a lost one


def test_noisy_backend_corrupts_the_given_fraction():
    _, view, query = _views_and_queries("CartPole-v1")
    queries = [dataclasses.replace(query, episode_id=i) for i in range(200)]  # 200 different questions
    clean = asyncio.run(Advisor(LocalBackend()).advise(queries))
    noisy_backend = NoisyBackend(LocalBackend(), 0.3, seed=1)
    noisy = asyncio.run(Advisor(noisy_backend).advise(queries))
    flipped = sum(1 for a, b in zip(clean, noisy, strict=True) if a.action != b.action)
    assert 40 <= flipped <= 80 and noisy_backend.corrupted == flipped
    assert all(np.sign(b.reward) == -np.sign(a.reward) for a, b in zip(clean, noisy, strict=True) if a.action != b.action)
    # the same question is corrupted the same way, whatever the order; another seed corrupts others
    again = asyncio.run(Advisor(NoisyBackend(LocalBackend(), 0.3, seed=1)).advise(queries[::-1]))[::-1]
    assert [a.action for a in again] == [a.action for a in noisy]
    other = asyncio.run(Advisor(NoisyBackend(LocalBackend(), 0.3, seed=2)).advise(queries))
    assert [a.action for a in other] != [a.action for a in noisy]
    with pytest.raises(ValueError):
        NoisyBackend(LocalBackend(), 1.5)


def test_delayed_backend_adds_its_latency_and_keeps_the_answer():
    _, _, query = _views_and_queries("CartPole-v1")
    queries = [dataclasses.replace(query, episode_id=i) for i in range(4)]
    clean = asyncio.run(Advisor(LocalBackend()).advise(queries))
    advisor = Advisor(DelayedBackend(LocalBackend(), 0.2), concurrency=4)
    t0 = time.perf_counter()
    delayed = asyncio.run(advisor.advise(queries))
    assert time.perf_counter() - t0 >= 0.2
    assert [a.action for a in delayed] == [a.action for a in clean]
    assert advisor.stats.latency_s >= 4 * 0.2  # every answer's latency includes the delay
    with pytest.raises(ValueError, match="latency"):
        DelayedBackend(LocalBackend(), -1.0)


def test_scripted_server_answers_a_chat_completion_with_schema_valid_json():
    _, view, query = _views_and_queries("CartPole-v1")
    with make_server("scripted") as srv:
        base = srv.url
        assert httpx.get(base.replace("/v1", "/health")).json() == {"status": "ok"}
        assert httpx.get(f"{base}/models").json()["data"][0]["id"] == "jaxmod-scripted"
        schema = identify_schema(3)
        body = {"model": "jaxmod-scripted", "messages": identify_messages(view, 3),
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
        resp = httpx.post(f"{base}/chat/completions", json=body).json()
        content = resp["choices"][0]["message"]["content"]
        assert resp["choices"][0]["finish_reason"] == "stop"
        assert not isinstance(validate_identify(content, view.length, 3), Rejected)
        body = {"model": "m", "messages": advice_messages(query)}
        content = httpx.post(f"{base}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert not isinstance(validate_advice(content, True, 2), Rejected)
        assert set(json.loads(content)) == set(advice_schema(True, 2)["required"])
        unknown = {"model": "m", "messages": [{"role": "user", "content": "Environment: brax/ant\n## Episode\n"}]}
        bad = httpx.post(f"{base}/chat/completions", json=unknown)
        assert bad.status_code == 400 and "teacher" in bad.json()["error"]["message"]
        assert httpx.post(f"{base}/chat/completions", content=b"{not json").status_code == 400


def test_teacher_answers_from_a_saved_policy(tmp_path, tiny_config, tiny_output):
    from jaxmod.advice.teacher import TeacherBackend
    from jaxmod.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "teacher", tiny_output.state, tiny_config)
    teacher = TeacherBackend(tmp_path / "teacher")
    _, view, query = _views_and_queries("CartPole-v1")
    adv = Advisor(LocalBackend(teacher), max_critical=2)
    ident = asyncio.run(adv.identify([view]))[0]
    advice = asyncio.run(adv.advise([query]))[0]
    assert len(ident.steps) == 2 and advice.action in (0, 1) and -1 <= advice.reward <= 1
    assert "teacher" in ident.steps[0].reason
    assert teacher.advises("CartPole-v1") and teacher.advises("CartPole-v1-sparse") and not teacher.advises("Acrobot-v1")


def test_server_process_serves_the_scripted_advisor_and_ends_with_its_parent():
    """The main job's embedded server runs in a child process: it answers like the in-process one, `stop()` ends
    it, an unknown backend is one clear error, and a parent killed outright does not leave it behind."""
    _, view, _ = _views_and_queries("CartPole-v1")
    with ServerProcess("scripted") as srv:
        child = srv._proc
        assert httpx.get(srv.url.replace("/v1", "/health")).json() == {"status": "ok"}
        body = {"model": srv.model, "messages": identify_messages(view, 3)}
        content = httpx.post(f"{srv.url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert not isinstance(validate_identify(content, view.length, 3), Rejected)
    assert child.poll() is not None
    with pytest.raises(BackendUnavailable, match="unknown advisor backend 'bogus'"):
        ServerProcess("bogus").start()
    if sys.platform == "win32":
        return
    parent = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxmod.llm.server import ServerProcess; "
                               "print(ServerProcess('scripted').start()._proc.pid, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the advisor server outlived its parent")


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (an exited child that no one has reaped yet is a zombie: not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("env_id, shape, actions", [
    ("CartPole-v1", (4,), 2), ("MountainCar-v0", (2,), 3), ("Acrobot-v1", (6,), 3), ("Pendulum-v1", (3,), 1),
    ("Breakout-MinAtar", (10, 10, 4), 3), ("brax/hopper", (11,), 3), ("jaxmod/Pong", (8,), 3),
    ("jaxmod/Pong", (40, 40, 4), 3), ("Unknown-v0", (5,), 4)])
def test_episode_rows_render_like_single_rows(env_id, shape, actions):
    """`rows` (a whole episode at once, column-wise) writes exactly what `row` writes step by step, including an
    out-of-range discrete action, so prompts and their cache keys do not depend on which one rendered them."""
    d = describer_for(env_id, shape, actions)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(9, *shape)).astype(np.float32) * 3
    if len(shape) == 3:
        obs = (obs > 1).astype(np.float32)
    acts = rng.integers(0, actions + 1, 9) if d.card.discrete else rng.uniform(-1, 1, (9, actions)).astype(np.float32)
    rews = rng.normal(size=9).astype(np.float32)
    expected = [d.row(4 + t, obs[t], acts[t], float(rews[t])) for t in range(9)]
    assert d.rows(obs, acts, rews, first_step=4) == expected
    assert d.render_episode(obs, acts, rews, rows=d.rows(obs, acts, rews)) == d.render_episode(obs, acts, rews)
