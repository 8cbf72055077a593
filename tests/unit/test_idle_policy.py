"""The idle policy as a table: each row is a situation the janitor meets, and what it must decide."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from shared.backends.base import EP_DELETED, EP_DELETING, EP_FAILED, EP_PROVISIONING, EP_SUCCEEDED
from shared.janitor.policy import DELETE, KEEP, UNKNOWN, EndpointFacts, IdlePolicy, decide

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
POLICY = IdlePolicy(idle_minutes=60, grace_minutes=15, keep_latest=False)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


# A managed, succeeded endpoint that became active 5 hours ago; each case changes what it needs.
BASE = EndpointFacts(
    name="ep-1", state=EP_SUCCEEDED, managed=True, in_ledger=True, ledger_state=EP_SUCCEEDED,
    active_since=ago(300), created_at=ago(320), model="m:1", instance_type="Standard_NC6s_v3",
)


def case(**changes):
    return dataclasses.replace(BASE, **changes)


CASES = [
    # id, facts, policy changes, expected action, words the reason must contain
    ("active-by-ledger", case(ledger_last_activity=ago(5), metric_last_activity=ago(90)), {}, KEEP, "active"),
    ("active-by-metric-only", case(ledger_last_activity=ago(200), metric_last_activity=ago(3)), {}, KEEP, "active"),
    ("idle-both-sources-old", case(ledger_last_activity=ago(61), metric_last_activity=ago(75)), {}, DELETE, "idle"),
    ("idle-exactly-at-threshold-is-kept", case(ledger_last_activity=ago(60), metric_last_activity=ago(60)), {}, KEEP, "active"),
    ("idle-never-called-since-activation", case(metric_last_activity=ago(500)), {}, DELETE, "no use since activation"),
    ("redeployed-old-activity-counts-from-activation",
     case(ledger_last_activity=ago(2000), metric_last_activity=ago(2000), active_since=ago(30), created_at=ago(45)), {}, KEEP, "active"),
    ("just-deployed-within-grace", case(active_since=ago(10), created_at=ago(20)), {"idle_minutes": 5}, KEEP, "grace"),
    ("grace-from-creation-when-never-activated", case(active_since=None, created_at=ago(5), metric_last_activity=ago(5)),
     {"idle_minutes": 1}, KEEP, "grace"),
    ("deploying-backend", case(state=EP_PROVISIONING, ledger_last_activity=ago(900)), {}, KEEP, "deployment in progress"),
    ("deploying-ledger", case(ledger_state=EP_PROVISIONING, ledger_last_activity=ago(900)), {}, KEEP, "deployment in progress"),
    ("deleting-backend", case(state=EP_DELETING, ledger_last_activity=ago(900)), {}, KEEP, "deletion in progress"),
    ("deleting-ledger", case(ledger_state=EP_DELETING, ledger_last_activity=ago(900)), {}, KEEP, "deletion in progress"),
    ("deleted-ledger", case(ledger_state=EP_DELETED, ledger_last_activity=ago(900)), {}, KEEP, "already deleted"),
    ("failed-deployment", case(state=EP_FAILED, ledger_last_activity=ago(900)), {}, KEEP, "failed"),
    ("unmanaged-no-tag", case(managed=False, ledger_last_activity=ago(900)), {}, KEEP, "no managed-by tag"),
    ("unmanaged-not-in-ledger", case(in_ledger=False, ledger_state=None, active_since=None), {}, KEEP, "not in the ledger"),
    ("metrics-missing-no-ledger-time-is-unknown", case(active_since=None, metric_last_activity=None), {}, UNKNOWN, "missing"),
    ("metrics-missing-ledger-recent-kept", case(ledger_last_activity=ago(20), metric_last_activity=None), {}, KEEP, "active"),
    ("metrics-missing-ledger-old-deleted", case(ledger_last_activity=ago(90), metric_last_activity=None), {}, DELETE, "metric missing"),
    ("metrics-missing-activated-long-ago-never-used", case(metric_last_activity=None), {}, DELETE, "no use since activation"),
    ("metrics-missing-backend-creation-is-not-ledger-evidence",
     case(active_since=None, created_at=ago(900), metric_last_activity=None), {}, UNKNOWN, "missing"),
    ("keep-latest-protects-active-endpoint", case(is_active_endpoint=True, ledger_last_activity=ago(900)), {"keep_latest": True},
     KEEP, "keep_latest"),
    ("keep-latest-off-active-endpoint-deleted", case(is_active_endpoint=True, ledger_last_activity=ago(900)), {}, DELETE, "idle"),
    ("keep-latest-does-not-protect-replaced", case(is_active_endpoint=False, ledger_last_activity=ago(900)), {"keep_latest": True},
     DELETE, "idle"),
    ("short-threshold", case(ledger_last_activity=ago(3), active_since=ago(4)), {"idle_minutes": 2, "grace_minutes": 1}, DELETE, "idle"),
]


@pytest.mark.parametrize(("facts", "policy_changes", "action", "reason_words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_table(facts, policy_changes, action, reason_words):
    decision = decide(facts, dataclasses.replace(POLICY, **policy_changes), NOW)
    assert decision.action == action, decision.reason
    assert reason_words in decision.reason


def test_idle_minutes_measured_from_latest_sign_of_use():
    decision = decide(case(ledger_last_activity=ago(70), metric_last_activity=ago(95)), POLICY, NOW)
    assert decision.delete
    assert decision.idle_since == ago(70)
    assert decision.idle_minutes == pytest.approx(70)
    assert decision.last_activity == ago(70)


def test_policy_from_settings(unit_settings):
    s = unit_settings.replace(idle_endpoint_minutes=7.5, idle_grace_minutes=2, janitor_keep_latest=True)
    assert IdlePolicy.from_settings(s) == IdlePolicy(idle_minutes=7.5, grace_minutes=2, keep_latest=True)
