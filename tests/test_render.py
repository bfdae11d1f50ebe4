"""Rendering: `jaxmod eval --render` and `jaxmod ultra --render` write valid multi-frame GIFs, every built-in
drawer draws from the env state, a custom env adds its own drawer, and what cannot be drawn is one line before
anything runs; `--quiet` prints only the final table."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxmod import render
from jaxmod.cli import main
from tests.conftest import TOY_ID

pytestmark = pytest.mark.timeout(400)

TINY_FLAGS = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]


def _train(out, env: str, *flags: str) -> str:
    """A tiny `jaxmod train --quiet` run; returns what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["train", "--env", env, "--seeds", "2", "--total-steps", str(4 * 16 * 2), "--out", str(out),
                     "--quiet", *TINY_FLAGS, *flags])
    assert code == 0
    return buf.getvalue()


def _gif(path) -> tuple[int, tuple[int, int]]:
    """(frame count, size) of a GIF file, after checking it is one and every frame decodes."""
    with Image.open(path) as im:
        assert im.format == "GIF"
        for k in range(im.n_frames):
            im.seek(k)
            im.convert("RGB")
        return im.n_frames, im.size


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "cartpole"
    return out, _train(out, "CartPole-v1")


def test_train_quiet_prints_only_the_table(cartpole_run):
    _, printed = cartpole_run
    assert "result" in printed and "CartPole-v1" in printed
    assert "jaxmod train" not in printed and "metrics:" not in printed and "checkpoint:" not in printed


def test_eval_renders_a_cartpole_episode(cartpole_run, tmp_path, capsys):
    run, _ = cartpole_run
    gif = tmp_path / "sub" / "episode.gif"
    assert main(["eval", str(run), "--episodes", "2", "--deterministic", "--render", str(gif)]) == 0
    said = re.search(r"episode of seed 0 \(return ([\d.]+), (\d+) steps, (\d+) frames\) -> (.+)",
                     capsys.readouterr().out)
    assert said and said.group(4).strip() == str(gif)
    frames, size = _gif(gif)
    assert frames == int(said.group(3)) == int(said.group(2)) > 1  # CartPole: one frame per step, reward 1 a step
    assert float(said.group(1)) == int(said.group(2)) and size == render.SIZE


