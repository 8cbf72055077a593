"""The idle janitor against a real ledger (Azurite) and a small fake backend of endpoints."""

from __future__ import annotations

import logging
from datetime import timedelta

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from devhost.app_index import functions_of
from shared.backends import use_backend
from shared.backends.base import (
    EP_DELETING,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    BackendError,
)
from shared.context import context
from shared.janitor import run as janitor
from shared.ledger import ENDPOINT, JANITOR, MODEL, ROUTE, Ledger, iso, utcnow
from shared.settings import use_settings
from tests.fakes.endpoints import FakeEndpointsBackend, ago, endpoint, record

pytestmark = pytest.mark.storage

@pytest.fixture
def ledger(storage_settings) -> Ledger:
    return Ledger.from_settings(storage_settings)


def test_deletes_only_idle_managed_endpoints_and_records_why(storage_settings, ledger):
    now = utcnow()
    backend = FakeEndpointsBackend([
        endpoint("idle", metric_minutes_ago=200, now=now),
        endpoint("busy", metric_minutes_ago=3, now=now),
        endpoint("fresh", created_minutes_ago=8, now=now),
        endpoint("deploying", state=EP_PROVISIONING, now=now),
        endpoint("untagged", tagged=False, metric_minutes_ago=900, now=now),
        endpoint("stranger", metric_minutes_ago=900, now=now),  # tagged but not in our ledger
    ])
    record(ledger, "idle", last_activity_minutes_ago=180, now=now)
    record(ledger, "busy", last_activity_minutes_ago=90, now=now)
    record(ledger, "fresh", active_since_minutes_ago=5, now=now)
    record(ledger, "deploying", state=EP_PROVISIONING, active_since_minutes_ago=None, now=now)
    record(ledger, "untagged", last_activity_minutes_ago=900, now=now)
    ledger.create(ROUTE, "chat-ft", "active", endpoint="idle", model_version="idle", since=iso(ago(500, now)))

    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)

    assert backend.delete_calls == ["idle"]
    assert report.deleted == ["idle"]
    assert sorted(report.kept) == ["busy", "deploying", "fresh", "stranger", "untagged"]
    reasons = {o.name: o.reason for o in report.outcomes}
    assert "grace" in reasons["fresh"] and "deployment in progress" in reasons["deploying"]
    assert "no managed-by tag" in reasons["untagged"] and "not in the ledger" in reasons["stranger"]

    rec = ledger.get(ENDPOINT, "idle")
    assert rec.state == EP_DELETING  # the fake, like Azure, takes a while to delete
    assert "idle" in rec.get("delete_reason") and rec.get("delete_requested_at") == iso(now)
    # Estimate: idle for 180 minutes so far (the later of ledger 180 and metric 200) -> 3 h at $3.67 (NC24ads_A100_v4).
    assert rec.get("hours_saved") == pytest.approx(3.0, abs=0.01)
    assert rec.get("cost_saved") == pytest.approx(11.01, abs=0.05)
    # The model stays registered and stays the active one, so scoring can bring it back.
    assert ledger.get(MODEL, "chat-ft:idle").state == "deployed"
    assert ledger.get(ROUTE, "chat-ft").get("endpoint") == "idle"
    assert ledger.get(ENDPOINT, "untagged").state == EP_SUCCEEDED

    last = ledger.get(JANITOR, "last")
    assert last.state == "done" and last.get("deleted") == ["idle"] and last.get("ran_at") == iso(now)
    assert last.get("cost_saved") == pytest.approx(11.01, abs=0.05)

    # Next run, after the backend finished: the record is finalized, nothing is deleted twice.
    backend.finish_deletions()
    later = now + timedelta(minutes=10)
    second = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=later)
    assert second.finalized == ["idle"] and second.deleted == []
    assert backend.delete_calls == ["idle"]
    rec = ledger.get(ENDPOINT, "idle")
    assert rec.state == "deleted" and rec.get("deleted_at") == iso(later)


