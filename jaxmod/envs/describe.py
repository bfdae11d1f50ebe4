"""Describers: environment cards and state-to-text for LLM prompts (numpy only, host side).

Each supported env has an `EnvCard` (goal, termination, reward, actions) and named, unit-bearing
features computed from its raw observation. Episodes render as a compact table, one line a step, so
both an LLM and jaxmod's scripted advisor read the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Feature:
    """A named quantity with a unit, computed from one raw observation vector."""

    name: str
    unit: str
    fn: Callable[[np.ndarray], float]
    column: int | None = None  # where the feature is one entry of the flat observation: read per episode at once

    @property
    def header(self) -> str:
        return f"{self.name}[{self.unit}]" if self.unit else self.name


@dataclass(frozen=True)
class EnvCard:
    """What an LLM needs to know about a task before reading an episode."""

    env_id: str
    goal: str
    termination: str
    reward: str
    action_names: tuple[str, ...] = ()  # discrete actions, by index
    action_dims: tuple[str, ...] = ()  # continuous actions, per dimension
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    notes: str = ""

    @property
    def discrete(self) -> bool:
        return bool(self.action_names)

    def text(self) -> str:
        lines = [f"Environment: {self.env_id}", f"Goal: {self.goal}", f"Episode ends: {self.termination}",
                 f"Reward: {self.reward}"]
        if self.discrete:
            acts = ", ".join(f"{i} = {n}" for i, n in enumerate(self.action_names))
            lines.append(f"Actions (discrete): {acts}")
        else:
            dims = "; ".join(f"{i}: {n} in [{lo:g}, {hi:g}]"
                             for i, (n, lo, hi) in enumerate(zip(self.action_dims, self.action_low,
                                                                 self.action_high, strict=True)))
            lines.append(f"Actions (continuous vector of {len(self.action_dims)}): {dims}")
        if self.notes:
            lines.append(f"Notes: {self.notes}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Describer:
    """Card + features for one env; renders states, actions and whole episodes as text."""

    card: EnvCard
    features: tuple[Feature, ...]
    digits: int = 3
    extra: dict = field(default_factory=dict)

    def feature_values(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        return np.array([f.fn(obs) for f in self.features])

    def state_text(self, obs: np.ndarray) -> str:
        vals = self.feature_values(obs)
        return ", ".join(f"{f.name}={v:+.{self.digits}f}{(' ' + f.unit) if f.unit else ''}"
                         for f, v in zip(self.features, vals, strict=True))

    def action_text(self, action) -> str:
        if self.card.discrete:
            i = int(np.asarray(action))
            return self.card.action_names[i] if 0 <= i < len(self.card.action_names) else f"invalid({i})"
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        return "[" + " ".join(f"{x:+.2f}" for x in a) + "]"

    def header(self) -> str:
        return "t | " + " ".join(f.header for f in self.features) + " | action | reward"

    def row(self, t: int, obs: np.ndarray, action, reward: float) -> str:
        vals = " ".join(f"{v:+.{self.digits}f}" for v in self.feature_values(obs))
        return f"{t} | {vals} | {self.action_text(action)} | {reward:+.3g}"

    def rows(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, first_step: int = 0) -> list[str]:
        """`row` for every step of an episode, numbered from `first_step`: the same text, built column-wise
        (an advice round renders thousands of rows on the training machine's CPU)."""
        obs = np.asarray(obs, dtype=np.float64)
        flat = obs.reshape(len(obs), -1)
        columns = [flat[:, f.column].tolist() if f.column is not None else [float(f.fn(o)) for o in obs]
                   for f in self.features]
        fmt = " ".join([f"{{:+.{self.digits}f}}"] * len(self.features))
        names = self.card.action_names
        if self.card.discrete:
            acts = [names[i] if 0 <= i < len(names) else f"invalid({i})"
                    for i in np.asarray(actions).astype(int).reshape(-1).tolist()]
        else:
            acts = [self.action_text(a) for a in actions]
        per_step = list(zip(*columns, strict=True)) if columns else [()] * len(obs)
        return [f"{first_step + t} | {fmt.format(*vals)} | {act} | {r:+.3g}"
                for t, (vals, act, r) in enumerate(zip(per_step, acts, np.asarray(rewards).tolist(), strict=True))]

    def render_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, *, episode_id: int = 0,
                       ended_by: str = "termination", budget_chars: int = 6000, head: int = 3,
                       title: str | None = None, rows: list[str] | None = None) -> tuple[str, list[int]]:
        """Episode as a table; long episodes keep the first `head` steps and the latest steps that fit
        `budget_chars`. Returns the text and the step indices shown. `rows`: this episode's `rows`, if
        already rendered."""
        n = len(actions)
        rows = self.rows(obs, actions, rewards) if rows is None else rows
        total = float(np.sum(rewards))
        shown = list(range(n))
        width = max((len(r) for r in rows), default=20) + 1
        max_rows = max(head + 5, budget_chars // width)
        if n > max_rows:
            tail = max_rows - head
            shown = list(range(head)) + list(range(n - tail, n))
        intro = title or (f"Episode {episode_id}: {n} steps, return {total:+.2f}, ended by {ended_by}. "
                          f"Showing {len(shown)} of {n} steps.")
        lines = [intro, self.header()]
        prev = -1
        for t in shown:
            if t != prev + 1:
                lines.append(f"... ({t - prev - 1} steps omitted) ...")
            lines.append(rows[t])
            prev = t
        return "\n".join(lines), shown


# --------------------------------------------------------------------------- registry of describers
def _raw(name: str, unit: str, i: int) -> Feature:
    """Entry `i` of the flat observation, as is."""
    return Feature(name, unit, lambda o: float(o.reshape(-1)[i]), column=i)


def _classic(env_id: str) -> Describer | None:
    if env_id == "CartPole-v1":
        return Describer(
            EnvCard(env_id, goal="keep the pole upright and the cart on the track for as long as possible",
                    termination="pole angle beyond +-0.21 rad (12 degrees), cart position beyond +-2.4 m, or 500 steps",
                    reward="+1 for every step the pole stays up", action_names=("push_left", "push_right"),
                    notes="positive angle = pole leans right; pushing the cart under the pole's lean rights it"),
            (_raw("cart_position", "m", 0), _raw("cart_velocity", "m/s", 1),
             _raw("pole_angle", "rad", 2), _raw("pole_angular_velocity", "rad/s", 3)))
    if env_id == "MountainCar-v0":
        return Describer(
            EnvCard(env_id, goal="drive the underpowered car up the right hill to the flag at position >= 0.5",
                    termination="car reaches position 0.5 (success) or 200 steps",
                    reward="-1 every step until the goal", action_names=("push_left", "no_push", "push_right"),
                    notes="the engine is too weak to climb directly: build momentum by rocking back and forth; "
                          "pushing in the direction of the velocity adds energy; valley bottom near -0.52"),
            (_raw("position", "m", 0), _raw("velocity", "m/step", 1)), digits=4)
    if env_id == "Acrobot-v1":
        def th1(o):
            return math.atan2(o[1], o[0])

        def th2(o):
            return math.atan2(o[3], o[2])

        return Describer(
            EnvCard(env_id, goal="swing the free end of the two-link chain above the bar (tip height > 1)",
                    termination="tip height above 1.0 (success) or 500 steps",
                    reward="-1 every step until the goal",
                    action_names=("torque_-1", "torque_0", "torque_+1"),
                    notes="torque acts on the joint between the links; pump energy by applying torque in the "
                          "direction of the second link's angular velocity"),
            (Feature("angle_link1", "rad", th1), Feature("angle_link2", "rad", th2),
             _raw("angular_velocity_link1", "rad/s", 4), _raw("angular_velocity_link2", "rad/s", 5),
             Feature("tip_height", "link lengths", lambda o: -o[0] - math.cos(th1(o) + th2(o)))))
    if env_id == "Pendulum-v1":
        return Describer(
            EnvCard(env_id, goal="swing the pendulum up and keep it upright", termination="200 steps",
                    reward="-(angle^2 + 0.1 angular_velocity^2 + 0.001 torque^2)", action_dims=("torque",),
                    action_low=(-2.0,), action_high=(2.0,)),
            (Feature("angle", "rad", lambda o: math.atan2(o[1], o[0])), _raw("angular_velocity", "rad/s", 2)))
    return None


MINATAR_CHANNELS = {
    "Breakout-MinAtar": ("paddle", "ball", "trail", "brick"),
    "Asterix-MinAtar": ("player", "enemy", "trail", "gold"),
    "Freeway-MinAtar": ("chicken", "car", "speed1", "speed2", "speed3", "speed4", "speed5"),
    "SpaceInvaders-MinAtar": ("cannon", "alien", "alien_left", "alien_right", "friendly_bullet", "enemy_bullet"),
    "Seaquest-MinAtar": ("sub_front", "sub_back", "friendly_bullet", "trail", "enemy_bullet", "enemy_fish",
                         "enemy_sub", "oxygen_gauge", "diver_gauge", "diver"),
}
MINATAR_ACTIONS = {
    "Breakout-MinAtar": ("no_op", "left", "right"),
    "Asterix-MinAtar": ("no_op", "left", "up", "right", "down"),
    "Freeway-MinAtar": ("no_op", "up", "down"),
    "SpaceInvaders-MinAtar": ("no_op", "left", "right", "fire"),
    "Seaquest-MinAtar": ("no_op", "left", "up", "right", "down", "fire"),
}
MINATAR_GOALS = {
    "Breakout-MinAtar": "bounce the ball with the paddle to break bricks; missing the ball ends the game",
    "Asterix-MinAtar": "collect gold and avoid enemies",
    "Freeway-MinAtar": "move the chicken up across the road without being hit by cars",
    "SpaceInvaders-MinAtar": "shoot the aliens and dodge their bullets",
    "Seaquest-MinAtar": "shoot enemies, rescue divers and surface before oxygen runs out",
}


def _minatar(env_id: str, num_actions: int) -> Describer:
    names = MINATAR_CHANNELS.get(env_id, ())
    feats: list[Feature] = []
    for c, name in enumerate(names):
        feats.append(Feature(f"{name}_count", "cells", lambda o, c=c: float(o[..., c].sum())))
        feats.append(Feature(f"{name}_row", "cell", lambda o, c=c: _centroid(o[..., c])[0]))
        feats.append(Feature(f"{name}_col", "cell", lambda o, c=c: _centroid(o[..., c])[1]))
    actions = MINATAR_ACTIONS.get(env_id, tuple(f"action_{i}" for i in range(num_actions)))[:num_actions]
    card = EnvCard(env_id, goal=MINATAR_GOALS.get(env_id, "maximise game score"),
                   termination="the game is lost or the time limit is reached",
                   reward="+1 per scoring event", action_names=actions,
                   notes="10x10 grid, row 0 at the top; *_row/*_col are centroids of an object's cells (-1 if absent)")
    return Describer(card, tuple(feats), digits=1)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask > 0.5)
    if len(rows) == 0:
        return -1.0, -1.0
    return float(rows.mean()), float(cols.mean())


