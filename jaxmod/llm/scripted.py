"""ScriptedAdvisor backend: per-env expert heuristics behind the same prompts an LLM reads.

It stands in for an LLM behind an OpenAI-compatible server, so it sees only the messages: `read_question` takes
the question apart and the env's describer reads the episode table back into numbers (`Describer.parse_rows`,
the inverse of what rendered it). The heuristics themselves see numbers only: one state's features by name.
It is NOT an LLM: it is jaxmod's fast default advisor and the upper-bound control for measuring what good advice
is worth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

from jaxmod.envs.describe import Describer, DescriberError, EpisodeTable
from jaxmod.envs.describers import describer_for
from jaxmod.llm.prompts import AskedQuestion, Messages, PromptError, read_question

State = Mapping[str, float]  # one row's features by name, as the describer printed them


class ScriptedError(ValueError):
    """The prompt cannot be answered by a heuristic (unknown env or unparseable table)."""


# --------------------------------------------------------------------------- heuristics per env
# Each returns (best action index, urgency in [0, 1]) for one state.
def _cartpole(s: State) -> tuple[int, float]:
    x, v = s["cart_position"], s["cart_velocity"]
    th, w = s["pole_angle"], s["pole_angular_velocity"]
    score = th + 0.5 * w + 0.01 * x + 0.1 * v
    return (1 if score > 0 else 0), min(1.0, abs(th + 0.5 * w) / 0.21 + abs(x) / 2.4)


def _mountaincar(s: State) -> tuple[int, float]:
    v = s["velocity"]
    return (2 if v >= 0 else 0), min(1.0, abs(v) / 0.07)


def _acrobot(s: State) -> tuple[int, float]:
    w1 = s["angular_velocity_link1"]
    return (2 if w1 >= 0 else 0), min(1.0, abs(w1) / 4.0)


def _breakout(s: State) -> tuple[int, float]:
    ball_c, ball_r, paddle_c = s["ball_col"], s["ball_row"], s["paddle_col"]
    if ball_c < 0 or paddle_c < 0:
        return 0, 0.0
    action = 1 if ball_c < paddle_c else 2 if ball_c > paddle_c else 0
    return action, min(1.0, max(0.0, ball_r / 9.0)) * min(1.0, abs(ball_c - paddle_c) / 3.0 + 0.3)


def _pong(s: State) -> tuple[int, float]:
    """Meet the ball's predicted intercept slightly off-centre (a steep return away from the opponent);
    re-centre while the ball flies away. Urgency grows as an incoming ball nears and the paddle is off."""
    bx, by, vx, vy = s["ball_x"], s["ball_y"], s["ball_vx"], s["ball_vy"]
    paddle, opponent = s["paddle_y"], s["opponent_y"]
    if bx > 140.0:  # already past the paddle: nothing the agent does matters any more
        return 0, 0.0
    if vx > 0:
        steps = (138.5 - bx) / vx
        span = 160.0 - 3.0
        folded = (by - 1.5 + vy * max(steps, 0.0)) % (2 * span)
        meet = 1.5 + (2 * span - folded if folded > span else folded)
        away = -1.0 if opponent > 80.0 else 1.0
        target = meet - away * 0.6 * 8.0
        need = abs(target - paddle) / (4.0 * steps + 8.0)  # share of the paddle's remaining reach needed
        urgency = need if need <= 1.0 else 1.0 / need**2  # the last reachable moments matter most; lost ones fade
    else:
        target, urgency = 80.0, 0.05
    gap = target - paddle
    return (1 if gap > 2.0 else 2 if gap < -2.0 else 0), min(1.0, urgency)


def _pendulum_torque(s: State) -> float:
    th, w = s["angle"], s["angular_velocity"]
    if math.cos(th) > 0.6:  # near upright: PD control
        return max(-2.0, min(2.0, -10.0 * th - 1.0 * w))
    return 2.0 if w >= 0 else -2.0  # pump energy


HEURISTICS: dict[str, Callable[[State], tuple[int, float]]] = {
    "jaxmod/Pong": _pong,
    "jaxmod/Pong-OnePoint": _pong,
    "CartPole-v1": _cartpole,
    "MountainCar-v0": _mountaincar,
    "Acrobot-v1": _acrobot,
    "Breakout-MinAtar": _breakout,
}
CONTINUOUS = ("Pendulum-v1",)
# The observations each env's prompts may be rendered from (Pong's heuristic reads both its vector and its
# pixel describer: the table's header says which wrote it).
OBS_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {"jaxmod/Pong": ((8,), (40, 40, 4)),
                                                      "jaxmod/Pong-OnePoint": ((8,), (40, 40, 4))}


def table_of(env_id: str, table: str) -> tuple[Describer, EpisodeTable]:
    """The describer that wrote `table` for `env_id`, and the table read back by it. Raises ScriptedError if
    none of the env's describers reads it."""
    errors = []
    for shape in OBS_SHAPES.get(env_id, (None,)):
        describer = describer_for(env_id, shape)
        try:
            return describer, describer.parse_rows(table)
        except DescriberError as err:
            errors.append(str(err))
    raise ScriptedError("; ".join(errors))