def test_backend_that_deletes_at_once_is_finalized_in_the_same_run(storage_settings, ledger):
    now = utcnow()
    backend = FakeEndpointsBackend([endpoint("gone-fast", metric_minutes_ago=120, now=now)], removes_at_once=True)
    record(ledger, "gone-fast", last_activity_minutes_ago=120, now=now)
    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)
    assert report.deleted == ["gone-fast"] and report.finalized == ["gone-fast"]
    assert ledger.get(ENDPOINT, "gone-fast").state == "deleted"


def test_dry_run_reports_and_deletes_nothing(storage_settings, ledger):
    s = storage_settings.replace(janitor_dry_run=True)
    now = utcnow()
    backend = FakeEndpointsBackend([endpoint("idle", metric_minutes_ago=200, now=now), endpoint("busy", metric_minutes_ago=1, now=now)])
    record(ledger, "idle", last_activity_minutes_ago=200, now=now)
    record(ledger, "busy", last_activity_minutes_ago=1, now=now)
    before = ledger.get(ENDPOINT, "idle")

    report = janitor.delete_idle_endpoints(context(settings=s, ledger=ledger, backend=backend), now=now)

    assert backend.delete_calls == []
    assert report.would_delete == ["idle"] and report.deleted == []
    assert report.hours_saved == pytest.approx(200 / 60, abs=0.01)
    after = ledger.get(ENDPOINT, "idle")
    assert (after.state, after.fields, after.etag) == (before.state, before.fields, before.etag)
    last = ledger.get(JANITOR, "last")
    assert last.state == "dry_run" and last.get("would_delete") == ["idle"] and last.get("deleted") == []


def test_one_failing_delete_does_not_stop_the_others(storage_settings, ledger):
    now = utcnow()
    names = ["idle-a", "idle-b", "idle-c"]
    backend = FakeEndpointsBackend([endpoint(n, metric_minutes_ago=300, now=now) for n in names], failing={"idle-b"})
    for n in names:
        record(ledger, n, last_activity_minutes_ago=300, now=now)

    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)

    assert backend.delete_calls == names  # idle-c was still tried after idle-b failed
    assert report.deleted == ["idle-a", "idle-c"] and report.failed == ["idle-b"]
    failed = ledger.get(ENDPOINT, "idle-b")
    # Back to succeeded (it still exists and serves), with the error, so the next run tries again.
    assert failed.state == EP_SUCCEEDED and "quota service said no" in failed.get("error")
    assert {ledger.get(ENDPOINT, n).state for n in ("idle-a", "idle-c")} == {EP_DELETING}
    last = ledger.get(JANITOR, "last")
    assert last.get("failed") == [{"name": "idle-b", "error": failed.get("error")}]

    backend.failing_deletes.clear()
    retry = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now + timedelta(minutes=10))
    assert retry.deleted == ["idle-b"]


def test_missing_metric_is_unknown_unless_the_ledger_proves_idleness(storage_settings, ledger):
    now = utcnow()
    backend = FakeEndpointsBackend([
        endpoint("no-evidence", now=now),  # no metric, never activated, never called: unknown
        endpoint("ledger-old", now=now),  # no metric, but the ledger saw its last call 2 hours ago
        endpoint("ledger-recent", now=now),
    ])
    record(ledger, "no-evidence", active_since_minutes_ago=None, now=now)
    record(ledger, "ledger-old", last_activity_minutes_ago=120, now=now)
    record(ledger, "ledger-recent", last_activity_minutes_ago=10, now=now)

    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)

    assert report.unknown == ["no-evidence"]
    assert report.deleted == ["ledger-old"]
    assert report.kept == ["ledger-recent"]
    assert ledger.get(JANITOR, "last").get("unknown") == ["no-evidence"]


def test_keep_latest_protects_the_models_active_endpoint(storage_settings, ledger):
    s = storage_settings.replace(janitor_keep_latest=True)
    now = utcnow()
    backend = FakeEndpointsBackend([endpoint("old-version", metric_minutes_ago=400, now=now),
                                    endpoint("latest", metric_minutes_ago=400, now=now)])
    record(ledger, "old-version", last_activity_minutes_ago=400, now=now)
    record(ledger, "latest", last_activity_minutes_ago=400, now=now)
    ledger.create(ROUTE, "chat-ft", "active", endpoint="latest", model_version="latest")

    report = janitor.delete_idle_endpoints(context(settings=s, ledger=ledger, backend=backend), now=now)
    assert report.deleted == ["old-version"] and report.kept == ["latest"]


