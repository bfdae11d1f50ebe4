"""When fresh advice is swapped into the refinement: the advice schedule of the refinement loop.

- `AsyncSchedule` (default): a round's answers are swapped in before the first chunk after they arrive; the
  device never waits for the advisor.
- `SyncSchedule`: every round is waited for before the next chunk (reproducible, replayable; waiting counts as
  stall).
- `ReplaySchedule`: swaps exactly before the chunks a recorded run swapped before (its `ultra.json`), waiting
  for the round there and never earlier; with that run's transcript as the advisor an asynchronous run replays
  exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AsyncSchedule:
    """Swap advice in as soon as a round has answered; never wait."""

    swaps_when_ready = True

    def waits_before(self, chunk: int) -> bool:
        return False


@dataclass(frozen=True)
class SyncSchedule:
    """Wait for every round before the next chunk."""

    swaps_when_ready = True

    def waits_before(self, chunk: int) -> bool:
        return True


@dataclass(frozen=True)
class ReplaySchedule:
    """Swap before exactly `chunks` (1-based chunk indices), waiting for the pending round there."""

    chunks: frozenset[int]
    swaps_when_ready = False

    def waits_before(self, chunk: int) -> bool:
        return chunk in self.chunks

    @classmethod
    def of_run(cls, summary: str | Path, variant: str) -> ReplaySchedule:
        """The chunks before which `variant` swapped in new advice in the run whose `ultra.json` is `summary`.
        Raises FileNotFoundError / ValueError with what to pass instead."""
        path = Path(summary)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))[variant]["chunks"]
        except FileNotFoundError:
            raise FileNotFoundError(f"no run summary at {path}: pass the ultra.json of the run to replay") from None
        except KeyError:
            raise ValueError(f"{path} has no refinement of {variant!r} to take a swap schedule from") from None
        return cls(frozenset(int(row["chunk"]) for row in rows if row.get("swapped_advice")))


Schedule = AsyncSchedule | SyncSchedule | ReplaySchedule
