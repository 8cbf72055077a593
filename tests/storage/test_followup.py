"""Activation in seconds: a deployment or deletion in flight is followed up through a storage queue.

Real Azurite (queue + ledger); the backend is the in-memory workspace, whose endpoints become
ready (or gone) when the test says so. The queue-triggered function itself runs in the local host in test_e2e_local.py and
the activation benchmark (bench/activation.py).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import orjson
import pytest

from functions import followup as followup_function
from shared.backends import use_backend
from shared.backends.base import EP_DELETED, EP_SUCCEEDED, ModelRef
from shared.context import context
from shared.endpoints import deletion, eta, followup, lifecycle
from shared.endpoints.naming import endpoint_name
from shared.ledger import ENDPOINT, MODEL, ROUTE, Ledger, Record, iso, utcnow
from shared.reconcile.settle import follow_up
from shared.settings import Settings, use_settings
from shared.storage import queue_client
from tests.fakes.workspace import InMemoryWorkspace
from tests.support import messages_within

pytestmark = pytest.mark.storage

MODEL_NAME = "chat-ft"


@pytest.fixture
def world(storage_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    # This test's own queue, so messages of other tests sharing the Azurite never mix in.
    queue_name = f"followups-{storage_settings.ledger_table.lower()}"
    monkeypatch.setattr(followup, "FOLLOWUP_QUEUE", queue_name)
    backend = InMemoryWorkspace()
    use_backend(backend, storage_settings)
    ledger = Ledger.from_settings(storage_settings)
    ledger.create(MODEL, f"{MODEL_NAME}:1", "registered", job_name="job-1", base_model="base")
    return ledger, backend, queue_client(queue_name, storage_settings)


def test_starting_a_deployment_schedules_a_delayed_follow_up(world: Any, storage_settings: Settings) -> None:
    ledger, backend, queue = world
    started = time.monotonic()
    lifecycle.deploy_model(ModelRef(MODEL_NAME, "1", "job-1", "base"), ctx=context(settings=storage_settings, ledger=ledger, backend=backend), reason="test")
    assert list(queue.peek_messages()) == []  # not visible before its delay
    messages = messages_within(queue, 10)
    assert time.monotonic() - started >= followup.delay_before(1) - 0.5
    ep = endpoint_name(MODEL_NAME, "1")
    assert [orjson.loads(m.content) for m in messages] == [{"endpoint": ep, "check": 1}]


def test_a_follow_up_activates_a_finished_deployment_or_checks_again_later(world: Any, storage_settings: Settings) -> None:
    ledger, backend, queue = world
    ep = endpoint_name(MODEL_NAME, "1")
    lifecycle.deploy_model(ModelRef(MODEL_NAME, "1", "job-1", "base"), ctx=context(settings=storage_settings, ledger=ledger, backend=backend), reason="test")
    messages_within(queue, 10)  # take the first scheduled message out of the way
    # still deploying: checked again later, with a longer delay
    assert follow_up(followup.FollowUp(ep, 1).encode(), storage_settings) == "rescheduled"
    assert ledger.get(ROUTE, MODEL_NAME) is None
    later = messages_within(queue, 10)
    assert [orjson.loads(m.content) for m in later] == [{"endpoint": ep, "check": 2}]
    # ready: the next check makes it the active endpoint at once (no reconcile involved)
    backend.finish_deployment(ep)
    assert follow_up(followup.FollowUp(ep, 2).encode(), storage_settings) == "settled"
    assert ledger.get(ENDPOINT, ep).state == EP_SUCCEEDED
    assert ledger.get(ROUTE, MODEL_NAME).get("endpoint") == ep
    assert follow_up(followup.FollowUp(ep, 3).encode(), storage_settings) == "settled"  # repeats are harmless
    assert follow_up(followup.FollowUp("nope", 1).encode(), storage_settings) == "gone"
    assert follow_up(followup.FollowUp(ep, followup.MAX_CHECKS).encode(), storage_settings) == "settled"


def test_deletions_are_followed_up_too(world: Any, storage_settings: Settings) -> None:
    ledger, backend, queue = world
    ep = endpoint_name(MODEL_NAME, "1")
    backend.add_ready_endpoint(ep)
    ledger.create(ENDPOINT, ep, EP_SUCCEEDED, model_name=MODEL_NAME, model_version="1")
    use_settings(storage_settings)
    deletion.claim_deletion(ledger, ledger.get(ENDPOINT, ep), reason="idle", at=utcnow())
    assert [orjson.loads(m.content)["endpoint"] for m in messages_within(queue, 10)] == [ep]
    backend.finish_deletion(ep)
    assert follow_up(followup.FollowUp(ep, 1).encode(), storage_settings) == "settled"
    assert ledger.get(ENDPOINT, ep).state == EP_DELETED


def test_follow_ups_can_be_switched_off(world: Any, storage_settings: Settings) -> None:
    ledger, backend, queue = world
    queue.create_queue()
    off = storage_settings.replace(endpoint_followups=False)
    lifecycle.deploy_model(ModelRef(MODEL_NAME, "1", "job-1", "base"), ctx=context(settings=off, ledger=ledger, backend=backend), reason="test")
    assert messages_within(queue, followup.delay_before(1) + 1.5) == []


def test_the_queue_function_is_a_queue_trigger_on_the_host_storage() -> None:
    import json

    built = followup_function.follow_up_endpoint.build()
    binding = json.loads(built.get_function_json())["bindings"][0]
    assert binding["type"] == "queueTrigger" and binding["connection"] == "AzureWebJobsStorage"
    assert binding["queueName"] == "endpoint-followups"


def test_backoff_is_short_first_then_capped() -> None:
    delays = [followup.delay_before(n) for n in range(1, 22)]
    assert delays == [2] * 15 + [4, 8, 16, 30, 30, 30]
    assert sum(followup.delay_before(n) for n in range(1, followup.MAX_CHECKS + 1)) >= 25 * 60


# ---- Retry-After: an estimate from this app's own deployments


def _ep(requested_s_ago: float, took_s: float | None) -> Record:
    now = utcnow()
    fields: dict[str, Any] = {"deploy_requested_at": iso(now - timedelta(seconds=requested_s_ago))}
    if took_s is not None:
        fields["active_since"] = iso(now - timedelta(seconds=requested_s_ago - took_s))
    return Record(kind=ENDPOINT, id="e", state="succeeded", created_at="", updated_at="", etag="", fields=fields)


def test_retry_after_follows_the_deployment_history() -> None:
    history = [_ep(1000, 20), _ep(900, 24), _ep(800, 22)]  # deployments took about 22 s
    assert eta.retry_after_s(None, [], utcnow(), 60) == 60  # no history: the setting
    fresh = eta.retry_after_s(None, history, utcnow(), 60)
    assert 22 <= fresh <= 22 + 8
    halfway = eta.retry_after_s(_ep(12, None), history, utcnow(), 60)
    assert 10 <= halfway <= 10 + 8 and halfway < fresh
    overdue = eta.retry_after_s(_ep(100, None), history, utcnow(), 60)
    assert 1 <= overdue <= 8
