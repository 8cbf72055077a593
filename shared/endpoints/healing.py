"""The health loop: an endpoint that stopped serving is recorded and redeployed, a bounded number of times.

Run by ``reconcile`` (one step, :func:`heal_endpoints`) and, for one endpoint, by scoring when its
endpoint does not answer (:func:`report_unreachable`): the same code either way.

Policy, per endpoint record:

1. ``succeeded`` endpoints are checked with ``MLBackend.endpoint_health`` (local: the server
   process and ``GET /health``; Azure: endpoint and deployment provisioning states). Unhealthy
   or missing, on conclusive evidence (or inconclusive evidence seen again after
   ``SUSPECT_CONFIRM``), moves it ``succeeded`` -> ``failed`` with ``unhealthy_since`` and the
   reason: the ledger never keeps calling a dead endpoint live.
2. A ``failed`` endpoint that its model still needs (:func:`shared.endpoints.serving.endpoint_need`:
   the one its route serves, a rollback's target, a newer version on its way; a ``replaced_by``
   mark does not decide) is
   redeployed through :func:`shared.endpoints.lifecycle.deploy_model` (``failed`` ->
   ``provisioning``), at most ``ENDPOINT_HEAL_ATTEMPTS`` times. The first redeploy of an
   endpoint found unhealthy starts at once; a deployment that failed on its own waits
   ``ENDPOINT_HEAL_BACKOFF_S`` first; each further attempt waits twice as long as the one before
   (capped at ``MAX_BACKOFF``), counted from the attempt's failure. Each attempt is claimed with
   an ETag-conditional write, so concurrent reconcile runs and scoring workers start it once.
3. When the attempts are spent the record stays ``failed`` with ``heal_stopped_at`` and the
   reason, and nothing is redeployed any more (scoring answers 503 without redeploying; the
   janitor deletes it once idle). An endpoint its model no longer needs is stopped at once.
4. Once the endpoint serves again ``healed_at`` and ``heal_seconds`` (time from unhealthy to
   serving) are recorded; the attempt count is reset after it has served ``RESET_AFTER``.

Scoring answers 503 + ``Retry-After`` from :func:`retry_after_s` while an endpoint heals: the
time to the next attempt plus how long this endpoint's last deployment took (``deploy_seconds``,
recorded when it served), or ``SCORING_RETRY_AFTER_S`` when it never deployed before.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from shared.backends.base import (
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    HEALTH_HEALTHY,
    HEALTH_MISSING,
    HEALTH_STARTING,
    HEALTH_UNHEALTHY,
    HEALTH_UNKNOWN,
    EndpointHealth,
    MLBackend,
    NotFoundError,
)
from shared.clock import backoff_s
from shared.context import Context
from shared.endpoints import lifecycle
from shared.endpoints.serving import endpoint_need
from shared.ledger import ConflictError, Record, iso, parse_iso, utcnow
from shared.ledger import records as R

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("endpoints_checked", "endpoints_unhealthy", "endpoints_healing", "endpoints_redeployed",
                "endpoints_healed", "endpoints_heal_stopped")

# Inconclusive evidence (a health probe timing out on a live process) must persist this long.
SUSPECT_CONFIRM = timedelta(seconds=20)
MAX_BACKOFF = timedelta(minutes=30)
# After serving this long again, an endpoint gets its full number of heal attempts back.
RESET_AFTER = timedelta(minutes=15)
MIN_RETRY_AFTER_S = 1
# A scoring worker probes one unreachable endpoint at most this often (a probe may take seconds),
# and asks the backend whether a provisioning endpoint is ready at most every SETTLE_INTERVAL_S.
PROBE_INTERVAL_S = 5.0
SETTLE_INTERVAL_S = 2.0


def probe(backend: MLBackend, name: str) -> EndpointHealth:
    """The backend's health of ``name``; for backends without ``endpoint_health``, from ``get_endpoint``."""
    method = getattr(backend, "endpoint_health", None)
    try:
        if method is not None:
            return method(name)
        info = backend.get_endpoint(name)
    except NotFoundError:
        return EndpointHealth(HEALTH_MISSING, f"endpoint {name} does not exist")
    except Exception as exc:  # noqa: BLE001 - an unreachable backend proves nothing about the endpoint
        return EndpointHealth(HEALTH_UNKNOWN, f"cannot read endpoint {name}: {type(exc).__name__}: {exc}")
    if info is None:
        return EndpointHealth(HEALTH_MISSING, f"endpoint {name} does not exist")
    if info.state == EP_SUCCEEDED:
        return EndpointHealth(HEALTH_HEALTHY, "backend reports it succeeded")
    if info.state == EP_PROVISIONING:
        return EndpointHealth(HEALTH_STARTING, "backend reports it provisioning")
    if info.state == EP_FAILED:
        return EndpointHealth(HEALTH_UNHEALTHY, info.error or "backend reports it failed")
    return EndpointHealth(HEALTH_MISSING, f"backend reports it {info.state}")


