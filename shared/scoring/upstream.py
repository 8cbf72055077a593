"""Calling a model's endpoint: one pool of keep-alive connections per endpoint origin, the route
that says where and how to call (:class:`Route`, resolved once, so a call does no URL parsing or
header building), the relay of a streamed answer's server-sent events, and the client's error for
each way an endpoint fails (busy, timed out, refusing the credentials, a bad reply).

urllib3 rather than httpx: the client's own CPU per call is a large share of what the function
adds to a request, and urllib3 spends a fraction of what httpx does on the same keep-alive POST.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from shared.backends.base import ScoringTarget
from shared.clock import backoff_s
from shared.scoring.answers import Completion, StreamPiece, parse_endpoint_reply, parse_endpoint_stream_event
from shared.scoring.contract import TIMEOUT, UNAVAILABLE, UPSTREAM_ERROR, ScoringError
from shared.scoring.hangup import Abort, abortable

log = logging.getLogger(__name__)

# Bounded retries on 429/503 from the endpoint (throttled / instance busy), with back-off.
BUSY_RETRIES = 2
BACKOFF_BASE_S = 0.2
# A Retry-After above this is not waited for inside a client's request: it is passed on.
MAX_WAITED_RETRY_AFTER_S = 2.0
# Retry-After sent to the client when the endpoint stayed busy and did not say how long.
BUSY_RETRY_AFTER_S = 5
CONNECT_TIMEOUT_S = 10.0
# Keep-alive connections kept per endpoint origin (more are opened under a burst, then closed).
POOL_KEEPALIVE = 32


@dataclasses.dataclass(frozen=True)
class Route:
    ref: str  # what the client named: ``name``, ``name:<version>``, ``name:latest`` (the cache key)
    model_name: str
    version: str
    endpoint: str
    target: ScoringTarget
    # Resolved once per route: the endpoint origin's connection pool, the request path, the
    # headers and the timeout, so a call does no URL parsing or header building.
    pool: urllib3.HTTPConnectionPool
    path: str
    headers: dict[str, str]
    timeout: urllib3.Timeout
    expires_at: float
    # Unpinned routes of an endpoint with a candidate beside its champion: the champion's
    # deployment, which answers again when the candidate fails (a promotion never costs a client a 5xx).
    champion_deployment: str | None = None


class ConnectionPools:
    """One connection pool per endpoint origin, kept for the worker's life (a worker calls a handful
    of endpoints). block=False: a burst opens extra connections instead of waiting; at most
    POOL_KEEPALIVE of them are kept alive afterwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def get(self, url: str) -> urllib3.HTTPConnectionPool:
        parsed = urllib3.util.parse_url(url)
        origin = f"{parsed.scheme}://{parsed.netloc}"
        with self._lock:
            pool = self._pools.get(origin)
            if pool is None:
                pool = abortable(urllib3.connection_from_url(origin, maxsize=POOL_KEEPALIVE, block=False, retries=False))
                self._pools[origin] = pool
            return pool

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()


def client_gone(route: Route) -> ScoringError:
    # Nobody reads this answer: the client left and its upstream call was aborted.
    log.info("the client of model %s left: its call to endpoint %s was aborted", route.model_name, route.endpoint)
    return ScoringError(499, "the client closed the request", code="client_closed_request")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def busy_delay(attempt: int, retry_after: str | None) -> float | None:
    """Back-off before retrying a busy endpoint; None when it asked for longer than we wait."""
    asked = retry_after_seconds(retry_after)
    if asked is not None:
        return asked if asked <= MAX_WAITED_RETRY_AFTER_S else None
    return backoff_s(BACKOFF_BASE_S, attempt) * random.uniform(0.5, 1.0)  # jitter spreads retrying workers


def stream_timeout(route: Route, idle_s: float) -> urllib3.Timeout:
    """A stream's reads wait at most SCORING_STREAM_IDLE_S (and never longer than the endpoint's timeout)."""
    read = min(route.target.timeout_s, float(idle_s))
    return urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, read), read=read)


