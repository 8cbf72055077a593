"""Helpers shared by the tests of every tier (the repo's folders, settings, waiting on a condition, ports, prepared data)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localworkspace.polling import WaitTimeout, wait_until
from localworkspace.ports import free_port, port_open  # noqa: F401 - the tests import them from here
from scripts.make_sample_data import pirate_conversations
from shared.settings import Settings, load_settings
from shared.storage import blob_service

ROOT = Path(__file__).resolve().parent.parent
# Published payloads and specs the tests use, copied into the repo with their sources
# (tests/fixtures/*/README.md and the files' own headers): a fresh clone needs nothing beside it.
FIXTURES = ROOT / "tests" / "fixtures"

# The test tiers: one folder each under tests/, whose conftest gives every test in it these markers
# (the Makefile's targets select by marker: `make test` is "not slow and not browser and not faults").
TIER_MARKERS: dict[str, tuple[str, ...]] = {
    "unit": ("unit",),
    "storage": ("storage",),
    "infra": ("infra",),
    "e2e": ("e2e", "storage"),
    "integration": ("integration", "e2e", "storage"),
    "faults": ("faults",),
    "browser": ("browser", "e2e", "storage"),
    "slow": ("slow", "storage"),
    "rollout": ("rollout", "storage"),
}


def mark_tier(conftest_file: str) -> Callable[[pytest.Item], None]:
    """The ``pytest_itemcollected`` hook of a tier folder's conftest: its tier's markers on each test below it."""
    markers = TIER_MARKERS[Path(conftest_file).parent.name]

    def pytest_itemcollected(item: pytest.Item) -> None:
        for name in markers:
            item.add_marker(name)

    return pytest_itemcollected


def make_settings(**env: str) -> Settings:
    """Settings from defaults plus ``env`` (no local.settings.json, no os.environ)."""
    return load_settings(environ=env)


@contextlib.contextmanager
def settings_in_use(settings: Settings) -> Iterator[Settings]:
    """``settings`` the process's settings inside the ``with`` block; after it, none and no backend."""
    from shared.backends import use_backend
    from shared.settings import use_settings

    use_settings(settings)
    try:
        yield settings
    finally:
        use_settings(None)
        use_backend(None)


def upload_prepared_dataset(settings: Settings, dataset_id: str, seed: int, count: int = 24, train: int = 20) -> tuple[str, str]:
    """Put a small house-style train/test split in the prepared container; return the two blob names."""
    rows = pirate_conversations(count=count, seed=seed)
    container = blob_service(settings).get_container_client(settings.prepared_container)
    names = []
    for role, part in (("train", rows[:train]), ("test", rows[train:])):
        name = f"datasets/{dataset_id}/{role}.jsonl"
        container.upload_blob(name, "\n".join(json.dumps(r) for r in part) + "\n", overwrite=True)
        names.append(name)
    return names[0], names[1]


class PrivateAzurite:
    """An Azurite of one test module on free ports, which the test may stop and start again (same data)."""

    def __init__(self, location: Any):
        from devhost.azurite import Azurite, start

        self.az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
        self.location = location
        self.proc = start(self.az, location)

    @property
    def connection_string(self) -> str:
        return self.az.connection_string

    def stop(self) -> None:
        from devhost.azurite import stop_process

        if self.proc.poll() is None:
            stop_process(self.proc.pid)
            self.proc.wait(timeout=5)

    def restart(self) -> None:
        from devhost.azurite import start

        self.proc = start(self.az, self.location)


