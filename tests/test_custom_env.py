"""Your own env: a gymnax-API object (not one of gymnax's, no gymnax base class) and a brax `Env` instance through
`jaxmod.envs.make` and `register_env`; `jaxmod.make_train` and ULTRA (`UltraRun`) on a registered env with its own
describer; the generic describer and its warning for an env without one; and examples/custom_env.py's main path."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import spaces

import jaxmod
from jaxmod.envs import (
    Describer,
    EnvCard,
    EnvError,
    EnvOptionError,
    GenericDescriberWarning,
    describer_of,
    make,
    make_core,
    raw_feature,
    register_describer,
    register_env,
)

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parent.parent
CORRIDOR = "jaxmod-test/Corridor-v0"


@struct.dataclass
class CorridorState:
    position: jax.Array  # m
    time: jax.Array


@struct.dataclass
class CorridorParams:
    length_m: float = 4.0
    max_steps_in_episode: int = 12


class Corridor:
    """A walk along a corridor: observation (position m, distance to the door m); action 0 stays, 1 steps 1 m
    forward; reward -0.1 per step, +1 at the door (which ends the episode). Plain gymnax API: `reset` / `step`
    only (no `reset_env` / `step_env`, no gymnax base class)."""

    name = CORRIDOR

    @property
    def default_params(self) -> CorridorParams:
        return CorridorParams()

    def reset(self, key, params):
        state = CorridorState(position=jax.random.uniform(key, (), maxval=1.0), time=jnp.int32(0))
        return self._obs(state, params), state

    def step(self, key, state, action, params):
        position = state.position + action.astype(jnp.float32)
        state = CorridorState(position=position, time=state.time + 1)
        done = position >= params.length_m
        reward = jnp.where(done, 1.0, -0.1)
        return self._obs(state, params), state, reward, done, {}

    @staticmethod
    def _obs(state, params):
        return jnp.stack([state.position, params.length_m - state.position])

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params=None):
        return spaces.Box(-10.0, 10.0, (2,), jnp.float32)


def corridor_describer() -> Describer:
    card = EnvCard(CORRIDOR, goal="reach the door at the corridor's end", termination="at the door, or 12 steps",
                   reward="-0.1 per step, +1 at the door", action_names=("stay", "forward"))
    return Describer(card, (raw_feature("position", "m", 0), raw_feature("distance_to_door", "m", 1)),
                     obs_shape=(2,))


@pytest.fixture
def clean_registries(monkeypatch):
    """Registrations made by a test are undone after it."""
    from jaxmod.envs import describers, registry

    monkeypatch.setattr(registry, "_OWN_ENVS", dict(registry._OWN_ENVS))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(describers, "_DESCRIBERS", dict(describers._DESCRIBERS))


def test_make_takes_a_gymnax_api_instance_and_register_env_names_it(clean_registries):
    env = make(Corridor(), num_envs=3)
    assert env.core.env_id == CORRIDOR and env.core.family == "custom" and env.obs_shape == (2,)
    assert env.action_space.discrete and env.action_space.num_actions == 2 and env.core.max_steps == 12
    state, obs = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (3, 2)
    for _ in range(5):  # always forward: every copy reaches the door at step 4 or 5 and auto-resets
        state, result = env.step(jax.random.PRNGKey(1), state, jnp.ones(3, jnp.int32))
    assert result.obs.shape == (3, 2)

    register_env(CORRIDOR, Corridor())
    assert make(CORRIDOR, num_envs=2).core.max_steps == 12
    short = make_core(CORRIDOR, max_steps_in_episode=5, length_m=2.0)  # options replace the params' fields
    assert short.max_steps == 5
    _, reward, done = short.step(jax.random.PRNGKey(0), short.reset(jax.random.PRNGKey(0)), jnp.int32(1))
    assert float(reward) == pytest.approx(-0.1) and not bool(done)
    with pytest.raises(EnvOptionError, match="valid options: length_m, max_steps_in_episode"):
        make_core(CORRIDOR, friction=1.0)
    with pytest.raises(TypeError, match="gymnax-API env, a brax Env"):
        register_env("Nothing-v0", 42)
    with pytest.raises(EnvError, match="outside 'brax/'"):
        register_env("brax/mine", Corridor())
    with pytest.raises(TypeError, match="env id or a gymnax-API"):
        make(object())


def test_an_env_without_a_describer_gets_a_generic_one_and_a_warning_that_says_how(clean_registries):
    register_env(CORRIDOR, Corridor())
    core = make_core(CORRIDOR)
    with pytest.warns(GenericDescriberWarning, match=rf"register_describer\('{CORRIDOR}'"):
        generic = describer_of(core)
    assert [f.name for f in generic.features] == ["x0", "x1"]
    register_describer(CORRIDOR, corridor_describer())
    named = describer_of(core)
    assert [f.header for f in named.features] == ["position[m]", "distance_to_door[m]"]


def test_a_registered_env_trains_with_make_train_and_refines_with_ultra(clean_registries, tmp_path):
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    register_env(CORRIDOR, Corridor())
    register_describer(CORRIDOR, corridor_describer())
    config = jaxmod.default_config(CORRIDOR, num_envs=4, num_steps=16, total_timesteps=4 * 16 * 8,
                                   hidden_sizes=(16,))
    out = jax.jit(jaxmod.make_train(config))(jax.random.PRNGKey(0))
    returns = np.asarray(out.metrics["episode_return"])
    assert returns.shape == (8,) and np.isfinite(returns).all()

    settings = UltraConfig.flat(dict(num_envs=4, num_steps=16, hidden_sizes=(16,)), env_id=CORRIDOR, seeds=2,
                                pretrain_steps=128, refine_steps=128, chunks=2, variants=("RA",), advisor="random",
                                collect_envs=4, collect_steps=48, eval_envs=4, eval_steps=48, episodes_per_round=2,
                                sync_advice=True)
    results = UltraRun(settings, tmp_path / "run").run()
    assert len(results["RA"].eval_returns) == 3 and np.isfinite(results["RA"].eval_returns).all()
    asked = (tmp_path / "run" / "transcript.jsonl").read_text()
    assert "position[m]" in asked and "distance_to_door[m]" in asked  # the prompts use its describer
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env_id"] == CORRIDOR


def test_make_takes_a_brax_env_instance_and_its_family_picks_the_preset(clean_registries):
    pytest.importorskip("brax")
    from jaxmod.envs.brax_backend import brax_envs

    pendulum = brax_envs().get_environment("inverted_pendulum", backend="positional")
    core = make_core(pendulum)
    assert core.obs_shape == (4,) and not core.action_space.discrete and core.action_space.shape == (1,)
    assert core.family == "custom" and core.max_steps == 1000
    register_env("jaxmod-test/MyPendulum", pendulum, family="brax", max_steps=200)
    assert make_core("jaxmod-test/MyPendulum").max_steps == 200
    assert jaxmod.default_config("jaxmod-test/MyPendulum").num_envs == jaxmod.default_config("brax/hopper").num_envs
    with pytest.raises(EnvError, match="build it with its options"):
        make_core("jaxmod-test/MyPendulum", backend="spring")


@pytest.mark.slow  # ~2-3 CPU minutes of compiles; the registered-env test above covers make_train and ultra
def test_the_custom_env_example_runs(clean_registries, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("custom_env_example", ROOT / "examples" / "custom_env.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # its dataclasses look their module up
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit):  # a bad method is one line, before anything compiles
        example.main(["--out", str(tmp_path / "bad"), "--variants", "XYZ"])
    assert "unknown method" in capsys.readouterr().err.lower() and not (tmp_path / "bad").exists()
    assert example.main(["--out", str(tmp_path / "ex"), "--seeds", "2", "--teacher-steps", "1024",
                         "--pretrain-steps", "512", "--refine-steps", "1024", "--variants", "RA"]) == 0
    printed = capsys.readouterr().out
    assert "RA: final evaluation return, IQM [95% CI] over 2 seeds:" in printed
    asked = (tmp_path / "ex" / "ultra" / "transcript.jsonl").read_text()
    assert "room_temperature[degC]" in asked and "heater_full" in asked


def test_the_generic_describers_warning_fits_a_continuous_env_and_names_the_public_imports(clean_registries):
    """One continuous action dimension: "a0" (not "a0..a0"), its action bounds' fields, the public import path."""
    import gymnax

    env, _ = gymnax.make("Pendulum-v1")
    register_env("jaxmod-test/MyPendulum-v0", env)
    core = make_core("jaxmod-test/MyPendulum-v0")
    with pytest.warns(GenericDescriberWarning) as caught:
        describer_of(core)
    text = str(caught[0].message)
    assert "observation as x0..x2 and its action dimensions as a0," in text and "a0..a0" not in text
    assert "from jaxmod.envs import Describer, EnvCard, raw_feature" in text and "action_low=" in text
    assert "cart_position" not in text


