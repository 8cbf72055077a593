"""When a collection's next corpus job is submitted: the coalescing and spend-guard decisions.

Pure functions of facts and the time (passed in), so every case, including concurrent and
repeated deliveries, is tested without storage or clocks. :mod:`shared.training.submission`
gathers the facts from the ledger and acts on the decision under a ledger claim.

Rules, in order:

1. nothing pending (every accepted dataset of the collection is in a submitted corpus) -> nothing;
2. a job of the collection is running -> wait: what arrived meanwhile goes into exactly one
   follow-up job after it ends;
3. another delivery holds a live submission claim -> it is submitting: do nothing;
4. the window is not over (first pending upload + ``COALESCE_SECONDS``) -> wait until then;
5. the spend guard: ``MAX_RUNNING_JOBS`` running across collections, or the month's spend
   (real run times x hourly price) at ``FINETUNE_BUDGET_USD`` -> hold, pending, with the reason;
6. otherwise submit one job for everything accepted so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

NOTHING = "nothing"  # nothing waits
WAIT_FOR_JOB = "waiting_for_job"  # a job of the collection runs
IN_PROGRESS = "submission_in_progress"  # another delivery holds the claim
WAIT = "pending"  # the coalescing window is not over
HOLD = "held"  # the spend guard holds it back
SUBMIT = "submit"


@dataclasses.dataclass(frozen=True)
class Pending:
    """An accepted dataset not yet in any submitted corpus."""

    dataset_id: str
    accepted_at: datetime


@dataclasses.dataclass(frozen=True)
class CollectionFacts:
    name: str
    pending: tuple[Pending, ...] = ()
    running_jobs: tuple[str, ...] = ()  # this collection's jobs not ended yet
    claimed_at: datetime | None = None  # someone's submission claim on the collection (None: none)


@dataclasses.dataclass(frozen=True)
class JobCost:
    """One fine-tuning job as the budget counts it."""

    name: str
    started_at: datetime | None  # None: not started (queued): costs nothing yet
    ended_at: datetime | None  # None: still running (counted up to now)
    hourly_usd: float | None  # price per hour of all its instances; None: not in the price table
    instance_type: str = ""


@dataclasses.dataclass(frozen=True)
class GuardFacts:
    running_jobs: int = 0  # across collections (and upload-mode jobs)
    max_running_jobs: int = 0  # 0: no limit
    budget_usd: float | None = None  # None: no budget
    jobs: tuple[JobCost, ...] = ()
    next_hourly_usd: float | None = 0.0  # price of the job about to be submitted (None: unknown)
    next_instance_type: str = ""
    next_forecast_usd: float = 0.0  # the preparation reports' cost forecast of the job about to be submitted


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    due_at: datetime | None = None


def month_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def job_cost_usd(job: JobCost, now: datetime) -> float | None:
    """USD this job cost in ``now``'s calendar month (UTC); None when its price is unknown."""
    if job.started_at is None:
        return 0.0
    start = max(job.started_at, month_start(now))
    end = min(job.ended_at or now, now)
    hours = max((end - start).total_seconds(), 0.0) / 3600.0
    if hours == 0.0:
        return 0.0
    return None if job.hourly_usd is None else hours * job.hourly_usd


def month_spend(jobs: Iterable[JobCost], now: datetime) -> tuple[float, list[str]]:
    """(USD spent this month by the jobs with a known price, names of the jobs without one)."""
    total, unknown = 0.0, []
    for job in jobs:
        cost = job_cost_usd(job, now)
        if cost is None:
            unknown.append(job.name)
        else:
            total += cost
    return total, unknown


def guard_reason(guard: GuardFacts, now: datetime) -> str | None:
    """Why the spend guard holds a submission back now, or None when it allows one."""
    if guard.max_running_jobs and guard.running_jobs >= guard.max_running_jobs:
        return (f"{guard.running_jobs} fine-tuning job(s) running, the most MAX_RUNNING_JOBS={guard.max_running_jobs} "
                "allows; submitted when one ends")
    if guard.budget_usd is None:
        return None
    if guard.next_hourly_usd is None:
        return (f"no hourly price for instance type {guard.next_instance_type!r} in INSTANCE_HOURLY_PRICES: "
                "the fine-tuning budget cannot be checked")
    spent, unknown = month_spend(guard.jobs, now)
    if unknown:
        return (f"no hourly price in INSTANCE_HOURLY_PRICES for job(s) {', '.join(sorted(unknown))}: "
                "the fine-tuning budget cannot be checked")
    if spent >= guard.budget_usd:
        return (f"monthly fine-tuning budget reached: ${spent:.2f} of ${guard.budget_usd:.2f} spent in "
                f"{month_start(now):%Y-%m} (FINETUNE_BUDGET_USD); submitted when the budget allows")
    if guard.next_forecast_usd and spent + guard.next_forecast_usd > guard.budget_usd:
        return (f"the job's forecast cost ${guard.next_forecast_usd:.2f} (preparation reports: tokens x epochs / "
                f"TRAINING_TOKENS_PER_SECOND x INSTANCE_HOURLY_PRICES) plus ${spent:.2f} spent in {month_start(now):%Y-%m} "
                f"is over the budget of ${guard.budget_usd:.2f} (FINETUNE_BUDGET_USD); submitted when the budget allows")
    return None


def due_at(pending: Iterable[Pending], coalesce_s: float) -> datetime | None:
    """The window closes ``coalesce_s`` after the first pending upload (fixed, so a steady
    trickle of uploads cannot postpone the job for ever)."""
    first = min((p.accepted_at for p in pending), default=None)
    return None if first is None else first + timedelta(seconds=coalesce_s)


def claim_is_live(claimed_at: datetime | None, now: datetime, lease_s: float) -> bool:
    return claimed_at is not None and now - claimed_at < timedelta(seconds=lease_s)


def decide(facts: CollectionFacts, guard: GuardFacts, now: datetime, *, coalesce_s: float, lease_s: float) -> Decision:
    """What to do for one collection now (see the module's rules)."""
    if not facts.pending:
        return Decision(NOTHING, "every accepted dataset is in a submitted corpus")
    due = due_at(facts.pending, coalesce_s)
    names = ", ".join(sorted(p.dataset_id for p in facts.pending))
    if facts.running_jobs:
        return Decision(WAIT_FOR_JOB, f"job {', '.join(sorted(facts.running_jobs))} of the collection is running; "
                                      f"{names} go(es) into one follow-up job after it ends", due)
    if claim_is_live(facts.claimed_at, now, lease_s):
        return Decision(IN_PROGRESS, "another delivery is submitting the collection's corpus", due)
    if due is not None and now < due:
        return Decision(WAIT, f"coalescing uploads until {due.isoformat()} (COALESCE_SECONDS={coalesce_s:g})", due)
    held = guard_reason(guard, now)
    if held:
        return Decision(HOLD, held, due)
    return Decision(SUBMIT, f"due: {names} pending", due)
