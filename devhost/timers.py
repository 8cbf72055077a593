"""Timer triggers: NCRONTAB schedules (six fields, seconds first) with run_on_startup and use_monitor.

Schedules are evaluated in UTC with ``croniter`` (``second_at_beginning=True``); the App Service
TimeSpan form (``hh:mm:ss``) is accepted too. With ``use_monitor`` the host keeps the schedule
status where the real host keeps it (``azure-webjobs-hosts/timers/<host id>/<function id>/status``):
when the host starts after a scheduled time passed unserved, the function runs at once with
``past_due=True``. Like the real host, ``use_monitor`` defaults to on for schedules of a minute or
more. A timer never overlaps itself: the next occurrence is computed after an invocation ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import threading
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from croniter import croniter

from devhost.app_index import IndexedFunction, resolve_expressions
from devhost.invocation import Invoker
from shared.settings import Settings
from shared.storage import WEBJOBS_HOSTS_CONTAINER, blob_service

log = logging.getLogger(__name__)

_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TimerSchedule:
    """An NCRONTAB expression (or TimeSpan) that gives the next occurrence after a time."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        span = _TIMESPAN.fullmatch(self.expression)
        self._interval: dt.timedelta | None = None
        if span:
            days, hours, minutes, seconds = (int(g or 0) for g in span.groups())
            self._interval = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            if self._interval <= dt.timedelta(0):
                raise ValueError(f"timer schedule {expression!r}: the interval must be positive")
            return
        if len(self.expression.split()) != 6 or not croniter.is_valid(self.expression, second_at_beginning=True):
            raise ValueError(f"timer schedule {expression!r} is not an NCRONTAB expression with six fields (seconds first)")

    def next_after(self, when: dt.datetime) -> dt.datetime:
        if self._interval is not None:
            return when + self._interval
        return croniter(self.expression, when, second_at_beginning=True).get_next(dt.datetime)

    def period(self, now: dt.datetime | None = None) -> dt.timedelta:
        """Distance between the next two occurrences (decides the use_monitor default)."""
        first = self.next_after(now or utcnow())
        return self.next_after(first) - first


@dataclasses.dataclass(frozen=True)
class _Timer:
    function: IndexedFunction
    schedule: TimerSchedule
    run_on_startup: bool
    use_monitor: bool


class TimerScheduler:
    """One thread per timer function, sleeping until the next occurrence."""

    def __init__(
        self,
        functions: list[IndexedFunction],
        *,
        invoker: Invoker,
        settings: Settings,
        host_id: str,
        past_due_tolerance_s: float = 5.0,
    ) -> None:
        self._invoker = invoker
        self._settings = settings
        self._host_id = host_id
        self._tolerance = dt.timedelta(seconds=past_due_tolerance_s)
        self._timers = []
        for fn in functions:
            schedule = TimerSchedule(resolve_expressions(fn.trigger["schedule"], settings))
            use_monitor = fn.trigger.get("useMonitor")
            if use_monitor is None:
                use_monitor = schedule.period() >= dt.timedelta(minutes=1)
            self._timers.append(_Timer(fn, schedule, bool(fn.trigger.get("runOnStartup", False)), bool(use_monitor)))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def next_runs(self) -> dict[str, dt.datetime]:
        now = utcnow()
        return {t.function.name: t.schedule.next_after(now) for t in self._timers}

    def start(self) -> None:
        for timer in self._timers:
            thread = threading.Thread(target=self._run, args=(timer,), name=f"timer-{timer.function.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float) -> bool:
        """Stop scheduling; wait up to ``timeout_s`` for running timer invocations."""
        self._stop.set()
        deadline = utcnow() + dt.timedelta(seconds=timeout_s)
        for thread in self._threads:
            thread.join(max(0.0, (deadline - utcnow()).total_seconds()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("timer invocation(s) still running at shutdown: %s", ", ".join(alive))
        return not alive

    def _run(self, timer: _Timer) -> None:
        try:
            status = self._read_status(timer) if timer.use_monitor else None
            missed = status is not None and status.get("Next") is not None and utcnow() - status["Next"] > self._tolerance
            if missed or timer.run_on_startup:
                self._fire(timer, past_due=missed, slot=utcnow())
            elif timer.use_monitor and status is None:
                # Record the first expected occurrence, so a host that is down when it passes
                # learns on its next start that the timer is past due.
                self._write_status(timer, None)
            slot = timer.schedule.next_after(utcnow())
            while not self._stop.wait(max(0.0, (slot - utcnow()).total_seconds())):
                self._fire(timer, past_due=utcnow() - slot > self._tolerance, slot=slot)
                slot = timer.schedule.next_after(max(utcnow(), slot))
        except Exception:
            log.exception("timer %s stopped", timer.function.name)

    def _fire(self, timer: _Timer, *, past_due: bool, slot: dt.datetime) -> None:
        status = {
            "Last": slot.isoformat(),
            "Next": timer.schedule.next_after(slot).isoformat(),
            "LastUpdated": utcnow().isoformat(),
        }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        try:
            self._invoker.call(timer.function, request, reason=f"Timer fired at {slot.isoformat()}")
        except Exception:
            pass  # logged by the invoker; the schedule goes on, as in Azure
        if timer.use_monitor:
            self._write_status(timer, slot)

    # --- schedule status (use_monitor)

    def _status_blob(self, timer: _Timer) -> Any:
        name = f"timers/{self._host_id}/{timer.function.function_id}/status"
        return blob_service(self._settings).get_blob_client(WEBJOBS_HOSTS_CONTAINER, name)

    def _read_status(self, timer: _Timer) -> dict[str, dt.datetime] | None:
        try:
            raw = json.loads(self._status_blob(timer).download_blob().readall())
            return {k: dt.datetime.fromisoformat(v) for k, v in raw.items() if isinstance(v, str)}
        except ResourceNotFoundError:
            return None
        except (AzureError, ValueError):
            log.warning("unreadable schedule status of timer %s", timer.function.name, exc_info=True)
            return None

    def _write_status(self, timer: _Timer, last: dt.datetime | None) -> None:
        now = utcnow()
        status = {
            "Last": last.isoformat() if last else None,
            "Next": timer.schedule.next_after(max(now, last or now)).isoformat(),
            "LastUpdated": now.isoformat(),
        }
        try:
            self._status_blob(timer).upload_blob(json.dumps(status), overwrite=True)
        except AzureError:
            log.warning("could not write schedule status of timer %s", timer.function.name, exc_info=True)


def timer_request(past_due: bool = False) -> TimerRequest:
    """The request an on-demand run passes (POST /admin/functions/NAME)."""
    return TimerRequest(past_due=past_due, schedule_status={}, schedule={"AdjustForDST": True})
