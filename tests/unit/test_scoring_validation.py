"""Scoring request validation: every rejection is a JSON error naming the field (no storage needed).

The decorated functions are called with real ASGI requests (FastAPI types, as Azure passes them); rejected requests
never reach the ledger or an endpoint, so these run without Azurite.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from functions import scoring as scoring_functions
from shared.endpoints.versions import version_key
from shared.scoring.answers import chat_completion_response, endpoint_request_body, parse_endpoint_reply, score_response
from shared.scoring.contract import ChatRequest, parse_chat_completion_request, parse_score_request
from shared.scoring.scorer import reset_scorers
from shared.scoring.upstream import retry_after_seconds
from shared.settings import Settings, use_settings
from tests.support import call_http, make_settings

SCORE = scoring_functions.score.build().get_user_function()
CHAT = scoring_functions.chat_completions.build().get_user_function()

USER = {"role": "user", "content": "hello"}


def call(fn: Any, body: bytes | dict[str, Any] | list[Any]) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = call_http(fn, "POST", "http://localhost/api/x", raw, {"content-type": "application/json"})
    assert response.media_type == "application/json"
    return response.status, orjson.loads(response.body)


@pytest.fixture(autouse=True)
def settings(unit_settings: Settings) -> Iterator[Settings]:
    yield unit_settings
    reset_scorers()


def test_routes_are_function_level_http_triggers() -> None:
    expected = {
        "score": ("score", ["POST"]),
        "chat_completions": ("v1/chat/completions", ["POST"]),
        "list_models": ("v1/models", ["GET"]),
    }
    for name, (route, methods) in expected.items():
        binding = orjson.loads(getattr(scoring_functions, name).build().get_function_json())["bindings"][0]
        assert binding["type"] == "httpTrigger"
        assert (binding["route"], binding["methods"], binding["authLevel"]) == (route, methods, "FUNCTION")


def cookbook(messages: Any = None, parameters: Any = None, **extra: Any) -> dict[str, Any]:
    input_data: dict[str, Any] = {"input_string": [USER] if messages is None else messages}
    if parameters is not None:
        input_data["parameters"] = parameters
    return {"input_data": input_data, "params": {}, **extra}


SCORE_CASES = [
    (b"{not json", None, "invalid_json"),
    (b"", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_type"),
    ({}, "input_data", "missing"),
    ({"input_data": {"input_string": [USER]}, "prompt": "x"}, "prompt", "unknown_field"),
    ({"input_data": [USER]}, "input_data", "invalid_type"),
    ({"input_data": {"parameters": {}}}, "input_data.input_string", "missing"),
    ({"input_data": {"input_string": [USER], "params": {}}}, "input_data.params", "unknown_field"),
    (cookbook(messages="hello"), "input_data.input_string", "invalid_type"),
    (cookbook(messages=[]), "input_data.input_string", "empty"),
    (cookbook(messages=["hello"]), "input_data.input_string[0]", "invalid_type"),
    (cookbook(messages=[{"role": "robot", "content": "x"}]), "input_data.input_string[0].role", "invalid_role"),
    (cookbook(messages=[{"role": "user"}]), "input_data.input_string[0].content", "invalid_type"),
    (cookbook(messages=[{"role": "user", "content": 5}]), "input_data.input_string[0].content", "invalid_type"),
    (cookbook(messages=[{"role": "user", "content": "   "}]), "input_data.input_string[0].content", "empty"),
    (cookbook(messages=[USER, {"role": "assistant", "content": "hi"}]), "input_data.input_string[1].role", "invalid_role"),
    (cookbook(parameters=[]), "input_data.parameters", "invalid_type"),
    (cookbook(parameters={"top_k": 5}), "input_data.parameters.top_k", "unknown_field"),
    (cookbook(parameters={"temperature": 2.5}), "input_data.parameters.temperature", "out_of_range"),
    (cookbook(parameters={"temperature": -0.1}), "input_data.parameters.temperature", "out_of_range"),
    (cookbook(parameters={"temperature": "hot"}), "input_data.parameters.temperature", "invalid_type"),
    (cookbook(parameters={"temperature": True}), "input_data.parameters.temperature", "invalid_type"),
    (cookbook(parameters={"top_p": 0}), "input_data.parameters.top_p", "out_of_range"),
    (cookbook(parameters={"top_p": 1.01}), "input_data.parameters.top_p", "out_of_range"),
    (cookbook(parameters={"max_new_tokens": 0}), "input_data.parameters.max_new_tokens", "out_of_range"),
    (cookbook(parameters={"max_new_tokens": 1025}), "input_data.parameters.max_new_tokens", "out_of_range"),
    (cookbook(parameters={"max_new_tokens": 10.5}), "input_data.parameters.max_new_tokens", "invalid_type"),
    (cookbook(parameters={"do_sample": "yes"}), "input_data.parameters.do_sample", "invalid_type"),
    ({**cookbook(), "params": []}, "params", "invalid_type"),
    ({**cookbook(), "messages": [USER]}, "messages", "ambiguous"),
    (cookbook(model=7), "model", "invalid_type"),
    ({"messages": [], "parameters": {}}, "messages", "empty"),
    ({"messages": [USER], "parameters": {"temperature": 5}}, "parameters.temperature", "out_of_range"),
]


@pytest.mark.parametrize(("body", "param", "code"), SCORE_CASES)
def test_score_rejections_name_the_field(body: Any, param: str | None, code: str) -> None:
    status, payload = call(SCORE, body)
    assert status == 400
    error = payload["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "chat-ft", "messages": [USER], **fields}


CHAT_CASES = [
    (b"nope", None, "invalid_json"),
    ({"model": "chat-ft"}, "messages", "missing"),
    (chat(messages={"role": "user"}), "messages", "invalid_type"),
    (chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "invalid_role"),
    (chat(messages=[{"role": "system", "content": "be brief"}]), "messages[0].role", "invalid_role"),
    (chat(messages=[{"role": "user", "content": ""}]), "messages[0].content", "empty"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}]), "messages[0].content", "invalid_type"),
    (chat(stream="yes"), "stream", "invalid_type"),
    (chat(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
    (chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage", "invalid_type"),
    (chat(stream=True, stream_options={"chunk": 1}), "stream_options.chunk", "unknown_field"),
    (chat(n=2), "n", "unsupported"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "unsupported"),
    (chat(stop=["\n"]), "stop", "unsupported"),
    (chat(logprobs=True), "logprobs", "unsupported"),
    (chat(response_format={"type": "json_object"}), "response_format", "unsupported"),
    (chat(temperature=2.01), "temperature", "out_of_range"),
    (chat(temperature="0.5"), "temperature", "invalid_type"),
    (chat(top_p=0.0), "top_p", "out_of_range"),
    (chat(max_tokens=0), "max_tokens", "out_of_range"),
    (chat(max_tokens="10"), "max_tokens", "invalid_type"),
    (chat(max_completion_tokens=4096), "max_completion_tokens", "out_of_range"),
    (chat(max_tokens=10, max_completion_tokens=20), "max_completion_tokens", "ambiguous"),
    (chat(model=""), "model", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), CHAT_CASES)
def test_chat_completion_rejections_name_the_field(body: Any, param: str | None, code: str) -> None:
    status, payload = call(CHAT, body)
    assert status == 400
    assert (payload["error"]["param"], payload["error"]["code"]) == (param, code)


def test_oversized_request_is_413(unit_settings: Settings) -> None:
    use_settings(unit_settings.replace(scoring_max_request_bytes=200))
    big = chat(messages=[{"role": "user", "content": "x" * 300}])
    for fn in (SCORE, CHAT):
        status, payload = call(fn, big if fn is CHAT else cookbook(messages=big["messages"]))
        assert status == 413
        assert payload["error"]["code"] == "request_too_large"
    # just under the limit it is judged on its content instead
    status, _ = call(CHAT, {"messages": [{"role": "user", "content": "x" * 100}], "n": 3})
    assert status == 400


def test_error_messages_do_not_echo_long_input() -> None:
    status, payload = call(SCORE, cookbook(messages=[{"role": "x" * 5000, "content": "hi"}]))
    assert status == 400
    assert len(payload["error"]["message"]) < 400


# ---- normalisation (what reaches the endpoint)

S = make_settings()


def test_cookbook_and_plain_score_requests_normalise_alike() -> None:
    params = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi", "name": "bob"}]
    a = parse_score_request(orjson.dumps(cookbook(messages=messages, parameters=params)), S)
    b = parse_score_request(orjson.dumps({"messages": messages, "parameters": params, "model": " m1 "}), S)
    assert a.messages == b.messages == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    assert a.parameters == b.parameters == params
    assert (a.model, b.model) == (None, "m1")


def test_openai_parameters_map_to_azure_ml_generation_parameters() -> None:
    def params(**fields: Any) -> dict[str, Any]:
        return parse_chat_completion_request(orjson.dumps(chat(**fields)), S).parameters

    assert params() == {}
    assert params(temperature=0) == {"do_sample": False}  # greedy
    assert params(temperature=0, top_p=0.5, max_tokens=5) == {"do_sample": False, "max_new_tokens": 5}
    assert params(temperature=0.7, top_p=0.9) == {"temperature": 0.7, "top_p": 0.9, "do_sample": True}
    assert params(max_completion_tokens=7) == {"max_new_tokens": 7}
    assert params(max_tokens=7, max_completion_tokens=7, n=1, stream=False) == {"max_new_tokens": 7}
    assert params(response_format={"type": "text"}, user="u1", seed=3) == {}


def test_endpoint_body_is_the_cookbook_contract() -> None:
    req = ChatRequest(messages=[USER], parameters={"max_new_tokens": 3}, model="m")
    assert orjson.loads(endpoint_request_body(req)) == {
        "input_data": {"input_string": [USER], "parameters": {"max_new_tokens": 3}},
        "params": {},
    }


def test_endpoint_replies_are_read_leniently_but_never_guessed() -> None:
    full = parse_endpoint_reply(
        {"output": "hi", "finish_reason": "length", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, "m"
    )
    assert full is not None
    assert (full.text, full.finish_reason, full.usage) == (
        "hi",
        "length",
        {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    )
    plain = parse_endpoint_reply({"output": "hi", "finish_reason": "weird", "usage": "n/a"}, "m")
    assert plain is not None and (plain.finish_reason, plain.usage) == (None, None)
    wrapped = parse_endpoint_reply(["hi"], "m")
    assert wrapped is not None and wrapped.text == "hi"
    for bad in (None, {}, {"output": 5}, {"result": "hi"}, ["a", "b"], 3):
        assert parse_endpoint_reply(bad, "m") is None


def test_response_shapes() -> None:
    completion = parse_endpoint_reply({"output": "hi", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, "m")
    assert completion is not None
    assert score_response(completion) == {"output": "hi"}
    body = chat_completion_response(completion)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    no_usage = parse_endpoint_reply({"output": "hi"}, "m")
    assert no_usage is not None and "usage" not in chat_completion_response(no_usage)


def test_retry_after_and_version_ordering() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert sorted(["10", "9", "2"], key=version_key) == ["2", "9", "10"]
