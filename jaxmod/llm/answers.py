"""Answer schemas and validation of untrusted LLM output (no jax: host-side text only).

Extraction is tolerant (code fences, prose around the JSON); checks are strict (schema, step indices
inside the episode, action in range, finite reward clipped to [-1, 1]). A bad answer becomes a
`Rejected` with its reason; nothing here raises into training.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

REWARD_BOUND = 1.0
MAX_REASON_CHARS = 300


def identify_schema(max_critical: int) -> dict[str, Any]:
    """JSON schema of a critical-state answer for one episode."""
    return {
        "type": "object",
        "properties": {
            "critical_steps": {
                "type": "array", "minItems": 1, "maxItems": max_critical,
                "items": {"type": "object",
                          "properties": {"step": {"type": "integer", "minimum": 0},
                                         "reason": {"type": "string", "maxLength": MAX_REASON_CHARS}},
                          "required": ["step", "reason"], "additionalProperties": False},
            }
        },
        "required": ["critical_steps"], "additionalProperties": False,
    }


def advice_schema(discrete: bool, num_actions: int = 0, low: tuple[float, ...] = (), high: tuple[float, ...] = ()
                  ) -> dict[str, Any]:
    """JSON schema of an action suggestion + implicit reward for one critical state."""
    if discrete:
        action: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": num_actions - 1}
    else:
        action = {"type": "array", "minItems": len(low), "maxItems": len(low),
                  "items": {"type": "number", "minimum": min(low), "maximum": max(high)}}
    return {
        "type": "object",
        "properties": {
            "action": action,
            "reward": {"type": "number", "minimum": -REWARD_BOUND, "maximum": REWARD_BOUND},
            "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        },
        "required": ["action", "reward", "reason"], "additionalProperties": False,
    }


@dataclass(frozen=True)
class CriticalStep:
    step: int
    reason: str


@dataclass(frozen=True)
class Identified:
    """A validated identification answer."""

    steps: tuple[CriticalStep, ...]
    dropped: int = 0  # items dropped (duplicates, out of range) while the answer as a whole was usable


@dataclass(frozen=True)
class Advised:
    """A validated advice answer: action (int or tuple of floats), reward in [-1, 1], reason."""

    action: int | tuple[float, ...]
    reward: float
    reason: str
    reward_clipped: bool = False


@dataclass(frozen=True)
class Rejected:
    """Why an answer was dropped."""

    reason: str


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The first JSON object in `text` (inside code fences or surrounded by prose); raises ValueError."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        cand = cand.strip()
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
        start = cand.find("{")
        while start != -1:
            obj, end = _balanced(cand, start)
            if obj is not None:
                try:
                    return json.loads(obj)
                except json.JSONDecodeError:
                    pass
            start = cand.find("{", start + 1)
    raise ValueError("no JSON object found")


def _balanced(text: str, start: int) -> tuple[str | None, int]:
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1], i
    return None, -1


def _reason(value: Any) -> str:
    return " ".join(str(value).split())[:MAX_REASON_CHARS] if value is not None else ""


def validate_identify(text: str, episode_length: int, max_critical: int,
                      finish_reason: str | None = "stop") -> Identified | Rejected:
    """Critical steps must be integers inside [0, episode_length); duplicates and extras are dropped."""
    try:
        data = extract_json(text)
    except ValueError as err:
        return Rejected(f"unparseable: {err}" + (" (finish_reason=length)" if finish_reason == "length" else ""))
    if not isinstance(data, dict) or not isinstance(data.get("critical_steps"), list):
        return Rejected("missing field critical_steps (a list)")
    steps: list[CriticalStep] = []
    seen: set[int] = set()
    dropped = 0
    for item in data["critical_steps"]:
        step = item.get("step") if isinstance(item, dict) else item
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
            dropped += 1
            continue
        step = int(step)
        if not 0 <= step < episode_length or step in seen:
            dropped += 1
            continue
        if len(steps) >= max_critical:
            dropped += 1
            continue
        seen.add(step)
        steps.append(CriticalStep(step, _reason(item.get("reason") if isinstance(item, dict) else "")))
    if not steps:
        return Rejected(f"no valid critical step inside the episode (0..{episode_length - 1})")
    return Identified(tuple(steps), dropped)


def validate_advice(text: str, discrete: bool, num_actions: int = 0, low: tuple[float, ...] = (),
                    high: tuple[float, ...] = (), finish_reason: str | None = "stop") -> Advised | Rejected:
    """Action in range (discrete) or finite and within bounds (continuous); reward finite, clipped to [-1, 1]."""
    try:
        data = extract_json(text)
    except ValueError as err:
        return Rejected(f"unparseable: {err}" + (" (finish_reason=length)" if finish_reason == "length" else ""))
    if not isinstance(data, dict):
        return Rejected("answer is not a JSON object")
    for key in ("action", "reward"):
        if key not in data:
            return Rejected(f"missing field {key}")
    raw_action = data["action"]
    action: int | tuple[float, ...]
    if discrete:
        if isinstance(raw_action, bool) or not isinstance(raw_action, (int, float)) or not math.isfinite(raw_action) \
                or not float(raw_action).is_integer():
            return Rejected(f"action {raw_action!r} is not an integer")
        action = int(raw_action)
        if not 0 <= action < num_actions:
            return Rejected(f"action {action} out of range 0..{num_actions - 1}")
    else:
        if not isinstance(raw_action, list) or len(raw_action) != len(low):
            return Rejected(f"action must be a list of {len(low)} numbers")
        vals = []
        for x, lo, hi in zip(raw_action, low, high, strict=True):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                return Rejected(f"action entry {x!r} is not a finite number")
            if not lo <= x <= hi:
                return Rejected(f"action entry {x} outside [{lo}, {hi}]")
            vals.append(float(x))
        action = tuple(vals)
    reward = data["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        return Rejected(f"reward {reward!r} is not a finite number")
    clipped = max(-REWARD_BOUND, min(REWARD_BOUND, float(reward)))
    return Advised(action, clipped, _reason(data.get("reason")), reward_clipped=clipped != float(reward))
