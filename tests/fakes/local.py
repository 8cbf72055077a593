"""The local workspace's helpers: a webhook that records its events, prepared data, quick fine-tune
parameters, waiting on jobs and endpoints."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.backends.local import LocalBackend
from shared.settings import Settings
from tests.support import WaitTimeout, free_port, wait_until

# Small and quick: the tiny random model learns little, the tests check the mechanics.
FAST_PARAMS = {"max_steps": 6, "per_device_train_batch_size": 4, "max_seq_length": 96}


class EventSink:
    """A webhook that records what Event Grid would deliver (the app's webhook stand-in)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.headers.append(dict(self.headers))
                sink.events.extend(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.handler = Handler
        self.server: ThreadingHTTPServer | None = None


    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/runtime/webhooks/eventgrid?functionName=on_job_event"

    def start(self) -> EventSink:
        # Bound only now: before this, connections to the port are refused (the host is "down").
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
        return wait_until(lambda: next((e for e in self.events if e["data"]["runId"] == run_id), None), timeout_s,
                          f"an event for {run_id}", every_s=0.2)


def upload_dataset(s: Settings, dataset_id: str, train: list[str], test: list[str]) -> tuple[str, str]:
    from shared.storage import blob_service

    container = blob_service(s).get_container_client(s.prepared_container)
    names = []
    for role, lines in (("train", train), ("test", test)):
        name = f"datasets/{dataset_id}/{role}.jsonl"
        container.upload_blob(name, ("\n".join(lines) + "\n").encode(), overwrite=True)
        names.append(name)
    return names[0], names[1]


def wait_job(backend: LocalBackend, job: str, timeout_s: float = 150):  # noqa: ANN201
    try:
        return wait_until(lambda: (info := backend.get_job(job)).state in {"completed", "failed", "canceled"} and info,
                          timeout_s, f"job {job} to finish")
    except WaitTimeout:
        log = Path(backend.get_job(job).log_path or "").read_text() if backend.get_job(job).log_path else ""
        raise AssertionError(f"job {job} did not finish in {timeout_s} s; log:\n{log[-3000:]}") from None


def wait_endpoint(backend: LocalBackend, name: str, timeout_s: float = 120):  # noqa: ANN201
    def settled() -> Any:
        info = backend.get_endpoint(name)
        assert info is not None
        return info.state != "provisioning" and info

    return wait_until(settled, timeout_s, f"endpoint {name} to stop provisioning")


def jsonl(rows: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) for r in rows]
