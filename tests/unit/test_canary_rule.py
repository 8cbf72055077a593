"""The canary's rule (shared.rollout.canary): errors and latency, robust to a shared CPU's noise."""

from __future__ import annotations

from shared.backends.base import DeploymentMetrics
from shared.rollout.canary import PROMOTE, ROLL_BACK, WAIT, judge_canary
from shared.settings import Settings, load_settings


def settings(**over: object) -> Settings:
    return load_settings(environ={}).replace(**over)


def call(candidate: DeploymentMetrics, champion: DeploymentMetrics, s: Settings | None = None, *, over: bool = False):  # noqa: ANN201
    return judge_canary(candidate, champion, s or settings(), deployment_failed=None, window_over=over)


def test_defaults_are_the_documented_ones() -> None:
    s = settings()
    assert (s.canary_min_requests, s.canary_max_p95_ratio, s.canary_latency_min_requests, s.canary_min_p95_increase_ms) \
        == (5, 2.0, 20, 500.0)


def test_noise_level_latency_differences_do_not_roll_back() -> None:
    # Seen on the shared 2-core CPU: five candidate requests, one of them behind a fine-tune's step,
    # against a champion that happened to answer quickly (p95 of five samples is their maximum).
    few_samples = call(DeploymentMetrics(5, 0, 1900.0), DeploymentMetrics(40, 0, 600.0))
    assert few_samples.action == WAIT, few_samples.reason
    # Enough samples, twice as slow, but by 150 ms on answers of a tenth of a second: not a user-visible regression.
    small_absolute = call(DeploymentMetrics(30, 0, 250.0), DeploymentMetrics(200, 0, 100.0))
    assert small_absolute.action == WAIT, small_absolute.reason
    # The champion with too few samples for a p95 of its own: no comparison either.
    thin_champion = call(DeploymentMetrics(40, 0, 5000.0), DeploymentMetrics(8, 0, 400.0))
    assert thin_champion.action == WAIT, thin_champion.reason
    assert call(DeploymentMetrics(30, 0, 250.0), DeploymentMetrics(200, 0, 100.0), over=True).action == PROMOTE


def test_a_real_latency_regression_rolls_back() -> None:
    slow = call(DeploymentMetrics(25, 0, 4200.0), DeploymentMetrics(220, 0, 900.0))
    assert slow.action == ROLL_BACK
    assert "p95 latency 4200 ms vs the champion's 900 ms (allowed x2 and +500 ms, over 25 and 220 requests)" in slow.reason
    # both conditions are needed: past the ratio but within the margin, or past the margin but within the ratio
    assert call(DeploymentMetrics(25, 0, 700.0), DeploymentMetrics(220, 0, 300.0)).action == WAIT  # x2.3, +400 ms
    assert call(DeploymentMetrics(25, 0, 1700.0), DeploymentMetrics(220, 0, 900.0)).action == WAIT  # x1.9, +800 ms


def test_the_margin_and_sample_count_are_settings() -> None:
    strict = settings(canary_min_p95_increase_ms=0.0, canary_latency_min_requests=5)
    assert call(DeploymentMetrics(5, 0, 250.0), DeploymentMetrics(5, 0, 100.0), strict).action == ROLL_BACK
    assert call(DeploymentMetrics(5, 0, 150.0), DeploymentMetrics(5, 0, 100.0), strict).action == WAIT


def test_errors_still_roll_back_after_canary_min_requests() -> None:
    errors = call(DeploymentMetrics(6, 3, 100.0), DeploymentMetrics(60, 0, 100.0))
    assert errors.action == ROLL_BACK and errors.reason.startswith("error rate 50.0% over 6 requests")
    assert call(DeploymentMetrics(4, 3, 100.0), DeploymentMetrics(60, 0, 100.0)).action == WAIT
    failed = judge_canary(None, None, settings(), deployment_failed="process exited", window_over=False)
    assert failed.action == ROLL_BACK and "process exited" in failed.reason
