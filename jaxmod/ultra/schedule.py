"""When fresh advice is swapped into the refinement: the advice schedule of the refinement loop.

- `AsyncSchedule` (default): a round's answers are swapped in before the first chunk after they arrive, as they
  arrive (a slow advisor's first answers act while it is still answering the rest); the device never waits for
  the advisor.
- `SyncSchedule`: every round is waited for before the next chunk (reproducible, replayable; waiting counts as
  stall).
- `ReplaySchedule`: swaps exactly before the chunks a recorded run swapped before (its `ultra.json`), waiting
  there for the answers it swapped in (the whole round, or the part it recorded as `taken`) and never earlier;
  with that run's transcript as the advisor an asynchronous run replays exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AsyncSchedule:
    """Swap advice in as soon as a round has answered; never wait. The advisor is paced (`jaxmod.llm.pacing`):
    answers that could not arrive before the last swap are not asked for."""

    swaps_when_ready = True
    paces = True

    def waits_before(self, chunk: int) -> bool:
        return False

    def taken_before(self, chunk: int) -> None:
        return None


@dataclass(frozen=True)
class SyncSchedule:
    """Wait for every round before the next chunk."""

    swaps_when_ready = True
    paces = False

    def waits_before(self, chunk: int) -> bool:
        return True

    def taken_before(self, chunk: int) -> None:
        return None


@dataclass(frozen=True)
class ReplaySchedule:
    """Swap before exactly `chunks` (1-based chunk indices), waiting for the pending round there; where the
    recorded run swapped in part of a round, `taken[chunk]` is ([seed, episode, step] of the answers it packed,
    whether the round was complete then)."""

    chunks: frozenset[int]
    taken: dict[int, tuple[tuple[tuple[int, ...], ...], bool]] = field(default_factory=dict)
    swaps_when_ready = False
    paces = False  # the transcript says which questions the recorded run did not ask

    def waits_before(self, chunk: int) -> bool:
        return chunk in self.chunks

    def taken_before(self, chunk: int) -> tuple[tuple[tuple[int, ...], ...], bool] | None:
        """The answers to pack before `chunk` and whether the round ends there (None: the whole round)."""
        return self.taken.get(chunk)

    @classmethod
    def of_run(cls, summary: str | Path, variant: str) -> ReplaySchedule:
        """The chunks before which `variant` swapped in new advice in the run whose `ultra.json` is `summary`, and
        the answers of partly packed rounds. Raises FileNotFoundError / ValueError with what to pass instead."""
        path = Path(summary)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))[variant]["chunks"]
        except FileNotFoundError:
            raise FileNotFoundError(f"no run summary at {path}: pass the ultra.json of the run to replay") from None
        except KeyError:
            raise ValueError(f"{path} has no refinement of {variant!r} to take a swap schedule from") from None
        swapped = [row for row in rows if row.get("swapped_advice")]
        return cls(frozenset(int(row["chunk"]) for row in swapped),
                   {int(row["chunk"]): (tuple(tuple(int(x) for x in k) for k in row["taken"]),
                                        bool(row.get("round_complete", True)))
                    for row in swapped if "taken" in row})


Schedule = AsyncSchedule | SyncSchedule | ReplaySchedule
