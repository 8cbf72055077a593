"""What client apps may send to the scoring routes, and the errors they get back.

Two request shapes arrive (Azure ML's cookbook contract on ``/api/score`` and OpenAI's chat
completions on ``/api/v1/chat/completions``); both are validated here and normalised into one
:class:`ChatRequest` so that routing and forwarding never look at the wire format again.
Every rejection is a :class:`ScoringError` whose JSON body names the offending field, in the
``{"error": {"message", "type", "param", "code"}}`` shape OpenAI clients already understand.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from shared.ledger.store import check_key
from shared.settings import Settings

ROLES = ("system", "user", "assistant")
# Azure ML's text-generation parameters as the cookbook sends them.
SCORE_PARAMETERS = ("temperature", "top_p", "do_sample", "max_new_tokens")
SCORE_TOP_LEVEL = ("input_data", "params", "messages", "parameters", "model")
# OpenAI request fields the endpoint cannot honour: rejected rather than silently dropped,
# so a client never believes it got e.g. JSON mode or stop sequences when it did not.
CHAT_UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "stop",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
)

# Error types (the "type" of the JSON error; OpenAI's names where one exists).
INVALID_REQUEST = "invalid_request_error"
UPSTREAM_ERROR = "upstream_error"
UNAVAILABLE = "service_unavailable"
TIMEOUT = "timeout"
INTERNAL = "internal_error"


class ScoringError(Exception):
    """A request that cannot be answered with a completion; carries its HTTP status and JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ScoringError:
    return ScoringError(400, message, param=param, code=code)


def internal_error_body() -> dict[str, Any]:
    return ScoringError(500, "internal error while scoring; see the app's logs", type=INTERNAL).body()


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """One chat completion to compute, independent of the route it came in on."""

    messages: list[dict[str, str]]  # {"role", "content"} only, validated
    parameters: dict[str, Any]  # Azure ML parameter names (SCORE_PARAMETERS), only those given
    model: str | None = None  # fine-tuned model name; None: the app's default model
    stream: bool = False  # answer as server-sent events (chat.completion.chunk), token by token
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _too_large(size: str, limit: int) -> ScoringError:
    return ScoringError(413, f"request body is {size}; the limit is {limit} bytes", code="request_too_large")


async def read_request_body(request: Any, settings: Settings) -> bytes:
    """The request's body, read only while it stays within ``SCORING_MAX_REQUEST_BYTES``.

    A declared ``Content-Length`` over the limit is refused before a byte of the body is read; a
    body without one (chunked) is read piece by piece and refused as soon as it passes the limit,
    so no client makes a worker hold more than the limit (plus one chunk) in memory.
    ``request`` is Starlette's (FastAPI's) ``Request``, as the HTTP stream types pass it.
    """
    limit = settings.scoring_max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise invalid(None, f"Content-Length {declared[:40]!r} is not a number of bytes", code="invalid_content_length")
        if int(declared) > limit:
            raise _too_large(f"{int(declared)} bytes (Content-Length)", limit)
    pieces: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit} bytes", limit)
        if chunk:
            pieces.append(chunk)
    return b"".join(pieces)


