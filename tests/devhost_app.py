"""A small FunctionApp of the local host's own tests: one or more functions per trigger kind.

Functions record what they received in ``CALLS`` (the host runs them in this process), so tests
can assert on the real objects the host built.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import Any

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_sdk

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

CALLS: dict[str, list[Any]] = collections.defaultdict(list)
_LOCK = threading.Lock()


def record(name: str, value: Any) -> None:
    with _LOCK:
        CALLS[name].append(value)


def calls(name: str) -> list[Any]:
    with _LOCK:
        return list(CALLS[name])


def reset() -> None:
    with _LOCK:
        CALLS.clear()


# --- HTTP


@app.route(route="greet/{name}", methods=["GET", "POST"])
def greet(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "name": req.route_params["name"],
        "method": req.method,
        "query": dict(req.params),
        "body": req.get_body().decode(),
        "url": req.url,
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"x-greeted": req.route_params["name"]})


@app.route(route="items/{id:int}", methods=["GET", "DELETE"])
def item_by_id(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    record("item_by_id", context.invocation_id)
    return func.HttpResponse(json.dumps({"id": req.route_params["id"], "method": req.method}), mimetype="application/json")


@app.route(route="items/new", methods=["GET"])
def new_item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("literal route", status_code=201)


@app.route(route="ping", auth_level=func.AuthLevel.ANONYMOUS)
async def ping(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse("pong")


@app.route(route="slow", auth_level=func.AuthLevel.ANONYMOUS)
def slow(req: func.HttpRequest) -> func.HttpResponse:
    record("slow_started", time.monotonic())
    time.sleep(float(req.params.get("s", "1")))
    return func.HttpResponse("done")


@app.route(route="admin-only", auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("admin")


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


# --- Event Grid


@app.event_grid_trigger(arg_name="event")
def on_event(event: func.EventGridEvent) -> None:
    data = event.get_json()
    if isinstance(data, dict) and data.get("fail"):
        raise RuntimeError(f"event {event.id} asked to fail")
    record("on_event", event)


# --- Blob


@app.blob_trigger(arg_name="stream", path="%CHAT_DATA_CONTAINER%/{name}.jsonl", connection="AzureWebJobsStorage")
def on_chat_blob(stream: func.InputStream) -> None:
    record("on_chat_blob", {"name": stream.name, "length": stream.length, "data": stream.read(), "uri": stream.uri})


@app.blob_trigger(
    arg_name="client", path="%PREPARED_CONTAINER%/sdk/{name}", connection="AzureWebJobsStorage", source=func.BlobSource.EVENT_GRID
)
def on_sdk_blob(client: blob_sdk.BlobClient) -> None:
    record("on_sdk_blob", {"type": type(client), "blob_name": client.blob_name, "data": client.download_blob().readall()})


@app.blob_trigger(arg_name="stream", path="%PREPARED_CONTAINER%/fail/{name}", connection="AzureWebJobsStorage")
def on_failing_blob(stream: func.InputStream) -> None:
    record("on_failing_blob", stream.name)
    raise ValueError(f"cannot process {stream.name}")


# --- Timer


@app.timer_trigger(schedule="*/1 * * * * *", arg_name="timer", run_on_startup=False, use_monitor=False)
def every_second(timer: func.TimerRequest) -> None:
    record("every_second", timer.past_due)


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=False, use_monitor=True)
def yearly(timer: func.TimerRequest) -> None:
    record("yearly", timer.past_due)


# --- Queue (the queue name is per test: the fixture sets DEVHOST_TEST_QUEUE)


@app.queue_trigger(arg_name="msg", queue_name="%DEVHOST_TEST_QUEUE%", connection="AzureWebJobsStorage")
def on_queue_message(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    record("on_queue_message", {"body": body, "dequeue_count": msg.dequeue_count, "id": msg.id, "at": time.monotonic()})
    if body.startswith("fail"):
        raise RuntimeError("scripted failure")
