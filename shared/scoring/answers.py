"""The answer's shapes: the body sent to a model's endpoint and its reply read back (one JSON
object, or server-sent events piece by piece), normalised into :class:`Completion` /
:class:`StreamPiece`; and what the client gets: Azure ML's ``{"output": ...}``, OpenAI's
``chat.completion``, or its ``chat.completion.chunk`` events ending with ``[DONE]``."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from shared.scoring.contract import ChatRequest, ScoringError

# Finish reasons passed on from the endpoint as they are (anything else is left out).
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "function_call")


@dataclasses.dataclass(frozen=True)
class Completion:
    """The endpoint's answer, normalised."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class StreamPiece:
    """One piece of a streamed answer: new text, and on the last piece why it ended and the usage."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


# ---- the upstream endpoint's contract


def endpoint_request_body(request: ChatRequest) -> bytes:
    """Azure ML's scoring body, as the cookbook invokes a chat-completion deployment."""
    return orjson.dumps({"input_data": {"input_string": request.messages, "parameters": request.parameters}, "params": {}})


def parse_endpoint_reply(payload: Any, model: str) -> Completion | None:
    """``{"output": "..."}`` (optionally with finish_reason and usage); None when it is not that."""
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]  # some MLflow scoring servers wrap a single prediction in a list
    if isinstance(payload, str):
        return Completion(text=payload, model=model)
    if not isinstance(payload, dict) or not isinstance(payload.get("output"), str):
        return None
    finish = payload.get("finish_reason")
    return Completion(
        text=payload["output"],
        model=model,
        finish_reason=finish if finish in FINISH_REASONS else None,
        usage=_usage(payload.get("usage")),
    )


def parse_endpoint_stream_event(payload: Any) -> StreamPiece | None:
    """One server-sent event of a streaming deployment: ``{"output": "<new text>", "finish_reason"?,
    "usage"?}`` (the scoring contract's reply, one piece at a time: the local endpoint's form) or
    OpenAI's ``chat.completion.chunk`` (``choices[0].delta.content``); None when it is neither."""
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("output"), str):
        finish = payload.get("finish_reason")
        return StreamPiece(payload["output"], finish if finish in FINISH_REASONS else None, _usage(payload.get("usage")))
    choices = payload.get("choices")
    if isinstance(choices, list):
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        content = delta.get("content")
        finish = choice.get("finish_reason")
        return StreamPiece(content if isinstance(content, str) else "", finish if finish in FINISH_REASONS else None,
                           _usage(payload.get("usage")))
    return None


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    try:
        prompt = int(value["prompt_tokens"])
        completion = int(value["completion_tokens"])
    except (KeyError, TypeError, ValueError):
        return None
    total = value.get("total_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(total) if isinstance(total, int) else prompt + completion,
    }


# ---- responses to the client


def score_response(completion: Completion) -> dict[str, Any]:
    return {"output": completion.text}


def chat_completion_response(completion: Completion) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason or "stop",
            }
        ],
    }
    if completion.usage is not None:
        response["usage"] = completion.usage
    return response


# ---- streamed responses to the client (server-sent events, as OpenAI's API sends them)

SSE_MEDIA_TYPE = "text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_completion_chunks(pieces: Any, model: str, include_usage: bool = False) -> Any:
    """``chat.completion.chunk`` events for the pieces of one answer, then ``[DONE]``: a first chunk
    with the assistant role, one per piece of text, a last one with the finish reason (and, with
    ``include_usage``, a usage chunk whose ``choices`` is empty), as OpenAI streams them.

    A :class:`ScoringError` raised while streaming (the status line is already sent) becomes an
    ``{"error": {...}}`` event, which the official client raises as an APIError."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse_event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    yield chunk({"role": "assistant", "content": ""})
    finish, usage = None, None
    try:
        for piece in pieces:
            if piece.text:
                yield chunk({"content": piece.text})
            finish = piece.finish_reason or finish
            usage = piece.usage or usage
    except ScoringError as exc:
        yield sse_event(exc.body())
        yield SSE_DONE
        return
    yield chunk({}, finish or "stop")
    if include_usage:
        yield sse_event({**head, "choices": [], "usage": usage})
    yield SSE_DONE
