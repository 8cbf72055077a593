"""The stuck-state sweep (shared.reconcile.sweep) against real Azurite and an in-memory workspace:
every in-between state ends in a recorded state after its timeout, with the reason."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from scripts.make_sample_data import write
from shared import ledger as L
from shared.backends.base import COMPLETED, RUNNING
from shared.context import Context, context
from shared.deployment.job_outcome import handle_job_event
from shared.endpoints import healing
from shared.ledger import iso, utcnow
from shared.reconcile import sweep
from shared.storage import blob_service
from tests.fakes.job_event_samples import completed_event, submit_job
from tests.fakes.workspace import install_workspace

pytestmark = pytest.mark.storage


@pytest.fixture
def env(storage_settings):
    settings = storage_settings.replace(endpoint_heal_backoff_s=30, training_mode="upload")  # one upload, one job
    return install_workspace(settings)


def run(env, at):
    settings, ledger, ws = env
    summary = Counter()
    sweep.sweep_stuck(Context(settings, ledger, ws), summary, now=at)
    return summary


def test_an_endpoint_stuck_provisioning_is_failed_then_healed(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-p", COMPLETED)
    ep = handle_job_event(completed_event(fixtures_dir, settings, "job-p"), ctx=context()).endpoint
    limit = sweep.PROVISIONING_TIMEOUT["local"]
    assert run(env, utcnow() + limit - timedelta(minutes=1))["stuck_endpoints_failed"] == 0
    later = utcnow() + limit + timedelta(minutes=1)
    assert run(env, later)["stuck_endpoints_failed"] == 1
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "failed" and "still provisioning after" in record.get("error")
    summary = Counter()
    healing.heal_endpoints(Context(settings, ledger, ws), summary, now=later + timedelta(seconds=31))
    assert summary["endpoints_redeployed"] == 1 and ledger.get(L.ENDPOINT, ep).state == "provisioning"


def test_a_job_the_workspace_does_not_know_is_failed_with_the_reason(env):
    settings, ledger, ws = env
    ledger.create(L.JOB, "job-lost", "submitted", submitted_at=iso(utcnow()), model_name=settings.model_name)
    assert run(env, utcnow() + timedelta(minutes=30))["stuck_jobs_failed"] == 0
    assert run(env, utcnow() + timedelta(hours=2))["stuck_jobs_failed"] == 1
    record = ledger.get(L.JOB, "job-lost")
    assert record.state == "failed" and "does not know this job" in record.get("error")


def test_a_job_without_a_final_state_for_too_long_is_failed(env):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-long", RUNNING)
    ledger.annotate(L.JOB, "job-long", submitted_at=iso(utcnow()))
    assert run(env, utcnow() + timedelta(hours=3))["stuck_jobs_failed"] == 0  # long jobs are fine
    assert run(env, utcnow() + sweep.JOB_MAX_RUNTIME + timedelta(hours=1))["stuck_jobs_failed"] == 1
    assert "no final state after" in ledger.get(L.JOB, "job-long").get("error")


def test_a_dataset_left_received_is_prepared_again_and_submitted(env, tmp_path):
    settings, ledger, ws = env
    sample = tmp_path / "s.jsonl"
    write(sample, count=30, seed=1, malformed=0)
    blob = blob_service(settings).get_blob_client(settings.chat_data_container, "stuck.jsonl")
    blob.upload_blob(sample.read_bytes())
    from shared.datasets.intake import prepare_uploaded_blob

    outcome = prepare_uploaded_blob(blob, context(settings=settings, ledger=ledger, backend=ws))  # the id a delivery computes
    ledger.delete(L.DATASET, outcome.dataset_id)
    # what a delivery killed mid-preparation leaves behind
    ledger.create(L.DATASET, outcome.dataset_id, "received", blob_name="stuck.jsonl")
    assert run(env, utcnow() + timedelta(minutes=10))["stuck_datasets_retried"] == 0
    assert run(env, utcnow() + sweep.RECEIVED_TIMEOUT + timedelta(minutes=1))["stuck_datasets_retried"] == 1
    assert ledger.get(L.DATASET, outcome.dataset_id).state == "submitted"


def test_a_dataset_whose_upload_is_gone_is_rejected_with_the_reason(env):
    settings, ledger, ws = env
    ledger.create(L.DATASET, "gone-0123", "received", blob_name="gone.jsonl")
    assert run(env, utcnow() + sweep.RECEIVED_TIMEOUT + timedelta(minutes=1))["stuck_datasets_rejected"] == 1
    record = ledger.get(L.DATASET, "gone-0123")
    assert record.state == "rejected" and "deleted before its preparation finished" in record.get("error")


def test_a_stuck_deletion_is_noted_once(env):
    settings, ledger, ws = env
    ledger.create(L.ENDPOINT, "ep-stuck", "deleting", delete_requested_at=iso(utcnow()))
    assert run(env, utcnow() + timedelta(minutes=30))["stuck_deletions_noted"] == 0
    at = utcnow() + sweep.DELETING_TIMEOUT + timedelta(minutes=1)
    assert run(env, at)["stuck_deletions_noted"] == 1
    assert run(env, at)["stuck_deletions_noted"] == 0
    assert "deletion not finished" in ledger.get(L.ENDPOINT, "ep-stuck").get("stuck_reason")
