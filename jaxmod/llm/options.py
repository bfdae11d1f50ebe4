"""Command-line options for an HTTP advisor's limits and failure policy, for `jaxmod ultra` (and any other CLI).

    add_advisor_options(parser)                      # --advisor-timeout, --advisor-deadline, ... (no --model)
    args = parser.parse_args()
    spec = advisor_spec(args.advisor, args.llm_url)  # an explicit advisor, else ADVISOR_/OPENAI_BASE_URL, else scripted
    settings = ClientSettings(base_url=url, model=args.model, **client_overrides(args))
    policy = failure_policy(args)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from jaxmod.llm.endpoint import URL_VARS
from jaxmod.llm.health import FAILURE_MODES, FailurePolicy

# option -> (ClientSettings field, type, help)
_LIMITS: dict[str, tuple[str, type, str]] = {
    "--advisor-timeout": ("timeout_s", float, "seconds one attempt may take, from connecting to the answer's last "
                                              "byte (default 60; the embedded SmolLM2 uses 120)"),
    "--advisor-deadline": ("deadline_s", float, "seconds one question may take with all its retries (default 300)"),
    "--advisor-max-tokens": ("max_tokens", int, "max_tokens asked for per answer (default 512)"),
    "--advisor-temperature": ("temperature", float, "sampling temperature (default 0)"),
    "--advisor-max-response-bytes": ("max_response_bytes", int, "largest response body read (default 4 MiB)"),
    "--advisor-retries": ("max_retries", int, "retries per question on timeouts, 429 and 5xx (default 4)"),
}


def add_advisor_options(parser: argparse.ArgumentParser) -> None:
    """Add the advisor limit and failure-policy options to `parser` (defaults None = the library's defaults)."""
    group = parser.add_argument_group("advisor limits (HTTP advisors)")
    for flag, (_, kind, text) in _LIMITS.items():
        group.add_argument(flag, type=kind, default=None, metavar="N", help=text)
    group.add_argument("--advisor-failure", choices=FAILURE_MODES, default="stop",
                       help="when the advisor fails (most answers of a round, or no valid advice for N rounds): stop "
                            "the run with an error (default) or continue without advice")
    group.add_argument("--advisor-failure-rounds", type=int, default=3, metavar="N",
                       help="rounds in a row without one valid answer before the failure policy trips (default 3)")


def client_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `ClientSettings` fields the user set (options left at None are omitted)."""
    return {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _LIMITS.items()
            if getattr(args, flag[2:].replace("-", "_"), None) is not None}


def failure_policy(args: argparse.Namespace) -> FailurePolicy:
    """The `FailurePolicy` the user chose (raises `LLMConfigError` on bad values)."""
    return FailurePolicy(mode=args.advisor_failure, max_rounds_without_advice=args.advisor_failure_rounds)


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
