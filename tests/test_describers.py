"""Describers own both directions: every registered describer's rows parse back to the printed numbers and the
same actions; the registry, the generic describer and its warning; the scripted advisor's answers through the
describers' parse are the recorded ones; the text side (jaxmod.llm) runs without jax."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxmod.envs import describers as registry
from jaxmod.envs.describe import Describer, DescriberError, EnvCard, raw_feature
from jaxmod.envs.describers import GenericDescriberWarning, describer_for, register_describer

pytestmark = pytest.mark.timeout(120)

# (env id, observation shape, actions or action dimensions, registry key it exercises)
CASES = [
    ("CartPole-v1", (4,), 2, "CartPole-v1"), ("MountainCar-v0", (2,), 3, "MountainCar-v0"),
    ("MountainCarContinuous-v0", (2,), 1, "MountainCarContinuous-v0"), ("Acrobot-v1", (6,), 3, "Acrobot-v1"),
    ("Pendulum-v1", (3,), 1, "Pendulum-v1"), ("Breakout-MinAtar", (10, 10, 4), 3, "minatar"),
    ("Asterix-MinAtar", (10, 10, 4), 5, "minatar"), ("Seaquest-MinAtar", (10, 10, 10), 6, "minatar"),
    ("brax/hopper", (11,), 3, "brax"), ("brax/hopper-sparse", (11,), 3, "brax"), ("brax/reacher", (11,), 2, "brax"),
    ("brax/ant", (27,), 8, "brax"), ("jaxmod/Pong", (8,), 3, "pong"), ("jaxmod/Pong-OnePoint", (40, 40, 4), 3, "pong"),
]


def _episode(d: Describer, shape, n_act: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if len(shape) == 3:
        obs = (rng.random((n, *shape)) > 0.9).astype(np.float32)
    elif d.card.env_id in ("Pendulum-v1", "Acrobot-v1"):  # cos/sin pairs must be unit vectors
        ang = rng.uniform(-math.pi, math.pi, (n, 2))
        vel = rng.normal(0, 3, (n, 2))
        obs = (np.stack([np.cos(ang[:, 0]), np.sin(ang[:, 0]), vel[:, 0]], 1) if shape == (3,) else
               np.stack([np.cos(ang[:, 0]), np.sin(ang[:, 0]), np.cos(ang[:, 1]), np.sin(ang[:, 1]),
                         vel[:, 0], vel[:, 1]], 1)).astype(np.float32)
    else:
        obs = rng.normal(0, 2, (n, *shape)).astype(np.float32)
    if d.card.discrete:
        acts = rng.integers(0, n_act, n)
    else:
        acts = rng.uniform(np.array(d.card.action_low), np.array(d.card.action_high), (n, n_act)).astype(np.float32)
    rews = (rng.normal(0, 50, n) * rng.choice([1e-3, 1.0, 1e3], n)).astype(np.float32)
    return obs, acts, rews


def _printed(x: float, fmt: str) -> float:
    return float(format(x, fmt))


def test_every_registered_describer_has_a_round_trip_case():
    assert set(registry._DESCRIBERS) <= {key for *_, key in CASES}


@pytest.mark.parametrize("env_id, shape, n_act, key", CASES, ids=[c[0] + str(len(c[1])) for c in CASES])
def test_rows_parse_back_to_the_printed_numbers_and_the_same_actions(env_id, shape, n_act, key):
    d = describer_for(env_id, shape, n_act)
    obs, acts, rews = _episode(d, shape, n_act, 40)
    text, shown = d.render_episode(obs, acts, rews, episode_id=3, budget_chars=1500)  # long: rows are omitted
    assert len(shown) < len(obs) and "omitted" in text
    table = d.parse_rows(text)
    np.testing.assert_array_equal(table.steps, shown)
    assert table.names == tuple(f.name for f in d.features)
    feats = np.array([d.feature_values(o) for o in obs[shown]])
    np.testing.assert_array_equal(table.values, np.vectorize(lambda v: _printed(v, f"+.{d.digits}f"))(feats))
    np.testing.assert_array_equal(table.rewards, [_printed(float(r), "+.3g") for r in rews[shown]])
    if d.card.discrete:
        assert table.actions.dtype == np.int64
        np.testing.assert_array_equal(table.actions, acts[shown])
    else:
        np.testing.assert_array_equal(table.actions, np.vectorize(lambda a: _printed(float(a), "+.2f"))(acts[shown]))
    # a window numbered from its first step, as the advice question shows it, reads back the same way
    window = d.parse_rows("\n".join([d.header()] + d.rows(obs[5:9], acts[5:9], rews[5:9], first_step=5)))
    np.testing.assert_array_equal(window.steps, [5, 6, 7, 8])
    printed = np.vectorize(lambda v: _printed(v, f"+.{d.digits}f"))
    np.testing.assert_array_equal(window.values, printed(np.array([d.feature_values(o) for o in obs[5:9]])))
    for a in acts[:5]:
        back = d.parse_action(d.action_text(a))
        assert back == a if d.card.discrete else np.array_equal(back, np.round(a.astype(np.float64), 2))
    if d.invertible:  # the features determine the observation: rebuilt to the printed precision
        rebuilt = d.observations(table.values)
        assert rebuilt.shape == (len(shown), *shape) and rebuilt.dtype == np.float32
        scale = min((abs(f.scale) for f in d.features if f.column is not None), default=1.0)
        np.testing.assert_allclose(rebuilt, obs[shown], rtol=0, atol=0.5 * 10.0 ** -d.digits / scale + 1e-5)
    else:
        with pytest.raises(DescriberError, match="cannot rebuild observations"):
            d.observations(table.values)


def test_invertible_describers_are_those_whose_features_determine_the_observation():
    inv = {env_id: describer_for(env_id, shape, n).invertible for env_id, shape, n, _ in CASES}
    assert inv["CartPole-v1"] and inv["Pendulum-v1"] and inv["Acrobot-v1"] and inv["brax/hopper"]
    assert inv["jaxmod/Pong"]  # scaled vector entries invert
    assert not inv["Breakout-MinAtar"] and not inv["jaxmod/Pong-OnePoint"]  # centroids of object images


def test_parse_rejects_text_it_did_not_write():
    cart, pend = describer_for("CartPole-v1", (4,), 2), describer_for("Pendulum-v1", (3,), 1)
    obs = np.zeros((3, 4), np.float32)
    text = "\n".join([cart.header()] + cart.rows(obs, np.array([0, 1, 0]), np.ones(3)))
    with pytest.raises(DescriberError, match="not written by Pendulum-v1"):
        pend.parse_rows(text)
    with pytest.raises(DescriberError, match="no episode table"):
        cart.parse_rows("Episode 0: nothing here")
    with pytest.raises(DescriberError, match="unreadable table row"):
        cart.parse_rows(text.replace("push_right", "jump"))
    with pytest.raises(DescriberError, match="unreadable table row"):
        cart.parse_rows(text.replace("+0.000 | push_left", "| push_left", 1))
    with pytest.raises(DescriberError, match="no rows"):
        cart.parse_rows(cart.header())
    with pytest.raises(DescriberError, match="1 action dimensions"):
        pend.parse_action("[+0.10 -0.20]")
    assert cart.parse_action("invalid(7)") == 7  # what action_text writes outside the action set


def test_features_carry_their_units_and_values():
    """Each feature is named with its unit and shows the quantity it claims, computed independently here."""
    cases = {
        "CartPole-v1": ((4,), 2, np.array([0.5, -1.25, 0.125, 2.0]),
                        {"cart_position": ("m", 0.5), "cart_velocity": ("m/s", -1.25), "pole_angle": ("rad", 0.125),
                         "pole_angular_velocity": ("rad/s", 2.0)}),
        "MountainCar-v0": ((2,), 3, np.array([-0.5, 0.01]), {"position": ("m", -0.5), "velocity": ("m/step", 0.01)}),
        "Pendulum-v1": ((3,), 1, np.array([0.0, 1.0, -3.0]),
                        {"angle": ("rad", math.pi / 2), "angular_velocity": ("rad/s", -3.0)}),
        "Acrobot-v1": ((6,), 3, np.array([1.0, 0.0, 0.0, 1.0, 0.5, -0.5]),
                       {"angle_link1": ("rad", 0.0), "angle_link2": ("rad", math.pi / 2),
                        "angular_velocity_link1": ("rad/s", 0.5), "angular_velocity_link2": ("rad/s", -0.5),
                        "tip_height": ("link lengths", -1.0 - math.cos(math.pi / 2))}),
        "jaxmod/Pong": ((8,), 3, np.array([0.5, -0.25, 0.375, 0.0, 0.0, 1.0, 2 / 21, 0.0]),
                        {"ball_x": ("px", 120.0), "ball_y": ("px", 60.0), "ball_vx": ("px/step", 3.0),
                         "paddle_y": ("px", 80.0), "opponent_y": ("px", 160.0), "agent_score": ("", 2.0)}),
        "brax/hopper": ((11,), 3, np.arange(11) / 10.0,
                        {"torso_height": ("m", 0.0), "torso_angle": ("rad", 0.1), "forward_velocity": ("m/s", 0.5),
                         "foot_angular_velocity": ("rad/s", 1.0)}),
    }
    for env_id, (shape, n, obs, expected) in cases.items():
        d = describer_for(env_id, shape, n)
        text, header = d.state_text(obs), d.header()
        for name, (unit, value) in expected.items():
            shown = f"{name}={value:+.{d.digits}f}" + (f" {unit}" if unit else "")
            assert shown in text.split(", "), (env_id, shown, text)
            assert (f"{name}[{unit}]" if unit else f" {name} ") in header, (env_id, name, header)
    img = np.zeros((10, 10, 4), np.float32)
    img[9, 3, 0] = img[9, 4, 0] = 1.0  # paddle: two cells on the bottom row
    img[2, 7, 1] = 1.0  # ball
    d = describer_for("Breakout-MinAtar", (10, 10, 4), 3)
    parts = d.state_text(img).split(", ")
    for shown in ("paddle_count=+2.0 cells", "paddle_row=+9.0 cell", "paddle_col=+3.5 cell", "ball_row=+2.0 cell",
                  "ball_col=+7.0 cell", "brick_count=+0.0 cells", "brick_row=-1.0 cell"):
        assert shown in parts, (shown, parts)


def test_register_describer_by_id_and_family_and_generic_fallback(monkeypatch):
    monkeypatch.setattr(registry, "_DESCRIBERS", dict(registry._DESCRIBERS))
    mine = Describer(EnvCard("My-v0", goal="g", termination="t", reward="r", action_names=("left", "right")),
                     (raw_feature("height", "m", 0),), obs_shape=(1,))
    register_describer("My-v0", mine)
    assert describer_for("My-v0", (1,), 2) is mine
    register_describer("myfamily", lambda env_id, shape, n: Describer(
        EnvCard(env_id, goal="g", termination="t", reward="r", action_names=tuple(f"move_{i}" for i in range(n))),
        (raw_feature("speed", "m/s", 0),), obs_shape=shape))
    fam = describer_for("Other-v3", (1,), 3, family="myfamily")
    assert fam.card.env_id == "Other-v3" and fam.card.action_names == ("move_0", "move_1", "move_2")
    with pytest.raises(TypeError, match="Describer or a factory"):
        register_describer("x", "not a describer")
    with pytest.warns(GenericDescriberWarning, match=r"register_describer\('Nameless-v0'"):
        gen = describer_for("Nameless-v0", (2, 2), 3)
    assert [f.name for f in gen.features] == ["x0", "x1", "x2", "x3"] and gen.card.action_names == ("a0", "a1", "a2")
    with pytest.warns(GenericDescriberWarning):
        cont = describer_for("Nameless-v1", (3,), 2, action_bounds=((-1.0, -2.0), (1.0, 2.0)))
    assert not cont.card.discrete and cont.card.action_dims == ("a0", "a1") and cont.card.action_high == (1.0, 2.0)
    assert cont.action_text(np.array([0.5, -1.5])) == "[+0.50 -1.50]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # registered and built-in describers do not warn
        describer_for("CartPole-v1", (4,), 2)
        describer_for("My-v0", (1,), 2)


def test_describer_of_an_env_core_uses_its_family_and_action_space():
    from jaxmod.envs import describer_of, make_core

    d = describer_of(make_core("MountainCarContinuous-v0"))
    assert not d.card.discrete and d.card.action_dims == ("force",) and d.card.action_low == (-1.0,)
    assert describer_of(make_core("jaxmod/Pong-OnePoint", obs_type="pixels")).header() == \
        describer_for("jaxmod/Pong-OnePoint", (40, 40, 4), 3).header()


def test_scripted_answers_through_the_describers_parse_are_the_recorded_ones():
    """168 questions over 8 env variants, answered today exactly as before describers took over parsing."""
    from tests import scripted_corpus

    recorded = json.loads(scripted_corpus.DATA.read_text())
    now = scripted_corpus.answers()
    assert len(now) == len(recorded) == 168
    for old, new in zip(recorded, now, strict=True):
        assert new["messages"] == old["messages"], (old["env"], old["kind"], "prompt text changed")
        assert new["answer"] == old["answer"], (old["env"], old["kind"])


def test_the_text_side_reads_prompts_without_jax():
    """jaxmod.llm (and the scripted advisor behind the server) reads prompt tables through the describers, which
    are numpy only: importing and answering loads no jax."""
    code = ("import sys; from jaxmod.llm.server import scripted_answer_fn; from tests import scripted_corpus as c; "
            "answer = scripted_answer_fn(); "
            "[answer(m, None, {}) for env, _, m in c.questions() if env.startswith('jaxmod/Pong')]; "
            "print('jax' in sys.modules)")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stderr
