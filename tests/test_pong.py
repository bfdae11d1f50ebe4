"""Pong's rules: scoring, wall and paddle bounces, paddle limits, episode ends, a scripted player's win rate."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.envs import describer_for, make
from jaxmod.envs.pong import AGENT_X, HEIGHT, OPPONENT_X, WIDTH, Pong, PongState, scripted_action
from jaxmod.ppo.config import default_config

pytestmark = pytest.mark.timeout(300)

ONE_POINT = Pong(one_point=True)
FULL = Pong()
PARAMS = ONE_POINT.default_params
KEY = jax.random.PRNGKey(0)
step = jax.jit(ONE_POINT.step_env)


def _state(ball, velocity, agent_y=80.0, opponent_y=80.0, score=(0, 0)) -> PongState:
    ball = jnp.array(ball, jnp.float32)
    return PongState(ball=ball, ball_prev=ball, velocity=jnp.array(velocity, jnp.float32),
                     agent_y=jnp.float32(agent_y), opponent_y=jnp.float32(opponent_y),
                     agent_score=jnp.int32(score[0]), opponent_score=jnp.int32(score[1]), hits=jnp.int32(0),
                     time=jnp.int32(0))


def test_ball_passing_the_agent_scores_for_the_opponent_and_ends_a_one_point_game():
    s = _state(ball=(WIDTH - 1.0, 20.0), velocity=(3.0, 0.0), agent_y=140.0)
    _, s2, reward, terminated, info = step(KEY, s, 0, PARAMS)
    assert float(reward) == -1.0 and bool(terminated) and bool(info["opponent_point"])
    assert int(s2.opponent_score) == 1 and int(s2.agent_score) == 0


def test_ball_passing_the_opponent_scores_for_the_agent_and_reserves():
    s = _state(ball=(1.0, 150.0), velocity=(-3.0, 0.0), opponent_y=10.0)
    _, s2, reward, terminated, _ = jax.jit(FULL.step_env)(KEY, s, 0, FULL.default_params)
    assert float(reward) == 1.0 and not bool(terminated) and int(s2.agent_score) == 1
    assert float(s2.ball[0]) == WIDTH / 2 and abs(float(s2.velocity[0])) == FULL.default_params.serve_speed


def test_full_game_ends_at_21_points():
    s = _state(ball=(1.0, 150.0), velocity=(-3.0, 0.0), opponent_y=10.0, score=(20, 7))
    _, s2, reward, terminated, _ = jax.jit(FULL.step_env)(KEY, s, 0, FULL.default_params)
    assert float(reward) == 1.0 and bool(terminated) and int(s2.agent_score) == 21


def test_wall_bounce_flips_vertical_velocity_and_stays_in_court():
    s = _state(ball=(80.0, HEIGHT - 2.0), velocity=(3.0, 2.5))
    _, s2, reward, _, _ = step(KEY, s, 0, PARAMS)
    assert float(s2.velocity[1]) == -2.5 and float(s2.ball[1]) <= HEIGHT - PARAMS.ball_radius
    s = _state(ball=(80.0, 2.0), velocity=(3.0, -2.5))
    _, s2, _, _, _ = step(KEY, s, 0, PARAMS)
    assert float(s2.velocity[1]) == 2.5 and float(s2.ball[1]) >= PARAMS.ball_radius


@pytest.mark.parametrize("offset,sign", [(0.0, 0), (6.0, 1), (-6.0, -1)])
def test_paddle_hit_reverses_speeds_up_and_angles_by_hit_point(offset, sign):
    face = AGENT_X - PARAMS.ball_radius
    s = _state(ball=(face - 1.0, 80.0 + offset), velocity=(3.0, 0.0), agent_y=80.0)
    _, s2, reward, terminated, _ = step(KEY, s, 0, PARAMS)
    assert float(reward) == 0.0 and not bool(terminated) and int(s2.hits) == 1
    assert float(s2.velocity[0]) == pytest.approx(-(3.0 + PARAMS.speedup))
    assert np.sign(float(s2.velocity[1])) == sign
    assert float(s2.ball[0]) <= face


def test_opponent_returns_a_ball_it_reaches():
    face = OPPONENT_X + PARAMS.ball_radius
    s = _state(ball=(face + 1.0, 80.0), velocity=(-3.0, 0.0), opponent_y=80.0)
    _, s2, _, _, _ = step(KEY, s, 0, PARAMS)
    assert float(s2.velocity[0]) > 0 and int(s2.hits) == 1


def test_no_tunnelling_at_max_speed():
    face = AGENT_X - PARAMS.ball_radius
    s = _state(ball=(face - 0.5, 80.0), velocity=(PARAMS.max_speed, 0.0), agent_y=80.0)
    _, s2, _, _, _ = step(KEY, s, 0, PARAMS)
    assert float(s2.velocity[0]) < 0 and float(s2.ball[0]) < face


def test_paddle_stays_inside_the_court():
    s = _state(ball=(80.0, 80.0), velocity=(-0.0001, 0.0), agent_y=HEIGHT - 10.0)
    for _ in range(5):
        _, s, _, _, _ = step(KEY, s, 1, PARAMS)
    assert float(s.agent_y) == HEIGHT - PARAMS.paddle_half
    for _ in range(60):
        _, s, _, _, _ = step(KEY, s, 2, PARAMS)
    assert float(s.agent_y) == PARAMS.paddle_half


def _win_rate(policy: str, games: int = 128) -> float:
    def game(key):
        k0, key = jax.random.split(key)
        _, state = ONE_POINT.reset_env(k0, PARAMS)

        def body(carry, k):
            state, done, ret = carry
            k_act, k_env = jax.random.split(k)
            a = scripted_action(state, PARAMS) if policy == "scripted" else jax.random.randint(k_act, (), 0, 3)
            _, nxt, r, term, _ = ONE_POINT.step_env(k_env, state, a, PARAMS)
            nxt = jax.tree.map(lambda old, new: jnp.where(done, old, new), state, nxt)
            return (nxt, done | term, ret + jnp.where(done, 0.0, r)), None

        (_, done, ret), _ = jax.lax.scan(body, (state, jnp.bool_(False), jnp.float32(0)), jax.random.split(key, 600))
        return ret, done

    ret, done = jax.jit(jax.vmap(game))(jax.random.split(jax.random.PRNGKey(1), games))
    assert bool(done.all()), "every one-point game ends within 600 steps"
    return float((ret > 0).mean())


def test_scripted_player_wins_and_random_player_loses():
    assert _win_rate("scripted") >= 0.95
    assert _win_rate("random") <= 0.25


def test_registry_envs_shapes_and_truncation_limit():
    env = make("jaxmod/Pong-OnePoint", num_envs=3)
    assert env.obs_shape == (8,) and env.action_space.num_actions == 3 and env.core.max_steps == 1000
    state, obs = env.reset(KEY)
    chex.assert_shape(obs, (3, 8))
    chex.assert_type(obs, jnp.float32)
    assert make("jaxmod/Pong", num_envs=1).core.max_steps == 10_000
    assert default_config("jaxmod/Pong-OnePoint").num_envs == 16  # the pong preset


def test_pixel_observation_and_describer_agree_with_the_state():
    env = make("jaxmod/Pong-OnePoint", num_envs=1, obs_type="pixels")
    assert env.obs_shape == (40, 40, 4)
    cstate = env.core.reset(KEY)
    obs = np.asarray(cstate.obs)
    assert obs[..., 0].sum() == 4 and obs[..., 1].sum() == 4 and obs[..., 2].sum() == 1
    inner = cstate.inner
    pix = describer_for("jaxmod/Pong-OnePoint", (40, 40, 4), 3)
    vec = describer_for("jaxmod/Pong-OnePoint", (8,), 3)
    f_pix = dict(zip([f.name for f in pix.features], pix.feature_values(obs), strict=True))
    vec_obs = np.asarray(ONE_POINT.get_obs(inner, PARAMS))
    f_vec = dict(zip([f.name for f in vec.features], vec.feature_values(vec_obs), strict=True))
    assert f_vec["ball_x"] == pytest.approx(float(inner.ball[0]), abs=1e-4)
    for name in ("ball_x", "ball_y", "paddle_y", "opponent_y"):
        assert abs(f_pix[name] - f_vec[name]) <= 4.0, name


def test_unknown_obs_type_is_a_clear_error():
    from jaxmod.envs import EnvError

    with pytest.raises(EnvError, match="obs_type"):
        make("jaxmod/Pong", obs_type="rgb")


def test_conv_torso_trains_on_pixels_and_refuses_vector_observations():
    from jaxmod.ppo import make_train
    from jaxmod.ppo.config import ConfigError

    cfg = default_config("jaxmod/Pong-OnePoint", env_options=(("obs_type", "pixels"),), torso="cnn", num_envs=2,
                         num_steps=8, total_timesteps=2 * 8 * 2, num_minibatches=2, hidden_sizes=(32,))
    train = make_train(cfg)
    net = train.learner.net
    params = net.init(jax.random.PRNGKey(0))
    obs = jnp.zeros((3, 5, 40, 40, 4))  # any leading axes
    chex.assert_shape(net.policy_head(params, obs), (3, 5, 3))
    chex.assert_shape(net.value(params, obs), (3, 5))
    out = jax.jit(train)(jax.random.PRNGKey(0))
    chex.assert_tree_all_finite(out.metrics)
    with pytest.raises(ConfigError, match="needs image observations"):
        make_train(default_config("jaxmod/Pong-OnePoint", torso="cnn"))
    with pytest.raises(ConfigError, match="torso must be one of"):
        default_config("CartPole-v1", torso="transformer")
