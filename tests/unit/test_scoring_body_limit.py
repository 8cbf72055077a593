"""Issue 26 item 6: a scoring request's size is judged before its body is read.

The handlers get the ASGI request itself (HTTP stream types); these tests give them a ``receive``
that counts the bytes it hands out, so they show how much of an oversized body a worker read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi import Request

from functions import scoring as scoring_functions
from shared.scoring.scorer import reset_scorers
from shared.settings import Settings, use_settings

SCORE = scoring_functions.score.build().get_user_function()
CHAT = scoring_functions.chat_completions.build().get_user_function()
LIMIT = 4096
CHUNK = 1024


class CountingBody:
    """An ASGI ``receive`` giving ``total`` bytes in ``CHUNK`` pieces (endless when None)."""

    def __init__(self, total: int | None):
        self.total = total
        self.delivered = 0
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.total is not None and self.delivered >= self.total:
            return {"type": "http.disconnect"}
        if self.delivered > 64 * LIMIT:  # a reader that ignores the limit: stop the test, do not hang it
            raise AssertionError(f"the handler read {self.delivered} bytes of a body limited to {LIMIT}")
        size = CHUNK if self.total is None else min(CHUNK, self.total - self.delivered)
        self.delivered += size
        more = self.total is None or self.delivered < self.total
        return {"type": "http.request", "body": b" " * size, "more_body": more}


def call(fn: Any, receive: CountingBody, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http", "method": "POST", "path": "/api/x", "raw_path": b"/api/x", "query_string": b"",
        "scheme": "http", "server": ("localhost", 80), "path_params": {},
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def run() -> tuple[int, dict[str, Any]]:
        response = await fn(Request(scope, receive))
        return response.status_code, orjson.loads(bytes(response.body))

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def small_limit(unit_settings: Settings) -> Iterator[Settings]:
    s = unit_settings.replace(scoring_max_request_bytes=LIMIT)
    use_settings(s)
    yield s
    reset_scorers()


@pytest.mark.parametrize("fn", [SCORE, CHAT], ids=["score", "chat"])
def test_a_declared_content_length_over_the_limit_is_413_before_any_byte_is_read(fn: Any) -> None:
    body = CountingBody(total=100 * LIMIT)
    status, payload = call(fn, body, {"content-type": "application/json", "content-length": str(100 * LIMIT)})
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"
    assert str(100 * LIMIT) in payload["error"]["message"] and str(LIMIT) in payload["error"]["message"]
    assert body.delivered == 0, f"read {body.delivered} bytes of a body refused by its Content-Length"


@pytest.mark.parametrize("fn", [SCORE, CHAT], ids=["score", "chat"])
def test_a_chunked_body_is_cut_off_just_past_the_limit(fn: Any) -> None:
    body = CountingBody(total=None)  # no Content-Length, never ends
    status, payload = call(fn, body, {"content-type": "application/json", "transfer-encoding": "chunked"})
    assert status == 413
    assert payload["error"]["code"] == "request_too_large"
    assert body.delivered <= LIMIT + CHUNK


def test_an_unreadable_content_length_is_a_400() -> None:
    status, payload = call(CHAT, CountingBody(total=10), {"content-length": "lots"})
    assert status == 400
    assert payload["error"]["code"] == "invalid_content_length"


def test_a_body_within_the_limit_is_judged_on_its_content() -> None:
    body = CountingBody(total=LIMIT)  # LIMIT spaces: not JSON, so a 400 about the content
    status, payload = call(CHAT, body, {"content-length": str(LIMIT)})
    assert status == 400
    assert payload["error"]["code"] == "invalid_json"
    assert body.delivered == LIMIT