def backoff(settings: Any, attempt: int) -> timedelta:
    """Wait before heal attempt ``attempt`` (2, 3, ...): the base, doubled each time, capped."""
    return timedelta(seconds=backoff_s(max(settings.endpoint_heal_backoff_s, 0), attempt - 2, MAX_BACKOFF.total_seconds()))


def next_attempt_at(record: Record, settings: Any) -> datetime | None:
    """When the next heal attempt of a failed record may start (None: no attempt left or not healed)."""
    if record.get("heal_stopped_at"):
        return None
    attempts = int(record.get("heal_attempts") or 0)
    if attempts >= settings.endpoint_heal_attempts:
        return None
    if attempts == 0:
        failed_at = parse_iso(record.get("failed_at")) or parse_iso(record.updated_at) or utcnow()
        if record.get("unhealthy_since"):
            return failed_at  # it served until just now: bring it back at once
        return failed_at + timedelta(seconds=settings.endpoint_heal_backoff_s)  # failed on its own: wait once
    # The last attempt failed when its record last changed (the failed transition).
    failed_at = parse_iso(record.updated_at) or utcnow()
    return failed_at + backoff(settings, attempts + 1)


def expected_deploy_s(record: Record, settings: Any) -> float:
    measured = record.get("deploy_seconds")
    try:
        return float(measured) if measured is not None else float(settings.scoring_retry_after_s)
    except (TypeError, ValueError):
        return float(settings.scoring_retry_after_s)


def retry_after_s(record: Record, settings: Any, now: datetime | None = None) -> int | None:
    """Honest Retry-After for a client of an endpoint that is deploying or healing; None when it will not come back."""
    now = now or utcnow()
    expected = expected_deploy_s(record, settings)
    if record.state == EP_PROVISIONING:
        started = parse_iso(record.get("deploy_requested_at")) or parse_iso(record.updated_at) or now
        remaining = expected - (now - started).total_seconds()
        # Overdue: it is late by its own history; ask again in a tenth of that time.
        return max(MIN_RETRY_AFTER_S, math.ceil(remaining if remaining > 0 else expected / 10))
    if record.state == EP_FAILED:
        at = next_attempt_at(record, settings)
        if at is None:
            return None
        return max(MIN_RETRY_AFTER_S, math.ceil(max((at - now).total_seconds(), 0.0) + expected))
    return None


def is_healing(record: Record, settings: Any) -> bool:
    """A failed endpoint the loop will still redeploy (scoring leaves it to the loop)."""
    return record.state == EP_FAILED and next_attempt_at(record, settings) is not None


def _not_needed(record: Record, ctx: Context) -> str | None:
    """None when the model still needs this endpoint (:func:`shared.endpoints.serving.endpoint_need`), else why not."""
    model_name = record.get("model_name")
    need = endpoint_need(record, ctx.ledger.get(R.ROUTE, model_name) if model_name else None)
    return None if need.needed else need.reason


