"""The local workspace's own capacity (issue 21.4): at most N fine-tunes train at once, the rest
wait (``queued``) and start in submission order. Real job runners, tiny model, real Azurite."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from localworkspace import job_queue
from localworkspace.workspace import Workspace
from shared.backends.base import COMPLETED, JOB_FINAL_STATES, FineTuneRequest
from shared.backends.local import LocalBackend
from shared.settings import Settings
from tests.support import free_port, upload_prepared_dataset, wait_until

PARAMS = {"max_steps": 2, "per_device_train_batch_size": 4, "max_seq_length": 64}


@pytest.fixture
def one_at_a_time(storage_settings: Settings) -> Iterator[tuple[LocalBackend, Settings]]:
    # nobody listens on the webhook: each runner gives its event up after a second
    s = storage_settings.replace(
        local_max_parallel_jobs=1,
        eventgrid_webhook_url=f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid?functionName=on_job_event",
    )
    backend = LocalBackend(s, event_retry_total_s=1)
    try:
        yield backend, s
    finally:
        backend.shutdown()


@pytest.mark.storage
# three real fine-tunes one after another (minutes on 2 busy cores): the slow tier
def test_jobs_beyond_the_limit_wait_and_start_in_submission_order(one_at_a_time: tuple[LocalBackend, Settings]) -> None:
    backend, s = one_at_a_time
    train, test = upload_prepared_dataset(s, "ds-queue", seed=4)
    jobs = [
        backend.submit_finetune(FineTuneRequest(dataset_id="ds-queue", train_blob=train, test_blob=test,
                                                model_name="tiny-chat-ft", params=PARAMS))
        for _ in range(3)
    ]
    ws = Workspace(s.local_workspace_dir)
    most_running = 0
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        states = [backend.get_job(j).state for j in jobs]
        most_running = max(most_running, states.count("running"))
        if all(st in JOB_FINAL_STATES for st in states):
            break
        time.sleep(0.3)
    records = [json.loads(ws.job_state_path(j).read_text()) for j in jobs]
    assert [r["state"] for r in records] == [COMPLETED] * 3, [r.get("error") for r in records]
    assert most_running <= 1
    # each job started training only after the one submitted before it had ended
    starts = [datetime.fromisoformat(r["started_at"]) for r in records]
    ends = [datetime.fromisoformat(r["ended_at"]) for r in records]
    assert starts == sorted(starts), "jobs did not start in submission order"
    assert all(starts[i + 1] >= ends[i] for i in range(2)), list(zip(starts, ends, strict=True))
    assert all("queue_position" in r for r in records[1:])  # they were recorded as waiting for a slot
    assert job_queue.waiting(ws) == []


@pytest.mark.storage
# three real fine-tunes one after another (minutes on 2 busy cores): the slow tier
def test_a_canceled_waiting_job_does_not_block_the_queue(one_at_a_time: tuple[LocalBackend, Settings]) -> None:
    backend, s = one_at_a_time
    train, test = upload_prepared_dataset(s, "ds-cancel-q", seed=6)
    long = backend.submit_finetune(FineTuneRequest(dataset_id="ds-cancel-q", train_blob=train, test_blob=test,
                                                   model_name="tiny-chat-ft", params={**PARAMS, "max_steps": 100000}))
    waiting, last = (
        backend.submit_finetune(FineTuneRequest(dataset_id="ds-cancel-q", train_blob=train, test_blob=test,
                                                model_name="tiny-chat-ft", params=PARAMS))
        for _ in range(2)
    )
    ws = Workspace(s.local_workspace_dir)
    # running, past its MLflow set-up (a SIGTERM in the middle of creating the store is another story)
    wait_until(lambda: (json.loads(ws.job_state_path(long).read_text()).get("experiment_id")), 120, "the first job to run")
    assert backend.get_job(waiting).state == backend.get_job(last).state == "queued"
    backend.cancel_job(waiting)
    assert backend.get_job(waiting).state == "canceled"
    backend.cancel_job(long)
    final = wait_until(lambda: (info := backend.get_job(last)).state in {"completed", "failed"} and info, 240,
                       "the last job to run once the others were canceled")
    assert final.state == COMPLETED, final.error
