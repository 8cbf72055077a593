"""The prepare_chat_data blob trigger, called as the host calls it: a real BlobClient to Azurite.

Submission goes through the ML backend interface to the shared in-memory workspace installed with
``use_backend``; the ledger and the prepared container are real (Azurite).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from azure.storage.blob import BlobClient

from devhost.app_index import functions_of
from shared.backends import use_backend
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, BackendError
from shared.context import context
from shared.datasets.intake import dataset_id_for, submit_pending_datasets
from shared.ledger import DATASET, JOB, Ledger, iso, utcnow
from shared.settings import Settings, use_settings
from shared.storage import blob_service
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.uploads import GOOD, MOSTLY_BAD, conv, upload
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage


def _recording(fail_submissions: int = 0) -> InMemoryWorkspace:
    """The shared in-memory workspace, recording fine-tune submissions (``requests``)."""
    ws = InMemoryWorkspace()
    ws.fail_submissions = fail_submissions
    return ws


@pytest.fixture
def storage_settings(storage_settings: Settings) -> Settings:
    """These tests are about one upload, one job: ``TRAINING_MODE=upload`` (corpus mode: tests/test_coalescing_storage.py)."""
    s = storage_settings.replace(training_mode="upload")
    use_settings(s)
    return s


@pytest.fixture
def backend(storage_settings: Settings) -> InMemoryWorkspace:
    b = _recording()
    use_backend(b, storage_settings)  # type: ignore[arg-type]
    return b


@pytest.fixture
def trigger() -> Callable[[BlobClient], None]:
    return prepare_trigger()


def prepared_blob(s: Settings, name: str) -> bytes:
    return blob_service(s).get_blob_client(s.prepared_container, name).download_blob().readall()


def test_function_binding_is_event_grid_blob_trigger_with_sdk_type() -> None:
    import function_app

    (fn,) = [f for f in functions_of(function_app.app) if f.get_function_name() == "prepare_chat_data"]
    (binding,) = json.loads(fn.get_function_json())["bindings"]
    assert binding == {"direction": "IN", "type": "blobTrigger", "name": "client", "path": "%CHAT_DATA_CONTAINER%/{name}",
                       "connection": "AzureWebJobsStorage", "source": "EventGrid"}
    import azurefunctions.extensions.bindings.blob as blob

    assert fn.get_user_function().__annotations__["client"] is blob.BlobClient


def test_upload_is_prepared_recorded_and_submitted_once(storage_settings: Settings, backend: InMemoryWorkspace, trigger) -> None:
    s = storage_settings
    client = upload(s, "team/chat data.jsonl", GOOD, small_chunks=True)
    raw_etag = client.get_blob_properties().etag
    trigger(client)

    dataset_id = dataset_id_for("team/chat data.jsonl", hashlib.sha256(GOOD).hexdigest())
    assert re.fullmatch(r"team-chat-data-[0-9a-f]{12}-[0-9a-f]{16}", dataset_id)
    ledger = Ledger.from_settings(s)
    record = ledger.get(DATASET, dataset_id)
    assert record is not None and record.state == "submitted"
    assert record.get("job_name") == "ftjob-001"
    assert record.get("blob_name") == "team/chat data.jsonl"
    assert record.get("content_sha256") == hashlib.sha256(GOOD).hexdigest()
    assert record.get("counts")["valid"] == 60 and record.get("counts")["invalid"] == 1

    (request,) = backend.requests
    prefix = f"datasets/{dataset_id}/"
    assert request.dataset_id == dataset_id
    assert (request.train_blob, request.test_blob) == (prefix + "train.jsonl", prefix + "test.jsonl")
    assert request.model_name == s.model_name
    assert request.tags[MANAGED_BY_TAG] == MANAGED_BY_VALUE and request.tags["dataset-id"] == dataset_id

    job = ledger.get(JOB, "ftjob-001")
    assert job is not None and job.state == "submitted"
    assert job.get("dataset_id") == dataset_id and job.get("model_name") == s.model_name
    assert job.get("base_model") == s.base_model_name and job.get("backend") == "in-memory"

    train = prepared_blob(s, prefix + "train.jsonl").splitlines()
    test = prepared_blob(s, prefix + "test.jsonl").splitlines()
    report = json.loads(prepared_blob(s, prefix + "report.json"))
    assert len(train) == report["counts"]["train"] and len(test) == report["counts"]["test"] and len(train) + len(test) == 60
    assert report["dataset"]["id"] == dataset_id and report["decision"]["accepted"] is True
    assert report["errors"] == [{"line": 61, "kind": "invalid_json", "message": report["errors"][0]["message"]}]

    # the raw upload is untouched
    assert client.get_blob_properties().etag == raw_etag
    assert client.download_blob().readall() == GOOD

    # the same event delivered again (or after a host restart): nothing new is submitted
    trigger(upload_client := blob_service(s).get_blob_client(s.chat_data_container, "team/chat data.jsonl"))
    trigger(upload_client)
    assert len(backend.requests) == 1
    assert [r.id for r in ledger.list(JOB)] == ["ftjob-001"]


def test_changed_content_is_a_new_dataset_version(storage_settings: Settings, backend: InMemoryWorkspace, trigger) -> None:
    s = storage_settings
    trigger(upload(s, "chat.jsonl", GOOD))
    changed = GOOD + conv(1000)
    trigger(upload(s, "chat.jsonl", changed))
    ids = sorted(r.id for r in Ledger.from_settings(s).list(DATASET))
    assert ids == sorted([dataset_id_for("chat.jsonl", hashlib.sha256(GOOD).hexdigest()),
                          dataset_id_for("chat.jsonl", hashlib.sha256(changed).hexdigest())])
    assert [r.dataset_id for r in backend.requests] == [dataset_id_for("chat.jsonl", hashlib.sha256(GOOD).hexdigest()),
                                                        dataset_id_for("chat.jsonl", hashlib.sha256(changed).hexdigest())]


def test_mostly_bad_file_is_rejected_reported_and_never_submitted(storage_settings: Settings, backend: InMemoryWorkspace,
                                                                   trigger) -> None:
    s = storage_settings
    trigger(upload(s, "bad.jsonl", MOSTLY_BAD))
    dataset_id = dataset_id_for("bad.jsonl", hashlib.sha256(MOSTLY_BAD).hexdigest())
    record = Ledger.from_settings(s).get(DATASET, dataset_id)
    assert record is not None and record.state == "rejected"
    assert "above the maximum" in record.get("error")
    report = json.loads(prepared_blob(s, f"datasets/{dataset_id}/report.json"))
    assert report["decision"]["accepted"] is False
    assert [e["line"] for e in report["errors"]] == list(range(11, 41))
    names = [b.name for b in blob_service(s).get_container_client(s.prepared_container).list_blobs()]
    assert names == [f"datasets/{dataset_id}/report.json"]  # no train/test for a rejected dataset
    trigger(upload(s, "bad.jsonl", MOSTLY_BAD))  # a duplicate delivery changes nothing
    assert backend.requests == []
    assert Ledger.from_settings(s).get(DATASET, dataset_id).state == "rejected"  # type: ignore[union-attr]


def test_other_files_are_ignored(storage_settings: Settings, backend: InMemoryWorkspace, trigger,
                                 caplog: pytest.LogCaptureFixture) -> None:
    s = storage_settings
    caplog.set_level("INFO", logger="functions.prepare_chat_data")
    trigger(upload(s, "notes.txt", b"hello"))
    assert "ignored blob 'notes.txt'" in caplog.text
    assert Ledger.from_settings(s).list(DATASET) == [] and backend.requests == []


def test_parquet_and_gzip_uploads(storage_settings: Settings, backend: InMemoryWorkspace, trigger) -> None:
    import gzip
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    s = storage_settings
    rows = [json.loads(conv(i)) for i in range(40)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    trigger(upload(s, "ultrachat/train_sft-00000.parquet", buf.getvalue(), small_chunks=True))
    trigger(upload(s, "chat.jsonl.gz", gzip.compress(b"".join(conv(i) for i in range(40)))))
    assert len(backend.requests) == 2
    counts = [r.get("counts") for r in Ledger.from_settings(s).list(DATASET)]
    assert all(c["valid"] == 40 for c in counts)


def test_failed_submission_is_retried_by_the_next_delivery(storage_settings: Settings, trigger) -> None:
    s = storage_settings
    backend = _recording(fail_submissions=1)
    use_backend(backend, s)  # type: ignore[arg-type]
    client = upload(s, "chat.jsonl", GOOD)
    with pytest.raises(BackendError):  # an infrastructure error: the host retries the blob
        trigger(client)
    dataset_id = dataset_id_for("chat.jsonl", hashlib.sha256(GOOD).hexdigest())
    ledger = Ledger.from_settings(s)
    record = ledger.get(DATASET, dataset_id)
    assert record is not None and record.state == "accepted" and not record.get("submit_claim")
    assert "submission failed" in record.get("error")
    trigger(client)  # the retry finishes the job
    assert len(backend.requests) == 1
    assert ledger.get(DATASET, dataset_id).state == "submitted"  # type: ignore[union-attr]


def test_a_live_claim_blocks_a_second_submission_and_a_stale_one_does_not(storage_settings: Settings,
                                                                           backend: InMemoryWorkspace, trigger) -> None:
    s = storage_settings
    backend.fail_submissions = 1
    client = upload(s, "chat.jsonl", GOOD)
    with pytest.raises(BackendError):
        trigger(client)
    dataset_id = dataset_id_for("chat.jsonl", hashlib.sha256(GOOD).hexdigest())
    ledger = Ledger.from_settings(s)
    # another worker is submitting right now
    ledger.merge(DATASET, dataset_id, submit_claim="other-worker", submit_claimed_at=iso(utcnow()))
    trigger(client)
    assert backend.requests == []
    # that worker died long ago: the reconcile path (or the next delivery) takes over
    ledger.merge(DATASET, dataset_id, submit_claimed_at=iso(utcnow() - timedelta(seconds=s.submit_claim_lease_s * 2)))
    (outcome,) = submit_pending_datasets(context(settings=s))
    assert outcome.status == "submitted" and len(backend.requests) == 1
    assert submit_pending_datasets(context(settings=s)) == []


def test_a_crash_before_the_decision_is_finished_by_the_next_delivery(storage_settings: Settings, backend: InMemoryWorkspace,
                                                                      trigger) -> None:
    s = storage_settings
    dataset_id = dataset_id_for("chat.jsonl", hashlib.sha256(GOOD).hexdigest())
    # an earlier delivery created the record and died before uploading anything
    Ledger.from_settings(s).create(DATASET, dataset_id, "received", blob_name="chat.jsonl")
    trigger(upload(s, "chat.jsonl", GOOD))
    assert Ledger.from_settings(s).get(DATASET, dataset_id).state == "submitted"  # type: ignore[union-attr]
    assert len(backend.requests) == 1


def test_deleted_blob_is_not_an_error(storage_settings: Settings, backend: InMemoryWorkspace, trigger) -> None:
    s = storage_settings
    client = upload(s, "gone.jsonl", GOOD)
    client.delete_blob()
    trigger(client)
    assert Ledger.from_settings(s).list(DATASET) == []