def _mark_unhealthy(record: Record, health: EndpointHealth, ctx: Context, now: datetime,
                    summary: Counter[str]) -> Record | None:
    """``succeeded`` -> ``failed`` (ETag-conditional on ``record``), or a suspicion noted first."""
    if not health.definite:
        suspect = parse_iso(record.get("health_suspect_since"))
        if suspect is None:
            try:
                ctx.ledger.update(record, health_suspect_since=iso(now), health_suspect_reason=health.reason)
            except ConflictError:
                pass
            return None
        if now - suspect < SUSPECT_CONFIRM:
            return None
    try:
        moved = ctx.ledger.update(
            record, EP_FAILED, error=f"unhealthy: {health.reason}", unhealthy_since=iso(now), unhealthy_reason=health.reason,
            failed_at=iso(now), health_suspect_since=None, health_suspect_reason=None, healed_at=None, heal_seconds=None,
        )
    except ConflictError:
        return None
    summary["endpoints_unhealthy"] += 1
    log.warning("endpoint %s (model %s) is unhealthy: %s", record.id, record.get("model"), health.reason)
    return moved


def _heal(record: Record, ctx: Context, now: datetime, summary: Counter[str]) -> Record:
    """One heal decision for a failed endpoint: wait, redeploy (claimed), or stop. Returns the current record."""
    s = ctx.settings
    if record.get("heal_stopped_at"):
        return record
    attempts = int(record.get("heal_attempts") or 0)
    last_error = record.get("error") or record.get("unhealthy_reason") or "deployment failed"
    not_needed = _not_needed(record, ctx)
    if not_needed is not None or attempts >= s.endpoint_heal_attempts:
        why = (f"not healed: {not_needed}" if not_needed is not None
               else f"gave up after {attempts} redeploy(s); last error: {last_error}")
        try:
            stopped = ctx.ledger.update(record, heal_stopped_at=iso(now), heal_stopped_reason=why, error=why)
        except ConflictError:
            return record
        summary["endpoints_heal_stopped"] += 1
        log.error("endpoint %s (model %s): %s", record.id, record.get("model"), why)
        return stopped
    due = next_attempt_at(record, s)
    if due is not None and now < due:
        summary["endpoints_healing"] += 1
        return record
    try:  # the claim: of concurrent healers exactly one starts this attempt
        claimed = ctx.ledger.update(record, heal_attempts=attempts + 1, heal_started_at=iso(now),
                                    unhealthy_since=record.get("unhealthy_since") or record.get("failed_at") or record.updated_at)
    except ConflictError:
        return ctx.ledger.get(R.ENDPOINT, record.id) or record
    reason = f"heal {attempts + 1}/{s.endpoint_heal_attempts}: {last_error}"
    log.warning("endpoint %s: redeploying %s (%s)", record.id, record.get("model"), reason)
    summary["endpoints_redeployed"] += 1
    summary["endpoints_healing"] += 1
    # This endpoint, whatever the version's home elsewhere: the route (or a rollback) needs this one.
    current = lifecycle.deploy_model(lifecycle.model_ref_of(claimed), ctx=ctx, reason=reason,
                                     endpoint=record.id)
    return current


def _note_healthy(record: Record, ctx: Context, now: datetime, summary: Counter[str]) -> None:
    changes: dict[str, Any] = {}
    if record.get("health_suspect_since"):
        changes.update(health_suspect_since=None, health_suspect_reason=None)
    active_since = parse_iso(record.get("active_since"))
    requested = parse_iso(record.get("deploy_requested_at"))
    if active_since and requested and record.get("deploy_seconds_for") != record.get("deploy_requested_at"):
        changes.update(deploy_seconds=round(max((active_since - requested).total_seconds(), 0.0), 1),
                       deploy_seconds_for=record.get("deploy_requested_at"))
    unhealthy_since = parse_iso(record.get("unhealthy_since"))
    if unhealthy_since is not None:
        seconds = round((now - unhealthy_since).total_seconds(), 1)
        changes.update(unhealthy_since=None, unhealthy_reason=None, healed_at=iso(now), heal_seconds=seconds,
                       heal_stopped_at=None, heal_stopped_reason=None)
        summary["endpoints_healed"] += 1
        log.warning("endpoint %s healed: serving again %.1f s after it was found unhealthy (%s attempt(s))",
                    record.id, seconds, record.get("heal_attempts"))
    healed_at = parse_iso(record.get("healed_at")) or active_since
    if record.get("heal_attempts") and unhealthy_since is None and healed_at and now - healed_at > RESET_AFTER:
        changes.update(heal_attempts=0)
    if changes:
        try:
            ctx.ledger.update(record, **changes)
        except ConflictError:
            pass