def test_eval_render_refuses_a_bad_path_in_one_line(cartpole_run, tmp_path, capsys):
    run, _ = cartpole_run
    assert main(["eval", str(run), "--render", str(tmp_path / "episode.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give a path ending in .gif" in err[0]


def test_eval_renders_a_pong_one_point_episode(tmp_path, capsys):
    run = tmp_path / "pong"
    _train(run, "jaxmod/Pong-OnePoint", "--env-option", "max_steps_in_episode=300")  # episodes of <= 300 steps
    gif = tmp_path / "pong.gif"
    assert main(["eval", str(run), "--episodes", "2", "--render", str(gif)]) == 0
    out = capsys.readouterr().out
    steps = int(re.search(r"return -?[\d.]+, (\d+) steps", out).group(1))
    mean = float(re.search(r"mean (-?[\d.]+)\n", out).group(1))  # the return's, then the win rate's
    rate = float(re.search(r"win rate IQM .*; mean (-?[\d.]+)", out).group(1))
    assert abs(rate - (mean + 1) / 2) < 0.01  # one-point games: +1 a win, -1 a loss, as ultra's tables report
    frames, size = _gif(gif)
    assert frames == len(range(0, steps, math.ceil(steps / render.MAX_FRAMES))) > 1 and size == render.SIZE


def test_a_custom_env_brings_its_own_drawer(tmp_path, capsys, monkeypatch):
    """The toy env (tests/conftest.py) has no drawer: one line, before the evaluator compiles; with one registered,
    its frames (one per state, drawn from the state) make the GIF."""
    run = tmp_path / "toy"
    _train(run, TOY_ID)
    assert main(["eval", str(run), "--render", str(tmp_path / "toy.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no drawer renders {TOY_ID}" in err[0] and "register_drawer" in err[0]

    monkeypatch.setattr(render, "_DRAWERS", dict(render._DRAWERS))
    drawn = []

    def draw(core, states):
        drawn.append(np.asarray(states.inner))
        return [np.full((6, 8, 3), (40 * i, min(255, int(40 * pos)), 0), np.uint8)  # distinct: GIFs merge repeats
                for i, pos in enumerate(np.asarray(states.inner))]

    render.register_drawer(TOY_ID, draw)
    assert main(["eval", str(run), "--render", str(tmp_path / "toy.gif")]) == 0
    frames, size = _gif(tmp_path / "toy.gif")
    assert len(drawn) == 2 and len(drawn[0]) == 1  # the reset state, drawn before compiling; then the episode
    assert frames == len(drawn[-1]) >= 1 and size == (8, 6)
    capsys.readouterr()

    # a drawer that fails, returns no frames, or frames that are not [H, W, 3] uint8 of one size: one line, before
    # the evaluator compiles (it draws the reset state first)
    bad = {"raised ZeroDivisionError at ": lambda core, states: [1 / 0],
           "it returned no frames": lambda core, states: [],
           "it returned a float64 frame of shape (6, 8)": lambda core, states: [np.zeros((6, 8))],
           "its frames have shapes": lambda core, states: [np.zeros((6, 8, 3), np.uint8),
                                                           np.zeros((7, 8, 3), np.uint8)]}
    for says, drawer in bad.items():
        render.register_drawer(TOY_ID, drawer)
        assert main(["eval", str(run), "--render", str(tmp_path / "bad.gif")]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and f"the drawer of {TOY_ID}" in err[0] and says in err[0], err
        assert "episodes per seed" not in captured.out  # refused before evaluating
    assert not (tmp_path / "bad.gif").exists()


def test_unknown_env_without_drawer_is_one_line_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["ultra", "--env", "Catch-bsuite", "--render", str(tmp_path / "gifs"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no drawer renders Catch-bsuite" in err[0]
    assert not out.exists() and not (tmp_path / "gifs").exists()


def test_ultra_quiet_renders_before_and_after_refinement(tmp_path, capsys):
    """--quiet: stdout holds the final table only; warnings (here: whether ULTRA-R's implicit reward never acted)
    go to stderr. --render: seed 0's episode before refinement and after each method. `jaxmod eval` of the ULTRA
    run (which keeps no agents) is one line saying where its evaluations are and that --agents-dir saves the
    pre-trained agents, and `jaxmod eval` of the folder --agents-dir wrote evaluates them."""
    out, gifs, agents = tmp_path / "run", tmp_path / "gifs", tmp_path / "agents"
    tiny = ["--seeds", "1", "--pretrain-steps", "512", "--refine-steps", "512", "--num-envs", "4", "--num-steps",
            "64", "--num-minibatches", "2", "--update-epochs", "1", "--chunks", "2", "--eval-envs", "2",
            "--eval-steps", "64", "--collect-envs", "2", "--collect-steps", "64", "--episodes-per-round", "1"]
    assert main(["ultra", "--env", "CartPole-v1", "--variant", "R", "--advisor", "scripted", *tiny, "--quiet",
                 "--render", str(gifs), "--agents-dir", str(agents), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "evaluation return after 512 refinement steps" in captured.out
    for chatter in ("jaxmod ultra", "pretrained", "rendered", "outputs:", "eval return", "advisor (R)", "warning"):
        assert chatter not in captured.out, chatter
    shaped = [c["shaping"] for c in json.loads((out / "ultra.json").read_text())["R"]["chunks"]]
    warned = "jaxmod: warning: R: the implicit reward never acted" in captured.err
    assert warned == (not any(shaped))
    assert sorted(p.name for p in gifs.iterdir()) == ["PPO.gif", "R.gif", "pretrained.gif"]
    for name in ("PPO.gif", "R.gif", "pretrained.gif"):
        assert _gif(gifs / name)[0] > 1
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a `jaxmod ultra` run, which saves no agents" in err[0] and "--agents-dir" in err[0]
    (saved,) = agents.iterdir()  # <agents-dir>/<tag>: the pre-trained agents
    assert main(["eval", str(saved), "--episodes", "2"]) == 0
    assert "CartPole-v1" in capsys.readouterr().out


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0",
                                    "Pendulum-v1", "jaxmod/Pong", "Breakout-MinAtar"])
def test_each_built_in_drawer_draws_the_state(env_id):
    """Frames of a reset state and the two after it (random actions): RGB uint8 of one size, and they move."""
    from jaxmod.envs import make_core

    core = make_core(env_id)
    space = core.action_space

    def step(state, key):
        if space.discrete:
            action = jax.random.randint(key, (), 0, space.num_actions)
        else:
            action = jax.random.uniform(key, space.shape, minval=np.asarray(space.low), maxval=np.asarray(space.high))
        return core.step(key, state, action)[0], state

    _, states = jax.lax.scan(step, core.reset(jax.random.PRNGKey(1)), jax.random.split(jax.random.PRNGKey(2), 3))
    states = jax.device_get(states)
    frames = render.episode_frames(core, states)
    assert len(frames) == 3 and all(f.dtype == np.uint8 and f.shape == frames[0].shape for f in frames)
    assert frames[0].shape[-1] == 3 and min(frames[0].shape[:2]) >= 100
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])


def _brax_subprocess(args: list[str], gl: str | None, timeout: int = 380) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    if gl is not None:
        env["MUJOCO_GL"] = gl
    return subprocess.run([sys.executable, "-m", "jaxmod.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_brax_without_opengl_is_one_line_before_anything_runs(tmp_path):
    """MUJOCO_GL=disable: MuJoCo has no OpenGL context to render with; said in one line before pretraining."""
    proc = _brax_subprocess(["ultra", "--env", "brax/inverted_pendulum", "--variant", "PPO", "--render",
                             str(tmp_path / "gifs"), "--out", str(tmp_path / "run")], gl="disable")
    err = [line for line in proc.stderr.strip().splitlines() if line.startswith("jaxmod")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert "brax frames need an OpenGL context" in err[0] and "MUJOCO_GL=egl" in err[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_eval_renders_a_brax_episode(tmp_path):
    """A tiny brax run, evaluated and rendered with MuJoCo's renderer (EGL on a headless machine: the CLI picks it
    when MUJOCO_GL is unset). Minutes on a CPU: brax compiles three programs."""
    run, gif = tmp_path / "brax", tmp_path / "brax.gif"
    tiny = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "1"]
    proc = _brax_subprocess(["train", "--env", "brax/inverted_pendulum", "--env-option", "episode_length=50",
                             "--seeds", "1", "--total-steps", "64", "--quiet", *tiny, "--out", str(run)], gl=None,
                            timeout=700)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _brax_subprocess(["eval", str(run), "--episodes", "2", "--render", str(gif)], gl=None, timeout=700)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames, size = _gif(gif)
    assert frames > 1 and size == render.SIZE


def test_ultra_goes_on_without_gifs_when_a_drawer_fails_on_a_later_state(tmp_path, monkeypatch):
    """A user's drawer that draws the reset state (the check before compiling) but fails on an episode: `UltraRun`
    warns once, in one line, and renders nothing more; the run itself is not lost."""
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    monkeypatch.setattr(render, "_DRAWERS", dict(render._DRAWERS))

    def draw(core, states):
        if len(states.time) > 1:
            raise ValueError("cannot draw motion")
        return [np.zeros((6, 8, 3), np.uint8)]

    render.register_drawer(TOY_ID, draw)
    settings = UltraConfig.flat(dict(num_envs=4, num_steps=16), env_id=TOY_ID, seeds=1, pretrain_steps=64,
                                refine_steps=64, chunks=1, variants=("PPO",), eval_envs=2, eval_steps=16)
    warned = []
    run = UltraRun(settings, tmp_path / "run", warn=warned.append, render_dir=tmp_path / "gifs")
    state = jax.vmap(run.agent_learner.init)(jax.random.split(jax.random.PRNGKey(0), 1))
    run.render("pretrained.gif", state)
    run.render("PPO.gif", state)
    assert len(warned) == 1 and "pretrained.gif not rendered, and no more GIFs in this run" in warned[0]
    assert "cannot draw motion" in warned[0] and "\n" not in warned[0]
    assert not list((tmp_path / "gifs").glob("*.gif"))
