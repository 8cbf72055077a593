"""Waiting for a condition: the one poll-until-deadline loop of the local stack, its scripts,
benchmarks and tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """The condition did not hold in time (an AssertionError too, so a test that waits fails as a test)."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str = "the condition",
               every_s: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), or raise :class:`WaitTimeout`
    naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


__all__: list[Any] = ["WaitTimeout", "wait_until"]