class LedgerWithConcurrentScoring(Ledger):
    """Scoring records a request on ``endpoint`` right after the janitor read the records."""

    def __init__(self, table, endpoint_name: str):
        super().__init__(table)
        self.endpoint_name = endpoint_name

    def list(self, kind, states=None):
        records = super().list(kind, states)
        if kind == ENDPOINT and states is None:
            self.merge(ENDPOINT, self.endpoint_name, last_activity=iso(utcnow()))
        return records


def test_a_request_recorded_while_deciding_wins(storage_settings, ledger):
    now = utcnow()
    racing = LedgerWithConcurrentScoring(ledger._table, "idle")
    backend = FakeEndpointsBackend([endpoint("idle", metric_minutes_ago=200, now=now)])
    record(ledger, "idle", last_activity_minutes_ago=200, now=now)

    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=racing, backend=backend), now=now)

    assert backend.delete_calls == []
    assert [o.outcome for o in report.outcomes] == [janitor.SKIPPED]
    assert ledger.get(ENDPOINT, "idle").state == EP_SUCCEEDED


def test_backend_unreachable_is_recorded_and_raised(storage_settings, ledger):
    backend = FakeEndpointsBackend([])
    backend.list_error = BackendError("workspace unreachable")
    with pytest.raises(BackendError):
        janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend))
    last = ledger.get(JANITOR, "last")
    assert last.state == "failed" and "workspace unreachable" in last.get("error")


# ------------------------------------------------------------------ the timer trigger itself

def _timer_function():
    from functions import janitor as janitor_trigger

    app = func.FunctionApp()
    app.register_functions(janitor_trigger.bp)
    (fn,) = [f for f in functions_of(app) if f.get_function_name() == "delete_idle_endpoints"]
    return fn


def test_timer_binding_uses_the_schedule_setting_and_the_monitor():
    import json

    (binding,) = json.loads(_timer_function().get_function_json())["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%JANITOR_SCHEDULE%"
    assert binding["useMonitor"] is True


def test_timer_past_due_runs_the_janitor_with_process_settings(storage_settings, ledger, caplog):
    s = storage_settings.replace(idle_endpoint_minutes=30)
    use_settings(s)
    backend = FakeEndpointsBackend([endpoint("idle", metric_minutes_ago=45), endpoint("busy", metric_minutes_ago=20)])
    use_backend(backend, s)
    record(ledger, "idle", last_activity_minutes_ago=45)
    record(ledger, "busy", last_activity_minutes_ago=20)

    with caplog.at_level(logging.INFO):
        result = _timer_function().get_user_function()(TimerRequest(past_due=True))

    assert result is None
    assert backend.delete_calls == ["idle"]
    assert ledger.get(ENDPOINT, "idle").state == EP_DELETING
    assert ledger.get(JANITOR, "last").get("deleted") == ["idle"]
    assert any("past due" in r.getMessage() for r in caplog.records)


def test_timer_failure_propagates_so_the_host_records_it(storage_settings):
    backend = FakeEndpointsBackend([])
    backend.list_error = BackendError("workspace unreachable")
    use_backend(backend, storage_settings)
    with pytest.raises(BackendError):
        _timer_function().get_user_function()(TimerRequest(past_due=False))


def test_function_app_registers_the_janitor_timer():
    from function_app import app

    assert "delete_idle_endpoints" in {f.get_function_name() for f in functions_of(app)}


def test_a_lost_deletion_call_is_started_again(storage_settings, ledger):
    now = utcnow()
    backend = FakeEndpointsBackend([endpoint("half-deleted", metric_minutes_ago=300, now=now)])
    record(ledger, "half-deleted", state=EP_DELETING, last_activity_minutes_ago=300, now=now)
    ledger.merge(ENDPOINT, "half-deleted", delete_reason="idle: last use 300 min ago")

    soon = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)
    assert backend.delete_calls == []  # just claimed: the call may still be on its way
    assert soon.kept == ["half-deleted"]

    later = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now + timedelta(minutes=5))
    assert backend.delete_calls == ["half-deleted"]
    assert later.names(janitor.RESTARTED) == ["half-deleted"]