def read_completion(route: Route, response: urllib3.BaseHTTPResponse) -> Completion:
    try:
        payload = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        payload = None
    completion = parse_endpoint_reply(payload, route.ref)
    if completion is None:
        log.warning("endpoint %s answered 200 without an output string (%d bytes)", route.endpoint, len(response.data))
        raise ScoringError(
            502,
            f"the endpoint of model {route.model_name} gave an answer in an unexpected shape",
            type=UPSTREAM_ERROR,
            code="upstream_bad_response",
        )
    return completion


def relay(route: Route, response: urllib3.BaseHTTPResponse, abort: Abort, release: Callable[[], None],
          idle_s: float) -> Iterator[StreamPiece]:
    """Server-sent events of the endpoint -> pieces; the connection goes back to the pool only
    when the stream was read to its end, else it is closed: when the reader stops (an error,
    ``close()``) or, if this generator never ran, when ``abort`` is closed."""
    done = threading.Event()

    def finish(finished: bool = False) -> None:
        if done.is_set():
            return
        done.set()
        try:
            if finished:
                abort.detach()
                response.drain_conn()
            else:
                response.close()  # a connection with unread data is never reused
            response.release_conn()
        finally:
            release()

    abort.on_close(finish)
    finished = False
    try:
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # comments, event names, the blank lines between events
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                payload = None
            if isinstance(payload, dict) and payload.get("error"):
                log.warning("endpoint %s failed while streaming: %.300s", route.endpoint, payload["error"])
                raise ScoringError(502, f"the endpoint of model {route.model_name} failed while answering",
                                   type=UPSTREAM_ERROR, code="upstream_stream_error")
            piece = parse_endpoint_stream_event(payload)
            if piece is None:
                log.warning("endpoint %s streamed an event in an unexpected shape (%d bytes)", route.endpoint, len(data))
                raise ScoringError(502, f"the endpoint of model {route.model_name} streamed an unexpected event",
                                   type=UPSTREAM_ERROR, code="upstream_bad_response")
            yield piece
        finished = not abort.aborted  # a socket shut down under the reader may read as an end
    except ReadTimeoutError:
        log.warning("endpoint %s of model %s sent nothing for %.0f s while streaming", route.endpoint,
                    route.model_name, idle_s)
        raise ScoringError(504, f"the endpoint of model {route.model_name} stopped sending its answer",
                           type=TIMEOUT, code="upstream_stream_idle") from None
    except (HTTPError, OSError):
        if abort.aborted:
            return  # the client left: nobody reads on
        log.warning("endpoint %s of model %s broke off its stream", route.endpoint, route.model_name)
        raise ScoringError(502, f"the endpoint of model {route.model_name} broke off its answer",
                           type=UPSTREAM_ERROR, code="upstream_stream_broken") from None
    finally:
        finish(finished)


def upstream_failure(route: Route, response: urllib3.BaseHTTPResponse) -> ScoringError:
    status = response.status
    log.warning("endpoint %s of model %s answered HTTP %d", route.endpoint, route.model_name, status)
    log.debug("endpoint %s error body: %.500r", route.endpoint, response.data)
    model = route.model_name
    if status in (429, 503):
        asked = retry_after_seconds(response.headers.get("retry-after"))
        return ScoringError(
            503,
            f"the endpoint of model {model} is busy; retry later",
            type=UNAVAILABLE,
            code="upstream_busy",
            retry_after=math.ceil(asked) if asked is not None else BUSY_RETRY_AFTER_S,
        )
    if status in (408, 504):
        return ScoringError(504, f"the endpoint of model {model} timed out", type=TIMEOUT, code="upstream_timeout")
    if status in (401, 403):
        return ScoringError(
            502, f"the endpoint of model {model} refused the app's credentials", type=UPSTREAM_ERROR, code="upstream_auth"
        )
    return ScoringError(
        502, f"the endpoint of model {model} failed with HTTP {status}", type=UPSTREAM_ERROR, code="upstream_status"
    )
