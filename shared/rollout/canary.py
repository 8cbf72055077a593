"""The canary's rule: does the candidate's live traffic regress against the champion's?

Read it as: the candidate regressed when its deployment failed, or, once it has served
``CANARY_MIN_REQUESTS`` live requests, when its error rate is above the champion's by more than
``CANARY_MAX_ERROR_RATE_INCREASE``, or, once each deployment has served
``CANARY_LATENCY_MIN_REQUESTS``, when its p95 latency is above the champion's times
``CANARY_MAX_P95_RATIO`` **and** by more than ``CANARY_MIN_P95_INCREASE_MS``. A regression rolls
back at once, whenever in the window it shows; the candidate takes 100% only when the window ends
(``CANARY_MINUTES``, or ``CANARY_REQUESTS`` served when set) without one.

Why latency needs more than a ratio: a p95 over a handful of requests is their slowest one, and
on a shared CPU one request behind a fine-tune's step is seconds slower than the rest; and a
ratio of fast answers (100 ms against 250 ms) is a regression no user sees. Errors need no such
care: a failing deployment shows in a few requests.
"""

from __future__ import annotations

import dataclasses

from shared.backends.base import DeploymentMetrics
from shared.settings import Settings

WAIT, PROMOTE, ROLL_BACK = "wait", "promote", "roll_back"


@dataclasses.dataclass(frozen=True)
class CanaryCall:
    action: str  # WAIT, PROMOTE or ROLL_BACK
    reason: str


def judge_canary(candidate: DeploymentMetrics | None, champion: DeploymentMetrics | None, settings: Settings, *,
                 deployment_failed: str | None, window_over: bool) -> CanaryCall:
    if deployment_failed:
        return CanaryCall(ROLL_BACK, f"the candidate's deployment failed during the canary: {deployment_failed}")
    cand = candidate or DeploymentMetrics(0, 0, None)
    champ = champion or DeploymentMetrics(0, 0, None)
    if cand.requests >= settings.canary_min_requests:
        cand_rate, champ_rate = cand.error_rate or 0.0, champ.error_rate or 0.0
        if cand_rate > champ_rate + settings.canary_max_error_rate_increase:
            return CanaryCall(ROLL_BACK, f"error rate {cand_rate:.1%} over {cand.requests} requests vs the champion's "
                                         f"{champ_rate:.1%} (allowed +{settings.canary_max_error_rate_increase:.1%})")
        if _slower(cand, champ, settings):
            return CanaryCall(ROLL_BACK, f"p95 latency {cand.p95_ms:.0f} ms vs the champion's {champ.p95_ms:.0f} ms "
                                         f"(allowed x{settings.canary_max_p95_ratio:g} and "
                                         f"+{settings.canary_min_p95_increase_ms:.0f} ms, over {cand.requests} and "
                                         f"{champ.requests} requests)")
    if not window_over:
        return CanaryCall(WAIT, f"canary running: {cand.requests} candidate requests so far")
    if cand.requests < settings.canary_min_requests:
        return CanaryCall(PROMOTE, f"canary window over with {cand.requests} candidate requests (fewer than "
                                   f"CANARY_MIN_REQUESTS={settings.canary_min_requests}: no live evidence against it)")
    return CanaryCall(PROMOTE, f"no regression over {cand.requests} candidate requests (error rate "
                               f"{(cand.error_rate or 0):.1%} vs {(champ.error_rate or 0):.1%}, p95 "
                               f"{_ms(cand.p95_ms)} vs {_ms(champ.p95_ms)})")


def _slower(cand: DeploymentMetrics, champ: DeploymentMetrics, settings: Settings) -> bool:
    """The latency half of the rule: enough samples on both sides, past the ratio and the margin."""
    enough = max(settings.canary_latency_min_requests, settings.canary_min_requests)
    if cand.p95_ms is None or not champ.p95_ms or cand.requests < enough or champ.requests < enough:
        return False
    return (cand.p95_ms > champ.p95_ms * settings.canary_max_p95_ratio
            and cand.p95_ms - champ.p95_ms > settings.canary_min_p95_increase_ms)


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "n/a"
