"""Host-side LLM I/O: prompts, async OpenAI-compatible client, validation, cache, transcripts,
advisors, advisor health (preflight, failure policy) and a local advisor server. Never imports jax."""

from jaxmod.llm.advisors import (
    Advisor,
    AdvisorStats,
    DelayedBackend,
    HTTPBackend,
    LocalBackend,
    NoisyBackend,
    ReplayBackend,
)
from jaxmod.llm.answers import Advised, CriticalStep, Identified, NotAsked, Rejected, validate_advice, validate_identify
from jaxmod.llm.cache import ResponseCache
from jaxmod.llm.client import ChatResult, ClientSettings, LLMClient
from jaxmod.llm.endpoint import Endpoint, advisor_spec, resolve_endpoint
from jaxmod.llm.errors import (
    AdvisorError,
    AdvisorFailure,
    AdvisorUnavailable,
    BackendUnavailable,
    LLMConfigError,
    TranscriptExists,
)
from jaxmod.llm.health import Decision, FailurePolicy, RoundCounts
from jaxmod.llm.markdown import markdown_cell, markdown_table
from jaxmod.llm.preflight import PreflightResult, apreflight, preflight
from jaxmod.llm.prompts import EpisodeView, NumericContext, StateQuery, advice_messages, identify_messages
from jaxmod.llm.secrets import RedactingFilter, redact, redact_url, register_secret
from jaxmod.llm.transcript import Transcript, current_tags, tagged

__all__ = [
    "Advised", "Advisor", "advisor_spec", "AdvisorError", "AdvisorFailure", "AdvisorStats", "AdvisorUnavailable",
    "BackendUnavailable", "ChatResult", "ClientSettings", "CriticalStep", "Decision", "DelayedBackend", "Endpoint",
    "EpisodeView", "FailurePolicy", "HTTPBackend", "Identified", "LLMClient", "LLMConfigError", "LocalBackend",
    "NoisyBackend", "NotAsked", "NumericContext", "PreflightResult", "RedactingFilter", "Rejected", "ReplayBackend", "ResponseCache", "RoundCounts",
    "StateQuery", "Transcript", "TranscriptExists", "advice_messages", "apreflight", "current_tags",
    "identify_messages", "markdown_cell", "markdown_table", "preflight", "redact", "redact_url", "register_secret",
    "resolve_endpoint", "tagged", "validate_advice", "validate_identify",
]
