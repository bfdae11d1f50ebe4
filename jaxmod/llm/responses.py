"""Reading a chat-completion response body, in every shape real servers send.

- one JSON object (`choices[0].message.content`), content as a string or a list of text parts;
- `content: null` (or blank) with the answer in `reasoning_content` (vLLM, DeepSeek) or `reasoning` (vLLM >= 0.10,
  Ollama): the final answer is taken from the reasoning, the last JSON object in it (drafts come first);
- a stream of server-sent events (`data: {...}` chunks with `choices[0].delta`, ending with `data: [DONE]`), from
  servers that stream whatever `stream` says: the chunks are assembled;
- token log-probabilities (`choices[0].logprobs.content`, asked with `logprobs: true`) where present, checked by
  `jaxmod.llm.logprobs.parse_token_logprobs` (malformed ones are dropped, never an error).
Nothing here does I/O; malformed bodies raise `MalformedResponse` with a one-line reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jaxmod.llm.answers import extract_last_json, strip_reasoning
from jaxmod.llm.logprobs import TokenLogprob, parse_token_logprobs

REASONING_FIELDS = ("reasoning_content", "reasoning")


class MalformedResponse(ValueError):
    """The body is not a chat completion; the message says what was missing."""


@dataclass
class Completion:
    """What a response body says: the answer text (and where it came from), the raw reasoning, and metadata."""

    content: str | None
    reasoning: str | None = None
    source: str = "content"  # "content" | "reasoning" (content was null or blank) | "none"
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    streamed: bool = False
    logprobs: tuple[TokenLogprob, ...] | None = None  # the answer's tokens, where the server returned them (checked)


def _text(value: Any) -> str | None:
    """A message field as text: a string, or the text parts of an OpenAI content-part list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _usage(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {k: int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _finish(content: str | None, reasoning: str | None, **meta: Any) -> Completion:
    """Choose the answer: the content unless it is empty once reasoning blocks are removed, else the last JSON
    object of the reasoning (or the reasoning itself, which validation will then reject)."""
    if content is not None and strip_reasoning(content).strip():
        return Completion(content, reasoning, "content", **meta)
    if reasoning and reasoning.strip():
        try:
            answer = json.dumps(extract_last_json(reasoning), ensure_ascii=False)
        except ValueError:
            answer = reasoning
        return Completion(answer, reasoning, "reasoning", **meta)
    return Completion(content, reasoning, "none", **meta)


def _error_message(data: Any) -> str | None:
    err = data.get("error") if isinstance(data, dict) else None
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)
    return str(err)


def parse_json_body(data: Any) -> Completion:
    """A non-streamed completion (already decoded JSON)."""
    if not isinstance(data, dict):
        raise MalformedResponse("malformed response body (not a JSON object)")
    if (msg := _error_message(data)) is not None and "choices" not in data:
        raise MalformedResponse(f"error in a 200 response: {msg}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("malformed response body (no choices[0])")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        if isinstance(choice.get("text"), str):  # a /completions-style choice
            message = {"content": choice["text"]}
        else:
            raise MalformedResponse("malformed response body (no choices[0].message)")
    if "content" not in message and not any(f in message for f in REASONING_FIELDS):
        raise MalformedResponse("malformed response body (no choices[0].message.content)")
    content = _text(message.get("content"))
    if message.get("content") is not None and content is None:
        raise MalformedResponse("content is not text")
    reasoning = next((t for f in REASONING_FIELDS if (t := _text(message.get(f)))), None)
    finish = choice.get("finish_reason")
    return _finish(content, reasoning, finish_reason=finish if isinstance(finish, str) else None,
                   usage=_usage(data.get("usage")), model=data.get("model") if isinstance(data.get("model"), str)
                   else None, logprobs=parse_token_logprobs(choice.get("logprobs")))


def parse_sse_body(body: str) -> Completion:
    """A streamed completion: `data:` events of `chat.completion.chunk` objects, assembled."""
    content: list[str] = []
    reasoning: list[str] = []
    tokens: list = []  # `logprobs.content` entries of every chunk, in order
    finish: str | None = None
    usage: dict[str, int] = {}
    model: str | None = None
    seen_choice = done = False
    for event in body.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if not data.strip():
            continue
        if data.strip() == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            raise MalformedResponse("malformed event in a streamed response (not JSON)") from None
        if (msg := _error_message(chunk)) is not None:
            raise MalformedResponse(f"error event in a streamed response: {msg}")
        if not isinstance(chunk, dict):
            raise MalformedResponse("malformed event in a streamed response (not a JSON object)")
        model = chunk.get("model") if isinstance(chunk.get("model"), str) else model
        usage = _usage(chunk.get("usage")) or usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            seen_choice = True
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message")
            if isinstance(delta, dict):
                if (t := _text(delta.get("content"))) is not None:
                    content.append(t)
                for f in REASONING_FIELDS:
                    if (t := _text(delta.get(f))) is not None:
                        reasoning.append(t)
                        break
            lp = choice.get("logprobs")
            lp = lp.get("content") if isinstance(lp, dict) else None
            if isinstance(lp, list):
                tokens.extend(lp)
            if isinstance(choice.get("finish_reason"), str):
                finish = choice["finish_reason"]
    if not seen_choice:
        raise MalformedResponse("streamed response without any choice")
    if not done and finish is None:
        raise MalformedResponse("streamed response ended early (no finish_reason and no [DONE])")
    completion = _finish("".join(content) if content else None, "".join(reasoning) or None, finish_reason=finish,
                         usage=usage, model=model, logprobs=parse_token_logprobs(tokens))
    completion.streamed = True
    return completion


def parse_body(body: bytes, content_type: str | None) -> Completion:
    """A response body as a `Completion`, whichever shape it has; raises `MalformedResponse`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("response body is not UTF-8") from None
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "text/event-stream" or text.lstrip().startswith("data:"):
        return parse_sse_body(text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedResponse("malformed response body (not JSON)") from None
    return parse_json_body(data)
