"""A due collection submits itself: its submission is a queue message visible at its due time.

Real Azurite (queue, ledger, blobs) and the real blob trigger; the in-memory workspace as the backend. The
queue-triggered function runs in the local host in tests/faults/test_due_collection_blackbox.py (the
black-box run, no reconcile) and in bench/stages.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from functions import submissions as submissions_function
from shared.backends import use_backend
from shared.context import context
from shared.ledger import DATASET, JOB, Ledger, iso, parse_iso
from shared.ledger.records import COLLECTION
from shared.settings import Settings, use_settings
from shared.storage import queue_client
from shared.training import due
from shared.training.delivery import submit_when_due
from shared.training.submission import submit_due_collections
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.uploads import conv, upload
from tests.fakes.workspace import InMemoryWorkspace
from tests.support import messages_within

pytestmark = pytest.mark.storage

WINDOW_S = 3


def data(first: int, last: int) -> bytes:
    return b"".join(conv(i) for i in range(first, last))


@pytest.fixture
def trigger() -> Any:
    return prepare_trigger()


@pytest.fixture
def world(storage_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    # This test's own queue, so messages of other tests sharing the Azurite never mix in.
    name = f"submissions-{storage_settings.ledger_table.lower()}"
    monkeypatch.setattr(due, "SUBMISSION_QUEUE", name)
    s = storage_settings.replace(training_mode="corpus", coalesce_s=WINDOW_S, max_running_jobs=0)
    use_settings(s)
    backend = InMemoryWorkspace()
    use_backend(backend, s)
    return s, Ledger.from_settings(s), backend, queue_client(name, s)


def test_a_pending_collection_schedules_one_submission_visible_at_its_due_time(world: Any, trigger: Any) -> None:
    s, ledger, backend, queue = world
    trigger(upload(s, "support-bot/day1.jsonl", data(0, 30)))
    trigger(upload(s, "support-bot/day2.jsonl", data(30, 60)))  # during the window: extends nothing
    record = ledger.get(COLLECTION, "support-bot")
    due_at = parse_iso(record.get("due_at"))
    first = min(parse_iso(d.get("accepted_at")) for d in ledger.list(DATASET))
    assert record.state == "pending" and (due_at - first).total_seconds() == WINDOW_S  # fixed by the first upload
    assert list(queue.peek_messages()) == []  # not visible before the window closes
    messages = messages_within(queue, WINDOW_S + 5, visibility_timeout_s=60)
    assert time.time() >= due_at.timestamp() - 0.5
    assert [orjson.loads(m.content) for m in messages] == [
        {"collection": "support-bot", "due_at": iso(due_at), "ledger": s.ledger_table, "attempt": 1}]
    assert backend.requests == []  # the message submits, not the upload's delivery

    assert submit_when_due(messages[0].content, s) == "submitted"
    (request,) = backend.requests
    assert len(request.dataset_ids) == 2 and {d.state for d in ledger.list(DATASET)} == {"submitted"}
    assert ledger.get(COLLECTION, "support-bot").state == "idle"
    # redelivered, then reconcile: nothing more is submitted
    assert submit_when_due(messages[0].content, s) == "nothing"
    assert submit_due_collections(context(settings=s)) == [] and len(backend.requests) == 1
    assert messages_within(queue, 1.5, visibility_timeout_s=60) == []  # and nothing else was scheduled


def test_concurrent_deliveries_submit_once(world: Any, trigger: Any) -> None:
    s, ledger, backend, queue = world
    trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    (message,) = messages_within(queue, WINDOW_S + 5, visibility_timeout_s=60)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def deliver() -> None:
        start.wait()
        outcomes.append(submit_when_due(message.content, s))

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    start.wait()
    reconciled = submit_due_collections(context(settings=s))  # a reconcile run at the same moment ([]: it found it submitted)
    outcomes.append(reconciled[0].action if reconciled else "nothing")
    for t in threads:
        t.join(timeout=60)
    assert len(backend.requests) == 1 and len(ledger.list(JOB)) == 1, outcomes
    assert outcomes.count("submitted") == 1, outcomes
    assert set(outcomes) - {"submitted"} <= {"nothing", "submission_in_progress"}, outcomes


def test_an_early_message_is_sent_again_for_the_rest_of_the_window(world: Any, trigger: Any) -> None:
    s, ledger, backend, queue = world
    s = s.replace(coalesce_s=3600)
    use_settings(s)
    use_backend(backend, s)
    trigger(upload(s, "bot/a.jsonl", data(0, 30)))
    due_at = parse_iso(ledger.get(COLLECTION, "bot").get("due_at"))
    early = due.DueSubmission("bot", due_at, s.ledger_table).encode()
    assert submit_when_due(early, s) == "rescheduled" and backend.requests == []
    assert messages_within(queue, 1.5, visibility_timeout_s=60) == []  # still invisible: an hour to go
    last = due.DueSubmission("bot", due_at, s.ledger_table, due.MAX_ATTEMPTS).encode()
    assert submit_when_due(last, s) == "pending"  # bounded: reconcile is the safety net
    assert submit_when_due(due.DueSubmission("bot", due_at, "another").encode(), s) == "other_ledger"


def test_switched_off_nothing_is_scheduled_and_reconcile_submits(world: Any, trigger: Any) -> None:
    s, ledger, backend, queue = world
    off = s.replace(collection_submissions=False)
    use_settings(off)
    use_backend(backend, off)
    trigger(upload(off, "bot/a.jsonl", data(0, 30)))
    assert ledger.get(COLLECTION, "bot").state == "pending"
    queue.create_queue()
    assert messages_within(queue, WINDOW_S + 1.5, visibility_timeout_s=60) == []
    assert submit_due_collections(context(settings=off))[0].action == "submitted"


def test_the_queue_function_is_a_queue_trigger_on_the_host_storage() -> None:
    import json

    built = submissions_function.submit_due_collection.build()
    binding = json.loads(built.get_function_json())["bindings"][0]
    assert binding["type"] == "queueTrigger" and binding["connection"] == "AzureWebJobsStorage"
    assert binding["queueName"] == "collection-submissions"
