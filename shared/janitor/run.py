"""The idle janitor: delete online endpoints nobody calls, because they bill every hour they exist.

One run (the ``delete_idle_endpoints`` timer, every 10 minutes by default):

1. gathers facts: the backend's managed endpoints (tag, state, its own activity metric) joined
   with the ledger's endpoint records (last activity written by scoring, when it became active)
   and the models' active endpoints. An endpoint must carry the tag **and** be in the ledger to
   be touched;
2. asks the idle policy (``shared.janitor.policy.decide``) about each one;
3. for each idle endpoint: claims it in the ledger (``succeeded`` -> ``deleting``, conditional on
   the record being unchanged since the decision, so a request recorded meanwhile wins), then
   starts the deletion through the backend and never waits for it. A failure is recorded on the
   endpoint and reported; the other endpoints are still handled. The model stays registered and
   ``active/<model>`` still names the endpoint, so the scoring route can redeploy it on demand;
4. finalizes ``deleting`` records whose endpoint is gone (``deleted``);
5. writes what it did to ``janitor/last``.

With ``JANITOR_DRY_RUN`` it reports what it would delete and changes nothing but ``janitor/last``.

Savings estimate (``hours_saved``, ``cost_saved`` on the endpoint record): deleting stops billing
now, but how long the endpoint would otherwise have stayed unused is unknown. We estimate it
by the time it has already been idle: for a gap whose length we know nothing about, having
lasted t means the remaining time is as likely to be shorter as longer than t (the "Lindy"
or Copernican estimate of a duration seen at a random moment), so t is the median forecast.
It is multiplied by the instance count and the hourly price of the instance type
(``INSTANCE_HOURLY_PRICES``; unknown type: cost not estimated). It ignores what a later
redeploy costs; ``bench/idle_cost.py`` compares this estimate with simulated reality.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from shared.backends.base import EP_DELETED, EP_DELETING, EP_SUCCEEDED, BackendError, EndpointInfo, MLBackend, NotFoundError
from shared.context import Context
from shared.endpoints import deletion
from shared.janitor.policy import DELETE, KEEP, UNKNOWN, Decision, EndpointFacts, IdlePolicy, decide
from shared.ledger import ENDPOINT, JANITOR, ROUTE, ConflictError, Ledger, Record, iso, parse_iso, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

# Outcome of one endpoint in one run.
DELETED = "deleted"  # deletion started (ledger: deleting, or deleted when already gone)
WOULD_DELETE = "would_delete"  # dry run
KEPT = "kept"
UNDECIDED = "unknown"  # policy could not tell; kept
FAILED = "failed"  # deletion could not be started
SKIPPED = "skipped"  # record changed while deciding (e.g. a request was just recorded)
FINALIZED = "finalized"  # a deleting record whose endpoint is now gone -> deleted
MISSING = "missing"  # ledger says it exists, the backend does not list it (nothing changed)
RESTARTED = "restarted"  # a deletion whose backend call had been lost was started again



@dataclasses.dataclass(frozen=True)
class EndpointOutcome:
    name: str
    outcome: str
    reason: str
    model: str | None = None
    idle_minutes: float | None = None
    hours_saved: float | None = None
    cost_saved: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class JanitorReport:
    ran_at: datetime
    dry_run: bool
    outcomes: list[EndpointOutcome] = dataclasses.field(default_factory=list)
    error: str | None = None

    def names(self, outcome: str) -> list[str]:
        return [o.name for o in self.outcomes if o.outcome == outcome]

    @property
    def deleted(self) -> list[str]:
        return self.names(DELETED)

    @property
    def would_delete(self) -> list[str]:
        return self.names(WOULD_DELETE)

    @property
    def failed(self) -> list[str]:
        return self.names(FAILED)

    @property
    def kept(self) -> list[str]:
        return self.names(KEPT)

    @property
    def unknown(self) -> list[str]:
        return self.names(UNDECIDED)

    @property
    def finalized(self) -> list[str]:
        return self.names(FINALIZED)

    def _total(self, attr: str, outcome: str) -> float:
        return round(sum(getattr(o, attr) or 0.0 for o in self.outcomes if o.outcome == outcome), 4)

    @property
    def hours_saved(self) -> float:
        return self._total("hours_saved", WOULD_DELETE if self.dry_run else DELETED)

    @property
    def cost_saved(self) -> float:
        return self._total("cost_saved", WOULD_DELETE if self.dry_run else DELETED)

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        return "dry_run" if self.dry_run else "done"

    def summary(self) -> str:
        if self.error:
            return f"janitor failed: {self.error}"
        verb = "would delete" if self.dry_run else "deleted"
        chosen = self.would_delete if self.dry_run else self.deleted
        return (
            f"{verb} {len(chosen)} endpoint(s) {chosen}, failed {len(self.failed)}, kept {len(self.kept)}, "
            f"unknown {len(self.unknown)}, finalized {len(self.finalized)}; "
            f"estimated {self.hours_saved:.1f} instance-hours / ${self.cost_saved:.2f} saved"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran_at": iso(self.ran_at),
            "dry_run": self.dry_run,
            "state": self.state,
            "deleted": self.deleted,
            "would_delete": self.would_delete,
            "failed": [{"name": o.name, "error": o.error} for o in self.outcomes if o.outcome == FAILED],
            "kept": len(self.kept),
            "unknown": self.unknown,
            "finalized": self.finalized,
            "hours_saved": self.hours_saved,
            "cost_saved": self.cost_saved,
            "error": self.error,
            "outcomes": [o.as_dict() for o in self.outcomes],
        }


def hourly_price(settings: Settings, instance_type: str | None) -> float | None:
    """USD per instance-hour from INSTANCE_HOURLY_PRICES (case-insensitive); None when unknown."""
    if not instance_type:
        return None
    prices = {str(k).lower(): v for k, v in settings.instance_hourly_prices.items()}
    value = prices.get(instance_type.lower())
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def estimate_savings(decision: Decision, instance_type: str | None, instance_count: int, settings: Settings) -> tuple[float, float | None]:
    """(instance-hours, USD) saved: the idle time so far, expected to go on as long again (module doc)."""
    hours = max(decision.idle_minutes or 0.0, 0.0) / 60.0 * max(instance_count, 1)
    price = hourly_price(settings, instance_type)
    return round(hours, 4), (round(hours * price, 4) if price is not None else None)


def endpoint_facts(info: EndpointInfo, record: Record | None, active_endpoints: set[str]) -> EndpointFacts:
    fields = record.fields if record is not None else {}
    return EndpointFacts(
        name=info.name,
        state=info.state,
        managed=info.managed,
        in_ledger=record is not None,
        ledger_state=record.state if record is not None else None,
        ledger_last_activity=parse_iso(fields.get("last_activity")),
        metric_last_activity=info.last_activity,
        active_since=parse_iso(fields.get("active_since")),
        created_at=info.created_at,
        is_active_endpoint=info.name in active_endpoints,
        model=info.model or fields.get("model"),
        instance_type=info.instance_type or fields.get("instance_type"),
        instance_count=info.instance_count or 1,
        heal_stopped_at=parse_iso(fields.get("heal_stopped_at")),
    )


def _active_endpoints(ledger: Ledger) -> set[str]:
    return {r.get("endpoint") for r in ledger.list(ROUTE) if r.get("endpoint")}


def _delete_one(
    facts: EndpointFacts, decision: Decision, record: Record, ledger: Ledger, backend: MLBackend, s: Settings, now: datetime
) -> EndpointOutcome:
    hours, cost = estimate_savings(decision, facts.instance_type, facts.instance_count, s)
    base = {"name": facts.name, "model": facts.model, "idle_minutes": decision.idle_minutes and round(decision.idle_minutes, 1)}
    if s.janitor_dry_run:
        return EndpointOutcome(outcome=WOULD_DELETE, reason=decision.reason, hours_saved=hours, cost_saved=cost, **base)
    try:
        # Conditional on the record we decided on: a request recorded since then wins.
        deletion.claim_deletion(ledger, record, reason=decision.reason, at=now, hours_saved=hours, cost_saved=cost)
    except ConflictError:
        return EndpointOutcome(outcome=SKIPPED, reason="ledger record changed while deciding; next run re-evaluates", **base)
    try:
        backend.begin_delete_endpoint(facts.name)
    except NotFoundError:
        log.info("endpoint %s was already gone", facts.name)
    except Exception as exc:  # noqa: BLE001 - one endpoint's failure must not stop the others
        log.warning("could not start deleting endpoint %s", facts.name, exc_info=True)
        error = f"delete failed: {type(exc).__name__}: {exc}"
        try:
            # Back to succeeded so the next run tries again and scoring keeps using it.
            deletion.undo_deletion_claim(ledger, facts.name, error=error, at=now)
        except Exception:  # noqa: BLE001
            log.warning("could not record the failed deletion of %s", facts.name, exc_info=True)
        return EndpointOutcome(outcome=FAILED, reason=decision.reason, error=error, **base)
    log.info("deleting idle endpoint %s (model %s): %s", facts.name, facts.model, decision.reason)
    return EndpointOutcome(outcome=DELETED, reason=decision.reason, hours_saved=hours, cost_saved=cost, **base)


def _finish_deletions(ledger: Ledger, backend: MLBackend, listed: dict[str, EndpointInfo], started_now: set[str],
                      now: datetime) -> list[EndpointOutcome]:
    """Finalize "deleting" records whose endpoint is gone; restart deletions whose call was lost."""
    outcomes = []
    for record in ledger.list(ENDPOINT, states=[EP_DELETING]):
        try:
            # Endpoints deleted in this run are read again: a backend may remove them at once.
            info = deletion.current_endpoint(backend, record.id, None if record.id in started_now else listed)
            done = None if record.id in started_now and info is not None else deletion.settle_deletion(
                record, info, backend, ledger, now)
        except BackendError as exc:
            log.warning("could not settle the deletion of endpoint %s: %s", record.id, exc)
            outcomes.append(EndpointOutcome(record.id, FAILED, "following a deletion", record.get("model"),
                                            error=f"delete failed: {type(exc).__name__}: {exc}"))
            continue
        if done == "deleted":
            outcomes.append(EndpointOutcome(record.id, FINALIZED, "endpoint is gone", record.get("model")))
        elif done == "restarted":
            outcomes.append(EndpointOutcome(record.id, RESTARTED, "deletion call had been lost; started again", record.get("model")))
    return outcomes


def delete_idle_endpoints(ctx: Context, now: datetime | None = None) -> JanitorReport:
    """One janitor run (see the module doc). Raises BackendError when the backend cannot list endpoints."""
    s, ledger, backend = ctx.settings, ctx.ledger, ctx.backend
    now = now or utcnow()
    report = JanitorReport(ran_at=now, dry_run=s.janitor_dry_run)
    policy = IdlePolicy.from_settings(s)
    try:
        listed = {info.name: info for info in backend.list_endpoints()}
    except Exception as exc:
        report.error = f"cannot list endpoints: {type(exc).__name__}: {exc}"
        _write_last(ledger, report)
        raise

    records = {r.id: r for r in ledger.list(ENDPOINT)}
    active = _active_endpoints(ledger)
    for name, info in sorted(listed.items()):
        if info.state == EP_DELETED:  # a backend that keeps records of deleted endpoints
            continue
        record = records.get(name)
        facts = endpoint_facts(info, record, active)
        decision = decide(facts, policy, now)
        idle = round(decision.idle_minutes, 1) if decision.idle_minutes is not None else None
        if decision.action == DELETE:
            assert record is not None  # the policy never deletes what is not in the ledger
            report.outcomes.append(_delete_one(facts, decision, record, ledger, backend, s, now))
        elif decision.action == UNKNOWN:
            report.outcomes.append(EndpointOutcome(name, UNDECIDED, decision.reason, facts.model, idle))
        else:
            assert decision.action == KEEP
            report.outcomes.append(EndpointOutcome(name, KEPT, decision.reason, facts.model, idle))

    for name, record in sorted(records.items()):
        if name not in listed and record.state == EP_SUCCEEDED:
            report.outcomes.append(EndpointOutcome(name, MISSING, "in the ledger as succeeded but not listed by the backend", record.get("model")))

    if not s.janitor_dry_run:
        report.outcomes.extend(_finish_deletions(ledger, backend, listed, set(report.deleted), now))

    log.info("%s", report.summary())
    _write_last(ledger, report)
    return report


def _write_last(ledger: Ledger, report: JanitorReport) -> None:
    fields = report.as_dict()
    state = fields.pop("state")
    try:
        ledger.merge(JANITOR, "last", state=state, **fields)
    except Exception:  # noqa: BLE001 - the run itself is done; the record is only for visibility
        log.warning("could not write janitor/last", exc_info=True)
