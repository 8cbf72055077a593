"""One meaning, one place: the ledger's state machine, version ordering, routing, the retry helper."""

from __future__ import annotations

import pytest

from shared.endpoints.serving import serving_endpoint
from shared.endpoints.versions import is_newer, latest, version_key
from shared.ledger import ConflictError, InvalidTransitionError, Ledger, retry_on_conflict
from shared.ledger import records as R


def test_every_kind_with_states_has_a_machine_whose_targets_are_states() -> None:
    for kind, machine in R.TRANSITIONS.items():
        assert "" in machine, f"{kind}: how is a record created?"
        for source, targets in machine.items():
            for target in targets:
                assert target in machine, f"{kind}: {source!r} -> {target!r} leads to a state with no entry"


@pytest.mark.parametrize(("kind", "src", "dst", "ok"), [
    (R.DATASET, R.DATASET_RECEIVED, R.DATASET_ACCEPTED, True),
    (R.DATASET, R.DATASET_REJECTED, R.DATASET_SUBMITTED, False),
    (R.DATASET, R.DATASET_SUBMITTED, R.DATASET_ACCEPTED, False),
    (R.JOB, R.JOB_SUBMITTED, R.JOB_COMPLETED, True),
    (R.JOB, R.JOB_FAILED, R.JOB_COMPLETED, False),
    (R.ENDPOINT, R.ENDPOINT_SUCCEEDED, R.ENDPOINT_DELETING, True),
    (R.ENDPOINT, R.ENDPOINT_DELETING, R.ENDPOINT_DELETED, True),
    (R.ENDPOINT, R.ENDPOINT_SUCCEEDED, R.ENDPOINT_DELETED, False),  # a deletion is always claimed first
    (R.ENDPOINT, R.ENDPOINT_DELETED, R.ENDPOINT_PROVISIONING, True),  # scale from zero
    (R.ENDPOINT, R.ENDPOINT_DELETED, R.ENDPOINT_SUCCEEDED, False),
    (R.JANITOR, "anything", "else", True),  # no machine: a report record
])
def test_allowed_transitions(kind: str, src: str, dst: str, ok: bool) -> None:
    assert R.allowed(kind, src, dst) is ok


@pytest.mark.storage
def test_the_store_refuses_a_transition_the_machine_does_not_allow(storage_settings) -> None:
    ledger = Ledger.from_settings(storage_settings)
    record = ledger.create(R.ENDPOINT, "ep-1", R.ENDPOINT_SUCCEEDED)
    assert record is not None
    with pytest.raises(InvalidTransitionError, match="'succeeded' -> 'deleted'"):
        ledger.update(record, R.ENDPOINT_DELETED)
    assert ledger.get(R.ENDPOINT, "ep-1").state == R.ENDPOINT_SUCCEEDED
    # same state plus fields is not a transition
    assert ledger.update(record, R.ENDPOINT_SUCCEEDED, note="x").get("note") == "x"


def test_route_kind_and_state_are_different_names() -> None:
    # the PartitionKey and the state both hold the string "active" (kept for the table layout),
    # but the code has one name for each meaning
    assert R.ROUTE == "active" and R.ROUTE_SET == "active"
    assert not hasattr(R, "ACTIVE")


@pytest.mark.parametrize(("newer", "older"), [
    ("10", "9"), ("2", "1"), ("1", "abc"), ("10", "9a"), ("b", "a"), ("1", ""), ("1", None),
])
def test_version_ordering_is_one_rule(newer: str, older: str | None) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)
    assert version_key(newer) > version_key(older)
    assert latest([older or "", newer]) == newer


def test_serving_endpoint_prefers_the_route_then_the_newest_version() -> None:
    class Route:
        def __init__(self, **f):
            self.f = f

        def get(self, k, d=None):
            return self.f.get(k, d)

    assert serving_endpoint("m", None, []) is None
    by_version = serving_endpoint("m", None, ["9", "10", "9a"])
    assert by_version is not None and by_version.version == "10"
    routed = serving_endpoint("m", Route(endpoint="ep-x", model_version="3"), ["9", "10"])
    assert routed is not None and (routed.endpoint, routed.version) == ("ep-x", "3")


def test_retry_on_conflict_retries_then_names_what_was_contended() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConflictError("lost")
        return "won"

    assert retry_on_conflict(flaky, "x") == "won" and len(calls) == 3

    def always() -> None:
        raise ConflictError("lost")

    with pytest.raises(ConflictError, match="job/j1: too much contention"):
        retry_on_conflict(always, "job/j1", attempts=3)
