"""Which describer an env gets: the built-in ones per env and family, `register_describer` for others, and a
generic describer (with a warning) for envs that have none. Numpy only, like `jaxmod.envs.describe`.

Lookup order in `describer_for`: a describer registered for the exact env id, then one registered for the env's
family (`classic`, `minatar`, `brax`, `pong`, or any family name an `EnvCore` declares), then the generic one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from jaxmod.envs.describe import Describer, EnvCard, Feature, flat_dim, generic_features, raw_feature
from jaxmod.envs.sparse import SPARSE_SUFFIX, SPARSE_THRESHOLDS

# A family's describer is built per env: factory(env_id, obs_shape or None, action_dim or None) -> Describer.
DescriberFactory = Callable[[str, "tuple[int, ...] | None", "int | None"], Describer]

_DESCRIBERS: dict[str, Describer | DescriberFactory] = {}


class GenericDescriberWarning(UserWarning):
    """An env is described with unnamed features (x0, x1, ...) because no describer is registered for it."""


def register_describer(env_id_or_family: str, describer: Describer | DescriberFactory) -> None:
    """Use `describer` for `env_id_or_family`: an exact env id (`"MyEnv-v0"`), or a family name that `EnvCore.family`
    carries (then `describer` is usually a factory `(env_id, obs_shape, action_dim) -> Describer`, called with the
    env's observation shape (tuple of ints, or None where unknown) and its number of actions or action
    dimensions). A later registration under the same key replaces the earlier one.

    Raises TypeError if `describer` is neither a `Describer` nor callable."""
    if not isinstance(describer, Describer) and not callable(describer):
        raise TypeError(f"register_describer needs a Describer or a factory (env_id, obs_shape, action_dim) -> "
                        f"Describer, got {type(describer).__name__}")
    _DESCRIBERS[env_id_or_family] = describer


def family_of(env_id: str) -> str | None:
    """The built-in family an env id belongs to by its spelling (what `EnvCore.family` says for it), if any."""
    if env_id.startswith("brax/"):
        return "brax"
    if env_id.endswith("-MinAtar"):
        return "minatar"
    if env_id.startswith("jaxmod/Pong"):
        return "pong"
    return None


def describer_for(env_id: str, obs_shape: Sequence[int] | None = None, action_dim: int | None = None, *,
                  family: str | None = None, action_bounds: tuple[Sequence[float], Sequence[float]] | None = None
                  ) -> Describer:
    """The describer for `env_id`.

    obs_shape: the raw observation's shape (some families describe vector and image observations differently;
    the generic describer names one feature per entry). action_dim: the number of discrete actions, or of
    continuous action dimensions. family: the env's `EnvCore.family`, if known (else guessed from the id).
    action_bounds: (low, high) per dimension for a continuous env; only the generic describer needs them, and
    without them it treats the env as discrete.

    An env with no registered describer gets a generic one (features x0.., actions a0..) and a
    `GenericDescriberWarning` saying how to write and register a real one.
    """
    shape = tuple(int(s) for s in obs_shape) if obs_shape is not None else None
    for key in (env_id, family or family_of(env_id)):
        entry = _DESCRIBERS.get(key) if key else None
        if entry is not None:
            return entry if isinstance(entry, Describer) else entry(env_id, shape, action_dim)
    return generic_describer(env_id, shape, action_dim, action_bounds)


def generic_describer(env_id: str, obs_shape: tuple[int, ...] | None, action_dim: int | None,
                      action_bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> Describer:
    """Features x0..x{n-1} (the flat observation), actions a0..a{m-1}; warns once per env how to do better."""
    dim = flat_dim(obs_shape)
    m = int(action_dim or (len(action_bounds[0]) if action_bounds else 2))
    xs = "x0" if dim == 1 else f"x0..x{dim - 1}"
    kind = "actions" if action_bounds is None else "action dimensions"
    acts = "a0" if m == 1 else f"a0..a{m - 1}"
    action_kw = "action_names=(...)" if action_bounds is None else "action_dims=(...), action_low=..., action_high=..."
    warnings.warn(
        f"no describer for {env_id}: prompts show its observation as {xs} and its {kind} as {acts}, with no goal "
        "or units. Write one with `from jaxmod.envs import Describer, EnvCard, raw_feature`: "
        f"Describer(EnvCard({env_id!r}, goal=..., termination=..., reward=..., {action_kw}), "
        f"(raw_feature('<name of x0>', '<unit>', 0), ...)), and call jaxmod.register_describer({env_id!r}, "
        "describer) before the run (examples/custom_env.py)",
        GenericDescriberWarning, stacklevel=3)
    names = tuple(f"a{i}" for i in range(m))
    common = dict(goal="maximise return", termination="the env's own termination or time limit",
                  reward="the env's reward")
    if action_bounds is not None:
        low, high = (tuple(float(x) for x in b) for b in action_bounds)
        card = EnvCard(env_id, action_dims=names, action_low=low, action_high=high, **common)
    else:
        card = EnvCard(env_id, action_names=names, **common)
    return Describer(card, generic_features(dim), obs_shape=obs_shape)


# --------------------------------------------------------------------------- classic control (gymnax)
def _cartpole(env_id: str, *_) -> Describer:
    return Describer(
        EnvCard(env_id, goal="keep the pole upright and the cart on the track for as long as possible",
                termination="pole angle beyond +-0.21 rad (12 degrees), cart position beyond +-2.4 m, or 500 steps",
                reward="+1 for every step the pole stays up", action_names=("push_left", "push_right"),
                notes="positive angle = pole leans right; pushing the cart under the pole's lean rights it"),
        (raw_feature("cart_position", "m", 0), raw_feature("cart_velocity", "m/s", 1),
         raw_feature("pole_angle", "rad", 2), raw_feature("pole_angular_velocity", "rad/s", 3)), obs_shape=(4,))


def _mountaincar(env_id: str, *_) -> Describer:
    return Describer(
        EnvCard(env_id, goal="drive the underpowered car up the right hill to the flag at position >= 0.5",
                termination="car reaches position 0.5 (success) or 200 steps",
                reward="-1 every step until the goal", action_names=("push_left", "no_push", "push_right"),
                notes="the engine is too weak to climb directly: build momentum by rocking back and forth; "
                      "pushing in the direction of the velocity adds energy; valley bottom near -0.52"),
        (raw_feature("position", "m", 0), raw_feature("velocity", "m/step", 1)), digits=4, obs_shape=(2,))


def _mountaincar_continuous(env_id: str, *_) -> Describer:
    return Describer(
        EnvCard(env_id, goal="drive the underpowered car up the right hill to the flag at position >= 0.45",
                termination="car reaches position 0.45 (success) or 999 steps",
                reward="+100 on reaching the goal, minus 0.1 * force^2 every step", action_dims=("force",),
                action_low=(-1.0,), action_high=(1.0,),
                notes="the engine is too weak to climb directly: build momentum by rocking back and forth; "
                      "a force in the direction of the velocity adds energy; valley bottom near -0.52"),
        (raw_feature("position", "m", 0), raw_feature("velocity", "m/step", 1)), digits=4, obs_shape=(2,))


def _acrobot_angle(cos_col: int) -> Callable[[np.ndarray], float]:
    return lambda o: math.atan2(o[cos_col + 1], o[cos_col])


def _acrobot_obs(values: np.ndarray) -> np.ndarray:
    """(n, 5) [angle_link1, angle_link2, w1, w2, tip_height] -> (n, 6) [cos th1, sin th1, cos th2, sin th2, w1, w2]."""
    th1, th2 = values[:, 0], values[:, 1]
    return np.stack([np.cos(th1), np.sin(th1), np.cos(th2), np.sin(th2), values[:, 2], values[:, 3]], axis=1)


def _acrobot(env_id: str, *_) -> Describer:
    th1, th2 = _acrobot_angle(0), _acrobot_angle(2)
    return Describer(
        EnvCard(env_id, goal="swing the free end of the two-link chain above the bar (tip height > 1)",
                termination="tip height above 1.0 (success) or 500 steps",
                reward="-1 every step until the goal",
                action_names=("torque_-1", "torque_0", "torque_+1"),
                notes="torque acts on the joint between the links; pump energy by applying torque in the "
                      "direction of the second link's angular velocity"),
        (Feature("angle_link1", "rad", th1), Feature("angle_link2", "rad", th2),
         raw_feature("angular_velocity_link1", "rad/s", 4), raw_feature("angular_velocity_link2", "rad/s", 5),
         Feature("tip_height", "link lengths", lambda o: -o[0] - math.cos(th1(o) + th2(o)))),
        obs_shape=(6,), inverse=_acrobot_obs)


def _pendulum_obs(values: np.ndarray) -> np.ndarray:
    """(n, 2) [angle, angular_velocity] -> (n, 3) [cos, sin, angular_velocity]."""
    return np.stack([np.cos(values[:, 0]), np.sin(values[:, 0]), values[:, 1]], axis=1)


def _pendulum(env_id: str, *_) -> Describer:
    return Describer(
        EnvCard(env_id, goal="swing the pendulum up and keep it upright", termination="200 steps",
                reward="-(angle^2 + 0.1 angular_velocity^2 + 0.001 torque^2)", action_dims=("torque",),
                action_low=(-2.0,), action_high=(2.0,)),
        (Feature("angle", "rad", lambda o: math.atan2(o[1], o[0])), raw_feature("angular_velocity", "rad/s", 2)),
        obs_shape=(3,), inverse=_pendulum_obs)


# --------------------------------------------------------------------------- MinAtar (10 x 10 x C object images)
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


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) mean of the cells of a 2-D mask above 0.5, or (-1, -1) if there are none."""
    rows, cols = np.nonzero(mask > 0.5)
    if len(rows) == 0:
        return -1.0, -1.0
    return float(rows.mean()), float(cols.mean())


