"""A stub online endpoint speaking Azure ML's scoring contract, and the app-side pieces that route to it.

``StubEndpoint`` answers ``POST /score`` (``Authorization: Bearer <key>``, body
``{"input_data": {"input_string": [...], "parameters": {...}}, "params": {}}``) with
``{"output": ..., "finish_reason": ..., "usage": ...}`` like the local workspace's server, and has
switches for the failure modes scoring must handle: a rotated key (401 for the old one),
scripted statuses (429/503/5xx, with or without Retry-After), slow answers, bad bodies.
It runs under uvicorn on a thread (tests) or as its own process (``python -m tests.stub_endpoint``,
the benchmark's fast endpoint).

``StubTargetBackend`` and ``seed_model`` are the app's side: a backend whose scoring target is
the stub, and the ledger records that make a model route to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from localworkspace.polling import wait_until


@dataclasses.dataclass
class Scripted:
    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b'{"error": "scripted"}'


class StubEndpoint:
    """The state and switches of one stub endpoint (thread-safe enough for tests)."""

    def __init__(self, key: str = "key-1", delay_s: float = 0.0, record_requests: bool = True):
        self.key = key
        self.record_requests = record_requests
        self.delay_s = delay_s
        self.script: list[Scripted] = []  # answered first, one per request, before normal replies
        self.raw_reply: bytes | None = None  # replaces the normal JSON reply (bad-shape tests)
        self.report_usage = True
        # Streaming: when set and the request accepts text/event-stream, the reply is server-sent
        # events, one {"output": word} per word (the local endpoint's streaming form).
        self.streams = False
        self.stream_raw_events: list[bytes] | None = None  # replaces the streamed events (bad-shape tests)
        # When set, the last word is sent only after this event is set (or gate_timeout_s passed):
        # ``gate_opened`` then says whether the client saw the first words before the stream ended.
        self.gate: threading.Event | None = None
        self.gate_timeout_s = 5.0
        self.gate_opened: bool | None = None
        self.requests: list[dict[str, Any]] = []  # {"headers", "json"} of every request received
        self._lock = threading.Lock()

    def rotate_key(self, new_key: str) -> None:
        """From now on the old key gets 401, as after `az ml online-endpoint regenerate-keys`."""
        self.key = new_key

    def then(self, status: int, retry_after: str | None = None, body: bytes | None = None) -> StubEndpoint:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.script.append(Scripted(status, headers, body if body is not None else b'{"error": "scripted"}'))
        return self

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/score", self._score, methods=["POST"])])

    async def _score(self, request: Request) -> Response:
        body = await request.body()
        auth = request.headers.get("authorization", "")
        with self._lock:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = None
            if self.record_requests:
                self.requests.append({"headers": dict(request.headers), "json": payload})
            scripted = self.script.pop(0) if self.script else None
            key = self.key
        if auth != f"Bearer {key}":
            return Response(b'{"message": "key_auth_access_denied"}', 401, media_type="application/json")
        if scripted is not None:
            return Response(scripted.body, scripted.status, headers=scripted.headers, media_type="application/json")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.raw_reply is not None:
            return Response(self.raw_reply, 200, media_type="application/json")
        try:
            messages = payload["input_data"]["input_string"]
            parameters = payload["input_data"].get("parameters", {})
        except (TypeError, KeyError):
            return Response(b'{"message": "bad request"}', 400, media_type="application/json")
        # Deterministic reply that proves which request it answers.
        text = f"echo: {messages[-1]['content']}"
        reply: dict[str, Any] = {"output": text, "finish_reason": "stop"}
        if self.report_usage:
            prompt = sum(len(m["content"].split()) for m in messages)
            completion = min(len(text.split()), parameters.get("max_new_tokens", 1 << 30))
            reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if self.streams and "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(self._events(reply), media_type="text/event-stream")
        return Response(orjson.dumps(reply), 200, media_type="application/json")

    async def _events(self, reply: dict[str, Any]) -> Any:
        if self.stream_raw_events is not None:
            for raw in self.stream_raw_events:
                yield raw
            return
        words = reply["output"].split(" ")
        for i, word in enumerate(words):
            if i == len(words) - 1 and self.gate is not None:
                self.gate_opened = await asyncio.to_thread(self.gate.wait, self.gate_timeout_s)
            yield b"data: " + orjson.dumps({"output": word if i == 0 else f" {word}"}) + b"\n\n"
        yield b"data: " + orjson.dumps({"output": "", "finish_reason": reply["finish_reason"],
                                        "usage": reply.get("usage")}) + b"\n\n"
        yield b"data: [DONE]\n\n"


@dataclasses.dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def bound_socket() -> socket.socket:
    """A listening socket on a free port (no race between choosing the port and binding it).

    ``IPPROTO_TCP`` must be explicit: asyncio only sets TCP_NODELAY on accepted sockets whose
    proto is TCP, and uvicorn writes headers and body separately, so with proto 0 every
    response waits ~40 ms for the client's delayed ACK (Nagle).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def start_in_thread(app: Any) -> RunningServer:
    sock = bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start", every_s=0.01)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    return RunningServer(f"http://127.0.0.1:{port}", port, server, thread)


@contextlib.contextmanager
def running(app: Any) -> Iterator[RunningServer]:
    server = start_in_thread(app)
    try:
        yield server
    finally:
        server.stop()


# ---- the app's side of a stub endpoint: a backend that points at it, ledger records that route to it


def StubTargetBackend(url: str, stub: StubEndpoint, timeout_s: float = 5.0) -> Any:
    """The shared in-memory workspace with every endpoint's scoring target at the stub (and the
    stub's current key, cached per endpoint until a refresh, like the real backends)."""
    from tests.fakes.workspace import InMemoryWorkspace

    return InMemoryWorkspace(
        "/subscriptions/0/resourceGroups/stub/providers/Microsoft.MachineLearningServices/workspaces/stub",
        target_url=url, key=stub, timeout_s=timeout_s, assume_healthy=True,
    )


def seed_model(ledger: Any, model_name: str, version: str, endpoint_state: str = "succeeded", active: bool = True) -> str:
    """Ledger records of a registered, deployed model as the job-events module writes them."""
    from shared.endpoints.naming import endpoint_name
    from shared.ledger import ENDPOINT, MODEL, ROUTE, iso, utcnow

    endpoint = endpoint_name(model_name, version)
    common = {"job_name": f"job-{model_name}-{version}", "base_model": "base-model"}
    ledger.create(MODEL, f"{model_name}:{version}", "deployed", endpoint=endpoint, **common)
    ledger.create(
        ENDPOINT,
        endpoint,
        endpoint_state,
        model=f"{model_name}:{version}",
        model_name=model_name,
        model_version=version,
        instance_type="local",
        active_since=iso(utcnow()),
        **common,
    )
    if active:
        ledger.merge(ROUTE, model_name, "active", endpoint=endpoint, model_version=version, since=iso(utcnow()))
    return endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description="Stub Azure ML online endpoint (fast echo).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="key-1")
    args = parser.parse_args()
    uvicorn.run(
        StubEndpoint(key=args.key, record_requests=False).app(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()
