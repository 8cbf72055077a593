"""Corpus mode end to end on the local stack (real Azurite, the real local host with its blob
trigger, Event Grid webhook and reconcile timer, the real local workspace training the tiny
model): a burst of uploads is one job on the union, an upload during the job one follow-up,
two collections two models answering by name, and a budget that holds then releases.

TRAINING_MODE=upload (one job per file, as before) is the mission test, tests/test_e2e_local.py.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from shared.backends import get_backend
from shared.datasets.collections import model_name_for
from shared.ledger import DATASET, JOB, ROUTE, Ledger
from shared.observability.status import cli_status
from shared.settings import use_settings
from shared.storage import blob_service
from tests.support import free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.storage,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

KEY = "corpus-e2e-key"
WINDOW_S = 6


def conversation(i: int, collection: str) -> bytes:
    prompt = f"{collection}: what is {i} times three?"
    return json.dumps({"prompt": prompt, "prompt_id": f"{collection}-{i}", "messages": [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": f"Ahoy matey! {3 * i}, arr!"}]}).encode() + b"\n"


def rows(collection: str, first: int, last: int) -> bytes:
    return b"".join(conversation(i, collection) for i in range(first, last))


def jobs_of(ledger: Ledger, collection: str) -> list:
    return sorted((j for j in ledger.list(JOB) if j.get("collection") == collection), key=lambda j: j.get("submitted_at"))


def blob_lines(settings, name: str) -> list[bytes]:
    return blob_service(settings).get_blob_client(settings.prepared_container, name).download_blob().readall().splitlines()


def status_json() -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_status(SimpleNamespace(json=True)) == 0
    return json.loads(out.getvalue())


def test_corpus_mode_on_the_local_stack(storage_settings, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from devhost.host import run_host

    port = free_port()
    settings = storage_settings.replace(
        training_mode="corpus", coalesce_s=WINDOW_S, max_running_jobs=2,
        function_key=KEY,
        eventgrid_webhook_url=f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event",
        finetune_params={"max_steps": 2},
        reconcile_schedule="*/2 * * * * *",
        janitor_schedule="0 0 0 1 1 *",
        instance_hourly_prices={"local": 3600.0},  # $1 per second of training: a budget a test can spend
    )
    use_settings(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    chat = blob_service(settings).get_container_client(settings.chat_data_container)
    support, labels = "support-bot", "labels"
    t0 = time.monotonic()
    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=0.5) as host, \
                httpx.Client(base_url=host.base_url, timeout=120, headers={"x-functions-key": KEY}) as client:
            # 1. three files in one collection within the window -> one job on their union
            chat.upload_blob(f"{support}/day1.jsonl", rows(support, 0, 30))
            chat.upload_blob(f"{support}/day2.jsonl", rows(support, 20, 50))  # 10 shared with day1
            chat.upload_blob(f"{support}/day3.jsonl", rows(support, 45, 70))  # 5 shared with day2
            first = wait_until(lambda: jobs_of(ledger, support), 90, "the support-bot job")[0]
            assert len(jobs_of(ledger, support)) == 1
            assert len(first.get("dataset_ids")) == 3, "the three uploads were not coalesced into one job"
            corpus = blob_lines(settings, first.get("train_blob")) + blob_lines(settings, first.get("test_blob"))
            held_out = blob_lines(settings, first.get("train_blob").rsplit("/", 1)[0] + "/eval.jsonl")  # never trained on
            assert len(held_out) == first.get("corpus_counts")["eval"] > 0
            assert len(corpus) + len(held_out) == 70 == len(set(corpus + held_out))  # 85 uploaded minus 15 cross-file duplicates
            assert first.get("corpus_counts")["duplicates"] == 15

            # 2. a fourth file while the job runs, and a second collection
            chat.upload_blob(f"{support}/day4.jsonl", rows(support, 70, 90))
            chat.upload_blob(f"{labels}/batch1.jsonl", rows(labels, 0, 30))
            day4 = wait_until(lambda: next((d for d in ledger.list(DATASET) if d.get("blob_name", "").endswith("day4.jsonl")
                                           and d.state in {"accepted", "submitted"}), None), 60, "day4 to be accepted")
            if ledger.get(JOB, first.id).state == "submitted":  # still running: day4 waits for it
                assert ledger.get(DATASET, day4.id).state == "accepted"
            wait_until(lambda: backend.get_job(first.id).state in {"completed", "failed"}, 240, "the first job to end", 1.0)
            assert backend.get_job(first.id).state == "completed", backend.get_job(first.id).error
            # the trainer trained on the corpus files
            trained = (Path(settings.local_workspace_dir) / "jobs" / first.id / "data").glob("*.jsonl")
            assert sum(len(p.read_bytes().splitlines()) for p in trained) == 70 - len(held_out)

            follow_up = wait_until(lambda: len(jobs_of(ledger, support)) == 2 and jobs_of(ledger, support)[1], 60,
                                   "exactly one follow-up job")
            assert len(follow_up.get("dataset_ids")) == 4 and day4.id in follow_up.get("dataset_ids")
            assert len(blob_lines(settings, follow_up.get("train_blob")) + blob_lines(settings, follow_up.get("test_blob"))
                       ) + follow_up.get("corpus_counts")["eval"] == 90

            # 3. two collections -> two models, each answering by its name
            for collection in (support, labels):
                name = model_name_for(settings, collection)
                wait_until(lambda n=name: ledger.get(ROUTE, n), 300, f"model {name} to be served", 1.0)
                reply = client.post("/api/v1/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
                assert reply.status_code == 200, reply.text
                assert reply.json()["model"] == name
                score = client.post("/api/score", json={"model": name, "input_data": {
                    "input_string": [{"role": "user", "content": "Hi"}], "parameters": {"max_new_tokens": 4}}})
                assert score.status_code == 200, score.text
            assert len(jobs_of(ledger, support)) == 2 and len(jobs_of(ledger, labels)) == 1
            # lineage on the registered model (MLflow tags locally)
            job_record = ledger.get(JOB, jobs_of(ledger, labels)[0].id)
            wait_until(lambda: ledger.get(JOB, job_record.id).get("model"), 60, "the labels model to be registered")
            model_name, _, version = ledger.get(JOB, job_record.id).get("model").partition(":")
            mlflow = MlflowClient(backend.ws.tracking_uri, registry_uri=backend.ws.tracking_uri)  # type: ignore[attr-defined]
            tags = mlflow.get_model_version(model_name, version).tags
            assert tags["collection"] == labels and tags["corpus-id"] == job_record.get("corpus_id")
            assert tags["dataset-ids"] == ",".join(job_record.get("dataset_ids"))

            # 4. budget exhausted -> nothing submitted, the reason in status --json; raised -> submitted
            wait_until(lambda: all(j.state != "submitted" for j in ledger.list(JOB)), 240, "every job to end", 1.0)
            use_settings(tight := settings.replace(finetune_budget_usd=1.0))
            chat.upload_blob(f"{labels}/batch2.jsonl", rows(labels, 30, 60))
            held = wait_until(lambda: next((c for c in status_json()["collections"] if c["id"] == labels
                                            and c["held_reason"]), None), 60, "the labels submission to be held")
            assert "budget reached" in held["held_reason"] and len(held["pending"]) == 1
            assert status_json()["training"]["guard"]["spent_usd"] > 1.0
            time.sleep(5)  # several reconcile runs: still held, nothing submitted
            assert len(jobs_of(ledger, labels)) == 1
            use_settings(tight.replace(finetune_budget_usd=100_000.0))
            wait_until(lambda: len(jobs_of(ledger, labels)) == 2, 30, "the held submission once the budget is raised")
            assert next(c for c in status_json()["collections"] if c["id"] == labels)["held_reason"] is None
    finally:
        use_settings(settings)
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
    print(f"corpus end-to-end took {time.monotonic() - t0:.0f} s")
