"""`make demo` ends with where its time went: one row per stage and step, each until the next begins."""

from __future__ import annotations

import pytest

from scripts import demo

pytestmark = pytest.mark.unit


def test_each_stage_lasts_until_the_next_one_begins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "STAGE_STARTS", [])
    clock = iter([100.0, 103.5, 110.0])
    monkeypatch.setattr(demo.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(demo, "say", lambda text="": None)
    demo.stage(1, "Start")
    demo.mark("a step of it")
    demo.stage(2, "Train")
    demo.STAGE_STARTS.append(("stop every process", 150.0))
    table = demo.stage_timings(152.0, started=99.0).splitlines()
    rows = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1]) for line in table[1:]}
    assert rows == {"[1] Start": 3.5, "a step of it": 6.5, "[2] Train": 40.0, "stop every process": 2.0, "total": 53.0}
    assert sum(v for k, v in rows.items() if k != "total") == 52.0  # the rows cover the run from the first stage on
