"""Job events from the real local workspace: a tiny fine-tune completes, its event reaches
`on_job_event` through a webhook, the model is registered in MLflow and served after reconcile.

The webhook here is a minimal stand-in for the local host's Event Grid route: it decodes each
delivery with the same helpers the host uses (devhost.eventgrid_delivery) and calls the decorated function.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from devhost.eventgrid_delivery import decode_event, parse_delivery
from functions import on_job_event
from shared import ledger as L
from shared.backends import use_backend
from shared.backends.base import COMPLETED, JOB_FINAL_STATES, MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
from shared.context import context
from shared.ledger import Ledger
from shared.reconcile import run as reconciliation
from shared.settings import use_settings
from tests.support import free_port, upload_prepared_dataset, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.storage,
    # MLflow's SQLite store uses a loader strategy SQLAlchemy deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

JOB_TIMEOUT_S = 300
DEPLOY_TIMEOUT_S = 300


class WebhookReceiver:
    """Receives Event Grid deliveries on 127.0.0.1 and hands each event to `on_job_event`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.deliveries: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 200
                for envelope in parse_delivery(body):
                    start = time.perf_counter()
                    try:
                        on_job_event.on_job_event(decode_event(envelope))
                        error = None
                    except Exception as exc:  # the real host answers 500 and Event Grid retries
                        status, error = 500, repr(exc)
                    receiver.deliveries.append(
                        {
                            "event": envelope,
                            "seconds": time.perf_counter() - start,
                            "error": error,
                            "aeg": self.headers.get("aeg-event-type"),
                        }
                    )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/runtime/webhooks/eventgrid?functionName=on_job_event"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class TimedBackend:
    """Delegates to the real backend and records how long each call took (for the report)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.timings: list[tuple[str, float]] = []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.timings.append((name, time.perf_counter() - start))

        return timed


@pytest.mark.parametrize("webhook_reachable", [True, False], ids=["event-delivered", "event-lost"])
def test_local_workspace_job_is_registered_deployed_and_served(storage_settings, webhook_reachable):
    from shared.backends.local import LocalBackend

    with WebhookReceiver() as receiver:
        # A lost event: the workspace posts to a port nobody listens on, and gives up at once.
        url = receiver.url if webhook_reachable else f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid"
        settings = storage_settings.replace(eventgrid_webhook_url=url, finetune_params={"max_steps": 2})
        use_settings(settings)
        local = LocalBackend(settings, event_retry_total_s=0 if not webhook_reachable else 60)
        backend = TimedBackend(local)
        use_backend(backend, settings)
        ledger = Ledger.from_settings(settings)
        try:
            backend.warm_up()  # the app host pre-imports mlflow, so registration answers fast
            local.warm_up()  # as the local host does at start-up: the first registry access costs seconds
            train, test = upload_prepared_dataset(settings, "e2e", seed=11)
            job = backend.submit_finetune(
                FineTuneRequest(
                    "e2e", train, test, settings.model_name, tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "dataset_id": "e2e"}
                )
            )
            # What the preparation module records right after submitting.
            ledger.create(
                L.JOB,
                job,
                "submitted",
                dataset_id="e2e",
                model_name=settings.model_name,
                base_model=settings.base_model_name,
                backend="local",
            )

            wait_until(lambda: backend.get_job(job).state in JOB_FINAL_STATES, JOB_TIMEOUT_S, "the job", every_s=2.0)
            info = backend.get_job(job)
            assert info.state == COMPLETED, f"{info.error}; see {info.log_path}"

            if webhook_reachable:
                delivery = wait_until(lambda: receiver.deliveries[0] if receiver.deliveries else None, 60, "the event", every_s=2.0)
                assert delivery["aeg"] == "Notification" and delivery["error"] is None
                assert delivery["event"]["eventType"] == "Microsoft.MachineLearningServices.RunCompleted"
                # Event Grid waits 30 s for a webhook's answer, then retries (AZURE_REFERENCE.md): the
                # handler starts the deployment and returns. How fast it is, bench/ measures.
                assert delivery["seconds"] < 30, f"handler took {delivery['seconds']:.2f} s: {backend.timings}"
                print(f"on_job_event with the local workspace answered in {delivery['seconds'] * 1000:.0f} ms")
            else:
                assert receiver.deliveries == []
                assert ledger.get(L.JOB, job).state == "submitted"  # nobody heard of the completion
                summary = reconciliation.reconcile(ctx=context())
                assert summary["jobs_polled"] == 1 and summary["models_deploying"] == 1, summary

            record = ledger.get(L.JOB, job)
            assert record.state == COMPLETED and record.get("model_version"), record
            assert set(record.get("metrics")) >= {"test_loss", "base_test_loss"}  # what the quality gate reads
            ep = ledger.get(L.MODEL, record.get("model")).get("endpoint")
            assert ledger.get(L.ENDPOINT, ep).state == "provisioning"

            def active():
                reconciliation.reconcile(ctx=context())
                return ledger.get(L.ROUTE, settings.model_name)

            active_record = wait_until(active, DEPLOY_TIMEOUT_S, "the endpoint to serve", every_s=3.0)
            assert active_record.get("endpoint") == ep
            assert ledger.get(L.ENDPOINT, ep).state == "succeeded"
            assert ledger.get(L.MODEL, record.get("model")).state == "deployed"

            target = backend.get_scoring_target(ep)
            body = {
                "input_data": {
                    "input_string": [{"role": "user", "content": "What do bees make?"}],
                    "parameters": {"max_new_tokens": 8},
                },
                "params": {},
            }
            reply = httpx.post(target.url, json=body, headers=target.headers(), timeout=target.timeout_s)
            assert reply.status_code == 200, reply.text
            assert isinstance(reply.json()["output"], str)
        finally:
            local.shutdown()