@pytest.mark.timeout(300)
def test_the_cli_runs_a_users_env_named_module_colon_id(clean_registries, tmp_path, monkeypatch, capsys):
    """`--env module:EnvId`: the module (here in the current folder) registers the env when imported; train, then
    eval of its checkpoint (which names the same id) work from the command line; a module that registers nothing,
    or cannot be imported, is one line; an unknown plain id hints at the module:EnvId form."""
    from jaxmod.cli import main

    (tmp_path / "my_corridors.py").write_text(
        "import sys\nimport jaxmod\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_custom_env import Corridor\n"
        "jaxmod.register_env('Corridor-v9', Corridor())\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_corridors", raising=False)
    tiny = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
    assert main(["train", "--env", "my_corridors:Corridor-v9", "--seeds", "2", "--total-steps", "256", "--quiet",
                 "--out", "run", *tiny]) == 0
    assert json.loads((tmp_path / "run/config.json").read_text())["ppo"]["env_id"] == "my_corridors:Corridor-v9"
    capsys.readouterr()
    assert main(["eval", "run", "--episodes", "4"]) == 0
    assert "my_corridors:Corridor-v9 (update 4): 4 episodes per seed" in " ".join(capsys.readouterr().out.split())
    elsewhere = tmp_path / "elsewhere"  # the module is not importable from here: one line saying so, not "damaged"
    elsewhere.mkdir()
    away = subprocess.run([sys.executable, "-m", "jaxmod", "eval", str(tmp_path / "run")], cwd=elsewhere,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    said = away.stderr.strip().splitlines()
    assert away.returncode == 2 and len(said) == 1, away.stderr
    assert "cannot import module 'my_corridors'" in said[0] and "damaged" not in said[0], said
    for env_id, says in (("my_corridors:Other-v0", "registered no env 'Other-v0'"),
                         ("no_such_module:X-v0", "cannot import module 'no_such_module'"),
                         ("Corridor-v8", "name it as module:EnvId")):
        assert main(["train", "--env", env_id, "--out", "bad"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "bad").exists()


@pytest.mark.timeout(120)
def test_an_env_module_that_fails_at_import_is_one_line_naming_the_error_and_where(clean_registries, tmp_path,
                                                                                    monkeypatch, capsys):
    """`--env module:EnvId` whose module raises while being imported (any error, a SyntaxError, or an import of a
    package that is missing inside it): one line naming the error and the module's file and line, exit 2, nothing
    written; only a module that is itself missing gets "put it in the current folder"."""
    from jaxmod.cli import main

    files = {"raises_mod": "x = 1\nraise RuntimeError('my env is broken')\n",
             "syntax_mod": "def f(:\n",
             "needs_mod": "import jaxmod_test_no_such_package\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text, encoding="utf-8")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    for env_id, says in (("raises_mod:X-v0", "raises_mod.py:2: my env is broken"),
                         ("syntax_mod:X-v0", "raised SyntaxError at "),
                         ("needs_mod:X-v0", "raised ModuleNotFoundError at "),
                         ("no_such_pkg.sub:X-v0", "put no_such_pkg/sub.py in the current folder")):
        assert main(["train", "--env", env_id, "--out", "bad"]) == 2, env_id
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        if "raised" in says:
            module = env_id.split(":")[0]
            assert f"{module}.py:" in err[0] and "put " not in err[0] and "JAXMOD_DEBUG=1" in err[0], err
    assert not (tmp_path / "bad").exists()


@pytest.mark.timeout(180)
def test_a_describer_that_does_not_fit_its_env_is_one_line_before_ultra_pretrains(clean_registries, tmp_path,
                                                                                  monkeypatch, capsys):
    """A registered describer that is garbage for its env (a factory returning something else, too few or too many
    action names, a continuous card for discrete actions, a column outside the observation, another observation
    shape, a feature that fails or is not finite on the env's first observation): `UltraRun` refuses it with one
    `DescriberMismatchError` line before pre-training (before: an AttributeError / IndexError inside the first advice
    round, after the pre-training's minutes), and `jaxmod ultra` exits 2 with that line; a run with no advisor
    (baselines only) does not ask for it. A describer that fits runs (the test above)."""
    from jaxmod.cli import main
    from jaxmod.envs import DescriberMismatchError, Feature
    from jaxmod.ultra.config import UltraConfig
    from jaxmod.ultra.pipeline import UltraRun

    def card(**kw):
        return EnvCard(CORRIDOR, goal="g", termination="t", reward="r", **kw)

    two = dict(action_names=("stay", "forward"))
    pos = raw_feature("position", "m", 0)
    garbage = {
        "not a jaxmod.envs.Describer": lambda *_: "a describer",
        "names 3 actions": Describer(card(action_names=("a", "b", "c")), (pos,), obs_shape=(2,)),
        "describes continuous actions": Describer(card(action_dims=("u",), action_low=(-1.0,), action_high=(1.0,)),
                                                  (pos,), obs_shape=(2,)),
        "reads column 5, outside": Describer(card(**two), (raw_feature("far", "m", 5),), obs_shape=(2,)),
        "observations of shape (3,)": Describer(card(**two), (pos,), obs_shape=(3,)),
        "has no features": Describer(card(**two), (), obs_shape=(2,)),
        "fails on the env's first observation (ValueError": Describer(
            card(**two), (Feature("mood", "", fn=lambda o: "happy"),), obs_shape=(2,)),
        "gives nan": Describer(card(**two), (Feature("ratio", "", fn=lambda o: float("nan")),), obs_shape=(2,)),
    }
    register_env(CORRIDOR, Corridor())
    settings = UltraConfig.flat(dict(num_envs=4, num_steps=16, hidden_sizes=(16,)), env_id=CORRIDOR, seeds=2,
                                pretrain_steps=128, refine_steps=128, chunks=2, variants=("RA",), advisor="random",
                                collect_envs=4, collect_steps=48, eval_envs=4, eval_steps=48, episodes_per_round=2)
    for says, describer in garbage.items():
        register_describer(CORRIDOR, describer)
        with pytest.raises(DescriberMismatchError, match=re.escape(says)) as caught:
            UltraRun(settings, tmp_path / "run", overwrite=True)
        assert "\n" not in str(caught.value) and f"the describer for {CORRIDOR}" in str(caught.value)
    UltraRun(dataclasses.replace(settings, variants=("Random",)), tmp_path / "baselines")  # no advisor: no describer asked

    # through the command line: one line, exit 2, before pretraining (nothing compiled: no event files)
    (tmp_path / "bad_describer.py").write_text(
        "import sys\nimport jaxmod\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_custom_env import Corridor\n"
        "jaxmod.register_env('Corridor-v7', Corridor())\n"
        "jaxmod.register_describer('Corridor-v7', lambda *_: None)\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "bad_describer", raising=False)
    assert main(["ultra", "--env", "bad_describer:Corridor-v7", "--advisor", "random", "--variant", "RA",
                 "--out", "cli-run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a NoneType, not a jaxmod.envs.Describer" in err[0], err
    assert not (tmp_path / "cli-run" / "tb").exists()


@pytest.mark.timeout(180)
def test_jaxmod_ultra_warns_in_one_line_before_pretraining_that_an_env_has_no_describer(clean_registries, tmp_path,
                                                                                         monkeypatch, capsys):
    """`jaxmod ultra` on an env without a describer (a continuous one here): the generic describer's warning, how to
    write one, comes as one `jaxmod: warning:` line on stderr before pre-training (UltraRun asks for the describer
    first; before, Python's two-line warning after pre-training). The run is stopped right after by a W&B that
    cannot start, so nothing compiles."""
    from jaxmod.cli import main
    from tests.test_tracking import _WandbWithoutLogin

    (tmp_path / "my_pendulums.py").write_text(
        "import gymnax\nimport jaxmod\n"
        "jaxmod.register_env('MyPendulum-v3', gymnax.make('Pendulum-v1')[0])\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_pendulums", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", _WandbWithoutLogin())
    assert main(["ultra", "--env", "my_pendulums:MyPendulum-v3", "--advisor", "random", "--variant", "RA",
                 "--wandb", "proj", "--quiet", "--out", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "W&B did not start" in err[1], err
    assert err[0].startswith("jaxmod: warning: no describer for MyPendulum-v3: prompts show its observation as "
                             "x0..x2"), err
    assert "register_describer('MyPendulum-v3', describer)" in err[0]
    assert not (tmp_path / "run" / "tb").exists()
