"""Where the advisor lives: base URL, model and credentials, from arguments and the environment.

Precedence (the shared convention): an explicit argument, then `ADVISOR_*`, then `OPENAI_*` variables
(`ADVISOR_BASE_URL` / `OPENAI_BASE_URL` / `OPENAI_API_BASE`; `ADVISOR_MODEL` / `OPENAI_MODEL`; `ADVISOR_API_KEY` /
`OPENAI_API_KEY`). Credentials in the URL (`http://user:secret@host/v1`) are split off the URL, sent as HTTP Basic
authorization unless an API key is set, and registered for redaction, so the URL shown anywhere has none.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from jaxmod.llm.errors import LLMConfigError
from jaxmod.llm.secrets import redact, register_secret

URL_VARS = ("ADVISOR_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE")
MODEL_VARS = ("ADVISOR_MODEL", "OPENAI_MODEL")
KEY_VARS = ("ADVISOR_API_KEY", "OPENAI_API_KEY")
UNSET_MODELS = (None, "", "default")  # "default": the CLI's historical default, which real servers reject


@dataclass(frozen=True)
class Endpoint:
    """A resolved advisor endpoint. `base_url` carries no credentials; `model` None means "the server's only
    model" (found by `preflight` or on the client's first request)."""

    base_url: str
    model: str | None = None
    url_source: str = "argument"
    api_key: str | None = field(default=None, repr=False, compare=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    def headers(self) -> dict[str, str]:
        """The authorization header to send (none without credentials)."""
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.basic_auth is not None:
            import base64

            token = base64.b64encode(f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key) or self.basic_auth is not None

    def with_model(self, model: str | None) -> Endpoint:
        return Endpoint(self.base_url, model, self.url_source, self.api_key, self.basic_auth)


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str | None, str | None]:
    for name in names:
        value = env.get(name)
        if value and value.strip():
            return value.strip(), name
    return None, None


def normalise_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """(`url` without user-info, query or trailing slash; (user, password) from its user-info or None).
    Raises `LLMConfigError` (one line, credentials redacted) when it is not an http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as err:
        raise LLMConfigError(f"advisor URL {_shown(url)!r} is not a valid URL ({err}); use e.g. "
                             "http://127.0.0.1:8080/v1") from None
    if parts.scheme not in ("http", "https"):
        raise LLMConfigError(f"advisor URL {_shown(url)!r} must start with http:// or https:// "
                             "(e.g. http://127.0.0.1:8080/v1)")
    if not parts.hostname:
        raise LLMConfigError(f"advisor URL {_shown(url)!r} has no host; use e.g. http://127.0.0.1:8080/v1")
    auth = None
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        auth = (user, password)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), auth


def _shown(url: str) -> str:
    """A URL as it may appear in an error: user-info cut without parsing (the URL may not parse)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact(url)
    authority, slash, path = rest.partition("/")
    return redact(f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}")


def resolve_endpoint(url_arg: str | None, model_arg: str | None = None, env: Mapping[str, str] | None = None,
                     api_key_env: str | None = None) -> Endpoint:
    """The endpoint from `url_arg`/`model_arg` (None or "default" = unset) and the environment `env`
    (`os.environ` when None). `api_key_env` names one more key variable tried first (e.g. a CLI option).
    Registers the key and URL credentials for redaction. Raises `LLMConfigError` without a usable URL."""
    env = os.environ if env is None else env
    url, source = (url_arg, "argument") if url_arg else _first(env, URL_VARS)
    if not url:
        raise LLMConfigError("no advisor URL: pass --advisor (or --llm-url) http://HOST:PORT/v1, or set "
                             "OPENAI_BASE_URL")
    base, auth = normalise_url(url)
    key_vars = ((api_key_env,) if api_key_env and api_key_env not in KEY_VARS else ()) + KEY_VARS
    key, _ = _first(env, key_vars)
    register_secret(key)
    if auth is not None:
        register_secret(auth[1], user=auth[0])
        register_secret(auth[0] if auth[1] == "" else None)  # http://TOKEN@host: the user part is the secret
        if not auth[0] and not auth[1]:
            auth = None
    model = model_arg if model_arg not in UNSET_MODELS else _first(env, MODEL_VARS)[0]
    return Endpoint(base, model if model not in UNSET_MODELS else None, source or "argument", key, auth)


def advisor_spec(advisor_arg: str | None, llm_url_arg: str | None = None, env: Mapping[str, str] | None = None,
                 default: str = "scripted") -> str:
    """Which advisor to use: `--llm-url`, else `--advisor`, else `ADVISOR_BASE_URL` / `OPENAI_BASE_URL` /
    `OPENAI_API_BASE`, else `default`. (Give `--advisor` a default of None so an unset one can be told apart.)"""
    env = os.environ if env is None else env
    if llm_url_arg:
        return llm_url_arg
    if advisor_arg:
        return advisor_arg
    return next((env[v].strip() for v in URL_VARS if env.get(v, "").strip()), default)
