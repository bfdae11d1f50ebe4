"""Answer schemas and validation of untrusted LLM output (no jax: host-side text only).

Extraction is tolerant (reasoning blocks, code fences, prose around the JSON) and linear in the answer's
length; checks are strict (schema, step indices
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


def choice_schema(action_names: tuple[str, ...]) -> dict[str, Any]:
    """JSON schema of a multiple-choice answer: one of the env's discrete action names (an enum, which constrained
    decoding turns into a choice among a few token paths: what a small model can answer)."""
    return {"type": "object", "properties": {"action": {"type": "string", "enum": list(action_names)}},
            "required": ["action"], "additionalProperties": False}


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
    raw_reward: float | None = None  # the reward as answered, when it was clipped
    distribution: tuple[float, ...] | None = None  # a multiple choice's probabilities over the discrete actions, from
    # the LLM's token log-probabilities (`jaxmod.llm.logprobs`); None: the one-hot of `action`
    confidence: float = 1.0  # the chosen action's probability under `distribution` (1 without one): the advice weight
    soft_fallback: str | None = None  # why a multiple choice asked with log-probabilities has no distribution


@dataclass(frozen=True)
class Rejected:
    """Why an answer was dropped."""

    reason: str


@dataclass(frozen=True)
class NotAsked(Rejected):
    """A question that was never sent (`jaxmod.llm.pacing`: its answer could not have arrived in time): not an
    answer, not a failure; counted in `AdvisorStats.paced`."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
REASONING_TAGS = ("think", "thinking", "reasoning", "reflection")
SCAN_BUDGET_FACTOR = 4  # extraction reads each character of an answer at most this many times (plus a constant)


def strip_reasoning(text: str) -> str:
    """`text` without reasoning blocks (`<think>...</think>` and the like): a draft answer inside one must not
    win over the final answer after it. An unclosed block is reasoning up to the end (a truncated answer); a
    closing tag with no opening one (templates that put `<think>` in the prompt) ends reasoning that began at the
    start. Linear time: a handful of `str.find` passes, no backtracking regex."""
    lower = text.lower()
    if not any(f"<{t}>" in lower or f"</{t}>" in lower for t in REASONING_TAGS):
        return text
    for tag in REASONING_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        first_close, first_open = lower.find(closing), lower.find(opening)
        if first_close != -1 and (first_open == -1 or first_close < first_open):  # "reasoning...</think> answer"
            cut = first_close + len(closing)
            text, lower = text[cut:], lower[cut:]
        parts, pos = [], 0
        while True:
            i = lower.find(opening, pos)
            if i == -1:
                parts.append(text[pos:])
                break
            parts.append(text[pos:i])
            j = lower.find(closing, i + len(opening))
            if j == -1:
                break  # unclosed: the rest is reasoning
            pos = j + len(closing)
        text = "".join(parts)
        lower = text.lower()
    return text


def _objects(text: str, budget: list[int]):
    """Yield every top-level balanced `{...}` span of `text` that parses as a JSON object, in order.

    One left-to-right pass; quotes count only inside braces (prose around the JSON may hold stray quotes). A span
    that never closes (or closes but is not JSON) is retried from the next `{` after its start, while `budget`
    (characters left to read, shared by all calls of one extraction) lasts: the work is linear in the text."""
    start = text.find("{")
    while start != -1 and budget[0] > 0:
        depth, in_str, esc, i, n = 0, False, False, start, len(text)
        end = -1
        while i < n:
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
                    end = i
                    break
            i += 1
        budget[0] -= i - start + 1
        if end != -1:
            try:
                obj = json.loads(text[start:end + 1])
            except (ValueError, RecursionError):  # not JSON, or nested too deep for the parser
                obj = None
            if isinstance(obj, dict):
                yield obj
                start = text.find("{", end + 1)
                continue
        start = text.find("{", start + 1)


