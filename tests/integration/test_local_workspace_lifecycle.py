"""Local workspace: the whole lifecycle for real (tiny model): job -> event -> register -> deploy -> score -> delete.

Its failure paths, events and hygiene: tests/storage/test_local_workspace.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from localworkspace.event_publisher import RUN_COMPLETED
from scripts.make_sample_data import pirate_conversations
from shared.backends.base import (
    COMPLETED,
    EP_SUCCEEDED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    FineTuneRequest,
    MLBackend,
    NotFoundError,
)
from shared.backends.local import LocalBackend
from shared.settings import Settings
from tests.fakes.local import FAST_PARAMS, EventSink, jsonl, upload_dataset, wait_endpoint, wait_job
from tests.support import port_open, wait_until

# --- the whole lifecycle ---------------------------------------------------------------------

@pytest.mark.usefixtures("migrated_mlflow_store")
@pytest.mark.storage
def test_job_event_register_deploy_score_delete(backend_with_sink: tuple[LocalBackend, Settings], event_sink: EventSink) -> None:
    backend, s = backend_with_sink
    assert isinstance(backend, MLBackend)
    rows = pirate_conversations(48, seed=3)
    train_blob, test_blob = upload_dataset(s, "ds-ok", jsonl(rows[:40]), jsonl(rows[40:]))

    started = time.monotonic()
    job = backend.submit_finetune(FineTuneRequest(
        dataset_id="ds-ok", train_blob=train_blob, test_blob=test_blob, model_name="tiny-chat-ft",
        tags={"dataset_id": "ds-ok"}, params=FAST_PARAMS,
    ))
    assert time.monotonic() - started < 2, "submit must return at once"
    assert job.startswith("ftjob-")
    assert backend.get_job(job).state in {"queued", "running"}

    info = wait_job(backend, job)
    assert info.state == COMPLETED, info.error
    assert info.metrics["base_test_loss"] > 0 and info.metrics["test_loss"] > 0 and "train_loss" in info.metrics
    assert info.tags["dataset_id"] == "ds-ok" and info.tags[MANAGED_BY_TAG] == MANAGED_BY_VALUE
    assert info.started_at and info.ended_at and info.ended_at >= info.started_at
    assert "completed" in Path(info.log_path or "").read_text()

    event = event_sink.wait_for(job)
    assert event["eventType"] == RUN_COMPLETED
    assert event["topic"] == s.local_workspace_id
    assert event["subject"] == f"experiments/{event['data']['experimentId']}/runs/{job}"
    assert event["data"]["experimentName"] == s.experiment_name
    assert event["data"]["runTags"]["dataset_id"] == "ds-ok"
    assert event_sink.headers[0]["aeg-event-type"] == "Notification"

    model = backend.register_model(job, "tiny-chat-ft")
    assert backend.register_model(job, "tiny-chat-ft") == model, "same job must give the same version"
    assert (model.name, model.job_name, model.base_model) == ("tiny-chat-ft", job, s.base_model_name)

    backend.begin_deploy(model, "tiny-chat-ft-1", tags={"model": model.ref})
    backend.begin_deploy(model, "tiny-chat-ft-1", tags={"model": model.ref})  # idempotent: one server
    ep = wait_endpoint(backend, "tiny-chat-ft-1")
    assert ep.state == EP_SUCCEEDED, ep.error
    backend.set_traffic("tiny-chat-ft-1")
    listed = {e.name: e for e in backend.list_endpoints()}
    assert listed["tiny-chat-ft-1"].traffic == {"default": 100} and listed["tiny-chat-ft-1"].model == model.ref
    assert listed["tiny-chat-ft-1"].last_activity is None

    target = backend.get_scoring_target("tiny-chat-ft-1")
    body = {"input_data": {"input_string": [{"role": "user", "content": "What colour is snow?"}],
                           "parameters": {"temperature": 0.0, "do_sample": False, "max_new_tokens": 8}}, "params": {}}
    assert httpx.post(target.url, json=body, timeout=30).status_code == 401
    assert httpx.post(target.url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    reply = httpx.post(target.url, json=body, headers=target.headers(), timeout=target.timeout_s)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert isinstance(answer["output"], str) and answer["finish_reason"] in {"stop", "length"}
    assert answer["usage"]["completion_tokens"] >= 1
    assert httpx.post(target.url, json={"input_data": {}}, headers=target.headers(), timeout=30).status_code == 400
    assert backend.get_endpoint("tiny-chat-ft-1").last_activity is not None
    assert "azureml-model-deployment" not in target.headers(), "unpinned: the endpoint's split decides"
    assert reply.headers["azureml-model-deployment"] == "default"

    # A second deployment beside the first, in the same endpoint, at 0% until traffic is split.
    backend.begin_deploy_deployment(model, "tiny-chat-ft-1", "version-2")
    backend.begin_deploy_deployment(model, "tiny-chat-ft-1", "version-2")  # idempotent
    dep = wait_until(lambda: (d := backend.get_deployment("tiny-chat-ft-1", "version-2")).state != "provisioning" and d,
                     120, "the second deployment to be ready")
    assert dep.state == EP_SUCCEEDED and dep.traffic == 0, dep
    pinned = backend.get_scoring_target("tiny-chat-ft-1", deployment="version-2")
    assert pinned.url == target.url and pinned.headers()["azureml-model-deployment"] == "version-2"
    assert httpx.post(pinned.url, json=body, headers=pinned.headers(), timeout=60).headers[
        "azureml-model-deployment"] == "version-2"
    with pytest.raises(BackendError):
        backend.set_traffic("tiny-chat-ft-1", {"default": 90, "version-2": 20})  # must sum to 100
    with pytest.raises(BackendError):
        backend.begin_delete_deployment("tiny-chat-ft-1", "default")  # takes traffic
    backend.set_traffic("tiny-chat-ft-1", {"default": 0, "version-2": 100})
    info = backend.get_endpoint("tiny-chat-ft-1")
    assert info.deployment == "version-2" and info.traffic == {"version-2": 100}
    assert {d.name: d.traffic for d in info.deployments} == {"default": 0, "version-2": 100}
    since = datetime.now(UTC) - timedelta(minutes=5)
    figures = backend.deployment_metrics("tiny-chat-ft-1", since)
    assert figures["version-2"].requests == 1 and figures["version-2"].errors == 0
    backend.begin_delete_deployment("tiny-chat-ft-1", "default")
    assert backend.get_deployment("tiny-chat-ft-1", "default") is None
    assert httpx.post(target.url, json=body, headers=target.headers(), timeout=60).headers[
        "azureml-model-deployment"] == "version-2"

    port = int(target.url.split(":")[2].split("/")[0])
    backend.begin_delete_endpoint("tiny-chat-ft-1")
    assert not port_open(port), "the server's port must be closed after delete"
    assert backend.get_endpoint("tiny-chat-ft-1") is None
    assert [e.name for e in backend.list_endpoints()] == []
    record = json.loads((Path(s.local_workspace_dir) / "endpoints" / "tiny-chat-ft-1" / "record.json").read_text())
    assert record["state"] == "deleted" and record["deleted_at"]
    with pytest.raises(NotFoundError):
        backend.get_scoring_target("tiny-chat-ft-1")


