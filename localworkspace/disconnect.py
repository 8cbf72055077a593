"""The local endpoint's servers (router and model server) notice a client that goes away (issue 29).

An ASGI server tells an app that its client left with ``http.disconnect`` on ``receive()``: once
the request's body is read, ``receive()`` returns nothing else. Starlette cancels a
``StreamingResponse`` when it comes; a plain handler is not told at all, so :func:`unless_gone`
races the handler's work with it. :class:`ClosingStreamingResponse` also closes its body when
sending fails (ASGI 2.4 servers raise instead of saying ``http.disconnect``) and runs ``on_close``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import StreamingResponse

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the client disconnects (the body must be read already)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def unless_gone(receive: Callable[[], Awaitable[Any]], work: Awaitable[T],
                      on_gone: Callable[[], None] | None = None) -> T:
    """``work``'s result, or :class:`ClientGone` as soon as the client disconnects: ``on_gone`` is
    called and ``work`` cancelled (then awaited, so that what it holds is let go)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if on_gone is not None:
            on_gone()
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled or failed: nobody reads it
            pass
        raise ClientGone()
    finally:
        gone.cancel()
        if not task.done():
            if on_gone is not None:
                on_gone()
            task.cancel()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse whose body is closed however the response ends, then ``on_close()`` is
    called (and awaited when it returns an awaitable)."""

    def __init__(self, content: Any, *, on_close: Callable[[], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # a body that never started runs no finally: on_close covers it
            if self.on_close is not None:
                done = self.on_close()
                if inspect.isawaitable(done):
                    await done
