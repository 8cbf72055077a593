"""The coalescing and spend-guard decisions as pure functions (time passed in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.training import policy as P

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = 60.0
LEASE = 300.0
FREE = P.GuardFacts()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def facts(*pending: tuple[str, float], running: tuple[str, ...] = (), claimed_at: datetime | None = None) -> P.CollectionFacts:
    return P.CollectionFacts("support-bot", tuple(P.Pending(d, at(s)) for d, s in pending), running, claimed_at)


def decide(f: P.CollectionFacts, now: datetime, guard: P.GuardFacts = FREE, window: float = WINDOW) -> P.Decision:
    return P.decide(f, guard, now, coalesce_s=window, lease_s=LEASE)


def test_nothing_pending_nothing_to_do() -> None:
    assert decide(facts(), at(1000)).action == P.NOTHING


def test_a_burst_within_the_window_waits_then_submits_once_due() -> None:
    burst = facts(("a", 0), ("b", 10), ("c", 50))
    early = decide(burst, at(59))
    assert early.action == P.WAIT and early.due_at == at(60)
    assert decide(burst, at(60)).action == P.SUBMIT


def test_the_window_is_fixed_by_the_first_upload_a_trickle_does_not_postpone_it() -> None:
    trickle = facts(("a", 0), *((f"d{i}", 30 + i * 30) for i in range(10)))
    assert decide(trickle, at(61)).action == P.SUBMIT
    assert P.due_at(trickle.pending, WINDOW) == at(60)


def test_zero_window_submits_at_once() -> None:
    assert decide(facts(("a", 0)), at(0), window=0).action == P.SUBMIT


def test_data_arriving_while_a_job_runs_waits_for_it_then_one_follow_up() -> None:
    during = facts(("d", 100), running=("job-1",))
    waiting = decide(during, at(10_000))  # long past its window
    assert waiting.action == P.WAIT_FOR_JOB and "job-1" in waiting.reason and "d" in waiting.reason
    after = facts(("d", 100))  # the job ended
    assert decide(after, at(10_000)).action == P.SUBMIT
    # the follow-up took d: nothing left for a second follow-up
    assert decide(facts(running=("job-2",)), at(10_001)).action == P.NOTHING


def test_concurrent_deliveries_of_the_same_upload_submit_once() -> None:
    first_delivery = decide(facts(("a", 0)), at(0), window=0)
    assert first_delivery.action == P.SUBMIT  # it claims the collection at t=0
    # the same event delivered again while the first delivery is submitting
    second = decide(facts(("a", 0), claimed_at=at(0)), at(1), window=0)
    assert second.action == P.IN_PROGRESS
    # and after it submitted: the dataset is in the job's corpus, nothing pending
    assert decide(facts(running=("job-1",)), at(2), window=0).action == P.NOTHING


def test_concurrent_deliveries_of_different_uploads_give_one_job_and_at_most_one_follow_up() -> None:
    # a and b accepted at the same time by two workers; the one that claims takes both
    assert decide(facts(("a", 0), ("b", 0)), at(0), window=0).action == P.SUBMIT
    assert decide(facts(("a", 0), ("b", 0), claimed_at=at(0)), at(0.5), window=0).action == P.IN_PROGRESS
    # b was accepted just after the claimant listed the datasets: it waits for the job
    assert decide(facts(("b", 0), running=("job-1",)), at(1), window=0).action == P.WAIT_FOR_JOB
    # after the job: one follow-up
    assert decide(facts(("b", 0)), at(500), window=0).action == P.SUBMIT


def test_a_crashed_deliverys_claim_is_taken_over_after_the_lease() -> None:
    stale = facts(("a", 0), claimed_at=at(0))
    assert decide(stale, at(LEASE - 1), window=0).action == P.IN_PROGRESS
    assert decide(stale, at(LEASE), window=0).action == P.SUBMIT


def test_max_running_jobs_holds_a_due_submission_with_its_reason() -> None:
    due = facts(("a", 0))
    held = decide(due, at(100), P.GuardFacts(running_jobs=2, max_running_jobs=2))
    assert held.action == P.HOLD and "MAX_RUNNING_JOBS=2" in held.reason
    assert decide(due, at(100), P.GuardFacts(running_jobs=1, max_running_jobs=2)).action == P.SUBMIT
    assert decide(due, at(100), P.GuardFacts(running_jobs=50, max_running_jobs=0)).action == P.SUBMIT  # 0: no limit


def job(name: str, start: datetime | None, end: datetime | None, hourly: float | None = 10.0) -> P.JobCost:
    return P.JobCost(name, start, end, hourly)


def test_budget_counts_real_run_times_and_holds_when_spent() -> None:
    now = at(0)
    jobs = (job("j1", now - timedelta(hours=2), now - timedelta(hours=1)),  # 1 h x $10
            job("j2", now - timedelta(minutes=30), None))  # running: 0.5 h so far
    spent, unknown = P.month_spend(jobs, now)
    assert spent == pytest.approx(15.0) and unknown == []
    held = decide(facts(("a", -100)), now, P.GuardFacts(budget_usd=15.0, jobs=jobs))
    assert held.action == P.HOLD and "$15.00 of $15.00" in held.reason and "2026-12" in held.reason
    # raising the budget lets it go
    assert decide(facts(("a", -100)), now, P.GuardFacts(budget_usd=15.01, jobs=jobs)).action == P.SUBMIT
    # no budget: never held for spend
    assert decide(facts(("a", -100)), now, P.GuardFacts(budget_usd=None, jobs=jobs)).action == P.SUBMIT


def test_budget_is_monthly_and_a_queued_job_costs_nothing() -> None:
    now = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    across = job("j1", datetime(2026, 11, 30, 23, 0, tzinfo=UTC), datetime(2026, 12, 1, 1, 0, tzinfo=UTC))
    assert P.job_cost_usd(across, now) == pytest.approx(10.0)  # only December's hour
    last_month = job("j0", datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert P.job_cost_usd(last_month, now) == 0.0
    assert P.job_cost_usd(job("q", None, None), now) == 0.0


def test_unknown_prices_hold_when_a_budget_is_set() -> None:
    now = at(0)
    unpriced = (job("j1", now - timedelta(hours=1), now, hourly=None),)
    held = decide(facts(("a", -100)), now, P.GuardFacts(budget_usd=100.0, jobs=unpriced))
    assert held.action == P.HOLD and "j1" in held.reason
    next_unpriced = P.GuardFacts(budget_usd=100.0, next_hourly_usd=None, next_instance_type="Standard_X")
    held = decide(facts(("a", -100)), now, next_unpriced)
    assert held.action == P.HOLD and "Standard_X" in held.reason
    assert decide(facts(("a", -100)), now, P.GuardFacts(budget_usd=None, jobs=unpriced, next_hourly_usd=None)).action == P.SUBMIT


def test_the_guard_is_asked_only_once_due_and_no_job_runs() -> None:
    exhausted = P.GuardFacts(budget_usd=0.0)
    assert decide(facts(("a", 0)), at(10), exhausted).action == P.WAIT
    assert decide(facts(("a", 0), running=("j",)), at(100), exhausted).action == P.WAIT_FOR_JOB
    assert decide(facts(("a", 0)), at(100), exhausted).action == P.HOLD


def test_the_state_machine_knows_retired_datasets_and_collections() -> None:
    from shared.ledger import records as R

    assert R.allowed(R.DATASET, R.DATASET_ACCEPTED, R.DATASET_RETIRED)
    assert R.allowed(R.DATASET, R.DATASET_SUBMITTED, R.DATASET_RETIRED)
    assert not R.allowed(R.DATASET, R.DATASET_REJECTED, R.DATASET_RETIRED)  # never in a corpus
    assert not R.allowed(R.DATASET, R.DATASET_RETIRED, R.DATASET_ACCEPTED)
    assert R.allowed(R.COLLECTION, R.COLLECTION_IDLE, R.COLLECTION_PENDING)
    assert R.allowed(R.COLLECTION, R.COLLECTION_PENDING, R.COLLECTION_IDLE)
