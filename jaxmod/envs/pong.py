"""Pong in JAX with the gymnax 1.0 API: jittable, vmappable, restorable, and describable for prompts.

Atari Pong's rules on a 160 x 160 court: the agent's paddle is on the right, a built-in opponent on
the left tracks the ball with a limited speed; the ball bounces off the top and bottom walls, speeds
up with every paddle hit, and leaves a paddle at an angle set by where it hit (centre: flat, edge:
steep). A point is +1 for the agent, -1 for the opponent. Modes: a full game (first to 21) and the
**one-point** game StateMask and RICE evaluate (an episode is one point; the metric is the win rate).

Coordinates are court pixels with y pointing **up**. Observations are either an 8-vector of positions,
velocities and scores (scaled to about [-1, 1]) or a MinAtar-style 40 x 40 x 4 object image (agent
paddle, opponent paddle, ball, ball one step earlier). Differences from Atari: no paddle inertia,
no serve delay, an analytic ball instead of emulated frames.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from jaxmod.envs.core import EnvError

WIDTH = 160.0
HEIGHT = 160.0
AGENT_X = 140.0  # front face of the agent's (right) paddle
OPPONENT_X = 20.0  # front face of the opponent's (left) paddle
GRID = 40  # pixel observation: GRID x GRID cells of 4 x 4 court pixels
ACTIONS = ("stay", "up", "down")


@struct.dataclass
class PongState(environment.EnvState):
    ball: jax.Array  # (2,) x, y
    ball_prev: jax.Array  # (2,) position one step earlier (motion in pixel observations)
    velocity: jax.Array  # (2,) vx, vy in pixels per step
    agent_y: jax.Array  # centre of the agent's paddle
    opponent_y: jax.Array  # centre of the opponent's paddle
    agent_score: jax.Array  # int32
    opponent_score: jax.Array  # int32
    hits: jax.Array  # int32 paddle hits in the current rally
    time: jax.Array | int


@struct.dataclass
class PongParams(environment.EnvParams):
    points_to_win: int = 21  # 1 = the one-point game
    paddle_half: float = 8.0  # half the paddle height (paddles are 16 px tall)
    ball_radius: float = 1.5
    paddle_speed: float = 4.0  # agent paddle, pixels per step
    opponent_speed: float = 2.5  # the built-in opponent's top speed
    serve_speed: float = 3.0  # horizontal ball speed at a serve
    speedup: float = 0.25  # added to the horizontal speed at every paddle hit
    max_speed: float = 6.0
    bounce_gain: float = 1.25  # |vy| / |vx| after a hit at the paddle's very edge
    max_steps_in_episode: int = 10_000


class Pong(environment.Environment[PongState, PongParams]):
    """Pong against a built-in ball-tracking opponent; `obs_type` is 'vector' or 'pixels'."""

    def __init__(self, obs_type: str = "vector", one_point: bool = False):
        super().__init__()
        if obs_type not in ("vector", "pixels"):
            raise EnvError(f"obs_type must be 'vector' or 'pixels', got {obs_type!r}")
        self.obs_type = obs_type
        self.one_point = one_point
        self.obs_shape = (8,) if obs_type == "vector" else (GRID, GRID, 4)

    @property
    def default_params(self) -> PongParams:
        if self.one_point:
            return PongParams(points_to_win=1, max_steps_in_episode=1_000)
        return PongParams()

    # ------------------------------------------------------------------ dynamics
    def step_env(self, key: jax.Array, state: PongState, action: jax.Array, params: PongParams
                 ) -> tuple[jax.Array, PongState, jax.Array, jax.Array, dict[str, Any]]:
        action = jnp.asarray(action, jnp.int32)
        move = jnp.where(action == 1, 1.0, jnp.where(action == 2, -1.0, 0.0))
        lo, hi = params.paddle_half, HEIGHT - params.paddle_half
        agent_y = jnp.clip(state.agent_y + params.paddle_speed * move, lo, hi)
        opponent_y = jnp.clip(state.opponent_y + jnp.clip(state.ball[1] - state.opponent_y,
                                                         -params.opponent_speed, params.opponent_speed), lo, hi)

        ball, velocity, hits = _move_ball(state.ball, state.velocity, state.hits, agent_y, opponent_y, params)
        agent_point = ball[0] < 0.0
        opponent_point = ball[0] > WIDTH
        scored = jnp.logical_or(agent_point, opponent_point)
        reward = agent_point.astype(jnp.float32) - opponent_point.astype(jnp.float32)
        agent_score = state.agent_score + agent_point.astype(jnp.int32)
        opponent_score = state.opponent_score + opponent_point.astype(jnp.int32)

        serve_ball, serve_velocity = _serve(key, params)
        ball_next = jnp.where(scored, serve_ball, ball)
        new_state = PongState(
            ball=ball_next,
            ball_prev=jnp.where(scored, serve_ball, state.ball),
            velocity=jnp.where(scored, serve_velocity, velocity),
            agent_y=agent_y,
            opponent_y=opponent_y,
            agent_score=agent_score,
            opponent_score=opponent_score,
            hits=jnp.where(scored, 0, hits),
            time=state.time + 1,
        )
        terminated = self.is_terminated(new_state, params)
        info = {"agent_point": agent_point, "opponent_point": opponent_point}
        return self.get_obs(new_state, params), new_state, reward, terminated, info

    def reset_env(self, key: jax.Array, params: PongParams) -> tuple[jax.Array, PongState]:
        ball, velocity = _serve(key, params)
        state = PongState(ball=ball, ball_prev=ball, velocity=velocity, agent_y=jnp.float32(HEIGHT / 2),
                          opponent_y=jnp.float32(HEIGHT / 2), agent_score=jnp.int32(0),
                          opponent_score=jnp.int32(0), hits=jnp.int32(0), time=jnp.int32(0))
        return self.get_obs(state, params), state

    def is_terminated(self, state: PongState, params: PongParams) -> jax.Array:
        return jnp.maximum(state.agent_score, state.opponent_score) >= params.points_to_win

    # ------------------------------------------------------------- observations
    def get_obs(self, state: PongState, params: PongParams | None = None, key: jax.Array | None = None) -> jax.Array:
        if self.obs_type == "pixels":
            return _render(state, params or self.default_params)
        half_w, half_h = WIDTH / 2, HEIGHT / 2
        return jnp.array([
            (state.ball[0] - half_w) / half_w, (state.ball[1] - half_h) / half_h,
            state.velocity[0] / 8.0, state.velocity[1] / 8.0,
            (state.agent_y - half_h) / half_h, (state.opponent_y - half_h) / half_h,
            state.agent_score / 21.0, state.opponent_score / 21.0,
        ], dtype=jnp.float32)

    @property
    def name(self) -> str:
        return "Pong-OnePoint" if self.one_point else "Pong"

    @property
    def num_actions(self) -> int:
        return len(ACTIONS)

    def action_space(self, params: PongParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(len(ACTIONS))

    def observation_space(self, params: PongParams) -> spaces.Box:
        if self.obs_type == "pixels":
            return spaces.Box(0.0, 1.0, self.obs_shape, jnp.float32)
        return spaces.Box(-2.0, 2.0, self.obs_shape, jnp.float32)


def _serve(key: jax.Array, params: PongParams) -> tuple[jax.Array, jax.Array]:
    """Ball at the centre line, random height, towards a random side at a random shallow angle."""
    k_side, k_y, k_angle = jax.random.split(key, 3)
    side = jnp.where(jax.random.bernoulli(k_side), 1.0, -1.0)
    y = jax.random.uniform(k_y, minval=0.25 * HEIGHT, maxval=0.75 * HEIGHT)
    vy = jax.random.uniform(k_angle, minval=-0.5, maxval=0.5) * params.serve_speed
    return jnp.array([WIDTH / 2, y], jnp.float32), jnp.array([side * params.serve_speed, vy], jnp.float32)


def _move_ball(ball: jax.Array, velocity: jax.Array, hits: jax.Array, agent_y: jax.Array, opponent_y: jax.Array,
               params: PongParams) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of ball flight: wall reflections, then a swept test against the paddle it moves towards
    (no tunnelling at any speed). A hit mirrors the ball off the paddle face, speeds it up, and sets
    the outgoing angle from the hit offset."""
    r = params.ball_radius
    x, y = ball[0] + velocity[0], ball[1] + velocity[1]
    vy = velocity[1]
    below, above = y < r, y > HEIGHT - r
    y = jnp.where(below, 2 * r - y, jnp.where(above, 2 * (HEIGHT - r) - y, y))
    vy = jnp.where(jnp.logical_or(below, above), -vy, vy)

    moving_right = velocity[0] > 0
    face = jnp.where(moving_right, AGENT_X - r, OPPONENT_X + r)  # where the ball's centre meets the face
    paddle_y = jnp.where(moving_right, agent_y, opponent_y)
    crossed = jnp.where(moving_right, (ball[0] <= face) & (x > face), (ball[0] >= face) & (x < face))
    frac = jnp.clip((face - ball[0]) / jnp.where(velocity[0] == 0, 1.0, velocity[0]), 0.0, 1.0)
    y_cross = ball[1] + frac * (y - ball[1])
    offset = (y_cross - paddle_y) / (params.paddle_half + r)
    hit = crossed & (jnp.abs(offset) <= 1.0)

    speed = jnp.minimum(jnp.abs(velocity[0]) + params.speedup, params.max_speed)
    out_vx = jnp.where(moving_right, -speed, speed)
    out_vy = params.bounce_gain * jnp.clip(offset, -1.0, 1.0) * speed
    x = jnp.where(hit, 2 * face - x, x)
    y = jnp.where(hit, y_cross, y)
    new_velocity = jnp.where(hit, jnp.stack([out_vx, out_vy]), jnp.stack([velocity[0], vy]))
    return jnp.stack([x, y]).astype(jnp.float32), new_velocity.astype(jnp.float32), hits + hit.astype(jnp.int32)


