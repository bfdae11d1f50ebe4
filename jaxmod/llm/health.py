"""The advisor's health during a run: per-round counts in, a stop/continue decision with its reason out.

The refinement loop feeds one `RoundCounts` per advice round (`RoundCounts.between(before, advisor.stats)`) to a
`FailurePolicy`. With `mode="stop"` (the default) the policy raises `AdvisorFailure` (one line, why and what to
do) when most of a round's questions got no answer at all, when the first round brought no valid answer (all
invalid or failed), or when no valid advice arrived for `max_rounds_without_advice` rounds in a row; with `mode="continue"` it returns the same line as a warning and
training goes on. Either way a run never passes silently for an ULTRA run when its advisor is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxmod.llm.errors import AdvisorFailure, LLMConfigError

FAILURE_MODES = ("stop", "continue")


@dataclass(frozen=True)
class RoundCounts:
    """What one advice round got: questions asked, valid answers, invalid answers (came back, failed validation),
    failed questions (no answer: server error, timeout, deadline), and the drop reasons with their counts."""

    questions: int = 0
    valid: int = 0
    invalid: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Any, after: Any) -> RoundCounts:
        """The difference of two `AdvisorStats` (or their `as_dict()`): take `before = advisor.stats.copy()` when a
        round is submitted and call this with `advisor.stats` once its answers are in."""
        b = before.as_dict() if hasattr(before, "as_dict") else dict(before)
        a = after.as_dict() if hasattr(after, "as_dict") else dict(after)
        reasons = {k: v - b.get("reasons", {}).get(k, 0) for k, v in a.get("reasons", {}).items()}
        return cls(*(int(a.get(k, 0)) - int(b.get(k, 0)) for k in ("questions", "valid", "invalid", "failed")),
                   reasons={k: v for k, v in reasons.items() if v > 0})

    def top_reasons(self, n: int = 2) -> str:
        ranked = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:n]
        return "; ".join(f"{k} x{v}" for k, v in ranked)


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one round: `stop`, and a one-line `reason` whenever something is wrong."""

    stop: bool
    reason: str | None = None


@dataclass
class FailurePolicy:
    """Stop (or warn) when the advisor stops advising. `max_failed_fraction`: a round in which more than this
    fraction of the questions got no answer trips the policy; so does a first round without one valid answer;
    `max_rounds_without_advice`: this many rounds in a row without one valid answer trip it. Rounds with no
    questions (nothing to ask) count for none of these."""

    mode: str = "stop"
    max_failed_fraction: float = 0.5
    max_rounds_without_advice: int = 3
    rounds: int = 0
    rounds_without_advice: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FAILURE_MODES:
            raise LLMConfigError(f"advisor failure policy must be one of {', '.join(FAILURE_MODES)}, "
                                 f"not {self.mode!r}")
        if not 0.0 <= self.max_failed_fraction < 1.0 or self.max_rounds_without_advice < 1:
            raise LLMConfigError("max_failed_fraction must lie in [0, 1) and max_rounds_without_advice be >= 1")

    def observe(self, counts: RoundCounts, label: str = "") -> Decision:
        """Record one round and decide. `label` names it in the reason (e.g. "RA round 3")."""
        self.rounds += 1
        if counts.questions <= 0:
            return Decision(False)
        where = label or f"round {self.rounds}"
        why = f" ({counts.top_reasons()})" if counts.reasons else ""
        reason = None
        self.rounds_without_advice = 0 if counts.valid > 0 else self.rounds_without_advice + 1
        if counts.failed > self.max_failed_fraction * counts.questions:
            reason = (f"the advisor failed {counts.failed} of {counts.questions} questions in {where}{why}")
        elif self.rounds == 1 and counts.valid == 0:  # a first round with nothing usable: a refinement labelled with
            # the advisor's name would train on no advice at all
            reason = (f"none of the advisor's {counts.questions} answers in its first round ({where}) was usable: "
                      f"{counts.invalid} invalid and {counts.failed} failed{why}")
        elif self.rounds_without_advice >= self.max_rounds_without_advice:
            reason = (f"no valid advice for {self.rounds_without_advice} advice round(s) in a row, up to {where}: "
                      f"{counts.invalid} invalid and {counts.failed} failed of {counts.questions}{why}")
        if reason is None:
            return Decision(False)
        if self.mode == "stop":
            return Decision(True, f"{reason}; stopping (check the advisor, or pass --advisor-failure continue to "
                                  "train on without advice)")
        return Decision(False, f"{reason}; continuing without advice (--advisor-failure continue)")

    def check(self, counts: RoundCounts, label: str = "") -> str | None:
        """`observe`, raising `AdvisorFailure` when the run must stop; returns a warning line (or None)."""
        decision = self.observe(counts, label)
        if decision.stop:
            raise AdvisorFailure(decision.reason)
        return decision.reason
