"""Render one episode of a policy to an animated GIF.

The episode's env states are recorded on device by the compiled evaluator (`jaxmod.ppo.acting.
make_episode_recorder`: a plain reset, normalisers frozen, the policy's samples or its mode), its frames are drawn on
the host by the env's drawer, and Pillow writes the GIF.

A drawer is looked up like a describer: the one registered for the exact env id, then the one for the env's family
(`EnvCore.family`). Built in:

- the classic-control envs CartPole-v1, Acrobot-v1, MountainCar-v0, MountainCarContinuous-v0 and Pendulum-v1
  (matplotlib, from the env state: cart and pole, the two links, the car on the hill, the pendulum);
- the `minatar` family (the observation's object channels, one colour each);
- the `pong` family (jaxmod/Pong and jaxmod/Pong-OnePoint: court, paddles, ball and score; matplotlib);
- the `brax` family (MuJoCo's renderer through brax's `Env.render`; it needs an OpenGL context, which on a machine
  without a display means `MUJOCO_GL=egl` or `MUJOCO_GL=osmesa` set before mujoco is imported: `headless_gl`).

`register_drawer(env_id_or_family, drawer)` adds one for your own env: `drawer(core, states)` gets the env's
`EnvCore` and the episode's `CoreState`s (numpy leaves with leading axis [T]) and returns T frames, each an
[H, W, 3] uint8 array (RGB). A drawer may have a `check(core)` method that raises `RenderError` when it cannot draw
(called before anything is compiled).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxmod.envs.core import CoreState, EnvCore, EnvError

__all__ = ["FPS", "MAX_FRAMES", "Drawer", "Episode", "EpisodeRenderer", "RenderError", "Rendered", "check_path",
           "check_render", "drawer_for", "episode_frames", "headless_gl", "register_drawer", "render_episode",
           "write_gif"]

FPS = 30  # frames per second of the GIF (jaxmod's choice: one env step per frame, any env)
MAX_FRAMES = 600  # longer episodes are drawn every k-th step, k = ceil(steps / MAX_FRAMES) (jaxmod's choice)
SIZE = (320, 240)  # frame width, height in pixels (jaxmod's choice)

Drawer = Callable[[EnvCore, CoreState], Sequence[np.ndarray]]
_DRAWERS: dict[str, Drawer] = {}
_PROBED: set[tuple[str, int]] = set()  # (env id, id of a registered drawer) that drew a reset state


class RenderError(EnvError):
    """An env that cannot be drawn here (no drawer, no OpenGL for brax) or a bad output path; the message says what
    to do."""


def register_drawer(env_id_or_family: str, drawer: Drawer) -> None:
    """Draw `env_id_or_family` (an exact env id, or a family name that `EnvCore.family` carries) with `drawer`:
    `drawer(core, states) -> T frames` ([H, W, 3] uint8 each) for `states`, a `CoreState` with numpy leaves and
    leading axis [T]. A later registration under the same key replaces the earlier one. Raises TypeError if
    `drawer` is not callable."""
    if not callable(drawer):
        raise TypeError(f"register_drawer needs a callable drawer(core, states) -> frames, got {type(drawer).__name__}")
    _DRAWERS[env_id_or_family] = drawer


def drawer_for(core: EnvCore) -> Drawer:
    """The drawer registered for `core.env_id`, else for `core.family`. Raises `RenderError` when there is none."""
    for key in (core.env_id, core.family):
        if key in _DRAWERS:
            return _DRAWERS[key]
    known = ", ".join(sorted(_DRAWERS))
    raise RenderError(f"no drawer renders {core.env_id} (family {core.family!r}; drawers exist for {known}): register "
                      "one with jaxmod.render.register_drawer(env_id, drawer), or leave --render out")


def headless_gl() -> None:
    """On Linux without a display, make MuJoCo (brax's renderer) use EGL unless `MUJOCO_GL` says otherwise; only
    effective before mujoco is first imported (it reads the variable then)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and "mujoco" not in sys.modules:
        os.environ.setdefault("MUJOCO_GL", "egl")


def check_path(path: str | Path) -> Path:
    """`path` as a Path, if it can take a GIF: it ends in .gif, is no folder, and the nearest existing folder above
    it is writable. Raises `RenderError` (one line: what to do)."""
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise RenderError(f"--render writes an animated GIF: give a path ending in .gif, not {path.name!r}")
    if path.is_dir():
        raise RenderError(f"--render {path} is a folder: give a file path ending in .gif")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RenderError(f"--render {path}: cannot write in {parent} (a file): choose a folder you can write to")
    try:  # by writing: os.access says yes to root everywhere (read-only file systems, /proc)
        if path.exists():
            with open(path, "ab"):  # an existing file: writable, left as it is
                pass
        elif parent == path.parent:
            with open(path, "xb"):
                pass
            path.unlink()
        else:  # missing folders are made when the GIF is written: probe the nearest existing one
            import tempfile

            tempfile.TemporaryDirectory(dir=parent, prefix=".jaxmod-probe-").cleanup()
    except OSError as err:
        raise RenderError(f"--render {path}: cannot write in {parent} ({err.strerror}): choose a folder you can "
                          "write to") from None
    return path


def check_render_dir(folder: str | Path, overwrite: bool = False, names: Sequence[str] = ()) -> Path:
    """`folder` as a Path, if `jaxmod ultra --render` can write its GIFs there: a folder (made when missing),
    not a file nor a name ending in .gif, and holding none of the GIFs a run writes (pretrained.gif and
    `names`: <method>.gif) unless `overwrite` (they are replaced then). Raises `RenderError` (one line)."""
    folder = Path(folder)
    what = "--render takes a folder (ultra writes pretrained.gif and one GIF per method there)"
    if folder.exists() and not folder.is_dir():
        raise RenderError(f"{what}; {folder} is a file: name a folder")
    if not folder.exists() and folder.suffix.lower() == ".gif":
        raise RenderError(f"{what}; {folder} names a GIF file: name a folder (jaxmod eval --render takes a .gif)")
    ours = sorted(p.name for p in (folder / n for n in ("pretrained.gif", *(f"{m}.gif" for m in names)))
                  if p.exists()) if folder.is_dir() else []
    if ours and not overwrite:
        raise RenderError(f"--render {folder} already holds GIFs of a run ({', '.join(ours)}): choose another folder "
                          "or pass --overwrite to replace them")
    check_path(folder / "pretrained.gif")
    return folder


def check_render(core: EnvCore, path: str | Path) -> Drawer:
    """`core`'s drawer, after checking that it can draw here (its `check`) and that `path` can take a GIF
    (`check_path`); for command lines, before anything is compiled. Raises `RenderError` (one line: what to do)."""
    check_path(path)
    return _checked_drawer(core)


def _checked_drawer(core: EnvCore) -> Drawer:
    """`core`'s drawer after its `check`; a drawer registered by the user (not one of jaxmod's) also draws the
    env's reset state once, so that one that fails or returns no frames is one `RenderError` line before anything
    compiles, not after the episode was recorded."""
    drawer = drawer_for(core)
    check = getattr(drawer, "check", None)
    if check is not None:
        check(core)
    if all(drawer is not d for d in _BUILT_IN.values()) and (core.env_id, id(drawer)) not in _PROBED:
        import jax

        state = jax.device_get(core.reset(jax.random.PRNGKey(0)))
        episode_frames(core, jax.tree.map(lambda x: np.asarray(x)[None], state))
        _PROBED.add((core.env_id, id(drawer)))  # once per env and drawer (eval checks, then renders)
    return drawer


@dataclass(frozen=True)
class Episode:
    """One recorded episode: its states (numpy leaves, leading axis [T]: the state before each step), its length
    T in env steps and its undiscounted return."""

    states: CoreState
    steps: int
    episode_return: float


class EpisodeRenderer:
    """Renders policies of one env and network: `renderer(params, path, obs_rms, key) -> Rendered`. The recorder
    (`make_episode_recorder`) compiles at the first call and serves every later policy of the same shapes (e.g. one
    agent before and after refinement). `env`: a `VecEnv`; `net`: its `ActorCritic`; `deterministic`: the policy's
    mode action instead of samples. Raises `RenderError` when the env cannot be drawn here (checked now)."""

    def __init__(self, env: Any, net: Any, deterministic: bool = False) -> None:
        from jaxmod.ppo.acting import make_episode_recorder

        _checked_drawer(env.core)
        self.env = env
        self.recorder = make_episode_recorder(env, net, deterministic)

    def record(self, params: Any, obs_rms: Any = None, key: Any = None) -> Episode:
        """The first episode of the policy `params` from a plain reset, normalisers frozen at `obs_rms` (None: the
        identity, only for envs that do not normalise observations); `key` (default PRNGKey(0)) draws the reset and
        the actions."""
        import jax

        from jaxmod.envs import RunningMeanStd

        if obs_rms is None:
            if self.env.normalize_obs:
                raise ValueError("this env normalises observations: pass the trained state's env_state.obs_rms")
            obs_rms = RunningMeanStd.create(self.env.obs_shape)
        core, done, reward = jax.device_get(self.recorder(params, obs_rms, jax.random.PRNGKey(0) if key is None
                                                          else key))
        steps = int(np.argmax(done)) + 1  # the time limit ends the first episode within max_steps at the latest
        states = jax.tree.map(lambda x: np.asarray(x[:steps]), core)
        return Episode(states=states, steps=steps, episode_return=float(np.sum(reward[:steps], dtype=np.float64)))

    def __call__(self, params: Any, path: str | Path, obs_rms: Any = None, key: Any = None) -> Rendered:
        """Record the policy's first episode (`record`) and write it to `path` (a .gif; folders are made)."""
        check_path(path)
        episode = self.record(params, obs_rms, key)
        frames = episode_frames(self.env.core, episode.states)
        return Rendered(write_gif(frames, path), len(frames), episode.steps, episode.episode_return)


def episode_frames(core: EnvCore, states: CoreState, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """The frames of an episode's `states` (leading axis [T]) drawn by `core`'s drawer, every k-th state with
    k = ceil(T / max_frames); each [H, W, 3] uint8."""
    import jax

    t = int(np.shape(states.time)[0])
    every = max(1, math.ceil(t / max_frames))
    picked = jax.tree.map(lambda x: np.asarray(x)[::every], states)
    try:
        frames = [np.asarray(f) for f in drawer_for(core)(core, picked)]
    except RenderError:
        raise
    except Exception as err:  # noqa: BLE001 - a registered drawer is the user's code: its error is one line
        import traceback

        last = traceback.extract_tb(err.__traceback__)[-1]
        text = str(err).splitlines()[0][:160] if str(err) else ""
        raise RenderError(f"the drawer of {core.env_id} raised {type(err).__name__} at {last.filename}:{last.lineno}"
                          f"{': ' + text if text else ''}; fix it (JAXMOD_DEBUG=1 shows the traceback) or leave "
                          "--render out") from err
    want = "[H, W, 3] uint8 frames, all of one size"
    if not frames or any(f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8 for f in frames):
        got = "no frames" if not frames else f"a {frames[0].dtype} frame of shape {frames[0].shape}"
        for f in frames:
            if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
                got = f"a {f.dtype} frame of shape {f.shape}"
                break
        raise RenderError(f"the drawer of {core.env_id} must return {want}; it returned {got}")
    if len({f.shape for f in frames}) > 1:
        raise RenderError(f"the drawer of {core.env_id} must return {want}; its frames have shapes "
                          f"{sorted({f.shape for f in frames})[:3]}")
    return frames


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = FPS) -> Path:
    """Write `frames` ([H, W, 3] uint8 each, one size) as an animated GIF looping forever at `fps` frames per second.
    All frames share one 255-colour palette taken from up to 8 of them (5x faster than Pillow's palette per frame;
    colours outside it map to the nearest)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = np.concatenate([np.asarray(f) for f in frames[:: max(1, len(frames) // 8)]], axis=0)
    palette = Image.fromarray(sample, "RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(np.asarray(f), "RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


@dataclass(frozen=True)
class Rendered:
    """What `render_episode` wrote: the GIF's path, its frame count, and the episode's length (env steps) and
    undiscounted return."""

    path: Path
    frames: int
    steps: int
    episode_return: float


def render_episode(env: Any, net: Any, params: Any, path: str | Path, obs_rms: Any = None, key: Any = None,
                   deterministic: bool = False) -> Rendered:
    """Record the policy's first episode in `env` from a plain reset and write it to `path` (.gif); see
    `EpisodeRenderer` (use one to render several policies of the same env and network with one compile).

    Example: `learner = PPOLearner(config); out = make_train(config)(key); render_episode(learner.env, learner.net,
    out.state.params, "episode.gif", out.state.env_state.obs_rms)`. Raises `RenderError` when the env cannot be drawn
    here or `path` is not a writable .gif path (checked before the recorder compiles)."""
    check_path(path)
    return EpisodeRenderer(env, net, deterministic)(params, path, obs_rms, key)


# --------------------------------------------------------------------------- matplotlib drawers
def _mpl_frames(n: int, setup: Callable[[Any], tuple[Callable[[int], None], list]], dark: bool = False
                ) -> list[np.ndarray]:
    """`n` frames of one figure: `setup(ax)` draws the static scene and returns `(update, artists)`, where
    `update(i)` moves `artists` to state i. The static scene is drawn once; each frame redraws only `artists`
    (blitting)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = SIZE
    fig = Figure(figsize=(w / 100, h / 100), dpi=100, facecolor="black" if dark else "white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    update, artists = setup(ax)
    for a in artists:
        a.set_animated(True)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames = []
    for i in range(n):
        canvas.restore_region(background)
        update(i)
        for a in artists:
            ax.draw_artist(a)
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def _clock(ax: Any, times: np.ndarray, color: str = "black") -> Any:
    """A text artist showing the env's step count; `.tick(i)` sets it to state i's."""
    text = ax.text(0.02, 0.96, "", transform=ax.transAxes, va="top", fontsize=8, color=color)
    text.tick = lambda i: text.set_text(f"t = {int(times[i])}")
    return text


def _cartpole(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    from matplotlib.patches import Rectangle

    _, p = core.raw
    s = states.inner
    pole = 2.0 * float(p.length)  # gymnax's length is half the pole

    def setup(ax):
        lim = float(p.x_threshold) + 0.4
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-0.5, -0.5 + 2 * lim * SIZE[1] / SIZE[0])
        ax.axhline(0.0, color="0.4", lw=1)
        for edge in (-p.x_threshold, p.x_threshold):
            ax.axvline(float(edge), color="0.7", ls="--", lw=1)
        cart = ax.add_patch(Rectangle((0, -0.1), 0.5, 0.2, color="0.2"))
        (rod,) = ax.plot([], [], color="#c8743b", lw=4, solid_capstyle="round")
        tick = _clock(ax, states.time)

        def update(i):
            x, th = float(s.x[i]), float(s.theta[i])
            cart.set_x(x - 0.25)
            rod.set_data([x, x + pole * math.sin(th)], [0.1, 0.1 + pole * math.cos(th)])
            tick.tick(i)

        return update, [cart, rod, tick]

    return _mpl_frames(len(states.time), setup)


def _acrobot(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    _, p = core.raw
    s = states.inner
    l1, l2 = float(p.link_length_1), float(p.link_length_2)

    def setup(ax):
        r = l1 + l2 + 0.2
        ax.set_xlim(-r * SIZE[0] / SIZE[1], r * SIZE[0] / SIZE[1])
        ax.set_ylim(-r, r)
        ax.axhline(1.0, color="0.6", ls="--", lw=1)  # goal: the tip above height 1 (-cos a1 - cos(a1 + a2) > 1)
        (links,) = ax.plot([], [], "-o", color="#3b6fc8", lw=4, ms=5, mfc="black")
        tick = _clock(ax, states.time)

        def update(i):
            a1, a2 = float(s.joint_angle1[i]), float(s.joint_angle2[i])
            x1, y1 = l1 * math.sin(a1), -l1 * math.cos(a1)
            links.set_data([0.0, x1, x1 + l2 * math.sin(a1 + a2)], [0.0, y1, y1 - l2 * math.cos(a1 + a2)])
            tick.tick(i)

        return update, [links, tick]

    return _mpl_frames(len(states.time), setup)


def _mountain_car(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    _, p = core.raw
    s = states.inner
    lo, hi, goal = float(p.min_position), float(p.max_position), float(p.goal_position)

    def height(x):
        return np.sin(3.0 * x) * 0.45 + 0.55

    def setup(ax):
        xs = np.linspace(lo, hi, 200)
        ax.set_xlim(lo - 0.05, hi + 0.05)
        ax.set_ylim(-0.1, 1.25)
        ax.plot(xs, height(xs), color="0.3", lw=2)
        ax.plot([goal, goal], [height(goal), height(goal) + 0.18], color="0.2", lw=1.5)
        ax.plot([goal], [height(goal) + 0.15], marker=">", ms=8, color="#e0b000")
        (car,) = ax.plot([], [], "o", ms=11, color="#c83b3b")
        tick = _clock(ax, states.time)

        def update(i):
            x = float(s.position[i])
            car.set_data([x], [height(x) + 0.04])
            tick.tick(i)

        return update, [car, tick]

    return _mpl_frames(len(states.time), setup)


def _pendulum(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    _, p = core.raw
    s = states.inner
    length = float(p.l)

    def setup(ax):
        r = length + 0.3
        ax.set_xlim(-r * SIZE[0] / SIZE[1], r * SIZE[0] / SIZE[1])
        ax.set_ylim(-r, r)
        (rod,) = ax.plot([], [], color="#c8743b", lw=6, solid_capstyle="round")
        ax.plot([0], [0], "o", color="black", ms=5)
        tick = _clock(ax, states.time)
        torque = ax.text(0.98, 0.96, "", transform=ax.transAxes, ha="right", va="top", fontsize=8)

        def update(i):
            th = float(s.theta[i])  # 0 = upright (gym's convention), drawn as gym does
            rod.set_data([0.0, -length * math.sin(th)], [0.0, length * math.cos(th)])
            torque.set_text(f"torque {float(np.ravel(s.last_u[i])[0]):+.2f}")
            tick.tick(i)

        return update, [rod, torque, tick]

    return _mpl_frames(len(states.time), setup)


def _pong(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    from matplotlib.patches import Circle, Rectangle

    from jaxmod.envs.pong import AGENT_X, HEIGHT, OPPONENT_X, WIDTH

    _, p = core.raw
    s = states.inner
    half = float(p.paddle_half)

    def setup(ax):
        ax.set_xlim(0, WIDTH)
        ax.set_ylim(0, HEIGHT)
        ax.add_patch(Rectangle((0, 0), WIDTH, HEIGHT, color="#1d5c2a"))
        ax.axvline(WIDTH / 2, color="0.8", ls=":", lw=1)
        agent = ax.add_patch(Rectangle((AGENT_X, 0), 4, 2 * half, color="#f0c040"))
        opponent = ax.add_patch(Rectangle((OPPONENT_X - 4, 0), 4, 2 * half, color="#e05050"))
        ball = ax.add_patch(Circle((0, 0), max(float(p.ball_radius), 2.0), color="white"))
        score = ax.text(WIDTH / 2, HEIGHT - 6, "", ha="center", va="top", color="white", fontsize=9)
        tick = _clock(ax, states.time, color="white")

        def update(i):
            agent.set_y(float(s.agent_y[i]) - half)
            opponent.set_y(float(s.opponent_y[i]) - half)
            ball.center = (float(s.ball[i][0]), float(s.ball[i][1]))
            score.set_text(f"opponent {int(s.opponent_score[i])} : {int(s.agent_score[i])} agent")
            tick.tick(i)

        return update, [agent, opponent, ball, score, tick]

    return _mpl_frames(len(states.time), setup, dark=True)


# --------------------------------------------------------------------------- MinAtar and brax
def _minatar(core: EnvCore, states: CoreState) -> list[np.ndarray]:
    """The observation's object channels ([T, 10, 10, C] booleans), one tab20 colour each (a later channel over an
    earlier one), on black, scaled up to about SIZE's height."""
    from matplotlib import colormaps

    obs = np.asarray(states.obs)
    channels = obs.shape[-1]
    palette = (np.asarray(colormaps["tab20"](np.arange(channels) % 20))[:, :3] * 255).astype(np.uint8)
    scale = max(1, SIZE[1] // obs.shape[1])
    frames = []
    for o in obs:
        img = np.zeros((*o.shape[:2], 3), np.uint8)
        for c in range(channels):
            img[o[..., c] > 0.5] = palette[c]
        frames.append(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1))
    return frames


class _BraxDrawer:
    """brax's own renderer (`Env.render`: MuJoCo's `mujoco.Renderer` from the pipeline states' q and qd)."""

    def check(self, core: EnvCore) -> None:
        """Make one renderer (the OpenGL context it needs) and close it; `RenderError` says what to set or install
        when that fails."""
        headless_gl()
        try:
            import mujoco

            mujoco.Renderer(core.raw.sys.mj_model, height=SIZE[1], width=SIZE[0]).close()
        except Exception as err:  # noqa: BLE001 - mujoco raises many kinds for a missing OpenGL
            gl = os.environ.get("MUJOCO_GL", "")
            raise RenderError(
                f"brax frames need an OpenGL context, which MuJoCo could not create here (MUJOCO_GL={gl!r}; "
                f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): set MUJOCO_GL=egl "
                "(a GPU driver, or Mesa's libEGL: apt-get install libegl1) or MUJOCO_GL=osmesa (apt-get install "
                "libosmesa6) before starting Python, or leave --render out") from None

    def __call__(self, core: EnvCore, states: CoreState) -> list[np.ndarray]:
        import jax

        pipeline = states.inner.pipeline_state
        trajectory = [jax.tree.map(lambda x, i=i: x[i], pipeline) for i in range(len(states.time))]
        return [np.asarray(f, np.uint8) for f in core.raw.render(trajectory, height=SIZE[1], width=SIZE[0])]


register_drawer("CartPole-v1", _cartpole)
register_drawer("Acrobot-v1", _acrobot)
register_drawer("MountainCar-v0", _mountain_car)
register_drawer("MountainCarContinuous-v0", _mountain_car)
register_drawer("Pendulum-v1", _pendulum)
register_drawer("minatar", _minatar)
register_drawer("pong", _pong)
register_drawer("brax", _BraxDrawer())
_BUILT_IN = dict(_DRAWERS)  # jaxmod's own drawers (a user's are probed on a reset state before a run)