BRAX_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "hopper": (("torso_height", "m"), ("torso_angle", "rad"), ("thigh_angle", "rad"), ("leg_angle", "rad"),
               ("foot_angle", "rad"), ("forward_velocity", "m/s"), ("vertical_velocity", "m/s"),
               ("torso_angular_velocity", "rad/s"), ("thigh_angular_velocity", "rad/s"),
               ("leg_angular_velocity", "rad/s"), ("foot_angular_velocity", "rad/s")),
    "walker2d": (("torso_height", "m"), ("torso_angle", "rad"), ("right_thigh_angle", "rad"),
                 ("right_leg_angle", "rad"), ("right_foot_angle", "rad"), ("left_thigh_angle", "rad"),
                 ("left_leg_angle", "rad"), ("left_foot_angle", "rad"), ("forward_velocity", "m/s"),
                 ("vertical_velocity", "m/s"), ("torso_angular_velocity", "rad/s"),
                 ("right_thigh_angular_velocity", "rad/s"), ("right_leg_angular_velocity", "rad/s"),
                 ("right_foot_angular_velocity", "rad/s"), ("left_thigh_angular_velocity", "rad/s"),
                 ("left_leg_angular_velocity", "rad/s"), ("left_foot_angular_velocity", "rad/s")),
    "halfcheetah": (("torso_height", "m"), ("torso_angle", "rad"), ("back_thigh_angle", "rad"),
                    ("back_shin_angle", "rad"), ("back_foot_angle", "rad"), ("front_thigh_angle", "rad"),
                    ("front_shin_angle", "rad"), ("front_foot_angle", "rad"), ("forward_velocity", "m/s"),
                    ("vertical_velocity", "m/s"), ("torso_angular_velocity", "rad/s"),
                    ("back_thigh_angular_velocity", "rad/s"), ("back_shin_angular_velocity", "rad/s"),
                    ("back_foot_angular_velocity", "rad/s"), ("front_thigh_angular_velocity", "rad/s"),
                    ("front_shin_angular_velocity", "rad/s"), ("front_foot_angular_velocity", "rad/s")),
    "inverted_pendulum": (("cart_position", "m"), ("pole_angle", "rad"), ("cart_velocity", "m/s"),
                          ("pole_angular_velocity", "rad/s")),
    "reacher": (("cos_shoulder", ""), ("cos_elbow", ""), ("sin_shoulder", ""), ("sin_elbow", ""),
                ("target_x", "m"), ("target_y", "m"), ("tip_velocity_x", "m/s"), ("tip_velocity_y", "m/s"),
                ("tip_to_target_x", "m"), ("tip_to_target_y", "m"), ("tip_to_target_z", "m")),
}
BRAX_ACTIONS = {
    "hopper": ("thigh_torque", "leg_torque", "foot_torque"),
    "walker2d": ("right_thigh_torque", "right_leg_torque", "right_foot_torque", "left_thigh_torque",
                 "left_leg_torque", "left_foot_torque"),
    "halfcheetah": ("back_thigh_torque", "back_shin_torque", "back_foot_torque", "front_thigh_torque",
                    "front_shin_torque", "front_foot_torque"),
    "inverted_pendulum": ("cart_force",),
    "reacher": ("shoulder_torque", "elbow_torque"),
}
BRAX_GOALS = {
    "hopper": ("hop forward as fast as possible without falling",
               "torso height outside (0.7, inf), torso angle beyond +-0.2 rad, or 1000 steps",
               "forward velocity + 1 per healthy step - 0.001 * |action|^2"),
    "walker2d": ("walk forward as fast as possible without falling",
                 "torso height outside (0.8, 2.0), torso angle beyond +-1 rad, or 1000 steps",
                 "forward velocity + 1 per healthy step - 0.001 * |action|^2"),
    "halfcheetah": ("run forward as fast as possible", "1000 steps",
                    "forward velocity - 0.1 * |action|^2"),
    "inverted_pendulum": ("keep the pole upright", "pole angle beyond +-0.2 rad or 1000 steps",
                          "+1 per step the pole stays up"),
    "reacher": ("move the arm's fingertip onto the target", "1000 steps (50 in gym)",
                "-distance(tip, target) - |action|^2"),
}