class ScriptedBackend:
    """Answers identification and advice prompts with heuristics; raises ScriptedError if it cannot."""

    name = "scripted"

    def supports(self, env_id: str) -> bool:
        return env_id in HEURISTICS or env_id in CONTINUOUS

    def answer(self, messages: Messages, max_critical: int = 3) -> str:
        try:
            q = read_question(messages)
        except PromptError as err:
            raise ScriptedError(str(err)) from None
        if not self.supports(q.env_id):
            raise ScriptedError(f"no scripted heuristic for {q.env_id}; use the teacher advisor or an LLM")
        describer, table = table_of(q.env_id, q.table)
        if q.kind == "identify":
            return json.dumps(self._identify(q.env_id, describer, table, q.max_critical or max_critical))
        return json.dumps(self._advise(q, describer, table))

    def _identify(self, env_id: str, d: Describer, table: EpisodeTable, k: int) -> dict:
        scored = []
        steps = table.steps.tolist()
        if env_id in CONTINUOUS:
            for i, t in enumerate(steps):
                gap = abs(_pendulum_torque(table.state(i)) - float(table.actions[i][0]))
                scored.append((gap, t, "torque far from the controller's"))
        else:
            heuristic, n = HEURISTICS[env_id], len(steps)
            names = d.card.action_names
            for i, t in enumerate(steps):
                best, urgency = heuristic(table.state(i))
                took = int(table.actions[i])
                wrong = best < len(names) and took != best
                lateness = (i + 1) / n  # failures build up towards the end of an episode
                score = urgency * (1.0 if wrong else 0.2) + 0.05 * lateness
                why = (f"took {d.action_text(took)} where {names[best]} was needed (urgency {urgency:.2f})" if wrong
                       else f"high-stakes state (urgency {urgency:.2f})")
                scored.append((score, t, why))
        scored.sort(key=lambda s: (-s[0], -s[1]))
        return {"critical_steps": [{"step": t, "reason": why} for _, t, why in scored[:k]]}

    def _advise(self, q: AskedQuestion, d: Describer, table: EpisodeTable) -> dict:
        state = table.state(table.index_of(q.step))
        try:
            took = d.parse_action(q.agent_action)
        except DescriberError as err:
            raise ScriptedError(str(err)) from None
        if q.env_id in CONTINUOUS:
            best = _pendulum_torque(state)
            gap = abs(best - float(took[0])) / 4.0
            return {"action": [round(best, 3)], "reward": round(1.0 - 2.0 * min(1.0, gap), 3),
                    "reason": "PD control near upright, energy pumping below"}
        names = d.card.action_names
        best, urgency = HEURISTICS[q.env_id](state)
        right = best < len(names) and took == best
        reward = (0.5 + 0.5 * urgency) if right else -(0.5 + 0.5 * urgency)
        return {"action": best, "reward": round(reward, 3),
                "reason": f"{names[best] if best < len(names) else best} is the heuristic's choice here"}
