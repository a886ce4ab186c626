"""The OpenAI wire format as the guard needs it: the conversation a request screens, the answer text a response or a
stream event carries, the answers and errors the guard writes itself, and server-sent events.

Upstream events are forwarded as the bytes they arrived as; only the guard's own chunks are serialised here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from constitutional.models.base import Message

Endpoint = Literal["chat", "completions"]
DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """A request the guard cannot screen, so it does not forward it (400)."""


@dataclass
class Exchange:
    """One request as the guard sees it: what it screens and how to answer it."""

    endpoint: Endpoint
    raw: bytes  # forwarded as it came: fields the guard does not know reach the upstream unchanged
    body: dict[str, Any]
    conversations: list[list[Message]]  # one per prompt (a completions request may carry several)
    request_id: str

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def choices(self) -> int:
        n = self.body.get("n", 1)
        return n if isinstance(n, int) and n > 0 else 1


def parse_request(endpoint: Endpoint, raw: bytes, request_id: str) -> Exchange:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"the request body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if endpoint == "chat":
        conversations = [_messages(body.get("messages"))]
    else:
        conversations = [[{"role": "user", "content": prompt}] for prompt in _prompts(body.get("prompt"))]
    return Exchange(endpoint, raw, body, conversations, request_id)


def _messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
    conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'")
        conversation.append({"role": message["role"], "content": _content(message.get("content"), i)})
    return conversation


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts (images are not screened)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and "text" in part)
    raise BadRequest(f"messages[{i}].content must be a string or a list of content parts")


def _prompts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    # Token-id prompts cannot be screened without the upstream's tokenizer: refused rather than let through.
    raise BadRequest("'prompt' must be a string or a list of strings (the guard screens text, not token ids)")


def chunk_texts(endpoint: Endpoint, event: dict[str, Any]) -> dict[int, str]:
    """Answer text a stream event adds, per choice index: content, refusal and tool-call arguments alike."""
    texts = {}
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        text = choice.get("text") if endpoint == "completions" else _delta_text(choice.get("delta") or {})
        if text:
            texts[choice.get("index", 0)] = text
    return texts


def answer_texts(endpoint: Endpoint, response: dict[str, Any]) -> dict[int, str]:
    """The whole answer per choice of a non-streamed response."""
    texts = {}
    for choice in response.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint == "completions":
            texts[choice.get("index", 0)] = choice.get("text") or ""
        else:
            texts[choice.get("index", 0)] = _delta_text(choice.get("message") or {})
    return texts


def _delta_text(message: dict[str, Any]) -> str:
    parts = [message.get("content"), message.get("refusal")]
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            parts.append((call.get("function") or {}).get("arguments"))
    return "".join(part for part in parts if isinstance(part, str))


def refusal_response(exchange: Exchange, message: str, guard: dict[str, Any]) -> dict[str, Any]:
    """A complete, well-formed answer that refuses: finish_reason content_filter, the guard's reason alongside."""
    created = int(time.time())
    if exchange.endpoint == "chat":
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": message},
                "finish_reason": "content_filter",
                "logprobs": None,
            }
            for i in range(exchange.choices)
        ]
        kind = "chat.completion"
    else:
        count = exchange.choices * len(exchange.conversations)
        choices = [
            {"index": i, "text": message, "finish_reason": "content_filter", "logprobs": None} for i in range(count)
        ]
        kind = "text_completion"
    return {
        "id": f"guard-{exchange.request_id}",
        "object": kind,
        "created": created,
        "model": exchange.model,
        "choices": choices,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "guard": guard,
    }


def refused_choice(endpoint: Endpoint, choice: dict[str, Any], message: str) -> None:
    """Replace a non-streamed choice's answer with the refusal, in place."""
    if endpoint == "chat":
        choice["message"] = {"role": "assistant", "content": message}
    else:
        choice["text"] = message
    choice["finish_reason"] = "content_filter"


def final_chunk(
    endpoint: Endpoint, head: dict[str, Any], choices: list[int], content: str, guard: dict[str, Any], first=False
) -> bytes:
    """The stream event that ends a halted answer: the refusal text and finish_reason content_filter per choice.

    `head` carries the upstream's id, model and created, so the chunk belongs to the same completion; the `first`
    chunk of a chat stream also names the role.
    """
    if endpoint == "chat":
        delta = {"role": "assistant", "content": content} if first else {"content": content}
        rows = [{"index": i, "delta": delta, "finish_reason": "content_filter"} for i in choices]
        kind = "chat.completion.chunk"
    else:
        rows = [{"index": i, "text": content, "finish_reason": "content_filter", "logprobs": None} for i in choices]
        kind = "text_completion"
    event = {**head, "object": kind, "choices": rows, "guard": guard}
    return event_bytes(event)


def refusal_stream(exchange: Exchange, message: str, guard: dict[str, Any]) -> bytes:
    """A blocked streaming request's whole stream: one chunk with the refusal, then [DONE]."""
    head = {"id": f"guard-{exchange.request_id}", "created": int(time.time()), "model": exchange.model}
    count = exchange.choices * (len(exchange.conversations) if exchange.endpoint == "completions" else 1)
    return final_chunk(exchange.endpoint, head, list(range(count)), message, guard, first=True) + DONE


def error_body(message: str, kind: str, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def event_bytes(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class EventSplitter:
    """Cuts a server-sent-event byte stream into events, whatever the network's chunking.

    Line ends are normalised to "\\n" (sse-starlette, which llama-cpp-python's server uses, writes "\\r\\n"), so an
    event is everything up to a blank line.
    """

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        data = self._buffer + data
        # A "\r" at the end may be half of a "\r\n" whose "\n" has not arrived yet.
        keep = b"\r" if data.endswith(b"\r") else b""
        if keep:
            data = data[:-1]
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = data.split(b"\n\n")
        self._buffer = rest + keep
        return [event for event in events if event]


def event_data(event: bytes) -> bytes | None:
    """The data of one event (its `data:` lines joined); None for comments and keep-alives."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
