"""JSONL transcripts of every advisor request and answer, and replay from them without a server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from jaxmod.llm.cache import request_key


def prompt_key(messages: list[dict[str, str]], schema: dict[str, Any] | None) -> str:
    """Backend-independent identity of a question (used for replay)."""
    return request_key({"messages": messages, "schema": schema})


class Transcript:
    """Append-only JSONL log; thread-safe. Holds prompts and answers, never credentials."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": time.time(), **record}, sort_keys=True, ensure_ascii=False)
        with self._lock, open(self.path, "a") as fh:
            fh.write(line + "\n")


def load_transcript(path: str | Path) -> list[dict[str, Any]]:
    """All records of a transcript; unreadable lines are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
