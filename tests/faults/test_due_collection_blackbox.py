"""Black box, as a user on the local stack: one upload to ``<folder>/x.jsonl`` with the default
settings (corpus mode, ``COALESCE_SECONDS=60``) is answered by that collection's model with no
``reconcile`` run at all: its timer is parked the way the Functions host parks one
(``AzureWebJobs.reconcile.Disabled``), so the job can only have been submitted by the scheduled
message on queue ``collection-submissions`` (issue 28 item 1).

Real Azurite, the real local host (blob polling, Event Grid webhook, queue triggers) and the real
local workspace training the tiny model with the trainer's defaults. It prints the time from the
upload to the first completion; the target (``COALESCE_SECONDS`` + 60 s) is measured by
bench/stages.py, which times every stage, so this test asserts the behaviour, not a duration.
In the faults tier (a minute of it is the window) rather than `make test`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from scripts.make_sample_data import write
from shared.backends import get_backend, use_backend
from shared.datasets.collections import model_name_for
from shared.ledger import DATASET, JOB, Ledger, parse_iso
from shared.settings import use_settings
from shared.storage import blob_service, ensure_storage
from tests.support import PrivateAzurite, free_port, make_settings, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

KEY = "due-blackbox-key"
FOLDER = "support-bot"
# generous: the machine may be shared; the figure that matters is printed (and benchmarked)
TIMEOUT_S = 600


def test_an_upload_is_answered_by_its_collection_model_with_reconcile_parked(tmp_path: Path, monkeypatch) -> None:
    from devhost.host import run_host

    storage = PrivateAzurite(tmp_path / "azurite")
    port = free_port()
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(  # the defaults, but for what a private stack needs
        AzureWebJobsStorage=storage.connection_string, CHAT_DATA_CONTAINER=f"chat-{suffix}",
        PREPARED_CONTAINER=f"prepared-{suffix}", LEDGER_TABLE=f"ledger{suffix}",
        LOCAL_WORKSPACE_DIR=str(tmp_path / "workspace"), LOCAL_BASE_MODEL="tiny-random",
        LOCAL_HOST_PORT=str(port), FUNCTION_KEY=KEY,
        EVAL_FLOORS="{}")  # the tiny random model meets no floor (tests/conftest.py storage_settings)
    assert settings.training_mode == "corpus" and settings.coalesce_s == 60 and settings.collection_submissions
    monkeypatch.setenv("AzureWebJobs.reconcile.Disabled", "true")
    use_settings(settings)
    ensure_storage(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    model = model_name_for(settings, FOLDER)
    sample = tmp_path / "x.jsonl"
    write(sample, count=40, seed=11, malformed=0)
    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=2.0) as host, \
                httpx.Client(base_url=host.base_url, timeout=120, headers={"x-functions-key": KEY}) as client:
            assert "reconcile" in host.disabled and "reconcile" not in host.functions
            assert "submit_due_collection" in host.functions
            with sample.open("rb") as f:
                blob_service(settings).get_blob_client(settings.chat_data_container, f"{FOLDER}/x.jsonl").upload_blob(f)
            uploaded = time.monotonic()

            def answered() -> httpx.Response | None:
                reply = client.post("/api/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
                return reply if reply.status_code == 200 else None

            reply = wait_until(answered, TIMEOUT_S, f"the first completion from {model}", every_s=0.5)
            took = time.monotonic() - uploaded
            assert reply.json()["model"].split(":")[0] == model
            (dataset,) = ledger.list(DATASET)
            (job,) = ledger.list(JOB)
            assert job.get("collection") == FOLDER and job.get("dataset_ids") == [dataset.id]
            due = parse_iso(dataset.get("accepted_at")).timestamp() + settings.coalesce_s
            assert parse_iso(job.get("submitted_at")).timestamp() >= due  # at its due time, not at the upload
            print(f"\nupload -> first completion from {model}: {took:.1f} s (COALESCE_SECONDS={settings.coalesce_s}; "
                  f"submitted {parse_iso(job.get('submitted_at')).timestamp() - due:.1f} s after due; no reconcile run)")
    finally:
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
        use_settings(None)
        use_backend(None)
        storage.stop()
