"""Bad input never gets a 5xx (issues 21.1, 21.2, 17.4): the real app behind the real local host.

Each answer is a 4xx whose body names the offending field or value and carries no stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from devhost.host import Host, run_host
from shared.settings import Settings

pytestmark = pytest.mark.storage

KEY = "bad-input-key"
HEADERS = {"x-functions-key": KEY}


@pytest.fixture
def host(storage_settings: Settings) -> Iterator[Host]:
    settings = storage_settings.replace(function_key=KEY)
    from shared.settings import use_settings

    use_settings(settings)
    with run_host("function_app:app", settings=settings, port=0, poll_interval_s=5.0) as h:
        yield h


@pytest.fixture
def client(host: Host) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.base_url, timeout=30) as c:
        yield c


def _no_trace(response: httpx.Response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]


# --- 21.1: model names that are not ledger keys


@pytest.mark.parametrize(
    ("model", "status", "named"),
    [
        ("org/m", 404, "'org/m'"),
        ("a#b?c", 400, "'#'"),
        ("bad\x01name", 400, "\\x01"),
        ("m" * 600, 400, "600 characters"),
        ("name:", 400, "'name:'"),
    ],
)
def test_chat_completions_model_names_that_are_not_keys_get_a_4xx(
    client: httpx.Client, model: str, status: int, named: str
) -> None:
    r = client.post("/api/v1/chat/completions", headers=HEADERS,
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == "model"
    assert named in error["message"]
    assert error["code"] == ("model_not_found" if status == 404 else "invalid_value")
    _no_trace(r)


def test_score_with_an_org_model_name_is_a_clear_404(client: httpx.Client) -> None:
    r = client.post("/api/score", headers=HEADERS,
                    json={"model": "org/model", "input_data": {"input_string": [{"role": "user", "content": "hi"}]}})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found" and "'org/model'" in r.json()["error"]["message"]
    _no_trace(r)


def test_a_pinned_name_version_is_still_a_valid_name(client: httpx.Client) -> None:
    # name:version passes validation and is looked up (no such model here: 404, not 400 or 500)
    r = client.post("/api/v1/chat/completions", headers=HEADERS,
                    json={"model": "tiny-chat-ft:1", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


# --- 21.2 / 17.4: malformed Event Grid deliveries


def _webhook(client: httpx.Client, body: bytes | str, **headers: str) -> httpx.Response:
    return client.post("/runtime/webhooks/eventgrid", params={"functionName": "on_job_event", "code": KEY},
                       headers={"aeg-event-type": "Notification", **headers}, content=body)


def test_eventgrid_event_with_an_unreadable_event_time_is_a_400(client: httpx.Client, fixtures_dir: Path) -> None:
    event = json.loads((fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").read_text()) | {"eventTime": "yesterday"}
    r = _webhook(client, json.dumps([event]))
    assert r.status_code == 400, r.text
    assert "eventTime" in r.json()["error"] and "'yesterday'" in r.json()["error"]
    _no_trace(r)


def test_cloudevent_with_an_unreadable_time_is_a_400(client: httpx.Client, fixtures_dir: Path) -> None:
    event = json.loads((fixtures_dir / "eventgrid" / "run_status_changed.cloudevents.json").read_text())
    event = {("specversion" if k == "specVersion" else k): v for k, v in event.items()} | {"time": "not-a-time"}
    r = _webhook(client, json.dumps(event), **{"content-type": "application/cloudevents+json"})
    assert r.status_code == 400, r.text
    assert "time 'not-a-time'" in r.json()["error"]
    _no_trace(r)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json_on_the_webhook_is_a_400(client: httpx.Client, depth: int) -> None:
    r = _webhook(client, "[" * depth)
    assert r.status_code == 400, r.text
    assert "too deeply" in r.json()["error"]
    _no_trace(r)
    assert _webhook(client, "[" * depth + "]" * depth).status_code == 400  # well-formed, still too deep


def test_deeply_nested_json_on_the_admin_route_is_a_400(client: httpx.Client) -> None:
    r = client.post("/admin/functions/on_job_event", headers=HEADERS, content="[" * 50_000)
    assert r.status_code == 400, r.text
    assert "too deeply" in r.json()["error"]
    deep_input = json.dumps({"input": "[" * 50_000})
    r = client.post("/admin/functions/on_job_event", headers=HEADERS, content=deep_input)
    assert r.status_code == 400 and "too deeply" in r.json()["error"], r.text


def test_admin_event_with_an_unreadable_time_is_a_400(client: httpx.Client, fixtures_dir: Path) -> None:
    event = json.loads((fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").read_text()) | {"eventTime": "yesterday"}
    r = client.post("/admin/functions/on_job_event", headers=HEADERS, json={"input": event})
    assert r.status_code == 400 and "eventTime" in r.json()["error"], r.text


def test_the_trigger_drops_an_event_whose_time_is_not_a_datetime(caplog: pytest.LogCaptureFixture) -> None:
    """The trigger's contract: an unreadable envelope is logged and dropped (2xx), never an exception."""
    from functions.on_job_event import on_job_event

    caplog.set_level("WARNING", logger="functions.on_job_event")
    event = func.EventGridEvent(id="e-1", data={"runId": "r-1"}, topic="t", subject="s", event_type="x",
                                event_time="yesterday", data_version="1")  # type: ignore[arg-type]
    assert on_job_event(event) is None
    assert any("malformed" in r.getMessage() and "eventTime" in r.getMessage() for r in caplog.records)
