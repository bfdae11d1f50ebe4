"""The LLM's distribution over a multiple-choice answer's options, from the token log-probabilities a server returns
(issue 18 item 6; jaxmod's extension beyond the paper). Host side, no jax; everything here is untrusted input.

OpenAI-compatible servers (OpenAI, vLLM, llama.cpp's server, llama-cpp-python) return, for a chat completion asked
with `logprobs: true, top_logprobs: k`, one entry per generated token: `{"token": str, "logprob": float,
"top_logprobs": [{"token": str, "logprob": float}, ...]}` under `choices[0].logprobs.content` (the k most likely
tokens at that position, before any grammar or schema constraint narrowed the choice).

`parse_token_logprobs` keeps the well-formed entries of such a list (None when there is none or any entry is
malformed: partial information is not used). `choice_distribution` reads the answer's option out of the tokens:
the answer `{"action": "<name>"}` spells one option; every other option `c` shares some leading characters with it
and departs from it at one token position. Its log-probability is the chosen tokens' log-probabilities before that
position plus the log-probability of the alternatives listed there that spell `c`'s next characters (log-sum-exp
over several such tokens), its later tokens taken as certain (a server returns nothing about them: jaxmod's
choice); the chosen option's is the sum over the tokens that spell it (a token that spells only what follows the
name, such as the closing quote, is left out, as the alternatives' are). The distribution is the
softmax of those log-probabilities over the options. It is None (the caller falls back to the one-hot target and
counts why) when the tokens do not spell the answer, or any option is missing from the listed alternatives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

MAX_TOP = 20  # alternatives read per token (OpenAI's limit for top_logprobs)
MAX_TOKENS = 4096  # entries read per answer


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-probability and the listed alternatives ((text, logprob), ...)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def _finite_logprob(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    x = float(value)
    return x if math.isfinite(x) and x <= 1e-6 else None  # a log-probability is <= 0


def parse_token_logprobs(value: Any) -> tuple[TokenLogprob, ...] | None:
    """The token entries of `choices[0].logprobs` (an object with `content`, or the list itself), or None if absent
    or malformed anywhere (a token that is not text, a log-probability that is not a finite number <= 0)."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, list) or not value or len(value) > MAX_TOKENS:
        return None
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        lp = _finite_logprob(entry.get("logprob"))
        if lp is None:
            return None
        top = []
        for alt in (entry.get("top_logprobs") or [])[:MAX_TOP]:
            if not isinstance(alt, dict) or not isinstance(alt.get("token"), str):
                return None
            alp = _finite_logprob(alt.get("logprob"))
            if alp is None:
                return None
            top.append((alt["token"], alp))
        out.append(TokenLogprob(entry["token"], lp, tuple(top)))
    return tuple(out)


def to_json(tokens: tuple[TokenLogprob, ...] | None) -> list[dict[str, Any]] | None:
    """The entries in the server's own shape (for transcripts and replays)."""
    if tokens is None:
        return None
    return [{"token": t.token, "logprob": t.logprob, "top_logprobs": [{"token": a, "logprob": lp} for a, lp in t.top]}
            for t in tokens]


class NoDistribution(ValueError):
    """Why the tokens give no distribution over the options (one line)."""


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _consistent(a: str, b: str) -> bool:
    """One string is a prefix of the other."""
    return a.startswith(b) or b.startswith(a)


def choice_distribution(content: str, tokens: tuple[TokenLogprob, ...] | None, names: tuple[str, ...],
                        chosen: int, field: str = "action") -> tuple[float, ...]:
    """Probabilities over `names` (summing to 1) of the answer `content` (which chose `names[chosen]` as `field`),
    from its tokens; raises `NoDistribution` with the reason (see the module docstring)."""
    if tokens is None:
        raise NoDistribution("no logprobs")
    if "".join(t.token for t in tokens) != content:
        raise NoDistribution("the tokens do not spell the answer")
    lowered = [n.strip().lower() for n in names]
    want = lowered[chosen]
    found = None
    for m in re.finditer(rf'"{re.escape(field)}"\s*:\s*"', content):
        if content[m.end():m.end() + len(want) + 1].lower() == want + '"':
            found = m.end()
            break
    if found is None:
        raise NoDistribution("the answer's option is not found in its tokens")
    end = found + len(want) + 1  # the closing quote included: an option that is a prefix of another departs there
    scores: dict[int, float] = {}
    cum, mine_total, start = 0.0, 0.0, 0
    for tok in tokens:
        stop = start + len(tok.token)
        if stop <= found:
            start = stop
            continue
        if start >= end:
            break
        lead = content[start:found] if start < found else ""  # this token's characters before the option's value
        before = content[found:max(start, found)].lower()  # the answer's option up to this token
        mine = content[max(start, found):min(stop, end)].lower()  # and this token's part of it
        for i, name in enumerate(lowered):
            target = name + '"'
            if i == chosen or i in scores or target.startswith(before + mine):
                continue  # the answer itself, departed earlier (scored then), or still spelling this option too
            alts = [lp for text, lp in tok.top if text.lower().startswith(lead.lower()) and len(text) > len(lead)
                    and _consistent(target, before + text[len(lead):].lower())]
            if not alts:
                raise NoDistribution(f"option {names[i]!r} is not among the listed alternatives")
            scores[i] = cum + _logsumexp(alts)
        cum += tok.logprob
        if start < end - 1:  # a token that spells part of the chosen name (not only what follows it)
            mine_total = cum
        start = stop
    missing = [names[i] for i in range(len(names)) if i != chosen and i not in scores]
    if missing:
        raise NoDistribution(f"option {missing[0]!r} never departs from the answer in its tokens")
    scores[chosen] = mine_total
    top = max(scores.values())
    weights = [math.exp(scores[i] - top) for i in range(len(names))]
    total = sum(weights)
    return tuple(w / total for w in weights)