def check_endpoint(record: Record, ctx: Context, summary: Counter[str], now: datetime | None = None) -> Record:
    """The health policy for one endpoint record (module doc); returns its current record."""
    now = now or utcnow()
    if record.state == EP_SUCCEEDED:
        summary["endpoints_checked"] += 1
        health = probe(ctx.backend, record.id)
        if health.status == HEALTH_HEALTHY:
            _note_healthy(record, ctx, now, summary)
            return record
        if health.status in {HEALTH_STARTING, HEALTH_UNKNOWN}:
            return record
        assert health.status in {HEALTH_UNHEALTHY, HEALTH_MISSING}, health
        moved = _mark_unhealthy(record, health, ctx, now, summary)
        if moved is None:
            return ctx.ledger.get(R.ENDPOINT, record.id) or record
        record = moved
    if record.state == EP_FAILED:
        return _heal(record, ctx, now, summary)
    return record


def heal_endpoints(ctx: Context, summary: Counter[str], now: datetime | None = None, skip: set[str] | None = None) -> None:
    """The reconcile step: every succeeded or failed endpoint record through :func:`check_endpoint`
    (those in ``skip`` are not probed again: the caller has just read their state from the backend)."""
    for key in SUMMARY_KEYS:
        summary.setdefault(key, 0)
    for record in ctx.ledger.list(R.ENDPOINT, states={EP_SUCCEEDED, EP_FAILED}):
        if record.state == EP_FAILED and record.get("heal_stopped_at"):
            continue
        try:
            if record.state == EP_SUCCEEDED and record.id in (skip or ()):
                _note_healthy(record, ctx, now or utcnow(), summary)  # the backend just said it succeeded
                continue
            check_endpoint(record, ctx, summary, now)
        except Exception:  # one endpoint must not stop the others; the next run retries it
            summary["errors"] += 1
            log.warning("health of endpoint %s could not be settled; retried next run", record.id, exc_info=True)


def report_unreachable(ctx: Context, name: str) -> Record | None:
    """Scoring could not reach ``name``: run the policy for it now (same as reconcile), return its record."""
    record = ctx.ledger.get(R.ENDPOINT, name)
    if record is None:
        return None
    summary: Counter[str] = Counter()
    health = probe(ctx.backend, name) if record.state == EP_SUCCEEDED else None
    if health is not None and health.status in {HEALTH_UNHEALTHY, HEALTH_MISSING}:
        # The failed call is itself evidence: with the probe agreeing, act at once.
        health = EndpointHealth(health.status, health.reason, definite=True)
        moved = _mark_unhealthy(record, health, ctx, utcnow(), summary)
        record = moved or ctx.ledger.get(R.ENDPOINT, name) or record
    if record.state == EP_FAILED:
        record = _heal(record, ctx, utcnow(), summary)
    return record


def heal_if_due(ctx: Context, record: Record) -> Record:
    """Scoring met a failed endpoint: start its next heal attempt if one is due; its current record."""
    if record.state != EP_FAILED:
        return record
    return _heal(record, ctx, utcnow(), Counter())


def settle_if_ready(ctx: Context, record: Record) -> Record:
    """Scoring met a provisioning endpoint: settle it now when the backend says it serves (what
    reconcile does: traffic, succeeded, route), so a healed endpoint serves without waiting for
    the next reconcile run. Returns its current record."""
    if record.state != EP_PROVISIONING:
        return record
    lifecycle.settle_provisioning(record, ctx, Counter(), evaluate=False)  # a client waits: never judge here
    return ctx.ledger.get(R.ENDPOINT, record.id) or record
