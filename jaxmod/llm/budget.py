"""Prompt token budgets: a question must fit the model's context window together with its answer.

A server that overflows answers with an error (llama-server 400 `exceed_context_size_error`, llama-cpp-python 500
"Requested tokens (4516) exceed context window of 4096"), so a prompt that does not fit is never sent: its text is
windowed down until it fits (`jaxmod.ultra.advise`), and a question that still does not fit is dropped and counted
(`Advisor`).

The count is a tokenizer-free upper bound (jaxmod's choice): every token of a byte-level BPE or a SentencePiece
tokenizer with byte fallback (GPT-2/Llama/SmolLM2/Qwen/Mistral families) spells at least one byte of the text, so a
message never takes more tokens than its UTF-8 bytes, plus the chat template's own tokens (role markers, separators:
`TEMPLATE_TOKENS_PER_MESSAGE` per message and `TEMPLATE_TOKENS` for the assistant's turn). Measured on SmolLM2-135M
(tests/test_smollm2.py) the true count is 0.60-0.64 of this bound on whole-episode CartPole and MountainCar
prompts and 0.39 on multiple-choice ones: conservative, never short.
"""

from __future__ import annotations

from collections.abc import Sequence

TEMPLATE_TOKENS_PER_MESSAGE = 8  # <|im_start|>role\n ... <|im_end|>\n and the like, with margin
TEMPLATE_TOKENS = 16  # the generation prompt (<|im_start|>assistant\n) and BOS, with margin
DEFAULT_CONTEXT_TOKENS = 4096  # when neither the server nor the config says: llama.cpp's usual -c / n_ctx

__all__ = ["DEFAULT_CONTEXT_TOKENS", "PromptTooLong", "estimate_tokens", "prompt_budget"]


class PromptTooLong(ValueError):
    """A question whose prompt cannot fit the context window even after windowing."""


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """An upper bound on the prompt tokens of chat `messages` (see the module docstring): UTF-8 bytes of every
    content plus the template's tokens."""
    return TEMPLATE_TOKENS + sum(len(str(m.get("content", "")).encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE
                                 for m in messages)


def prompt_budget(context_tokens: int, max_tokens: int) -> int:
    """Tokens a prompt may take: the context window less the answer's `max_tokens` (llama.cpp and vLLM reject a
    request whose prompt plus max_tokens exceeds the context). Raises ValueError if nothing is left."""
    budget = int(context_tokens) - int(max_tokens)
    if budget < 256:
        raise ValueError(f"a context of {context_tokens} tokens leaves {budget} for the prompt after the answer's "
                         f"{max_tokens} max_tokens: raise --advisor-context-tokens or lower --advisor-max-tokens")
    return budget