def _render(state: PongState, params: PongParams) -> jax.Array:
    """Object channels on a GRID x GRID image (row 0 = top): agent paddle, opponent paddle, ball, previous ball."""
    cell = WIDTH / GRID
    cols = (jnp.arange(GRID) + 0.5) * cell
    rows = HEIGHT - (jnp.arange(GRID) + 0.5) * cell

    def box(cx, cy, half_w, half_h):
        in_x = jnp.abs(cols - cx) <= half_w + cell / 2
        in_y = jnp.abs(rows - cy) <= half_h + cell / 2
        return (in_y[:, None] & in_x[None, :]).astype(jnp.float32)

    channels = [box(AGENT_X + 2.0, state.agent_y, 0.0, params.paddle_half - cell / 2),
                box(OPPONENT_X - 2.0, state.opponent_y, 0.0, params.paddle_half - cell / 2),
                _point(state.ball, cols, rows, cell),
                _point(state.ball_prev, cols, rows, cell)]
    return jnp.stack(channels, axis=-1)


def _point(pos: jax.Array, cols: jax.Array, rows: jax.Array, cell: float) -> jax.Array:
    """One-hot cell holding `pos` (all zeros once the ball has left the court)."""
    col = jnp.floor(pos[0] / cell).astype(jnp.int32)
    row = jnp.floor((HEIGHT - pos[1]) / cell).astype(jnp.int32)
    idx = jnp.arange(GRID)
    return ((idx == row)[:, None] & (idx == col)[None, :]).astype(jnp.float32)