def read_json_object(body: bytes, settings: Settings) -> dict[str, Any]:
    if len(body) > settings.scoring_max_request_bytes:
        raise ScoringError(
            413, f"request body is {len(body)} bytes; the limit is {settings.scoring_max_request_bytes}", code="request_too_large"
        )
    if not body.strip():
        raise invalid(None, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(None, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(None, f"request body must be a JSON object, got {_json_type(data)}", code="invalid_type")
    return data


def parse_score_request(body: bytes, settings: Settings) -> ChatRequest:
    """``{"input_data": {"input_string": [...], "parameters": {...}}, "params": {}}`` or ``{"messages", "parameters"}``."""
    data = read_json_object(body, settings)
    for key in data:
        if key not in SCORE_TOP_LEVEL:
            raise invalid(key, f"unknown field {key!r}; expected input_data (Azure ML) or messages", code="unknown_field")
    if "input_data" in data and "messages" in data:
        raise invalid("messages", "send either input_data (Azure ML shape) or messages, not both", code="ambiguous")
    if "params" in data and not isinstance(data["params"], dict):
        raise invalid("params", "params must be a JSON object", code="invalid_type")
    if "input_data" in data:
        input_data = data["input_data"]
        if not isinstance(input_data, dict):
            raise invalid("input_data", "input_data must be a JSON object with input_string and parameters", code="invalid_type")
        for key in input_data:
            if key not in ("input_string", "parameters"):
                raise invalid(f"input_data.{key}", f"unknown field input_data.{key}", code="unknown_field")
        if "input_string" not in input_data:
            raise invalid("input_data.input_string", "input_data.input_string (the list of messages) is required", code="missing")
        messages = parse_messages(input_data["input_string"], "input_data.input_string")
        parameters = parse_score_parameters(input_data.get("parameters"), "input_data.parameters", settings)
    elif "messages" in data:
        messages = parse_messages(data["messages"], "messages")
        parameters = parse_score_parameters(data.get("parameters"), "parameters", settings)
    else:
        raise invalid("input_data", "input_data.input_string (Azure ML shape) or messages is required", code="missing")
    return ChatRequest(messages=messages, parameters=parameters, model=parse_model(data.get("model")))


def parse_chat_completion_request(body: bytes, settings: Settings) -> ChatRequest:
    """OpenAI's chat completions request, restricted to what the endpoint can honour."""
    data = read_json_object(body, settings)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", f"stream must be true or false, got {_json_type(stream)}", code="invalid_type")
    include_usage = _stream_options(data.get("stream_options"), bool(stream))
    if data.get("n") not in (None, 1):
        raise invalid("n", "only n = 1 is supported", code="unsupported")
    for key in CHAT_UNSUPPORTED:
        if data.get(key) not in (None, False, [], {}):
            raise invalid(key, f"{key} is not supported by the fine-tuned model's endpoint", code="unsupported")
    response_format = data.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid("response_format", 'only response_format {"type": "text"} is supported', code="unsupported")
    if "messages" not in data:
        raise invalid("messages", "messages is required", code="missing")
    messages = parse_messages(data["messages"], "messages")

    parameters: dict[str, Any] = {}
    temperature = _number(data.get("temperature"), "temperature", 0.0, 2.0, low_inclusive=True)
    top_p = _number(data.get("top_p"), "top_p", 0.0, 1.0, low_inclusive=False)
    max_tokens = _max_tokens(data.get("max_tokens"), "max_tokens", settings)
    max_completion = _max_tokens(data.get("max_completion_tokens"), "max_completion_tokens", settings)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise invalid(
            "max_completion_tokens", "max_tokens and max_completion_tokens disagree; send one of them", code="ambiguous"
        )
    limit = max_completion if max_completion is not None else max_tokens
    if temperature == 0:
        # OpenAI's temperature 0 means greedy; Hugging Face generation wants do_sample=False
        # and rejects temperature 0 when sampling.
        parameters["do_sample"] = False
    else:
        if temperature is not None:
            parameters["temperature"] = temperature
        if top_p is not None:
            parameters["top_p"] = top_p
        if temperature is not None or top_p is not None:
            parameters["do_sample"] = True
    if limit is not None:
        parameters["max_new_tokens"] = limit
    return ChatRequest(messages=messages, parameters=parameters, model=parse_model(data.get("model")),
                       stream=bool(stream), include_usage=include_usage)


def _stream_options(value: Any, stream: bool) -> bool:
    """``stream_options`` (OpenAI: only with ``stream: true``) -> include_usage."""
    if value is None:
        return False
    if not stream:
        raise invalid("stream_options", "stream_options is only allowed with stream: true", code="invalid_value")
    if not isinstance(value, dict):
        raise invalid("stream_options", "stream_options must be an object", code="invalid_type")
    for key in value:
        if key != "include_usage":
            raise invalid(f"stream_options.{key}", f"unknown field stream_options.{key}", code="unknown_field")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise invalid("stream_options.include_usage", "stream_options.include_usage must be true or false", code="invalid_type")
    return include


# A model name (or each part of ``name:version``) is at most this long, so that the ledger's
# ``name:version`` record keys stay within its 512-character key limit.
MAX_MODEL_NAME_CHARS = 255


def parse_model(value: Any) -> str | None:
    """The requested model name, checked against the ledger's key rules before any lookup.

    ``name`` or ``name:version`` (the parts split at ``:``): each part must be a valid ledger
    key (no ``/ \\ # ?`` or control characters) of at most MAX_MODEL_NAME_CHARS characters.
    A name with ``/`` (OpenAI-style ``org/model``) is not mapped to anything: the app serves
    only its own fine-tuned models, whose names never hold ``/``, so it is answered as an
    unknown model (404 ``model_not_found``) naming the value. Other invalid names get 400.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid("model", "model must be a non-empty string (a fine-tuned model name)", code="invalid_type")
    name = value.strip()
    shown = _shown(name)
    if "/" in name:
        raise ScoringError(
            404,
            f"model {shown} does not exist: this app serves only its own fine-tuned models, whose names never "
            "contain '/' (organisation-prefixed names such as 'org/model' are not mapped; GET /api/v1/models lists them)",
            param="model",
            code="model_not_found",
        )
    for part in name.split(":"):
        if not part:
            raise invalid("model", f"model {shown} is not a valid model name: expected name or name:version, with no empty part")
        if len(part) > MAX_MODEL_NAME_CHARS:
            raise invalid("model", f"model {shown} is not a valid model name: a name part is {len(part)} characters long, "
                          f"the limit is {MAX_MODEL_NAME_CHARS}")
        bad = _first_bad_key_char(part)
        if bad is not None:
            raise invalid("model", f"model {shown} is not a valid model name: it contains {bad!r} "
                          "(model names may not contain / \\ # ? or control characters)")
    return name


def _first_bad_key_char(part: str) -> str | None:
    """The first character the ledger's key rules refuse (None when the part is a valid key)."""
    try:
        check_key(part)
        return None
    except ValueError:
        pass
    for ch in part:
        try:
            check_key(ch)
        except ValueError:
            return ch
    return None


def _shown(value: str, limit: int = 80) -> str:
    """A client-supplied value quoted for an error message: control characters escaped, long ones cut."""
    text = repr(value[:limit])
    return f"{text}... ({len(value)} characters)" if len(value) > limit else text


def parse_messages(value: Any, param: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise invalid(param, f"{param} must be a list of messages, got {_json_type(value)}", code="invalid_type")
    if not value:
        raise invalid(param, f"{param} must contain at least one message", code="empty")
    messages: list[dict[str, str]] = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"{where} must be an object with role and content, got {_json_type(item)}", code="invalid_type")
        role = item.get("role")
        if role not in ROLES:
            raise invalid(
                f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}"[:300], code="invalid_role"
            )
        content = item.get("content")
        if not isinstance(content, str):
            raise invalid(f"{where}.content", f"{where}.content must be a string, got {_json_type(content)}", code="invalid_type")
        if not content.strip():
            raise invalid(f"{where}.content", f"{where}.content is empty", code="empty")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        last = f"{param}[{len(messages) - 1}].role"
        raise invalid(last, f"the last message must come from the user (got {messages[-1]['role']})", code="invalid_role")
    return messages


def parse_score_parameters(value: Any, param: str, settings: Settings) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(param, f"{param} must be a JSON object", code="invalid_type")
    for key in value:
        if key not in SCORE_PARAMETERS:
            raise invalid(
                f"{param}.{key}", f"unknown parameter {key!r}; supported: {', '.join(SCORE_PARAMETERS)}", code="unknown_field"
            )
    out: dict[str, Any] = {}
    temperature = _number(value.get("temperature"), f"{param}.temperature", 0.0, 2.0, low_inclusive=True)
    top_p = _number(value.get("top_p"), f"{param}.top_p", 0.0, 1.0, low_inclusive=False)
    max_new = _max_tokens(value.get("max_new_tokens"), f"{param}.max_new_tokens", settings)
    do_sample = value.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise invalid(f"{param}.do_sample", f"{param}.do_sample must be true or false", code="invalid_type")
    for key, v in (("temperature", temperature), ("top_p", top_p), ("do_sample", do_sample), ("max_new_tokens", max_new)):
        if v is not None:
            out[key] = v
    return out


def _number(value: Any, param: str, low: float, high: float, *, low_inclusive: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(param, f"{param} must be a number, got {_json_type(value)}", code="invalid_type")
    ok_low = value >= low if low_inclusive else value > low
    if not ok_low or value > high:
        bracket = "[" if low_inclusive else "("
        raise invalid(param, f"{param} must be in {bracket}{low:g}, {high:g}], got {value}", code="out_of_range")
    return value


def _max_tokens(value: Any, param: str, settings: Settings) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(param, f"{param} must be an integer, got {_json_type(value)}", code="invalid_type")
    if not 1 <= value <= settings.scoring_max_new_tokens:
        raise invalid(param, f"{param} must be between 1 and {settings.scoring_max_new_tokens}, got {value}", code="out_of_range")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
