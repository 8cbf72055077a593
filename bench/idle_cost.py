"""What the idle janitor saves: billed endpoint-hours under the real policy vs an oracle vs never deleting.

Synthetic traffic traces (seeded) are simulated minute by minute. The endpoint exists from
minute 0 (the app deploys a model when its training ends). Three strategies:

- ``never``: the endpoint is never deleted (what happens without the janitor).
- ``policy``: the janitor runs on ``JANITOR_SCHEDULE`` (every 10 minutes by default) and asks the
  real ``shared.janitor.policy.decide`` about the endpoint, with the ledger's and the backend's last
  activity both known. A deleted endpoint is brought back by the first request after deletion
  (the scoring route's redeploy on demand): ``--startup`` minutes are billed before it serves, and
  that request is a cold start (it waits for the deployment).
- ``oracle``: the offline optimum, knowing the future: after each burst of traffic it deletes at
  once when the next request is further away than a delete + redeploy costs, and redeploys
  exactly in time (no cold start). Per gap of g idle minutes it bills min(g, delete + startup).

Every deletion bills ``--delete`` more minutes (instances run until the delete finishes), for
both the policy and the oracle. The janitor's estimate of hours saved (idle time so far, see
shared/janitor.py) is compared with what each deletion actually saved in the simulation (the
idle minutes until the next request or the end of the trace, less the delete and redeploy
minutes it caused).

Run: ``.venv/bin/python bench/idle_cost.py [--days 14] [--seed 7] [--startup 15] [--delete 3]``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.backends.base import EP_PROVISIONING, EP_SUCCEEDED  # noqa: E402
from shared.janitor.policy import EndpointFacts, IdlePolicy, decide  # noqa: E402
from shared.settings import SPECS  # noqa: E402

T0 = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)  # a Monday, midnight
DAY = 24 * 60


# ------------------------------------------------------------------ traces: requests per minute

def steady(rng: np.random.Generator, minutes: int) -> np.ndarray:
    """A service in constant use: Poisson, 0.5 requests a minute, day and night."""
    return rng.poisson(0.5, minutes)


def bursty(rng: np.random.Generator, minutes: int) -> np.ndarray:
    """Sessions of 10-60 minutes at 3 requests a minute, separated by exponential gaps (mean 6 h)."""
    trace = np.zeros(minutes, dtype=int)
    t = 60 + int(rng.exponential(6 * 60))
    while t < minutes:
        length = int(rng.integers(10, 61))
        trace[t:t + length] = rng.poisson(3.0, len(trace[t:t + length]))
        t += length + int(rng.exponential(6 * 60))
    return trace


def one_off(rng: np.random.Generator, minutes: int) -> np.ndarray:
    """Someone tries the new model for half an hour two hours after it is deployed, then never again."""
    trace = np.zeros(minutes, dtype=int)
    trace[120:150] = rng.poisson(2.0, 30)
    return trace


def weekly(rng: np.random.Generator, minutes: int) -> np.ndarray:
    """Office hours: weekdays 9-17 at 1 request a minute, sporadic evenings (17-22), silent nights and weekends."""
    minute = np.arange(minutes)
    weekday = (minute // DAY) % 7 < 5  # T0 is a Monday
    hour = (minute % DAY) // 60
    rate = np.where(weekday & (hour >= 9) & (hour < 17), 1.0, np.where(weekday & (hour >= 17) & (hour < 22), 0.02, 0.0))
    return rng.poisson(rate)


TRACES = {"steady": steady, "bursty": bursty, "one-off": one_off, "weekly": weekly}


# ------------------------------------------------------------------ strategies

@dataclasses.dataclass
class Result:
    billed_minutes: int
    cold_starts: int = 0
    cold_wait_minutes: int = 0  # summed over cold-started requests' first minute
    deletions: int = 0
    estimated_saved_minutes: float = 0.0
    actual_saved_minutes: float = 0.0

    @property
    def hours(self) -> float:
        return self.billed_minutes / 60.0


def janitor_ticks(schedule: str, minutes: int) -> np.ndarray:
    from croniter import croniter

    ticks = np.zeros(minutes, dtype=bool)
    it = croniter(schedule, T0 - timedelta(seconds=1), second_at_beginning=True)
    while True:
        at = it.get_next(datetime)
        m = int((at - T0).total_seconds() // 60)
        if m >= minutes:
            return ticks
        ticks[m] = True


def simulate_policy(trace: np.ndarray, policy: IdlePolicy, ticks: np.ndarray, startup: int, delete: int) -> Result:
    minutes = len(trace)
    busy = np.flatnonzero(trace > 0)
    exists, deploy_at, ready_at = True, 0, startup
    last_activity: int | None = None
    delete_tail_until = -1  # a deleted endpoint bills until its deletion finishes
    result = Result(billed_minutes=0)
    for m in range(minutes):
        if trace[m] > 0:
            if not exists:
                # Scale from zero: the scoring route redeploys; this request waits for it.
                exists, deploy_at, ready_at = True, m, m + startup
                result.cold_starts += 1
                result.cold_wait_minutes += startup
            last_activity = max(m, ready_at)  # requests during a deployment are served when it is ready
        if exists or m < delete_tail_until:
            result.billed_minutes += 1
        if exists and ticks[m]:
            now = T0 + timedelta(minutes=m)
            seen = T0 + timedelta(minutes=last_activity) if last_activity is not None and last_activity <= m else None
            facts = EndpointFacts(
                name="ep", state=EP_SUCCEEDED if m >= ready_at else EP_PROVISIONING, managed=True, in_ledger=True,
                ledger_state=EP_SUCCEEDED if m >= ready_at else EP_PROVISIONING,
                ledger_last_activity=seen, metric_last_activity=seen,
                active_since=T0 + timedelta(minutes=ready_at) if m >= ready_at else None,
                created_at=T0 + timedelta(minutes=deploy_at), is_active_endpoint=True,
            )
            decision = decide(facts, policy, now)
            if decision.delete:
                exists = False
                delete_tail_until = m + 1 + delete
                result.deletions += 1
                result.estimated_saved_minutes += decision.idle_minutes or 0.0
                upcoming = busy[busy > m]
                idle_ahead = (upcoming[0] if len(upcoming) else minutes) - (m + 1)
                # What never-deleting would have billed for this gap, less what the deletion itself costs.
                result.actual_saved_minutes += idle_ahead - delete - (startup if len(upcoming) else 0)
    return result


def simulate_oracle(trace: np.ndarray, startup: int, delete: int) -> Result:
    busy = np.flatnonzero(trace > 0)
    busy = busy[busy >= startup]  # the first deployment is the same for everyone
    billed, deletions = startup, 0
    previous = startup - 1  # the endpoint is ready at minute `startup`
    for m in busy:
        gap = int(m - previous - 1)
        if gap > delete + startup:
            billed += delete + startup
            deletions += 1
        else:
            billed += gap
        billed += 1  # the busy minute itself
        previous = int(m)
    remaining = len(trace) - previous - 1
    billed += min(remaining, delete)  # after the last request it is deleted at once (if the trace goes on)
    return Result(billed_minutes=billed, deletions=deletions + (remaining > delete))


# ------------------------------------------------------------------ report

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--startup", type=int, default=15, help="minutes a (re)deployment bills before it serves")
    p.add_argument("--delete", type=int, default=3, help="minutes a deletion bills before instances stop")
    p.add_argument("--idle-minutes", type=float, default=float(SPECS["idle_endpoint_minutes"].default or 60))
    p.add_argument("--grace-minutes", type=float, default=float(SPECS["idle_grace_minutes"].default or 15))
    p.add_argument("--schedule", default=SPECS["janitor_schedule"].default or "0 */10 * * * *")
    p.add_argument("--price", type=float, default=3.06, help="USD per instance-hour (Standard_NC6s_v3)")
    args = p.parse_args(argv)

    minutes = args.days * DAY
    ticks = janitor_ticks(args.schedule, minutes)
    policy = IdlePolicy(idle_minutes=args.idle_minutes, grace_minutes=args.grace_minutes, keep_latest=False)
    print(f"{args.days} days, seed {args.seed}, janitor {args.schedule!r}, idle threshold {args.idle_minutes:g} min, "
          f"grace {args.grace_minutes:g} min, redeploy {args.startup} min, delete {args.delete} min, ${args.price}/h")
    header = (f"{'trace':<8} {'requests':>8} {'never h':>8} {'policy h':>9} {'oracle h':>9} {'policy/oracle':>13} "
              f"{'never/oracle':>12} {'policy/never':>12} {'cold starts':>11} {'saved $':>8} {'est/actual saved':>16}")
    print(header)
    traces = {name: make(np.random.default_rng(args.seed), minutes) for name, make in TRACES.items()}
    for name, trace in traces.items():
        never = Result(billed_minutes=minutes)
        pol = simulate_policy(trace, policy, ticks, args.startup, args.delete)
        ora = simulate_oracle(trace, args.startup, args.delete)
        est = (f"{pol.estimated_saved_minutes / 60:.0f}h/{pol.actual_saved_minutes / 60:.0f}h" if pol.deletions else "-")
        print(f"{name:<8} {int(trace.sum()):>8} {never.hours:>8.1f} {pol.hours:>9.1f} {ora.hours:>9.1f} "
              f"{pol.hours / ora.hours:>13.2f} {never.hours / ora.hours:>12.2f} {pol.hours / never.hours:>12.3f} "
              f"{pol.cold_starts:>11} {(never.hours - pol.hours) * args.price:>8.0f} {est:>16}")

    print("\nidle threshold sweep (policy endpoint-hours / cold starts):")
    thresholds = [15, 30, 60, 120, 240]
    print(f"{'trace':<8} " + " ".join(f"{f'{t:g} min':>12}" for t in thresholds))
    for name, trace in traces.items():
        cells = []
        for t in thresholds:
            r = simulate_policy(trace, dataclasses.replace(policy, idle_minutes=t), ticks, args.startup, args.delete)
            cells.append(f"{r.hours:>7.1f}/{r.cold_starts:<4}")
        print(f"{name:<8} " + " ".join(f"{c:>12}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