def _brax(env_name: str, obs_dim: int, act_dim: int) -> Describer:
    from jaxmod.envs.brax_backend import SPARSE_SUFFIX, SPARSE_THRESHOLDS

    name = env_name.removesuffix(SPARSE_SUFFIX)  # sparse variants share the dense task's layout
    sparse_at = SPARSE_THRESHOLDS.get(name) if env_name != name else None
    layout = BRAX_LAYOUTS.get(name)
    if layout is None or len(layout) != obs_dim:
        layout = tuple((f"obs_{i}", "") for i in range(obs_dim))
    feats = tuple(_raw(n, u, i) for i, (n, u) in enumerate(layout))
    acts = BRAX_ACTIONS.get(name, tuple(f"actuator_{i}" for i in range(act_dim)))
    if len(acts) != act_dim:
        acts = tuple(f"actuator_{i}" for i in range(act_dim))
    goal, term, reward = BRAX_GOALS.get(name, ("maximise return", "the env's own termination or 1000 steps",
                                               "the env's reward"))
    if sparse_at is not None:
        reward = (f"sparse: the torso's x-position in metres, paid only once it exceeds {sparse_at:g} m, else 0 "
                  "(the position itself is not observed)")
    card = EnvCard(f"brax/{env_name}", goal=goal, termination=term, reward=reward, action_dims=acts,
                   action_low=(-1.0,) * act_dim, action_high=(1.0,) * act_dim,
                   notes="brax physics (not gym MuJoCo); angles are joint positions relative to their parent")
    return Describer(card, feats, digits=2)