def _minatar(env_id: str, obs_shape: tuple[int, ...] | None, action_dim: int | None) -> Describer:
    names = MINATAR_CHANNELS.get(env_id, ())
    feats: list[Feature] = []
    for c, name in enumerate(names):
        feats.append(Feature(f"{name}_count", "cells", lambda o, c=c: float(o[..., c].sum())))
        feats.append(Feature(f"{name}_row", "cell", lambda o, c=c: centroid(o[..., c])[0]))
        feats.append(Feature(f"{name}_col", "cell", lambda o, c=c: centroid(o[..., c])[1]))
    num_actions = action_dim or len(MINATAR_ACTIONS.get(env_id, ("a",)))
    actions = MINATAR_ACTIONS.get(env_id, tuple(f"action_{i}" for i in range(num_actions)))[:num_actions]
    card = EnvCard(env_id, goal=MINATAR_GOALS.get(env_id, "maximise game score"),
                   termination="the game is lost or the time limit is reached",
                   reward="+1 per scoring event", action_names=actions,
                   notes="10x10 grid, row 0 at the top; *_row/*_col are centroids of an object's cells (-1 if absent)")
    return Describer(card, tuple(feats), digits=1, obs_shape=obs_shape)


# --------------------------------------------------------------------------- brax (qpos / qvel vectors)
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


