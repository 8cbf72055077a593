"""Ledger against real Azurite: conditional transitions apply exactly once."""

from __future__ import annotations

import threading

import pytest

from shared.ledger import DATASET, JOB, ConflictError, Ledger, check_key

pytestmark = pytest.mark.storage


@pytest.fixture
def ledger(storage_settings) -> Ledger:
    return Ledger.from_settings(storage_settings)


def test_create_is_exactly_once(ledger: Ledger) -> None:
    first = ledger.create(DATASET, "ds-1", "received", blob_name="a.jsonl", counts={"valid": 3})
    second = ledger.create(DATASET, "ds-1", "received", blob_name="other")
    assert first is not None and second is None
    got = ledger.get(DATASET, "ds-1")
    assert got is not None
    assert got.state == "received"
    assert got.get("blob_name") == "a.jsonl"
    assert got.get("counts") == {"valid": 3}


def test_transition_moves_only_from_allowed_states(ledger: Ledger) -> None:
    ledger.create(JOB, "job-1", "submitted")
    assert ledger.transition(JOB, "job-1", ["running"], "completed") is None
    moved = ledger.transition(JOB, "job-1", ["submitted"], "completed", error=None)
    assert moved is not None and moved.state == "completed"
    assert ledger.transition(JOB, "job-1", ["submitted"], "completed") is None
    assert ledger.transition(JOB, "missing", ["submitted"], "completed") is None


def test_stale_update_is_refused(ledger: Ledger) -> None:
    rec = ledger.create(JOB, "job-2", "submitted")
    assert rec is not None
    ledger.update(rec, "completed")
    with pytest.raises(ConflictError):
        ledger.update(rec, "failed")  # rec carries the old ETag
    assert ledger.get(JOB, "job-2").state == "completed"


def test_raced_transition_applies_once(ledger: Ledger) -> None:
    """Eight writers race for the same transition: exactly one wins, the others see it done."""
    ledger.create(JOB, "job-race", "submitted")
    barrier = threading.Barrier(8)
    winners: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        barrier.wait()
        rec = ledger.transition(JOB, "job-race", ["submitted"], "completed", winner=f"w{i}")
        if rec is not None:
            with lock:
                winners.append(f"w{i}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    final = ledger.get(JOB, "job-race")
    assert final.state == "completed" and final.get("winner") == winners[0]


def test_merge_keeps_other_fields(ledger: Ledger) -> None:
    ledger.merge(JOB, "job-3", "submitted", a=1)
    ledger.merge(JOB, "job-3", b=2)
    rec = ledger.get(JOB, "job-3")
    assert rec.state == "submitted" and rec.get("a") == 1 and rec.get("b") == 2


def test_list_filters_by_state(ledger: Ledger) -> None:
    ledger.create(JOB, "j-a", "submitted")
    ledger.create(JOB, "j-b", "completed")
    assert {r.id for r in ledger.list(JOB)} == {"j-a", "j-b"}
    assert [r.id for r in ledger.list(JOB, states=["completed"])] == ["j-b"]


@pytest.mark.parametrize("bad", ["a/b", "a#b", "a?b", "a\\b", "", "x\n"])
def test_keys_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        check_key(bad)
