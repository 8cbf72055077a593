"""When is an online endpoint idle enough to delete? A pure function over facts.

Azure ML managed online endpoints cannot scale to zero: an endpoint bills every hour it
exists. The janitor deletes the ones nobody calls; this module decides which, and nothing
else (no I/O), so the rules can be read and tested as a table.

The rules, in the order they are applied:

1. Only endpoints this app created are ever touched: the backend's managed-by tag **and**
   a ledger record are both required.
2. Never while a deployment or a deletion is in progress (backend or ledger state), and
   never an endpoint that failed or stopped serving while the health loop still heals it
   (``shared.endpoints.healing``). One whose healing stopped (attempts spent, or replaced by a
   newer version) is deleted once idle like any other: it may still hold billed instances,
   and its record keeps the reason.
3. The model's active endpoint is kept when ``keep_latest`` is set.
4. Never within the grace period after the endpoint became active (``active_since``, else
   its creation time): a fresh deployment has not had the chance to be called yet.
5. Idle when the latest sign of use is older than the threshold. Signs of use are the
   ledger's ``last_activity`` (written by the scoring route) and the backend's own metric
   (e.g. Azure Monitor ``RequestsPerMinute``, which also sees clients that call the endpoint
   directly). An endpoint cannot have been idle for longer than it has been active, so the
   idle clock starts no earlier than ``active_since`` (a redeployed endpoint keeps its old
   ``last_activity`` in the ledger).
6. A missing backend metric is "unknown", never "idle": without it the endpoint is deleted
   only when the ledger itself shows no use since a time older than the threshold
   (``last_activity`` or ``active_since``); with no such time in the ledger the answer is
   UNKNOWN and the endpoint is kept.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.backends.base import EP_DELETED, EP_DELETING, EP_FAILED, EP_PROVISIONING, EP_SUCCEEDED

if TYPE_CHECKING:
    from shared.settings import Settings

KEEP, DELETE, UNKNOWN = "keep", "delete", "unknown"


@dataclasses.dataclass(frozen=True)
class EndpointFacts:
    """What the janitor knows about one endpoint at one moment."""

    name: str
    state: str  # the backend's state (EP_*)
    managed: bool  # carries the managed-by tag
    in_ledger: bool
    ledger_state: str | None = None
    ledger_last_activity: datetime | None = None  # last request seen by the scoring route
    metric_last_activity: datetime | None = None  # backend metric; None: unknown (not "never")
    active_since: datetime | None = None  # when it got 100% traffic (ledger)
    created_at: datetime | None = None  # backend's creation time
    is_active_endpoint: bool = False  # the model's active endpoint (ledger active/<model>)
    model: str | None = None
    instance_type: str | None = None
    instance_count: int = 1
    heal_stopped_at: datetime | None = None  # the health loop stopped redeploying it (ledger)


@dataclasses.dataclass(frozen=True)
class IdlePolicy:
    idle_minutes: float
    grace_minutes: float
    keep_latest: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> IdlePolicy:
        return cls(idle_minutes=s.idle_endpoint_minutes, grace_minutes=s.idle_grace_minutes, keep_latest=s.janitor_keep_latest)


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str  # KEEP, DELETE or UNKNOWN (kept, and reported as such)
    reason: str
    last_activity: datetime | None = None  # latest sign of use, from either source
    idle_since: datetime | None = None  # start of the idle clock (None: not determined)
    idle_minutes: float | None = None  # minutes since idle_since

    @property
    def delete(self) -> bool:
        return self.action == DELETE


_IN_PROGRESS = {EP_PROVISIONING: "deployment in progress", EP_DELETING: "deletion in progress", EP_DELETED: "already deleted"}


def _latest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def decide(facts: EndpointFacts, policy: IdlePolicy, now: datetime) -> Decision:
    """Keep, delete, or unknown (kept) for one endpoint, with the reason in words."""
    if not facts.managed:
        return Decision(KEEP, "unmanaged: no managed-by tag")
    if not facts.in_ledger:
        return Decision(KEEP, "unmanaged: not in the ledger")
    for state in (facts.state, facts.ledger_state):
        if state in _IN_PROGRESS:
            return Decision(KEEP, _IN_PROGRESS[state])
    failed = EP_FAILED in (facts.state, facts.ledger_state)
    if failed and facts.heal_stopped_at is None:
        return Decision(KEEP, "unhealthy or failed: the health loop is redeploying it")
    if failed:
        # Healing stopped: nothing will bring it back; once idle it goes like any other.
        facts = dataclasses.replace(facts, state=EP_SUCCEEDED,
                                    active_since=_latest(facts.active_since, facts.heal_stopped_at))
    if facts.state != EP_SUCCEEDED:
        return Decision(KEEP, f"backend state {facts.state!r} is not one the janitor acts on")

    last_activity = _latest(facts.ledger_last_activity, facts.metric_last_activity)
    if policy.keep_latest and facts.is_active_endpoint:
        return Decision(KEEP, "protected: the model's active endpoint (keep_latest)", last_activity)

    became_active = facts.active_since or facts.created_at
    if became_active is not None and _minutes(now - became_active) < policy.grace_minutes:
        return Decision(KEEP, f"within the {policy.grace_minutes:g}-minute grace period after becoming active", last_activity)

    if facts.metric_last_activity is None:
        # Only the ledger can speak; it proves idleness only with a time of its own.
        idle_since = _latest(facts.ledger_last_activity, facts.active_since)
        if idle_since is None:
            return Decision(UNKNOWN, "backend activity metric missing and no use or activation time in the ledger", last_activity)
        source = "ledger (backend activity metric missing)"
    else:
        idle_since = _latest(facts.ledger_last_activity, facts.metric_last_activity, facts.active_since, facts.created_at)
        source = "ledger and backend metric"

    assert idle_since is not None
    idle = _minutes(now - idle_since)
    if idle > policy.idle_minutes:
        what = "last use" if last_activity is not None and idle_since == last_activity else "no use since activation"
        return Decision(
            DELETE,
            f"idle: {what} {idle:.0f} min ago (threshold {policy.idle_minutes:g} min), per {source}",
            last_activity,
            idle_since,
            idle,
        )
    return Decision(KEEP, f"active: idle {idle:.0f} min, threshold {policy.idle_minutes:g} min", last_activity, idle_since, idle)