def _brax(env_id: str, obs_shape: tuple[int, ...] | None, action_dim: int | None) -> Describer:
    env_name = env_id.removeprefix("brax/")
    obs_dim, act_dim = flat_dim(obs_shape), int(action_dim or 1)
    name = env_name.removesuffix(SPARSE_SUFFIX)  # sparse variants share the dense task's layout
    sparse_at = SPARSE_THRESHOLDS.get(name) if env_name != name else None
    layout = BRAX_LAYOUTS.get(name)
    feats = tuple(raw_feature(n, u, i) for i, (n, u) in enumerate(layout)) if layout and len(layout) == obs_dim \
        else generic_features(obs_dim)
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
    return Describer(card, feats, digits=2, obs_shape=(obs_dim,))


# --------------------------------------------------------------------------- jaxmod's Pong
PONG_NOTES = ("court 160 x 160 px, y grows upwards; your paddle is on the right at x=140 (16 px tall), the "
              "opponent's on the left at x=20; the ball bounces off the top and bottom walls; a hit near the "
              "paddle's edge sends the ball off steeply (above the centre: upwards), a centre hit sends it flat; "
              "the opponent tracks the ball with a limited speed, so steep shots beat it")
# The vector observation's entries, scaled to about [-1, 1]: (name, unit, px per unit, offset in px)
PONG_VECTOR = (("ball_x", "px", 80.0, 80.0), ("ball_y", "px", 80.0, 80.0), ("ball_vx", "px/step", 8.0, 0.0),
               ("ball_vy", "px/step", 8.0, 0.0), ("paddle_y", "px", 80.0, 80.0), ("opponent_y", "px", 80.0, 80.0),
               ("agent_score", "", 21.0, 0.0), ("opponent_score", "", 21.0, 0.0))


def _pong_position(channel: int, axis: int) -> Callable[[np.ndarray], float]:
    """Centroid in court px (x for axis 0, y for axis 1) of one channel of the 40 x 40 object image (4 px cells)."""
    def fn(o):
        r, c = centroid(o[..., channel])
        if r < 0:
            return -1.0
        return (c + 0.5) * 4.0 if axis == 0 else 160.0 - (r + 0.5) * 4.0
    return fn


def _pong_velocity(axis: int) -> Callable[[np.ndarray], float]:
    now, before = _pong_position(2, axis), _pong_position(3, axis)
    return lambda o: now(o) - before(o)


def _pong(env_id: str, obs_shape: tuple[int, ...] | None, action_dim: int | None) -> Describer:
    """Vector observations (8,) show as court quantities; pixel observations (40, 40, 4) as object centroids."""
    one_point = env_id.endswith("OnePoint")
    card = EnvCard(env_id, goal="return the ball past the opponent's paddle; never let it pass yours",
                   termination="the first point" if one_point else "one side reaches 21 points",
                   reward="+1 when the agent scores a point, -1 when the opponent does",
                   action_names=("stay", "up", "down"), notes=PONG_NOTES)
    if len(obs_shape or (8,)) != 3:
        feats = tuple(raw_feature(name, unit, i, scale, offset)
                      for i, (name, unit, scale, offset) in enumerate(PONG_VECTOR))
        return Describer(card, feats, digits=1, obs_shape=(8,))
    feats = (Feature("ball_x", "px", _pong_position(2, 0)), Feature("ball_y", "px", _pong_position(2, 1)),
             Feature("ball_vx", "px/step", _pong_velocity(0)), Feature("ball_vy", "px/step", _pong_velocity(1)),
             Feature("paddle_y", "px", _pong_position(0, 1)), Feature("opponent_y", "px", _pong_position(1, 1)))
    return Describer(card, feats, digits=1, obs_shape=obs_shape)


for _id, _factory in (("CartPole-v1", _cartpole), ("MountainCar-v0", _mountaincar),
                      ("MountainCarContinuous-v0", _mountaincar_continuous), ("Acrobot-v1", _acrobot),
                      ("Pendulum-v1", _pendulum), ("minatar", _minatar), ("brax", _brax), ("pong", _pong)):
    register_describer(_id, _factory)
