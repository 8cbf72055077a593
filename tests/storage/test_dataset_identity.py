"""Issue 26.2 and 26.3 on real storage (Azurite), through the real blob trigger.

26.2: the same file in two collections is two datasets, each trained in its own collection
(the old id, sanitised name + content hash, made ``sales-bot/batch-01.jsonl`` the record of
``support-bot/batch-01.jsonl``); names that sanitise alike never share a record; records made
under the old id keep working for their own blob.
26.3: a folder whose name is not already canonical is refused with the reason in its report and
``status``; nothing is folded into another collection.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from shared.backends import use_backend
from shared.datasets.intake import dataset_id_for, legacy_dataset_id_for
from shared.ledger import DATASET, JOB, Ledger, iso, utcnow
from shared.ledger import records as R
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.settings import Settings, use_settings
from shared.storage import blob_service
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.uploads import conv, upload
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage

DATA = b"".join(conv(i) for i in range(40))
# The old id kept the last 48 characters of the sanitised name: with a file name that long, the
# folder (the collection) was cut off, and the two uploads below shared one record.
FILE = "conversations-exported-from-the-helpdesk-2026-12-01-batch-01.jsonl"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def trigger():  # noqa: ANN201
    return prepare_trigger()


def corpus(s: Settings) -> tuple[Settings, InMemoryWorkspace]:
    backend = InMemoryWorkspace()
    s = s.replace(training_mode="corpus", coalesce_s=0, max_running_jobs=0)
    use_settings(s)
    use_backend(backend, s)
    return s, backend


def test_same_file_in_two_collections_trains_in_both(storage_settings: Settings, trigger) -> None:
    s, backend = corpus(storage_settings)
    support, sales = f"support-bot/{FILE}", f"sales-bot/{FILE}"
    assert legacy_dataset_id_for(support, SHA) == legacy_dataset_id_for(sales, SHA)
    for name in (support, sales):
        trigger(upload(s, name, DATA))
    ledger = Ledger.from_settings(s)
    records = {r.get("blob_name"): r for r in ledger.list(DATASET)}
    assert set(records) == {support, sales}
    assert records[support].id != records[sales].id
    assert {r.get("collection") for r in records.values()} == {"support-bot", "sales-bot"}
    # one job per collection, each on its own dataset
    trained = sorted((r.tags.get("collection"), r.dataset_ids) for r in backend.requests)
    assert [c for c, _ in trained] == ["sales-bot", "support-bot"], trained
    assert {ids for _, ids in trained} == {(records[sales].id,), (records[support].id,)}


def test_names_that_sanitise_alike_are_two_datasets(storage_settings: Settings, trigger) -> None:
    s, backend = corpus(storage_settings)
    assert legacy_dataset_id_for("team-a/data.jsonl", SHA) == legacy_dataset_id_for("team/a-data.jsonl", SHA)
    for name in ("team-a/data.jsonl", "team/a-data.jsonl"):
        trigger(upload(s, name, DATA))
    ledger = Ledger.from_settings(s)
    assert sorted(r.get("blob_name") for r in ledger.list(DATASET)) == ["team-a/data.jsonl", "team/a-data.jsonl"]
    assert len(backend.requests) == 2


def test_a_record_under_the_old_id_keeps_working_for_its_blob(storage_settings: Settings, trigger) -> None:
    s, backend = corpus(storage_settings)
    ledger = Ledger.from_settings(s)
    legacy = legacy_dataset_id_for("support-bot/batch-01.jsonl", SHA)
    ledger.create(DATASET, legacy, R.DATASET_RECEIVED, blob_name="support-bot/batch-01.jsonl", content_sha256=SHA,
                  collection="support-bot", prefix=f"datasets/{legacy}/")
    trigger(upload(s, "support-bot/batch-01.jsonl", DATA))  # the redelivery of an upload made before the fix
    trigger(upload(s, "sales-bot/batch-01.jsonl", DATA))  # same content, other collection: its own record
    ids = {r.get("blob_name"): r.id for r in ledger.list(DATASET)}
    assert ids == {"support-bot/batch-01.jsonl": legacy, "sales-bot/batch-01.jsonl": dataset_id_for("sales-bot/batch-01.jsonl", SHA)}
    assert ledger.get(DATASET, legacy).state in {R.DATASET_SUBMITTED, R.DATASET_ACCEPTED}
    assert len(backend.requests) == 2


def test_an_id_taken_by_another_blob_is_never_reused(storage_settings: Settings, trigger) -> None:
    """Should a record under this blob's id belong to another blob (a hash collision, crafted or not),
    the upload gets the next id instead of being dropped as 'already prepared'."""
    s, backend = corpus(storage_settings)
    ledger = Ledger.from_settings(s)
    taken = dataset_id_for("support-bot/batch-01.jsonl", SHA)
    ledger.create(DATASET, taken, R.DATASET_SUBMITTED, blob_name="someone-else/x.jsonl", content_sha256=SHA,
                  collection="someone-else", job_name="ftjob-old", submitted_at=iso(utcnow()))
    trigger(upload(s, "support-bot/batch-01.jsonl", DATA))
    mine = [r for r in ledger.list(DATASET) if r.get("blob_name") == "support-bot/batch-01.jsonl"]
    assert [r.id for r in mine] == [dataset_id_for("support-bot/batch-01.jsonl", SHA, name_hex=64)]
    assert [r.tags.get("collection") for r in backend.requests] == ["support-bot"]


@pytest.mark.parametrize("folder", ["Support_Bot", "support.bot", "SUPPORT BOT", "___", "s" * 40 + "x"])
def test_a_folder_name_that_is_not_canonical_is_refused_with_its_reason(storage_settings: Settings, trigger,
                                                                        folder: str) -> None:
    s, backend = corpus(storage_settings)
    name = f"{folder}/batch-01.jsonl"
    trigger(upload(s, name, DATA))
    ledger = Ledger.from_settings(s)
    (record,) = ledger.list(DATASET)
    assert record.state == R.DATASET_REJECTED and record.get("collection") is None
    assert f"folder {folder!r} is not a collection name" in record.get("error")
    assert backend.requests == [] and ledger.list(JOB) == []
    report = json.loads(blob_service(s).get_blob_client(s.prepared_container, record.get("report_blob")).download_blob().readall())
    assert report["decision"]["accepted"] is False
    assert report["decision"]["reasons"][0].startswith(f"folder {folder!r} is not a collection name")
    assert report["counts"]["valid"] == 40  # the data itself was fine: the folder is the reason
    status = collect_status(s, ledger, backend=backend)
    (item,) = status["datasets"]
    assert "is not a collection name" in item["error"] and item["collection"] is None
    assert "is not a collection name" in render_status(status)
    assert not any(c["id"] in {"support-bot", "default", "s" * 40} for c in status["collections"])


def test_canonical_folder_and_root_are_accepted(storage_settings: Settings, trigger) -> None:
    s, backend = corpus(storage_settings)
    trigger(upload(s, "support-bot/2026/batch-01.jsonl", DATA))
    trigger(upload(s, "root.jsonl", DATA))
    ledger = Ledger.from_settings(s)
    assert sorted(r.get("collection") for r in ledger.list(DATASET)) == ["default", "support-bot"]
    assert len(backend.requests) == 2
