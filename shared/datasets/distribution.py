"""Streaming length statistics of a preparation (messages, characters, tokens per conversation)."""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from typing import Any


class Distribution:
    """Streaming count / mean / min / max and quantiles, in constant memory.

    Values below 128 are counted exactly; larger ones in buckets keeping their top 7 bits
    (quantiles within about 1%). The hot loop appends values to ``batch`` (a list append per
    value); ``flush`` folds a batch in with C-level passes (``sum``, ``min``, ``max``,
    ``Counter`` over mapped shifts), so no Python function runs per value.
    """

    BATCH = 8192

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None
        self._buckets: Counter[int] = Counter()
        self.batch: list[int] = []

    def add(self, value: int) -> None:
        self.batch.append(value)
        if len(self.batch) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        values = self.batch  # emptied in place at the end: the hot loop holds on to this list
        if not values:
            return
        self.count += len(values)
        self.total += sum(values)
        low, high = min(values), max(values)
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        # bucket = value with all but its top 7 bits cleared: shift = max(bit_length - 7, 0)
        shifts = list(map(max, map(operator.sub, map(int.bit_length, values), _SEVENS), _ZEROS))
        self._buckets.update(map(operator.lshift, map(operator.rshift, values, shifts), shifts))
        values.clear()

    def quantile(self, q: float) -> int | None:
        self.flush()
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                if bucket >= 128:  # the middle of the bucket
                    bucket += (1 << (bucket.bit_length() - 7)) // 2
                return max(self.min or 0, min(self.max or 0, bucket))
        return self.max

    def summary(self) -> dict[str, Any] | None:
        self.flush()
        if not self.count:
            return None
        return {
            "min": self.min, "mean": round(self.total / self.count, 1), "max": self.max,
            "p50": self.quantile(0.5), "p90": self.quantile(0.9), "p99": self.quantile(0.99),
            "total": self.total,
        }


_SEVENS = itertools.repeat(7)
_ZEROS = itertools.repeat(0)
