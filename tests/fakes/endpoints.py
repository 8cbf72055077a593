"""Endpoints as the janitor and status see them: a workspace holding chosen endpoints, their ledger records."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.backends.base import EP_SUCCEEDED, MANAGED_BY_TAG, MANAGED_BY_VALUE, EndpointInfo
from shared.ledger import ENDPOINT, MODEL, Ledger, iso, utcnow
from tests.fakes.workspace import InMemoryWorkspace

TAGS = {MANAGED_BY_TAG: MANAGED_BY_VALUE}


def FakeEndpointsBackend(endpoints: list[EndpointInfo], *, removes_at_once: bool = False,
                         failing: set[str] | None = None) -> InMemoryWorkspace:
    """The shared in-memory workspace holding just these endpoints; names in ``failing`` refuse deletion."""
    ws = InMemoryWorkspace(endpoints=endpoints, removes_at_once=removes_at_once)
    ws.failing_deletes = set(failing or ())
    return ws


def ago(minutes: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(minutes=minutes)


def endpoint(name: str, *, state: str = EP_SUCCEEDED, tagged: bool = True, metric_minutes_ago: float | None = None,
             created_minutes_ago: float = 600, now: datetime | None = None, model: str | None = None) -> EndpointInfo:
    return EndpointInfo(
        name=name, state=state, tags=dict(TAGS) if tagged else {}, model=model or f"chat-ft:{name}", deployment="demo",
        traffic={"demo": 100}, instance_type="Standard_NC24ads_A100_v4", instance_count=1, created_at=ago(created_minutes_ago, now),
        last_activity=ago(metric_minutes_ago, now) if metric_minutes_ago is not None else None,
    )


def record(ledger: Ledger, name: str, *, state: str = EP_SUCCEEDED, last_activity_minutes_ago: float | None = None,
           active_since_minutes_ago: float | None = 500, now: datetime | None = None, model_version: str | None = None) -> None:
    version = model_version or name
    fields = {"model": f"chat-ft:{version}", "model_name": "chat-ft", "model_version": version, "instance_type": "Standard_NC24ads_A100_v4"}
    if active_since_minutes_ago is not None:
        fields["active_since"] = iso(ago(active_since_minutes_ago, now))
    if last_activity_minutes_ago is not None:
        fields["last_activity"] = iso(ago(last_activity_minutes_ago, now))
    assert ledger.create(ENDPOINT, name, state, **fields) is not None
    ledger.create(MODEL, f"chat-ft:{version}", "deployed", job_name=f"job-{version}", endpoint=name)
