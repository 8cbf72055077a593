"""Corpus mode on real storage (Azurite): uploads through the real blob trigger, the in-memory
workspace as the backend, the ledger's claims. The time of a submission decision is passed in, so
windows and budgets are tested without sleeping."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.backends import use_backend
from shared.backends.base import COMPLETED, FineTuneRequest
from shared.context import context
from shared.datasets.collections import model_name_for
from shared.ledger import DATASET, JOB, Ledger, iso, utcnow
from shared.ledger import records as R
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.settings import Settings, use_settings
from shared.storage import blob_service
from shared.training.submission import advance_collection, submit_due_collections
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.uploads import conv, upload
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage


@pytest.fixture
def trigger() -> Any:
    return prepare_trigger()


@pytest.fixture
def corpus_settings(storage_settings: Settings) -> Settings:
    s = storage_settings.replace(training_mode="corpus", coalesce_s=60, max_running_jobs=0)
    use_settings(s)
    return s


@pytest.fixture
def backend(corpus_settings: Settings) -> InMemoryWorkspace:
    b = InMemoryWorkspace()
    use_backend(b, corpus_settings)
    return b


def switch(s: Settings, backend: InMemoryWorkspace) -> Settings:
    """Make ``s`` the process settings with the recording backend (backends are cached per settings object)."""
    use_settings(s)
    use_backend(backend, s)
    return s


def data(first: int, last: int) -> bytes:
    return b"".join(conv(i) for i in range(first, last))


def prepared_lines(s: Settings, name: str) -> list[bytes]:
    return blob_service(s).get_blob_client(s.prepared_container, name).download_blob().readall().splitlines()


def corpus_lines(s: Settings, request: FineTuneRequest) -> list[bytes]:
    """Every conversation of a corpus: train, test and the held-out eval set (shared.datasets.evalset)."""
    eval_blob = request.train_blob.rsplit("/", 1)[0] + "/eval.jsonl"
    return prepared_lines(s, request.train_blob) + prepared_lines(s, request.test_blob) + prepared_lines(s, eval_blob)


def end_job(ledger: Ledger, job_name: str) -> None:
    ledger.transition(JOB, job_name, [R.JOB_SUBMITTED], R.JOB_COMPLETED, ended_at=iso(utcnow()))


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def test_a_burst_in_one_collection_is_one_job_on_the_union_then_one_follow_up(corpus_settings, backend, trigger) -> None:
    s, ledger = corpus_settings, Ledger.from_settings(corpus_settings)
    for name, rows in (("support-bot/day1.jsonl", data(0, 40)), ("support-bot/day2.jsonl", data(30, 70)),
                       ("support-bot/day3.jsonl", data(60, 100))):
        trigger(upload(s, name, rows))
    assert backend.requests == []  # inside the window: validated, reported, pending
    datasets = ledger.list(DATASET)
    assert [d.state for d in datasets] == ["accepted"] * 3
    status = collect_status(s, ledger, backend)
    (item,) = status["collections"]
    assert item["id"] == "support-bot" and item["state"] == "pending" and len(item["pending"]) == 3 and item["due_at"]

    assert submit_due_collections(context(settings=s), now=later(1))[0].action == "pending"  # still inside the window
    (outcome,) = submit_due_collections(context(settings=s), now=later(61))
    assert outcome.action == "submitted"
    (request,) = backend.requests
    ids = sorted(d.id for d in datasets)
    assert request.collection == "support-bot" and list(request.dataset_ids) == ids
    assert request.model_name == model_name_for(s, "support-bot")
    assert request.tags["collection"] == "support-bot" and request.tags["corpus-id"] == request.corpus_id
    assert request.tags["dataset-ids"] == ",".join(ids)
    assert request.train_blob == f"corpora/support-bot/{request.corpus_id}/train.jsonl"
    rows = corpus_lines(s, request)
    assert len(rows) == 100 and len(set(rows)) == 100  # 120 uploaded lines minus 20 cross-file duplicates
    job = ledger.get(JOB, "ftjob-001")
    assert job.get("collection") == "support-bot" and job.get("corpus_id") == request.corpus_id
    assert job.get("dataset_ids") == ids and job.get("corpus_counts")["rows"] == 100
    assert {d.state for d in ledger.list(DATASET)} == {"submitted"}
    assert submit_due_collections(context(settings=s), now=later(120)) == []

    # a fourth file during the job waits for it, then goes into exactly one follow-up
    trigger(upload(s, "support-bot/day4.jsonl", data(100, 130)))
    (waiting,) = submit_due_collections(context(settings=s), now=later(600))
    assert waiting.action == "waiting_for_job" and len(backend.requests) == 1
    assert collect_status(s, ledger, backend)["collections"][0]["running_job"] == "ftjob-001"
    end_job(ledger, "ftjob-001")
    (follow_up,) = submit_due_collections(context(settings=s), now=later(601))
    assert follow_up.action == "submitted" and len(backend.requests) == 2
    assert len(backend.requests[1].dataset_ids) == 4
    assert len(corpus_lines(s, backend.requests[1])) == 130
    end_job(ledger, "ftjob-002")
    assert submit_due_collections(context(settings=s), now=later(700)) == [] and len(backend.requests) == 2
    assert collect_status(s, ledger, backend)["collections"][0]["state"] == "idle"


def test_two_collections_two_models(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0, collection_model_names={"labels": "labelling-ft"})
    switch(s, backend)
    trigger(upload(s, "support-bot/a.jsonl", data(0, 30)))
    trigger(upload(s, "labels/b.jsonl", data(0, 30)))
    trigger(upload(s, "c.jsonl", data(0, 30)))
    assert sorted(r.model_name for r in backend.requests) == sorted(
        [f"{s.model_name}-support-bot", "labelling-ft", s.model_name])
    assert len({r.corpus_id for r in backend.requests}) == 3  # same rows, but each collection its own corpus


def test_upload_mode_is_one_job_per_file_at_once(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(training_mode="upload")
    switch(s, backend)
    trigger(upload(s, "support-bot/a.jsonl", data(0, 30)))
    trigger(upload(s, "support-bot/b.jsonl", data(20, 50)))
    assert [r.train_blob.split("/")[0] for r in backend.requests] == ["datasets", "datasets"]
    assert [r.model_name for r in backend.requests] == [s.model_name, s.model_name]
    assert submit_due_collections(context(settings=s), now=later(1000)) == []
    assert collect_status(s, Ledger.from_settings(s), backend)["collections"] == []  # no collections in upload mode


def test_budget_exhausted_holds_with_its_reason_and_submits_when_raised(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0, finetune_budget_usd=5.0, instance_hourly_prices={"local": 3600.0})
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    assert len(backend.requests) == 1
    now = utcnow()
    backend.set_job("ftjob-001", COMPLETED, started_at=now - timedelta(seconds=20), ended_at=now - timedelta(seconds=10))  # ran 10 s = $10
    end_job(ledger, "ftjob-001")
    trigger(upload(s, "bot/b.jsonl", data(30, 60)))
    assert len(backend.requests) == 1
    status = collect_status(s, ledger, backend)
    (item,) = status["collections"]
    assert item["state"] == "pending" and "budget reached: $10.00 of $5.00" in item["held_reason"]
    assert status["training"]["guard"]["spent_usd"] == pytest.approx(10.0, abs=0.01)
    text = render_status(status)
    assert "Collections (1)" in text and "budget reached" in text and "spent $10.00" in text
    assert ledger.get(JOB, "ftjob-001").get("run_started_at")  # the real run time, read once
    assert submit_due_collections(context(settings=s))[0].action == "held"  # never dropped: still held next run
    raised = switch(s.replace(finetune_budget_usd=50.0), backend)
    (outcome,) = submit_due_collections(context(settings=raised))
    assert outcome.action == "submitted" and len(backend.requests) == 2
    assert collect_status(raised, ledger, backend)["collections"][0]["held_reason"] is None


def test_max_running_jobs_across_collections(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0, max_running_jobs=1)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    trigger(upload(s, "one/a.jsonl", data(0, 30)))
    trigger(upload(s, "two/a.jsonl", data(0, 30)))
    assert [r.collection for r in backend.requests] == ["one"]
    two = next(c for c in collect_status(s, ledger, backend)["collections"] if c["id"] == "two")
    assert "MAX_RUNNING_JOBS=1" in two["held_reason"]
    end_job(ledger, "ftjob-001")
    assert [o.action for o in submit_due_collections(context(settings=s))] == ["submitted"]
    assert [r.collection for r in backend.requests] == ["one", "two"]


def test_retired_dataset_leaves_the_next_corpus(corpus_settings, backend, trigger, capsys) -> None:
    from shared.cli.commands import main

    s = corpus_settings.replace(coalesce_s=0)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    first = ledger.list(DATASET)[0].id
    end_job(ledger, "ftjob-001")
    assert main(["datasets", "retire", first]) == 0
    assert "left out of collection 'bot'" in capsys.readouterr().out
    assert main(["datasets", "retire", first]) == 0  # idempotent
    assert main(["datasets", "retire", "no-such-dataset"]) == 1
    record = ledger.get(DATASET, first)
    assert record.state == "retired" and record.get("report_blob")  # the report stays
    assert prepared_lines(s, record.get("report_blob"))
    trigger(upload(s, "bot/b.jsonl", data(100, 130)))
    assert len(backend.requests) == 2 and first not in backend.requests[1].dataset_ids
    assert len(corpus_lines(s, backend.requests[1])) == 30
    item = collect_status(s, ledger, backend)["collections"][0]
    assert item["retired"] == [first] and first not in item["datasets"]


def test_concurrent_deliveries_submit_once(corpus_settings, backend, trigger) -> None:
    s = corpus_settings
    ledger = Ledger.from_settings(s)
    for i in range(3):
        trigger(upload(s, f"bot/{i}.jsonl", data(i * 10, i * 10 + 30)))
    due = later(61)
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        use_settings(s)
        try:
            outcomes.append(advance_collection("bot", context(settings=s, ledger=Ledger.from_settings(s), backend=backend), now=due))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(backend.requests) == 1 and sum(o.action == "submitted" for o in outcomes) == 1
    assert {o.action for o in outcomes} <= {"submitted", "submission_in_progress", "waiting_for_job", "nothing"}
    assert {d.state for d in ledger.list(DATASET)} == {"submitted"}


def test_concurrent_deliveries_of_different_uploads(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    clients = [upload(s, f"bot/{i}.jsonl", data(i * 10, i * 10 + 30)) for i in range(4)]
    errors: list[BaseException] = []

    def deliver(client: Any) -> None:
        use_settings(s)
        try:
            trigger(client)
            trigger(client)  # and each delivered twice
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(backend.requests) == 1  # one job while it runs, whatever the interleaving
    end_job(ledger, "ftjob-001")
    submit_due_collections(context(settings=s))
    submit_due_collections(context(settings=s))
    assert len(backend.requests) <= 2  # the rest, if any, in exactly one follow-up
    assert {d.state for d in ledger.list(DATASET)} == {"submitted"}
    assert set(backend.requests[-1].dataset_ids) == {d.id for d in ledger.list(DATASET)}


def test_a_crashed_submission_is_finished_without_submitting_twice(corpus_settings, backend, trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    # a delivery claimed the collection and died before submitting
    ledger.create(R.COLLECTION, "bot", R.COLLECTION_PENDING, submit_claim="dead", submit_claimed_at=iso(utcnow()))
    outcome = trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    assert outcome is None and backend.requests == []
    (taken_over,) = submit_due_collections(context(settings=s), now=later(s.submit_claim_lease_s + 1))
    assert taken_over.action == "submitted" and len(backend.requests) == 1
    assert {d.state for d in ledger.list(DATASET)} == {"submitted"}


def test_a_delivery_that_died_after_recording_its_job_is_finished_without_a_second_job(corpus_settings, backend,
                                                                                        trigger) -> None:
    s = corpus_settings.replace(coalesce_s=0)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    ledger.create(R.COLLECTION, "bot", R.COLLECTION_PENDING, submit_claim="dying", submit_claimed_at=iso(utcnow()))
    trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    (dataset,) = ledger.list(DATASET)
    assert dataset.state == "accepted" and backend.requests == []
    # what the dying delivery got done: its job submitted and recorded, the dataset not moved yet
    ledger.create(JOB, "ftjob-crashed", R.JOB_SUBMITTED, collection="bot", corpus_id="c-x", dataset_ids=[dataset.id])
    outcomes = submit_due_collections(context(settings=s), now=later(s.submit_claim_lease_s + 1))
    assert backend.requests == [] and [o.action for o in outcomes] == ["nothing"]
    moved = ledger.get(DATASET, dataset.id)
    assert moved.state == "submitted" and moved.get("job_name") == "ftjob-crashed"


def test_the_reconcile_timer_submits_a_due_collection(corpus_settings, backend, trigger) -> None:
    from shared.reconcile.run import SUMMARY_KEYS, reconcile

    s = corpus_settings.replace(coalesce_s=0, max_running_jobs=1)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    trigger(upload(s, "one/a.jsonl", data(0, 30)))
    trigger(upload(s, "two/a.jsonl", data(0, 30)))  # held: one job at a time
    summary = reconcile(context(settings=s, ledger=ledger, backend=backend))
    assert summary["collections_held"] == 1 and summary["collections_submitted"] == 0
    assert {"collections_submitted", "collections_held"} <= set(SUMMARY_KEYS)
    end_job(ledger, "ftjob-001")
    summary = reconcile(context(settings=s, ledger=ledger, backend=backend))
    assert summary["collections_submitted"] == 1 and len(backend.requests) == 2


def test_a_failed_submission_releases_the_claim_and_the_retry_submits(corpus_settings, backend, trigger) -> None:
    from shared.backends.base import BackendError

    s = corpus_settings.replace(coalesce_s=0)
    switch(s, backend)
    ledger = Ledger.from_settings(s)
    backend.fail_submissions = 1
    client = upload(s, "bot/a.jsonl", data(0, 30))
    with pytest.raises(BackendError):  # an infrastructure error: the host retries the blob
        trigger(client)
    record = ledger.get(R.COLLECTION, "bot")
    assert not record.get("submit_claim") and "workspace unavailable" in record.get("error")
    assert ledger.list(DATASET)[0].state == "accepted"
    trigger(client)  # the host's retry
    assert len(backend.requests) == 1 and ledger.list(DATASET)[0].state == "submitted"
    assert ledger.get(R.COLLECTION, "bot").get("error") is None