@contextlib.contextmanager
def tiny_trained_stack(root: Path, dataset_id: str, model_name: str, seed: int, **env: str) -> Iterator[SimpleNamespace]:
    """The real local stack of one faults-tier module, before its host starts: a private Azurite,
    settings of its own (``env`` on top of the common ones), the local backend and ledger in use,
    and one tiny-model fine-tune of ``dataset_id`` for ``model_name`` completed. Yields
    ``settings, storage, backend, ledger, job`` and ``exits`` (the ExitStack the module enters its
    endpoints, host and clients in; everything is stopped in reverse order on exit)."""
    from shared.backends import use_backend
    from shared.backends.base import COMPLETED, JOB_FINAL_STATES, MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
    from shared.backends.local import LocalBackend
    from shared.ledger import Ledger
    from shared.scoring.scorer import reset_scorers
    from shared.settings import use_settings
    from shared.storage import ensure_storage

    storage = PrivateAzurite(root / "azurite")
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(**{
        "AzureWebJobsStorage": storage.connection_string, "CHAT_DATA_CONTAINER": f"chat-{suffix}",
        "PREPARED_CONTAINER": f"prepared-{suffix}", "LEDGER_TABLE": f"ledger{suffix}",
        "LOCAL_WORKSPACE_DIR": str(root / "workspace"), "LOCAL_BASE_MODEL": "tiny-random",
        "FINETUNE_PARAMS": '{"max_steps": 2}', "JANITOR_SCHEDULE": "0 0 0 1 1 *", "ACTIVITY_FLUSH_S": "1",
        "EVENTGRID_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid",  # events not needed
        **env})
    with contextlib.ExitStack() as exits:
        exits.callback(storage.stop)
        ensure_storage(settings)
        use_settings(settings)
        backend = LocalBackend(settings, event_retry_total_s=0)
        use_backend(backend, settings)
        exits.callback(lambda: (use_settings(None), use_backend(None)))
        exits.callback(backend.shutdown)
        exits.callback(reset_scorers)
        ledger = Ledger.from_settings(settings)
        train, test = upload_prepared_dataset(settings, dataset_id, seed=seed)
        job = backend.submit_finetune(FineTuneRequest(dataset_id, train, test, model_name,
                                                      tags={MANAGED_BY_TAG: MANAGED_BY_VALUE}))
        wait_until(lambda: backend.get_job(job).state in JOB_FINAL_STATES, 300, "the tiny fine-tune", 2.0)
        assert backend.get_job(job).state == COMPLETED, backend.get_job(job).error
        yield SimpleNamespace(settings=settings, storage=storage, backend=backend, ledger=ledger, job=job, exits=exits)


def user_function(module: Any, name: str) -> Callable[..., Any]:
    """The function ``name`` of a trigger module's blueprint, as indexed from a FunctionApp (what the host calls)."""
    import azure.functions as func

    from devhost.app_index import functions_of

    app = func.FunctionApp()
    app.register_functions(module.bp)
    (fn,) = [f for f in functions_of(app) if f.get_function_name() == name]
    return fn.get_user_function()


def messages_within(queue: Any, timeout_s: float, visibility_timeout_s: int = 30) -> list[Any]:
    """The messages that become visible on a storage ``queue`` within ``timeout_s`` ([] if none), received
    (so hidden from other receivers for ``visibility_timeout_s``)."""
    try:
        return wait_until(lambda: list(queue.receive_messages(max_messages=32, visibility_timeout=visibility_timeout_s)),
                          timeout_s, "a queue message", every_s=0.2)
    except WaitTimeout:
        return []


@dataclasses.dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes
    media_type: str | None
    chunks: list[bytes]  # the body as the function sent it (one chunk unless it streamed)


def call_http(fn: Callable[..., Any], method: str, url: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> HttpReply:
    """Call an HTTP function that takes FastAPI's ``Request`` (Azure Functions' HTTP streams types)
    the way the worker does: a real ASGI request, the response (streamed or not) read to its end."""
    from urllib.parse import urlsplit

    from fastapi import Request
    from starlette.responses import StreamingResponse

    parts = urlsplit(url)
    scope = {
        "type": "http", "method": method, "path": parts.path, "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(), "scheme": parts.scheme or "http", "server": ("localhost", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], "path_params": {},
    }

    async def run() -> HttpReply:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:  # the client stays connected: as under a real server, nothing more comes
                await asyncio.Event().wait()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        response = await fn(Request(scope, receive))
        if isinstance(response, StreamingResponse):
            chunks = [c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator]
        else:
            chunks = [bytes(response.body)]
        return HttpReply(response.status_code, dict(response.headers), b"".join(chunks), response.media_type, chunks)

    return asyncio.run(run())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