PONG_NOTES = ("court 160 x 160 px, y grows upwards; your paddle is on the right at x=140 (16 px tall), the "
              "opponent's on the left at x=20; the ball bounces off the top and bottom walls; a hit near the "
              "paddle's edge sends the ball off steeply (above the centre: upwards), a centre hit sends it flat; "
              "the opponent tracks the ball with a limited speed, so steep shots beat it")


def _pong(env_id: str, pixels: bool) -> Describer:
    one_point = env_id.endswith("OnePoint")
    card = EnvCard(env_id, goal="return the ball past the opponent's paddle; never let it pass yours",
                   termination="the first point" if one_point else "one side reaches 21 points",
                   reward="+1 when the agent scores a point, -1 when the opponent does",
                   action_names=("stay", "up", "down"), notes=PONG_NOTES)
    if not pixels:
        scale = ((80.0, 80.0, "ball_x", "px"), (80.0, 80.0, "ball_y", "px"), (8.0, 0.0, "ball_vx", "px/step"),
                 (8.0, 0.0, "ball_vy", "px/step"), (80.0, 80.0, "paddle_y", "px"),
                 (80.0, 80.0, "opponent_y", "px"), (21.0, 0.0, "agent_score", ""),
                 (21.0, 0.0, "opponent_score", ""))
        feats = tuple(Feature(name, unit, lambda o, i=i, a=a, b=b: float(o.reshape(-1)[i]) * a + b)
                      for i, (a, b, name, unit) in enumerate(scale))
        return Describer(card, feats, digits=1)

    def pos(channel: int, axis: int):  # centroid in court px from the 40 x 40 object image (4 px cells)
        def fn(o):
            r, c = _centroid(o[..., channel])
            if r < 0:
                return -1.0
            return (c + 0.5) * 4.0 if axis == 0 else 160.0 - (r + 0.5) * 4.0
        return fn

    def vel(axis: int):
        now, before = pos(2, axis), pos(3, axis)
        return lambda o: now(o) - before(o)

    feats = (Feature("ball_x", "px", pos(2, 0)), Feature("ball_y", "px", pos(2, 1)),
             Feature("ball_vx", "px/step", vel(0)), Feature("ball_vy", "px/step", vel(1)),
             Feature("paddle_y", "px", pos(0, 1)), Feature("opponent_y", "px", pos(1, 1)))
    return Describer(card, feats, digits=1)


def describer_for(env_id: str, obs_shape: Sequence[int] | None = None, action_dim: int | None = None) -> Describer:
    """The describer for `env_id`; unknown envs get a generic one with indexed features."""
    classic = _classic(env_id)
    if classic is not None:
        return classic
    if env_id.startswith("jaxmod/Pong"):
        return _pong(env_id, pixels=len(obs_shape or (8,)) == 3)
    if env_id.endswith("-MinAtar"):
        return _minatar(env_id, action_dim or len(MINATAR_ACTIONS.get(env_id, ("a",))))
    if env_id.startswith("brax/"):
        return _brax(env_id[len("brax/"):], int(np.prod(obs_shape or (1,))), int(action_dim or 1))
    dim = int(np.prod(obs_shape or (1,)))
    acts = tuple(f"action_{i}" for i in range(action_dim or 2))
    card = EnvCard(env_id, goal="maximise return", termination="the env's own termination or time limit",
                   reward="the env's reward", action_names=acts)
    return Describer(card, tuple(_raw(f"obs_{i}", "", i) for i in range(dim)))