# ------------------------------------------------------------------------ a reference player
def intercept_y(ball: jax.Array, velocity: jax.Array, x_target: float, radius: float) -> jax.Array:
    """Where the ball's centre will be when it reaches `x_target`, folding wall reflections."""
    t = (x_target - ball[0]) / jnp.where(velocity[0] == 0, 1e-6, velocity[0])
    span = HEIGHT - 2 * radius
    raw = ball[1] - radius + velocity[1] * jnp.maximum(t, 0.0)
    folded = jnp.mod(raw, 2 * span)
    return radius + jnp.where(folded > span, 2 * span - folded, folded)


def scripted_action(state: PongState, params: PongParams, aim: float = 0.6) -> jax.Array:
    """A strong hand-written player: meet the ball's predicted intercept, hitting off-centre (`aim` of
    the paddle half) so it leaves steeply towards the side away from the opponent; re-centre otherwise."""
    r = params.ball_radius
    incoming = state.velocity[0] > 0
    meet = intercept_y(state.ball, state.velocity, AGENT_X - r, r)
    away = jnp.where(state.opponent_y > HEIGHT / 2, -1.0, 1.0)  # send the ball to the far half
    target = jnp.where(incoming, meet - away * aim * params.paddle_half, HEIGHT / 2)
    gap = target - state.agent_y
    dead = 0.5 * params.paddle_speed
    return jnp.where(gap > dead, 1, jnp.where(gap < -dead, 2, 0)).astype(jnp.int32)
