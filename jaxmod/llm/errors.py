"""The advisor's user-facing errors: each message is one line that says what is wrong and what to do.

`AdvisorError` is also exported as `jaxmod.llm.server.BackendUnavailable` (its historical name), which the CLI
already turns into `jaxmod: error: <message>` and exit status 2; every error below is one of those."""

from __future__ import annotations


class AdvisorError(RuntimeError):
    """The advisor cannot be used; the message (one line, credentials redacted) says why and what to do."""


BackendUnavailable = AdvisorError  # a backend's optional dependency is missing, the embedded server failed, ...


class LLMConfigError(AdvisorError, ValueError):
    """Missing or bad client settings (no base URL, a URL without a host, a negative timeout)."""


class AdvisorUnavailable(AdvisorError):
    """The preflight found no usable server: nothing listens, the key is rejected, the URL lacks /v1, the model is
    not served, or a test completion failed."""


class AdvisorFailure(AdvisorError):
    """The failure policy stopped a run: most answers of a round failed, or no valid advice arrived for N rounds."""


class TranscriptExists(LLMConfigError, FileExistsError):
    """A transcript file already holds records (an earlier or crashed run); a new run never appends to it."""