def _candidates(text: str) -> list[str]:
    return [m.group(1) for m in _FENCE.finditer(text)] + [text]


def extract_json(text: str) -> Any:
    """The first JSON object in `text` after its reasoning blocks are removed (inside code fences or surrounded by
    prose); raises ValueError. Time linear in the length of `text`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    text = strip_reasoning(text)
    if not text.strip():
        raise ValueError("no answer after the reasoning block")
    budget = [SCAN_BUDGET_FACTOR * len(text) + 4096]
    for cand in _candidates(text):
        cand = cand.strip()
        try:
            return json.loads(cand)
        except (ValueError, RecursionError):
            pass
        for obj in _objects(cand, budget):
            return obj
    raise ValueError("no JSON object found")


def extract_last_json(text: str) -> Any:
    """The last JSON object in `text` (the final answer of a reasoning trace, whose drafts come first); raises
    ValueError. Time linear in the length of `text`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    budget = [SCAN_BUDGET_FACTOR * len(text) + 4096]
    found = None
    for obj in _objects(text, budget):
        found = obj
    if found is None:
        raise ValueError("no JSON object found")
    return found


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None (not a number, a bool, NaN, infinite, or an integer too large for a
    float: `json` parses 400-digit integers exactly)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        value = _finite(item.get("step") if isinstance(item, dict) else item)
        if value is None or not value.is_integer():
            dropped += 1
            continue
        step = int(value)
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
        value = _finite(raw_action)
        if value is None or not value.is_integer():
            return Rejected(f"action {_short(raw_action)} is not an integer")
        action = int(value)
        if not 0 <= action < num_actions:
            return Rejected(f"action {action} out of range 0..{num_actions - 1}")
    else:
        if not isinstance(raw_action, list) or len(raw_action) != len(low):
            return Rejected(f"action must be a list of {len(low)} numbers")
        vals = []
        for raw, lo, hi in zip(raw_action, low, high, strict=True):
            x = _finite(raw)
            if x is None:
                return Rejected(f"action entry {_short(raw)} is not a finite number")
            if not lo <= x <= hi:
                return Rejected(f"action entry {_short(raw)} outside [{lo}, {hi}]")
            vals.append(x)
        action = tuple(vals)
    reward = _finite(data["reward"])
    if reward is None:
        return Rejected(f"reward {_short(data['reward'])} is not a finite number")
    clipped = max(-REWARD_BOUND, min(REWARD_BOUND, reward))
    was_clipped = clipped != reward
    return Advised(action, clipped, _reason(data.get("reason")), reward_clipped=was_clipped,
                   raw_reward=reward if was_clipped else None)


def validate_choice(text: str, action_names: tuple[str, ...], agent_action: int,
                    finish_reason: str | None = "stop") -> Advised | Rejected:
    """A multiple-choice answer: `action` one of `action_names` (case and surrounding space ignored) or, from an
    in-process answerer that answers by index, an integer in range. The implicit reward is derived, not asked
    (jaxmod's choice): +1 when the chosen action is the agent's own `agent_action` (the advisor endorses it), -1
    otherwise."""
    try:
        data = extract_json(text)
    except ValueError as err:
        return Rejected(f"unparseable: {err}" + (" (finish_reason=length)" if finish_reason == "length" else ""))
    if not isinstance(data, dict) or "action" not in data:
        return Rejected("missing field action")
    raw = data["action"]
    if isinstance(raw, str):
        names = [n.strip().lower() for n in action_names]
        key = raw.strip().lower()
        if key not in names:
            return Rejected(f"action {_short(raw)} is not one of the choices")
        action = names.index(key)
    else:
        value = _finite(raw)
        if value is None or not value.is_integer() or not 0 <= int(value) < len(action_names):
            return Rejected(f"action {_short(raw)} is not one of the choices")
        action = int(value)
    return Advised(action, 1.0 if action == int(agent_action) else -1.0, _reason(data.get("reason")))
