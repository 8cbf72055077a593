"""bench/idle_cost.py's simulation checked on a trace small enough to work out by hand."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from shared.janitor.policy import IdlePolicy
from tests.support import ROOT

BENCH = ROOT / "bench" / "idle_cost.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("idle_cost_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_one_off_trace_by_hand(bench):
    minutes = 24 * 60
    trace = np.zeros(minutes, dtype=int)
    trace[120:150] = 1
    ticks = bench.janitor_ticks("0 */10 * * * *", minutes)
    assert list(np.flatnonzero(ticks)[:3]) == [0, 10, 20]
    policy = IdlePolicy(idle_minutes=60, grace_minutes=15)

    result = bench.simulate_policy(trace, policy, ticks, startup=15, delete=3)
    # Ready at 15, unused: deleted at the tick of minute 80 (idle 65 > 60), billed 0..80 + 3.
    # The request at 120 redeploys (cold start), served from 135, last use 149, deleted at 210: 120..210 + 3.
    assert result.cold_starts == 1 and result.deletions == 2
    assert result.billed_minutes == (81 + 3) + (91 + 3)

    oracle = bench.simulate_oracle(trace, startup=15, delete=3)
    # First deployment 15; the 105-minute wait is cheaper deleted and redeployed (3 + 15); 30 busy; delete 3.
    assert oracle.billed_minutes == 15 + 18 + 30 + 3
    assert oracle.cold_starts == 0


def test_steady_traffic_is_never_deleted(bench):
    minutes = 2 * 24 * 60
    trace = np.ones(minutes, dtype=int)
    ticks = bench.janitor_ticks("0 */10 * * * *", minutes)
    result = bench.simulate_policy(trace, IdlePolicy(idle_minutes=60, grace_minutes=15), ticks, startup=15, delete=3)
    assert result.deletions == 0 and result.billed_minutes == minutes
