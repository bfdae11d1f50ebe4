"""Credentials never leave the process: every string jaxmod writes, logs or hands back passes `redact`.

A secret (an API key, the password or whole user-info of a URL) is registered once, where it is read
(`jaxmod.llm.endpoint.resolve_endpoint`); `redact` then replaces it, and the forms a server may echo it in
(URL-quoted, JSON-escaped, inside a Basic authorization token), with `***`. Registration is process-wide, so
text that reaches a log line, an exception, a transcript or the console through any path is covered.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any

REDACTED = "***"
MIN_SECRET_CHARS = 4  # shorter "secrets" (e.g. a 1-letter dummy key) would mangle ordinary text if redacted


def _forms(secret: str) -> set[str]:
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


class Redactor:
    """A set of secrets and `__call__(text) -> text` with each replaced by `***` (longest first)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: list[str] = []
        self._lock = threading.Lock()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None, *, user: str | None = None) -> None:
        """Register `secret` (and, with `user`, the Basic authorization token of `user:secret`)."""
        if not secret or len(secret) < MIN_SECRET_CHARS:
            return
        forms = _forms(secret)
        if user is not None:
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            forms |= {token, f"{user}:{secret}"}
        with self._lock:
            self._forms = sorted(set(self._forms) | forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            return text
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def deep(self, value: Any) -> Any:
        """`value` (nested dicts, lists, strings) with every string redacted; keys too."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(k) if isinstance(k, str) else k: self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.deep(v) for v in value)
        return value


SECRETS = Redactor()  # every secret this process has read


def register_secret(secret: str | None, *, user: str | None = None) -> None:
    """Add `secret` to the process-wide redactor."""
    SECRETS.add(secret, user=user)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    return SECRETS(text)


_SECRET_QUERY = ("key", "token", "secret", "password", "passwd", "auth", "signature", "sig", "credential")


def redact_url(url: str) -> str:
    """`url` for display: user-info dropped, secret-looking query values replaced, registered secrets redacted.
    Never raises (an unparseable URL is returned redacted as text). Several URLs separated by commas (an endpoint
    pool, `jaxmod.llm.pool`) are redacted one by one."""
    several = re.split(r",(?=\s*https?://)", url)
    if len(several) > 1:
        return ",".join(redact_url(u) for u in several)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={REDACTED if any(w in k.lower() for w in _SECRET_QUERY) else v}" for k, v in pairs)
    return redact(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts registered secrets from each record's message (install it on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if SECRETS:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


def one_line(text: str, limit: int = 300) -> str:
    """`text` redacted, control characters and newlines collapsed to single spaces, at most `limit` characters."""
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in redact(str(text))).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
