"""JSONL transcripts of every advisor request and answer, and the keys replay serves them by.

A transcript belongs to one run: a new `Transcript` refuses a file that already holds records (an earlier or
crashed run) unless told to overwrite it, so runs never mix. Every record is redacted (no credentials) and
written as UTF-8 whatever the locale. Records may carry tags (`variant`, `round`, `seed`, ...) set with
`tagged(...)` around the questions; replay then serves each tagged question exactly the answer it got.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxmod.llm.cache import request_key
from jaxmod.llm.errors import TranscriptExists
from jaxmod.llm.secrets import SECRETS

_TAGS: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar("jaxmod_advice_tags", default=())


@contextlib.contextmanager
def tagged(**tags: Any) -> Iterator[dict[str, Any]]:
    """Tag every advisor question asked inside this block (in this task, and in the tasks it starts) with `tags`,
    merged over any outer tags; e.g. `with tagged(variant="RA", round=3, seed=0): await advisor.advise(qs)`.
    Tag values must be JSON scalars."""
    for k, v in tags.items():
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            raise TypeError(f"tag {k} must be a JSON scalar, got {type(v).__name__}")
    merged = {**dict(_TAGS.get()), **tags}
    token = _TAGS.set(tuple(merged.items()))
    try:
        yield merged
    finally:
        _TAGS.reset(token)


def current_tags() -> dict[str, Any]:
    """The tags of the questions asked here (empty outside `tagged`)."""
    return dict(_TAGS.get())


def prompt_key(messages: list[dict[str, str]], schema: dict[str, Any] | None) -> str:
    """Backend-independent identity of a question (used for replay)."""
    return request_key({"messages": messages, "schema": schema})


def tags_key(tags: dict[str, Any] | None) -> str:
    """Canonical text of a tag set (the empty string for none)."""
    return json.dumps(tags, sort_keys=True, separators=(",", ":")) if tags else ""


class Transcript:
    """Append-only JSONL log of one run; thread-safe; UTF-8; holds prompts and answers, never credentials.

    An existing non-empty file raises `TranscriptExists` unless `overwrite` (then it is emptied now)."""

    def __init__(self, path: str | Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and not overwrite:
            raise TranscriptExists(f"{self.path} already holds a transcript (an earlier or crashed run); a new run "
                                   "never appends to it: choose a new output folder or pass --overwrite")
        self.path.write_bytes(b"")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(SECRETS.deep({"time": time.time(), **record}), sort_keys=True, ensure_ascii=False,
                          default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def load_transcript(path: str | Path) -> list[dict[str, Any]]:
    """All records of a transcript (read as UTF-8); unreadable lines are skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
