"""The idle janitor end to end on the local backend, driven by the local host's timers.

A tiny real fine-tune is registered under two model names and deployed to two real endpoint
servers. The app runs in the local Functions host with the reconcile and janitor timers firing
every few seconds and a 45-second idle threshold. A client keeps calling one model through the
app's scoring route; nobody calls the other. The janitor timer must delete the silent endpoint
(its server process gone, its port closed) and leave the called one serving.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from localworkspace.workspace import process_alive, read_pid_file
from shared.backends import use_backend
from shared.backends.base import COMPLETED, JOB_FINAL_STATES, MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
from shared.context import context
from shared.endpoints import lifecycle
from shared.ledger import ENDPOINT, JANITOR, MODEL, ROUTE, Ledger
from shared.settings import use_settings
from tests.support import free_port, port_open, upload_prepared_dataset, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.storage]

JOB_TIMEOUT_S = 300
DEPLOY_TIMEOUT_S = 300
IDLE_MINUTES = 0.75


class Caller:
    """A client app calling one model through the app's chat completions route every few seconds."""

    def __init__(self, base_url: str, model: str, every_s: float = 4.0):
        self.url = f"{base_url}/api/v1/chat/completions"
        self.model = model
        self.every_s = every_s
        self.statuses: list[int] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(self.url, json=body)
                    self.statuses.append(reply.status_code)
                    if reply.status_code != 200:
                        self.last_error = reply.text[:300]
                except httpx.HTTPError as exc:
                    self.statuses.append(0)
                    self.last_error = repr(exc)
                self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(70)


def test_timer_deletes_the_endpoint_nobody_calls_and_keeps_the_called_one(storage_settings):
    from devhost.host import run_host
    from shared.backends.local import LocalBackend

    settings = storage_settings.replace(
        janitor_schedule="*/3 * * * * *",
        reconcile_schedule="*/3 * * * * *",
        idle_endpoint_minutes=IDLE_MINUTES,
        idle_grace_minutes=0.0,
        finetune_params={"max_steps": 2},
        eventgrid_webhook_url=f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid",  # events not needed here
        activity_flush_s=1,
    )
    use_settings(settings)
    backend = LocalBackend(settings, event_retry_total_s=0)
    use_backend(backend, settings)
    ledger = Ledger.from_settings(settings)
    called_model, silent_model = "janitor-called", "janitor-silent"
    try:
        train, test = upload_prepared_dataset(settings, "janitor-e2e", seed=5)
        job = backend.submit_finetune(FineTuneRequest("janitor-e2e", train, test, called_model,
                                                      tags={MANAGED_BY_TAG: MANAGED_BY_VALUE}))
        wait_until(lambda: backend.get_job(job).state in JOB_FINAL_STATES, JOB_TIMEOUT_S, "the job", 2.0)
        assert backend.get_job(job).state == COMPLETED, backend.get_job(job).error

        endpoints = {}
        for name in (called_model, silent_model):
            model = backend.register_model(job, name)
            ledger.create(MODEL, model.ref, "registered", job_name=job, base_model=model.base_model)
            endpoints[name] = lifecycle.deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=backend), reason="janitor e2e").id

        with run_host("function_app:app", settings=settings, port=0, poll_interval_s=1.0) as host:
            with Caller(host.base_url, called_model) as caller:
                # The host's reconcile timer activates both endpoints once their servers answer.
                wait_until(lambda: all(ledger.get(ROUTE, n) for n in endpoints), DEPLOY_TIMEOUT_S, "both endpoints to serve")
                silent_ep, called_ep = endpoints[silent_model], endpoints[called_model]
                silent_port = backend.get_endpoint(silent_ep) and json.loads(
                    (backend.ws.endpoint_dir(silent_ep) / "record.json").read_text())["port"]
                silent_server = read_pid_file(backend.ws.endpoint_dir(silent_ep) / "server.pid")
                assert silent_port and port_open(silent_port) and process_alive(silent_server)

                # The janitor timer deletes the silent one once it has been idle longer than the threshold.
                wait_until(lambda: ledger.get(ENDPOINT, silent_ep).state == "deleted", IDLE_MINUTES * 60 + 90,
                      "the janitor to delete the silent endpoint")
                time.sleep(5)  # a few more janitor runs: the called endpoint must survive them too
                called_record = ledger.get(ENDPOINT, called_ep)
                statuses = list(caller.statuses)
                last_error = caller.last_error

        silent_record = ledger.get(ENDPOINT, silent_ep)
        assert "idle" in silent_record.get("delete_reason") and silent_record.get("deleted_at")
        assert not port_open(silent_port), "the deleted endpoint's port is still open"
        assert not process_alive(silent_server), "the deleted endpoint's server process is still running"
        assert backend.get_endpoint(silent_ep) is None
        # The model stays registered (and known to the ledger) so scoring can bring it back.
        assert ledger.get(MODEL, f"{silent_model}:1") is not None
        assert ledger.get(ROUTE, silent_model).get("endpoint") == silent_ep

        assert called_record.state == "succeeded", called_record
        assert statuses.count(200) >= 3, (statuses, last_error)
        assert backend.get_endpoint(called_ep).state == "succeeded"
        target = backend.get_scoring_target(called_ep)
        assert port_open(int(target.url.split(":")[2].split("/")[0]))

        last = ledger.get(JANITOR, "last")
        assert last.state == "done" and silent_ep not in (last.get("deleted") or [])  # later runs had nothing to delete
        assert called_ep not in (last.get("deleted") or [])
    finally:
        backend.shutdown()
