"""The health loop (shared.endpoints.healing) against real Azurite and an in-memory workspace:
unhealthy endpoints are recorded, redeployed with bounded, backed-off attempts, then stopped."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta

import pytest

from shared import ledger as L
from shared.backends.base import COMPLETED, EP_FAILED, HEALTH_HEALTHY, HEALTH_UNHEALTHY, EndpointHealth
from shared.context import Context, context
from shared.deployment.job_outcome import handle_job_event
from shared.endpoints import healing
from shared.janitor.run import delete_idle_endpoints
from shared.ledger import parse_iso, utcnow
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.reconcile.run import reconcile
from tests.fakes.job_event_samples import completed_event, submit_job
from tests.fakes.workspace import install_workspace

pytestmark = pytest.mark.storage


@pytest.fixture
def env(storage_settings):
    return install_workspace(storage_settings.replace(endpoint_heal_attempts=3, endpoint_heal_backoff_s=30))


def served(env, fixtures_dir, job="job-h"):
    """A model deployed and serving (succeeded, active): its endpoint name."""
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, job, COMPLETED)
    ep = handle_job_event(completed_event(fixtures_dir, settings, job), ctx=context()).endpoint
    ws.finish_deployment(ep)
    reconcile(ctx=context())
    assert ledger.get(L.ENDPOINT, ep).state == "succeeded"
    return ep


def die(ws, ep, error="server process died"):
    ws.endpoints[ep] = dataclasses.replace(ws.endpoints[ep], state=EP_FAILED, error=error)


def test_a_dead_endpoint_is_recorded_redeployed_and_healed(env, fixtures_dir):
    settings, ledger, ws = env
    ep = served(env, fixtures_dir)
    assert reconcile(ctx=context())["endpoints_unhealthy"] == 0  # healthy: nothing done
    die(ws, ep)

    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 1 and summary["endpoints_redeployed"] == 1, summary
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "provisioning" and record.get("heal_attempts") == 1
    assert record.get("unhealthy_reason") == "server process died" and record.get("unhealthy_since")
    assert ws.calls["begin_deploy"] == 2
    item = next(e for e in collect_status(settings, ledger, ws)["endpoints"] if e["name"] == ep)
    assert item["health"] == "healing" and item["heal_attempts"] == 1

    ws.finish_deployment(ep)
    summary = reconcile(ctx=context())
    assert summary["endpoints_healed"] == 1, summary
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "succeeded" and record.get("healed_at") and record.get("heal_seconds") >= 0
    assert record.get("unhealthy_since") is None
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == ep
    assert reconcile(ctx=context())["endpoints_redeployed"] == 0 and ws.calls["begin_deploy"] == 2


def test_heal_attempts_are_backed_off_bounded_then_stopped_with_the_reason(env, fixtures_dir):
    settings, ledger, ws = env
    ep = served(env, fixtures_dir)
    die(ws, ep)
    ctx = Context(settings, ledger, ws)
    t0 = utcnow()

    def run(at):
        summary = Counter()
        healing.heal_endpoints(ctx, summary, now=at)
        return summary

    assert run(t0)["endpoints_redeployed"] == 1  # found unhealthy: the first redeploy starts at once
    deploys = [ws.calls["begin_deploy"]]
    for attempt, wait_s in ((2, 30), (3, 60)):
        ws.finish_deployment(ep, ok=False, error="QuotaExceeded: not enough quota")
        reconcile_failed = reconcile(ctx=context())  # settles the failed attempt; reconcile's own heal step waits (back-off)
        assert reconcile_failed["endpoints_failed"] == 1 and reconcile_failed["endpoints_redeployed"] == 0
        failed_at = parse_iso(ledger.get(L.ENDPOINT, ep).updated_at)
        assert run(failed_at + timedelta(seconds=wait_s - 2))["endpoints_redeployed"] == 0  # still backing off
        assert run(failed_at + timedelta(seconds=wait_s + 1))["endpoints_redeployed"] == 1
        assert ledger.get(L.ENDPOINT, ep).get("heal_attempts") == attempt
        deploys.append(ws.calls["begin_deploy"])
    assert deploys == [2, 3, 4]

    ws.finish_deployment(ep, ok=False, error="QuotaExceeded: not enough quota")
    summary = reconcile(ctx=context())  # the last attempt failed: nothing left, stopped in the same run
    assert summary["endpoints_failed"] == 1 and summary["endpoints_heal_stopped"] == 1, summary
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "failed" and record.get("heal_stopped_at")
    assert "gave up after 3 redeploy(s)" in record.get("error") and "QuotaExceeded" in record.get("error")
    for hours in (6, 48):  # stops spending: never redeployed again
        assert run(utcnow() + timedelta(hours=hours))["endpoints_redeployed"] == 0
    assert ws.calls["begin_deploy"] == 4
    status = collect_status(settings, ledger, ws)
    item = next(e for e in status["endpoints"] if e["name"] == ep)
    assert item["health"] == "stopped" and "QuotaExceeded" in item["heal_stopped_reason"]
    assert "Unhealthy endpoints (1)" in render_status(status) and "gave up after 3" in render_status(status)


def test_a_deployment_that_fails_on_its_own_waits_before_the_first_retry(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-f1", COMPLETED)
    ep = handle_job_event(completed_event(fixtures_dir, settings, "job-f1"), ctx=context()).endpoint
    ws.finish_deployment(ep, ok=False, error="ResourceNotReady: liveness probe failed")
    assert reconcile(ctx=context())["endpoints_redeployed"] == 0 and ws.calls["begin_deploy"] == 1
    failed_at = parse_iso(ledger.get(L.ENDPOINT, ep).updated_at)
    summary = Counter()
    healing.heal_endpoints(Context(settings, ledger, ws), summary, now=failed_at + timedelta(seconds=31))
    assert summary["endpoints_redeployed"] == 1 and ws.calls["begin_deploy"] == 2


def test_an_endpoint_replaced_by_a_newer_version_is_not_healed(storage_settings, fixtures_dir):
    env = install_workspace(storage_settings.replace(endpoint_heal_attempts=3, endpoint_heal_backoff_s=30,
                                                     rollout_candidates=False))  # each version its own endpoint
    settings, ledger, ws = env
    old = served(env, fixtures_dir, "job-r1")
    new = served(env, fixtures_dir, "job-r2")
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == new
    die(ws, old)
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 1 and summary["endpoints_redeployed"] == 0
    record = ledger.get(L.ENDPOINT, old)
    assert record.state == "failed" and record.get("heal_stopped_at") and "replaced by" in record.get("heal_stopped_reason")
    assert ws.calls["begin_deploy"] == 2  # the two first deployments only


class Flaky:
    """The in-memory workspace with an endpoint_health that the test sets (inconclusive probes)."""

    def __init__(self, ws):
        self._ws = ws
        self.report: EndpointHealth | None = None

    def __getattr__(self, name):
        return getattr(self._ws, name)

    def endpoint_health(self, name):
        return self.report or EndpointHealth(HEALTH_HEALTHY, "ok")


def test_inconclusive_evidence_must_persist_before_anything_is_redeployed(env, fixtures_dir):
    settings, ledger, ws = env
    ep = served(env, fixtures_dir)
    backend = Flaky(ws)
    ctx = Context(settings, ledger, backend)
    t0 = utcnow()
    backend.report = EndpointHealth(HEALTH_UNHEALTHY, "GET /health timed out", definite=False)
    summary = Counter()
    healing.heal_endpoints(ctx, summary, now=t0)
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "succeeded" and record.get("health_suspect_since") and summary["endpoints_redeployed"] == 0
    # it answers again: the suspicion is cleared, nothing redeployed
    backend.report = None
    healing.heal_endpoints(ctx, summary, now=t0 + timedelta(seconds=5))
    assert ledger.get(L.ENDPOINT, ep).get("health_suspect_since") is None
    # persisting past the confirmation time: recorded and redeployed
    backend.report = EndpointHealth(HEALTH_UNHEALTHY, "GET /health timed out", definite=False)
    healing.heal_endpoints(ctx, summary, now=t0 + timedelta(seconds=10))
    healing.heal_endpoints(ctx, summary, now=t0 + timedelta(seconds=10) + healing.SUSPECT_CONFIRM + timedelta(seconds=1))
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning" and summary["endpoints_redeployed"] == 1


def test_the_janitor_keeps_a_healing_endpoint_and_deletes_a_stopped_one_once_idle(env, fixtures_dir):
    settings, ledger, ws = env
    settings = settings.replace(idle_endpoint_minutes=60, idle_grace_minutes=0)
    ep = served(env, fixtures_dir)
    die(ws, ep)
    ledger.transition(L.ENDPOINT, ep, {"succeeded"}, "failed", error="unhealthy: died", unhealthy_since="2000-01-01T00:00:00Z")
    report = delete_idle_endpoints(context(settings=settings, ledger=ledger, backend=ws), now=utcnow() + timedelta(days=2))
    assert report.deleted == [] and ep in report.kept
    assert "health loop" in next(o.reason for o in report.outcomes if o.name == ep)

    stopped_at = utcnow()
    ledger.annotate(L.ENDPOINT, ep, heal_stopped_at=stopped_at.isoformat(), heal_stopped_reason="gave up")
    assert delete_idle_endpoints(context(settings=settings, ledger=ledger, backend=ws), now=stopped_at + timedelta(minutes=30)).deleted == []
    report = delete_idle_endpoints(context(settings=settings, ledger=ledger, backend=ws), now=stopped_at + timedelta(minutes=61))
    assert report.deleted == [ep]
    assert ledger.get(L.ENDPOINT, ep).state == "deleting"
