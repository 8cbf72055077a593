"""A client that goes away stops the work it started (issue 29).

Scoring calls block a worker thread on the endpoint's socket (pooled urllib3), while the client's
connection lives on the event loop. When the client hangs up, mid-stream or while it waits for a
plain answer, the loop side calls :meth:`Abort.abort`: the socket of the upstream request in
flight is shut down at once (a thread blocked reading it wakes up with an error), so the endpoint
sees the disconnect and stops generating; the connection is then closed (never put back into the
pool with unread data) and the stream's slot (``SCORING_MAX_STREAMS``) is given back.

The loop side is :func:`call_unless_gone` (the plain answer: the work races the client's
``http.disconnect``) and :func:`relay_response` (a stream: each piece is read on a worker thread;
the cancellation Starlette delivers when the client leaves, or ``aclose()`` as the Functions
worker's HTTP streams may call it, aborts the upstream). The same code runs under the local host
and under Azure Functions' HTTP streams (``azurefunctions-extensions-http-fastapi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import urllib3
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from urllib3.connection import HTTPConnection, HTTPSConnection

log = logging.getLogger(__name__)

T = TypeVar("T")

_bound = threading.local()


class Abort:
    """One client request's handle on its upstream work: abort it from any thread, at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._conn: Any = None
        self._cleanups: list[Callable[[], None]] = []

    @property
    def aborted(self) -> bool:
        return self._aborted

    def attach(self, conn: Any) -> None:
        """``conn`` is about to send this request upstream (called by the pool's connection class)."""
        with self._lock:
            self._conn = conn
            aborted = self._aborted
        if aborted:
            raise ConnectionAbortedError("the client went away before the endpoint was called")

    def detach(self) -> None:
        """The request's connection went back to the pool: never shut it down for this client."""
        with self._lock:
            self._conn = None

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` in :meth:`close` (give a connection or a slot back; idempotent callables)."""
        with self._lock:
            self._cleanups.append(cleanup)

    def abort(self) -> None:
        """The client is gone: shut the upstream socket down now (its reader wakes up), once."""
        with self._lock:  # held while shutting down: a detach() cannot hand it to the pool meanwhile
            if self._aborted:
                return
            self._aborted = True
            if self._conn is not None:
                shutdown(self._conn)

    def close(self) -> None:
        """Run the cleanups (when no thread reads the upstream any more)."""
        with self._lock:
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - a cleanup must not hide the others
                log.warning("cleaning up an abandoned upstream call failed", exc_info=True)


def shutdown(conn: Any) -> None:
    """Shut a connection's socket down in both directions (the peer sees the disconnect at once).

    The plain socket's method, also for TLS: ``SSLSocket.shutdown`` would drop its SSL object
    under a thread still reading it."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextlib.contextmanager
def bound(abort: Abort | None) -> Iterator[None]:
    """Requests sent by this thread inside the block attach their connection to ``abort``."""
    previous = getattr(_bound, "abort", None)
    _bound.abort = abort
    try:
        yield
    finally:
        _bound.abort = previous


class _Attaching:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        abort = getattr(_bound, "abort", None)
        if abort is not None:
            abort.attach(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class AbortableHTTPConnection(_Attaching, HTTPConnection):
    pass


class AbortableHTTPSConnection(_Attaching, HTTPSConnection):
    pass


def abortable(pool: urllib3.HTTPConnectionPool) -> urllib3.HTTPConnectionPool:
    """``pool`` with connections that attach to the calling thread's :class:`Abort`."""
    https = isinstance(pool, urllib3.HTTPSConnectionPool)
    pool.ConnectionCls = AbortableHTTPSConnection if https else AbortableHTTPConnection  # type: ignore[assignment]
    return pool


class StreamSlots:
    """Streams relayed at once per endpoint (``SCORING_MAX_STREAMS``), per worker."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def take(self, endpoint: str) -> Callable[[], None] | None:
        """A release callable (idempotent) for one slot, or None when the endpoint has none free."""
        with self._lock:
            if self._open.get(endpoint, 0) >= self.limit:
                return None
            self._open[endpoint] = self._open.get(endpoint, 0) + 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                left = self._open.get(endpoint, 1) - 1
                if left > 0:
                    self._open[endpoint] = left
                else:
                    self._open.pop(endpoint, None)

        return release

    def open(self, endpoint: str) -> int:
        with self._lock:
            return self._open.get(endpoint, 0)


async def _disconnected(receive: Callable[[], Any]) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def call_unless_gone(receive: Callable[[], Any], compute: Callable[[], T], abort: Abort) -> T:
    """``compute()`` on a worker thread; the client disconnecting first (or the handler being
    cancelled, as a worker does when the client leaves) aborts its upstream call. The request's
    body must already be read: ``receive`` then only ever says ``http.disconnect``."""
    work = asyncio.ensure_future(run_in_threadpool(compute))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            log.info("the client went away while its answer was computed: aborting the upstream call")
            abort.abort()
        return await work
    except BaseException:
        if not work.done():  # cancelled while the work runs: the client (or the worker) gave up
            abort.abort()
        raise
    finally:
        gone.cancel()


class _Puller:
    """Reads a blocking iterator one item per worker-thread call; whoever is last to let go of it
    (the reading thread, or the consumer that left) closes it, never while it is being read."""

    def __init__(self, items: Iterator[bytes], abort: Abort) -> None:
        self._items = items
        self._abort = abort
        self._lock = threading.Lock()
        self._reading = False
        self._left = False
        self._closed = False

    def step(self) -> bytes | None:
        with self._lock:
            if self._left:
                return None
            self._reading = True
        try:
            return next(self._items, None)
        finally:
            with self._lock:
                self._reading = False
                close = self._left
            if close:
                self.close()

    def leave(self) -> None:
        with self._lock:
            self._left = True
            close = not self._reading
        self._abort.abort()
        if close:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        finally:
            self._abort.close()


async def _pull(items: Iterator[bytes], abort: Abort) -> AsyncIterator[bytes]:
    puller = _Puller(items, abort)
    finished = False
    try:
        while True:
            # abandon_on_cancel: a client that leaves is let go at once; the thread still reading
            # wakes up because leave() shuts the upstream socket down, and closes the iterator.
            item = await anyio.to_thread.run_sync(puller.step, abandon_on_cancel=True)
            if item is None:
                finished = True
                return
            yield item
    finally:
        if finished:
            puller.close()
        else:
            puller.leave()


class RelayResponse(StreamingResponse):
    """A streamed answer relayed from the endpoint: the upstream is aborted when the client leaves
    (cancellation, a failed send, ``aclose()``) and when the client reads nothing for ``idle_s``."""

    def __init__(self, items: Iterator[bytes], abort: Abort, idle_s: float, **kwargs: Any) -> None:
        super().__init__(_pull(items, abort), **kwargs)
        self.abort = abort
        self.idle_s = idle_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_within_idle(message: Any) -> None:
            with anyio.fail_after(self.idle_s):
                await send(message)

        try:
            await super().__call__(scope, receive, send_within_idle)
        except TimeoutError:
            log.warning("a client read nothing of its stream for %.0f s: closing it and its upstream", self.idle_s)
        finally:
            self.abort.abort()  # no-op after a stream read to its end (its connection was detached)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
