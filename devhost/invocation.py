"""Run one function invocation the way the worker does: context, timing, one log line, a record.

Every trigger kind goes through :class:`Invoker`, so the log line
``Executed 'Functions.NAME' (Succeeded, Id=..., Duration=12ms)`` (the real host's wording) and the
record kept for tests and the demo look the same whatever started the invocation.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import azure.functions as func

from devhost.app_index import IndexedFunction

log = logging.getLogger(__name__)

SUCCEEDED = "Succeeded"
FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What one invocation did (kept in :attr:`Invoker.records`)."""

    function: str
    invocation_id: str
    reason: str
    outcome: str
    duration_ms: float
    error: str | None = None


class _Context(func.Context):
    """The ``context`` argument the worker passes to functions that ask for it."""

    def __init__(self, invocation_id: str, function_name: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._thread_local_storage = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return ""

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None

    @property
    def thread_local_storage(self) -> threading.local:
        return self._thread_local_storage


class Invoker:
    """Calls indexed functions, logs one line per invocation and keeps the latest records."""

    def __init__(self, max_records: int = 1000) -> None:
        self.records: collections.deque[Invocation] = collections.deque(maxlen=max_records)
        self._changed = threading.Condition()
        self._running = 0

    def _arguments(self, fn: IndexedFunction, trigger_value: Any, invocation_id: str) -> dict[str, Any]:
        kwargs = {fn.param: trigger_value}
        if fn.wants_context:
            kwargs["context"] = _Context(invocation_id, fn.name)
        return kwargs

    def _begin(self) -> tuple[str, float]:
        with self._changed:
            self._running += 1
        return str(uuid.uuid4()), time.perf_counter()

    def _end(self, fn: IndexedFunction, reason: str, invocation_id: str, started: float, exc: BaseException | None) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        if exc is None:
            record = Invocation(fn.name, invocation_id, reason, SUCCEEDED, duration_ms)
            log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", fn.name, invocation_id, duration_ms)
        else:
            summary = f"{type(exc).__name__}: {exc}"
            record = Invocation(fn.name, invocation_id, reason, FAILED, duration_ms, summary)
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms) %s",
                fn.name,
                invocation_id,
                duration_ms,
                summary,
                exc_info=exc,
            )
        with self._changed:
            self._running -= 1
            self.records.append(record)
            self._changed.notify_all()

    def call(self, fn: IndexedFunction, trigger_value: Any, *, reason: str) -> Any:
        """Run ``fn`` in this thread (coroutines on a private event loop); re-raise its exception."""
        invocation_id, started = self._begin()
        try:
            kwargs = self._arguments(fn, trigger_value, invocation_id)
            result = fn.user_function(**kwargs)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
        except BaseException as exc:
            self._end(fn, reason, invocation_id, started, exc)
            raise
        self._end(fn, reason, invocation_id, started, None)
        return result

    async def call_async(self, fn: IndexedFunction, trigger_value: Any, *, reason: str, executor: Executor) -> Any:
        """From the server's event loop: await async functions, run sync ones on ``executor``."""
        if not fn.is_async:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, lambda: self.call(fn, trigger_value, reason=reason))
        invocation_id, started = self._begin()
        try:
            result = await fn.user_function(**self._arguments(fn, trigger_value, invocation_id))
        except BaseException as exc:
            self._end(fn, reason, invocation_id, started, exc)
            raise
        self._end(fn, reason, invocation_id, started, None)
        return result

    @property
    def running(self) -> int:
        with self._changed:
            return self._running

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no invocation runs; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)

    def wait_for(self, predicate: Callable[[list[Invocation]], bool], timeout: float) -> bool:
        """Wait until ``predicate(records)`` holds; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self.records)), timeout)

    def of(self, function: str) -> list[Invocation]:
        with self._changed:
            return [r for r in self.records if r.function == function]
