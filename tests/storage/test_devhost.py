"""The local Functions host against real Azurite, with the small app in tests/devhost_app.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import pytest
from azure.storage.blob import BlobClient

from devhost.blob_poller import POISON_QUEUE, read_poison_messages
from devhost.host import Host, run_host
from shared.settings import PROJECT_ROOT, Settings
from shared.storage import WEBJOBS_HOSTS_CONTAINER, blob_service
from tests import devhost_app
from tests.support import wait_until as _wait_until

pytestmark = pytest.mark.storage

APP = "tests.devhost_app:app"
POLL_S = 0.1
HOST_THREAD_PREFIXES = ("devhost-http", "blob-trigger", "timer-", "function", "queue-trigger")


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    return _wait_until(condition, timeout, "the host to call the function", every_s=0.05)


@pytest.fixture
def host_json(tmp_path: Path) -> Path:
    path = tmp_path / "host.json"
    path.write_text(
        json.dumps({"version": "2.0", "extensions": {"blobs": {"poisonBlobThreshold": 3, "maxDegreeOfParallelism": 2},
                                                     "queues": {"maxDequeueCount": 3, "visibilityTimeout": "00:00:01"}}})
    )
    return path


@pytest.fixture
def start_host(storage_settings: Settings, host_json: Path, test_queue: str) -> Iterator[Callable[..., Host]]:
    """Start hosts on free ports for this test; every one is stopped at the end."""
    devhost_app.reset()
    started: list[Host] = []

    def start(**options: Any) -> Host:
        options = {
            "settings": storage_settings,
            "port": 0,
            "poll_interval_s": POLL_S,
            "host_json": host_json,
            "shutdown_timeout_s": 5,
            **options,
        }
        host = Host(APP, **options).start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


@pytest.fixture(autouse=True)
def test_queue(monkeypatch: pytest.MonkeyPatch) -> str:
    """The queue of devhost_app's queue trigger, this test's own (``%DEVHOST_TEST_QUEUE%``)."""
    name = f"devhost-q-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DEVHOST_TEST_QUEUE", name)
    return name


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


# --- HTTP


def test_http_routes_methods_and_route_parameters(start_host: Callable[..., Host], client: httpx.Client) -> None:
    api = f"{start_host().base_url}/api"

    r = client.get(f"{api}/greet/Ada", params={"lang": "en"})
    assert r.status_code == 200
    assert r.headers["x-greeted"] == "Ada"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() | {"url": None} == {"name": "Ada", "method": "GET", "query": {"lang": "en"}, "body": "", "url": None}
    assert r.json()["url"].endswith("/api/greet/Ada?lang=en")

    assert client.post(f"{api}/GREET/Bob", content=b"hello").json()["body"] == "hello"  # routes ignore case
    r = client.put(f"{api}/greet/Ada")
    assert r.status_code == 405 and set(r.json()["allowed"]) == {"GET", "POST"}

    assert client.get(f"{api}/items/42").json() == {"id": "42", "method": "GET"}
    assert client.delete(f"{api}/items/-7").json() == {"id": "-7", "method": "DELETE"}
    r = client.get(f"{api}/items/new")  # the literal route wins over {id:int}
    assert (r.status_code, r.text) == (201, "literal route")
    assert client.get(f"{api}/items/abc").status_code == 404  # {id:int} does not match
    assert len(devhost_app.calls("item_by_id")) == 2  # the context argument carried an invocation id
    assert all(len(i) == 36 for i in devhost_app.calls("item_by_id"))

    r = client.get(f"{api}/nothing/here")
    assert r.status_code == 404 and "error" in r.json()
    assert client.get(f"{api}/../outside").status_code == 404

    r = client.get(f"{api}/boom")
    assert r.status_code == 500 and r.json() == {"error": "the function failed"}


def test_http_function_keys(start_host: Callable[..., Host], storage_settings: Settings, client: httpx.Client) -> None:
    host = start_host(settings=storage_settings.replace(function_key="s3cret"))
    api = f"{host.base_url}/api"

    r = client.get(f"{api}/greet/Ada")
    assert r.status_code == 401 and "key" in r.json()["error"]
    assert client.get(f"{api}/greet/Ada", headers={"x-functions-key": "wrong"}).status_code == 401
    assert client.get(f"{api}/greet/Ada", headers={"x-functions-key": "s3cret"}).status_code == 200
    assert client.get(f"{api}/greet/Ada", params={"code": "s3cret"}).status_code == 200
    assert client.get(f"{api}/admin-only").status_code == 401
    assert client.get(f"{api}/admin-only", params={"code": "s3cret"}).text == "admin"
    assert client.get(f"{api}/ping").text == "pong"  # ANONYMOUS never needs the key
    assert client.post(f"{host.base_url}/admin/functions/yearly").status_code == 401
    assert devhost_app.calls("greet") == [] and host.invoker.of("greet") != []


def test_without_a_configured_key_function_level_is_open(start_host: Callable[..., Host], client: httpx.Client) -> None:
    host = start_host()
    assert client.get(f"{host.base_url}/api/greet/Ada").status_code == 200


def test_a_slow_sync_function_does_not_block_other_requests(
    start_host: Callable[..., Host], client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="devhost.invocation")
    host = start_host()
    api = f"{host.base_url}/api"
    slow_reply: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: slow_reply.append(httpx.get(f"{api}/slow", params={"s": "1.0"}, timeout=10)))
    slow.start()
    wait_until(lambda: devhost_app.calls("slow_started"))  # the slow function is sleeping in its thread
    assert client.get(f"{api}/ping").text == "pong"
    assert slow.is_alive(), "ping had to wait for the slow function"
    slow.join()
    assert slow_reply[0].text == "done"

    executed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executed 'Functions.")]
    slow_line = next(line for line in executed if "Functions.slow'" in line)
    assert "(Succeeded, Id=" in slow_line
    duration_ms = int(slow_line.rsplit("Duration=", 1)[1].rstrip("ms)"))
    assert 950 <= duration_ms < 3000


# --- Event Grid


def test_eventgrid_schema_delivery(start_host: Callable[..., Host], client: httpx.Client, fixtures_dir: Path) -> None:
    host = start_host()
    sample = json.loads((fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").read_text())
    second = sample | {"id": "second-event"}
    r = client.post(host.eventgrid_url("on_event"), headers={"aeg-event-type": "Notification"}, json=[sample, second])
    assert r.status_code == 202
    events = devhost_app.calls("on_event")
    assert [type(e) for e in events] == [func.EventGridEvent, func.EventGridEvent]
    first = events[0]
    assert first.id == sample["id"] and events[1].id == "second-event"
    assert first.event_type == "Microsoft.MachineLearningServices.RunCompleted"
    assert first.topic == sample["topic"] and first.subject == sample["subject"]
    assert first.get_json()["runId"] == sample["data"]["runId"]
    assert first.event_time == dt.datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=dt.UTC)
    assert [r.outcome for r in host.invoker.of("on_event")] == ["Succeeded", "Succeeded"]


def test_cloudevents_schema_delivery(start_host: Callable[..., Host], client: httpx.Client, fixtures_dir: Path) -> None:
    host = start_host()
    sample = json.loads((fixtures_dir / "eventgrid" / "run_status_changed.cloudevents.json").read_text())
    # single event, as Event Grid posts CloudEvents in structured mode
    r = client.post(
        host.eventgrid_url("on_event"),
        headers={"content-type": "application/cloudevents+json; charset=utf-8"},
        content=json.dumps(sample),
    )
    assert r.status_code == 202
    # batch mode, with the spec's lower-case attribute name
    batch = [{k.lower() if k == "specVersion" else k: v for k, v in sample.items()} | {"id": f"ce-{i}"} for i in range(2)]
    r = client.post(
        host.eventgrid_url("on_event"),
        headers={"content-type": "application/cloudevents-batch+json", "aeg-event-type": "Notification"},
        content=json.dumps(batch),
    )
    assert r.status_code == 202
    events = devhost_app.calls("on_event")
    # the worker's converter turns CloudEvents into func.CloudEvent, whatever the annotation says
    assert [type(e) for e in events] == [func.CloudEvent] * 3
    assert [e.id for e in events] == [sample["id"], "ce-0", "ce-1"]
    assert events[0].type == "Microsoft.MachineLearningServices.RunStatusChanged"
    assert events[0].source == sample["source"]
    assert events[0].get_json()["runStatus"] == "failed"


def test_eventgrid_validation_and_errors(start_host: Callable[..., Host], client: httpx.Client) -> None:
    host = start_host()
    url = host.eventgrid_url("on_event")
    validation = [
        {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/x/resourceGroups/y",
            "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://example.invalid"},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2018-01-25T22:12:19.4556811Z",
            "metadataVersion": "1",
            "dataVersion": "1",
        }
    ]
    r = client.post(url, headers={"aeg-event-type": "SubscriptionValidation"}, json=validation)
    assert r.status_code == 200 and r.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}

    r = client.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert r.status_code == 200 and r.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"

    notify = {"aeg-event-type": "Notification"}
    for body in (b"not json", b"[]", b"[1, 2]", json.dumps([{"id": "x", "data": {}}]).encode()):
        r = client.post(url, headers=notify, content=body)
        assert r.status_code == 400, body
        assert r.json()["error"]
    assert client.post(url, json=[{"id": "a", "eventType": "t", "data": {}}]).status_code == 400  # no aeg-event-type
    assert client.post(host.eventgrid_url("nope"), headers=notify, json=[]).status_code == 404
    assert client.post(host.eventgrid_url("greet"), headers=notify, json=[]).status_code == 404

    event = {
        "id": "bad-1",
        "eventType": "t",
        "subject": "s",
        "topic": "t",
        "eventTime": "2024-01-01T00:00:00Z",
        "dataVersion": "1",
        "data": {"fail": True},
    }
    r = client.post(url, headers=notify, json=[event])
    assert r.status_code == 500 and r.json()["failed_event_ids"] == ["bad-1"]
    assert devhost_app.calls("on_event") == []
    assert host.invoker.of("on_event")[-1].outcome == "Failed"
    assert "asked to fail" in host.invoker.of("on_event")[-1].error


# --- Blob triggers


def _upload(settings: Settings, container: str, name: str, data: bytes) -> BlobClient:
    blob = blob_service(settings).get_blob_client(container, name)
    blob.upload_blob(data, overwrite=True)
    return blob


def test_blob_version_runs_once_and_again_after_overwrite_also_across_restarts(
    start_host: Callable[..., Host], storage_settings: Settings
) -> None:
    container = storage_settings.chat_data_container
    host = start_host()
    _upload(storage_settings, container, "folder/first.jsonl", b'{"messages": []}\n')
    _upload(storage_settings, container, "ignored.txt", b"not matching the trigger path")
    wait_until(lambda: devhost_app.calls("on_chat_blob"))
    time.sleep(10 * POLL_S)  # many more polls: still once
    calls = devhost_app.calls("on_chat_blob")
    assert len(calls) == 1
    assert calls[0]["name"] == f"{container}/folder/first.jsonl"  # {name} spans virtual folders
    assert calls[0]["data"] == b'{"messages": []}\n' and calls[0]["length"] == 17
    assert calls[0]["uri"].endswith(f"/{container}/folder/first.jsonl")

    _upload(storage_settings, container, "folder/first.jsonl", b'{"messages": [1]}\n')  # new ETag
    wait_until(lambda: len(devhost_app.calls("on_chat_blob")) == 2)
    assert devhost_app.calls("on_chat_blob")[1]["data"] == b'{"messages": [1]}\n'

    host.stop()  # a new host finds the receipts and does not run the same versions again
    restarted = start_host()
    time.sleep(10 * POLL_S)
    assert len(devhost_app.calls("on_chat_blob")) == 2
    assert [r.function for r in restarted.invoker.records if r.function.startswith("on_chat")] == []
    receipts = list(
        blob_service(storage_settings)
        .get_container_client(WEBJOBS_HOSTS_CONTAINER)
        .list_blobs(name_starts_with="blobreceipts/devhost/Host.Functions.on_chat_blob/")
    )
    assert len([b for b in receipts if b.name.endswith(f"/{container}/folder/first.jsonl")]) == 2


def test_sdk_type_blob_binding_gets_a_blob_client(start_host: Callable[..., Host], storage_settings: Settings) -> None:
    start_host()
    _upload(storage_settings, storage_settings.prepared_container, "sdk/model.bin", b"\x00\x01binary")
    call = wait_until(lambda: devhost_app.calls("on_sdk_blob"))[0]
    assert issubclass(call["type"], BlobClient)  # what the blob extension hands the function in Azure
    assert call["blob_name"] == "sdk/model.bin" and call["data"] == b"\x00\x01binary"


def test_failing_blob_goes_to_the_poison_queue_after_the_threshold(
    start_host: Callable[..., Host], storage_settings: Settings
) -> None:
    host = start_host()  # host.json of this test: poisonBlobThreshold 3
    blob = _upload(storage_settings, storage_settings.prepared_container, "fail/broken.txt", b"bad")
    etag = blob.get_blob_properties().etag
    # this test's own message: the poison queue is shared by the tests of the session's Azurite
    messages = wait_until(lambda: [m for m in read_poison_messages(storage_settings)
                                   if m["ContainerName"] == storage_settings.prepared_container])
    time.sleep(10 * POLL_S)
    assert len(devhost_app.calls("on_failing_blob")) == 3
    assert [r.outcome for r in host.invoker.of("on_failing_blob")] == ["Failed"] * 3
    matching = [m for m in read_poison_messages(storage_settings) if m["ContainerName"] == storage_settings.prepared_container]
    assert len(matching) == 1
    message = matching[0]
    assert message["FunctionId"] == "Host.Functions.on_failing_blob"
    assert message["BlobName"] == "fail/broken.txt" and message["BlobType"] == "BlockBlob"
    assert message["ETag"] == etag  # quoted, as the real host writes it
    assert messages and POISON_QUEUE == "webjobs-blobtrigger-poison"


# --- Timers and on-demand runs


def test_timer_fires_on_schedule(start_host: Callable[..., Host]) -> None:
    start_host()
    started = time.monotonic()
    wait_until(lambda: len(devhost_app.calls("every_second")) >= 2, timeout=4)
    assert time.monotonic() - started >= 0.9  # two distinct seconds, not a burst at start-up
    assert devhost_app.calls("every_second")[:2] == [False, False]
    assert devhost_app.calls("yearly") == []


def test_admin_runs_a_timer_on_demand(start_host: Callable[..., Host], client: httpx.Client, storage_settings: Settings) -> None:
    host = start_host()
    r = client.post(f"{host.base_url}/admin/functions/yearly", json={"input": "ignored"})
    assert r.status_code == 202
    assert wait_until(lambda: devhost_app.calls("yearly")) == [False]
    assert client.post(f"{host.base_url}/admin/functions/nope").status_code == 404
    assert client.post(f"{host.base_url}/admin/functions/greet").status_code == 400

    _upload(storage_settings, storage_settings.prepared_container, "other/x.bin", b"on demand")
    r = client.post(
        f"{host.base_url}/admin/functions/on_sdk_blob", json={"input": f"{storage_settings.prepared_container}/other/x.bin"}
    )
    assert r.status_code == 202
    assert wait_until(lambda: devhost_app.calls("on_sdk_blob"))[0]["data"] == b"on demand"
    assert client.post(f"{host.base_url}/admin/functions/on_sdk_blob", json={"input": 3}).status_code == 400

    event = {"id": "manual-1", "eventType": "Custom.Event", "subject": "s", "data": {"n": 1}, "dataVersion": "1"}
    assert client.post(f"{host.base_url}/admin/functions/on_event", json={"input": event}).status_code == 202
    assert wait_until(lambda: devhost_app.calls("on_event"))[0].get_json() == {"n": 1}
    assert client.post(f"{host.base_url}/admin/functions/on_event", json={"input": {"id": "x"}}).status_code == 400


def test_monitored_timer_missed_while_down_runs_past_due(start_host: Callable[..., Host], storage_settings: Settings) -> None:
    status = blob_service(storage_settings).get_blob_client(
        WEBJOBS_HOSTS_CONTAINER, "timers/devhost/Host.Functions.yearly/status"
    )
    missed = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    status.upload_blob(json.dumps({"Last": None, "Next": missed.isoformat(), "LastUpdated": missed.isoformat()}), overwrite=True)
    start_host()
    assert wait_until(lambda: devhost_app.calls("yearly")) == [True]
    # the status is rewritten after the run: the next occurrence lies ahead again
    wait_until(lambda: dt.datetime.fromisoformat(json.loads(status.download_blob().readall())["Next"]) > dt.datetime.now(dt.UTC))


# --- Lifecycle


def test_stop_leaves_no_thread_or_port_behind(start_host: Callable[..., Host], client: httpx.Client) -> None:
    host = start_host()
    port = host.port
    assert client.get(f"{host.base_url}/admin/host/status").json()["state"] == "Running"
    assert any(t.name.startswith(HOST_THREAD_PREFIXES) for t in threading.enumerate())
    host.stop()
    client.close()
    leftover = [t.name for t in threading.enumerate() if t.name.startswith(HOST_THREAD_PREFIXES)]
    assert leftover == []
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_run_host_context_manager_and_disabled_functions(
    storage_settings: Settings, host_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobs.every_second.Disabled", "true")  # the real host's switch
    with run_host(APP, settings=storage_settings, port=0, host_json=host_json) as host, httpx.Client() as c:
        assert c.get(f"{host.base_url}/api/ping").text == "pong"
        assert "every_second" not in host.functions and "every_second: disabled" in host.describe()
        assert c.post(f"{host.base_url}/admin/functions/every_second").status_code == 404
    assert not host.running


def test_command_line_lists_functions_and_stops_on_sigint(storage_settings: Settings) -> None:
    env = dict(os.environ)
    env.update(
        AzureWebJobsStorage=storage_settings.storage_connection,
        CHAT_DATA_CONTAINER=storage_settings.chat_data_container,
        PREPARED_CONTAINER=storage_settings.prepared_container,
        LEDGER_TABLE=storage_settings.ledger_table,
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost.host", "--app", APP, "--port", "0", "--poll-interval", "0.5"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("Host running at"):
                break
        out = "\n".join(lines)
        assert "Host running at http://127.0.0.1:" in out, out
        base = out.rsplit("Host running at ", 1)[1].split()[0]
        assert f"greet: [GET,POST] {base}/api/greet/{{name}}" in out
        assert f"on_event: eventGridTrigger {base}/runtime/webhooks/eventgrid?functionName=on_event" in out
        assert f"on_chat_blob: blobTrigger {storage_settings.chat_data_container}/{{name}}.jsonl" in out
        assert "every_second: timerTrigger */1 * * * * * next " in out
        assert httpx.get(f"{base}/api/ping").text == "pong"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)  # drains the pipe, so logging at shutdown cannot block
        assert proc.returncode == 0, rest[-2000:]
        assert "shutting down" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# --- Queue triggers


def test_queue_messages_run_once_failures_retry_then_go_to_the_poison_queue(
    start_host: Callable[..., Host], storage_settings: Settings, test_queue: str
) -> None:
    from shared.storage import queue_client

    host = start_host()  # host.json of this test: maxDequeueCount 3, visibilityTimeout 1 s
    assert f"on_queue_message: queueTrigger {test_queue}" in host.describe()
    queue = queue_client(test_queue, storage_settings)
    wait_until(lambda: _queue_exists(queue))  # the host creates a missing queue, as the extension does
    queue.send_message(b"hello")
    queue.send_message(b"later", visibility_timeout=2)
    sent_later = time.monotonic()
    queue.send_message(b"fail: always")
    wait_until(lambda: len([c for c in devhost_app.calls("on_queue_message") if c["body"] == "later"]) == 1, timeout=10)
    later = [c for c in devhost_app.calls("on_queue_message") if c["body"] == "later"][0]
    assert later["at"] - sent_later >= 1.9  # not seen before its visibility delay
    poison = queue_client(f"{test_queue}-poison", storage_settings)
    wait_until(lambda: _queue_exists(poison) and list(poison.peek_messages()), timeout=15)
    time.sleep(1.5)
    calls = devhost_app.calls("on_queue_message")
    assert [c["dequeue_count"] for c in calls if c["body"] == "hello"] == [1]  # succeeded once, deleted
    assert [c["dequeue_count"] for c in calls if c["body"] == "fail: always"] == [1, 2, 3]
    assert [m.content for m in poison.peek_messages()] == [b"fail: always"]
    assert list(queue.peek_messages()) == []  # nothing left behind
    assert [r.outcome for r in host.invoker.of("on_queue_message")].count("Failed") == 3


def _queue_exists(queue: Any) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        queue.get_queue_properties()
        return True
    except ResourceNotFoundError:
        return False
