"""Host-side LLM I/O: prompts, async OpenAI-compatible client, validation, cache, transcripts,
advisors and a local advisor server. Never imports jax."""

from jaxmod.llm.advisors import (
    Advisor,
    AdvisorStats,
    DelayedBackend,
    HTTPBackend,
    LocalBackend,
    NoisyBackend,
    ReplayBackend,
)
from jaxmod.llm.answers import Advised, CriticalStep, Identified, Rejected, validate_advice, validate_identify
from jaxmod.llm.cache import ResponseCache
from jaxmod.llm.client import ChatResult, ClientSettings, LLMClient, LLMConfigError
from jaxmod.llm.prompts import EpisodeView, NumericContext, StateQuery, advice_messages, identify_messages
from jaxmod.llm.transcript import Transcript

__all__ = [
    "Advised", "Advisor", "AdvisorStats", "ChatResult", "ClientSettings", "CriticalStep", "DelayedBackend",
    "EpisodeView", "HTTPBackend", "Identified", "LLMClient", "LLMConfigError", "LocalBackend", "NoisyBackend",
    "NumericContext", "Rejected", "ReplayBackend", "ResponseCache", "StateQuery", "Transcript",
    "advice_messages", "identify_messages", "validate_advice", "validate_identify",
]
