"""Serve client apps: route a chat request to the model's live endpoint and return its answer.

The ledger says which endpoint serves a model (``active/<model_name>``); the backend says
where and how to call it (:class:`ScoringTarget`). Both are cached per worker: the route for
``ROUTE_TTL_S`` seconds, the target until the endpoint answers 401/403 (keys rotate) or stops
answering (it may have been deleted as idle). One pooled HTTP client per worker keeps
connections to the endpoint warm: urllib3 connection pools, one per endpoint origin, because the
client's own CPU per call is a large share of what the function adds to a request (urllib3
spends a fraction of what httpx does on the same keep-alive POST).

When a model has no live endpoint (the janitor deleted it, it failed, it never got one) the
caller gets 503 with ``Retry-After`` and, if ``scoring_redeploy_on_demand``, the model's version
is redeployed: Azure ML managed endpoints cannot scale to zero, so deleting and redeploying on
demand is how this app scales from zero.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as UpstreamTimeout

from shared.backends import get_backend
from shared.backends.base import (
    DEPLOYMENT_HEADER,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    MANAGED_BY_VALUE,
    BackendError,
    MLBackend,
    ModelRef,
    NotFoundError,
    ScoringTarget,
    TransientBackendError,
)
from shared.endpoints import health
from shared.endpoints.capacity import CapacityError
from shared.endpoints.routing import (
    deployment_live,
    parse_model_selector,
    placement,
    selected_endpoint,
    serving_endpoint,
    split_model_ref,
)
from shared.endpoints.versions import version_key
from shared.ledger import ENDPOINT, MODEL, ROUTE, Ledger, Record, parse_iso
from shared.scoring import routes as stale_routes
from shared.scoring.activity import ActivityRecorder
from shared.scoring.contract import (
    SSE_MEDIA_TYPE,
    TIMEOUT,
    UNAVAILABLE,
    UPSTREAM_ERROR,
    ChatRequest,
    Completion,
    ScoringError,
    StreamPiece,
    chat_completion_chunks,
    chat_completion_response,
    endpoint_request_body,
    parse_chat_completion_request,
    parse_endpoint_reply,
    parse_endpoint_stream_event,
    parse_score_request,
    score_response,
)
from shared.scoring.hangup import Abort, StreamSlots, abortable, bound
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How long a worker trusts its cached model -> endpoint route before re-reading the ledger.
# A newly activated model is picked up within this time; a deleted endpoint is noticed at
# once anyway (the call fails and the route is re-resolved).
ROUTE_TTL_S = 10.0
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
# Retry-After sent with the 429 of a worker already relaying SCORING_MAX_STREAMS streams of an endpoint.
STREAMS_RETRY_AFTER_S = 1

Redeploy = Callable[[ModelRef], Any]


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


def _deploy_model_scale_from_zero(settings: Settings, ledger: Ledger, backend: MLBackend) -> Redeploy:
    def redeploy(model: ModelRef) -> Any:
        from shared.endpoints.lifecycle import deploy_model  # the owner of endpoint records

        return deploy_model(model, reason="scale-from-zero", settings=settings, ledger=ledger, backend=backend)

    return redeploy


def _client_gone(route: Route) -> ScoringError:
    # Nobody reads this answer: the client left and its upstream call was aborted.
    log.info("the client of model %s left: its call to endpoint %s was aborted", route.model_name, route.endpoint)
    return ScoringError(499, "the client closed the request", code="client_closed_request")


def _retry_after_seconds(value: str | None) -> float | None:
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


class Scorer:
    """Everything a worker keeps between scoring calls: routes, HTTP connections, activity throttle."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger | None = None,
        backend: MLBackend | None = None,
        redeploy: Redeploy | None = None,
        route_ttl_s: float = ROUTE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self._ledger = ledger
        self._backend = backend
        self._redeploy = redeploy
        self._route_ttl_s = route_ttl_s
        self._clock = clock
        self._sleep = sleep
        self._routes: dict[str, Route] = {}
        self._redeploy_requested: dict[str, float] = {}
        self._refused: dict[str, str] = {}  # model ref -> why its last redeploy was refused (MAX_LIVE_ENDPOINTS)
        self._lock = threading.Lock()
        # One connection pool per endpoint origin, kept for the worker's life (a worker calls
        # a handful of endpoints). block=False: a burst opens extra connections instead of
        # waiting; at most POOL_KEEPALIVE of them are kept alive afterwards.
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self.activity = ActivityRecorder(lambda: self.ledger, settings.activity_flush_s, clock=clock)
        self.route_reads = stale_routes.RouteCache(settings.scoring_route_max_stale_s, clock=clock)
        self.streams = StreamSlots(settings.scoring_max_streams)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = stale_routes.scoring_ledger(self.settings)  # bounded: no retries, short timeouts
        return self._ledger

    @property
    def backend(self) -> MLBackend:
        return self._backend if self._backend is not None else get_backend(self.settings)

    def close(self) -> None:
        self.activity.close()
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def _pool(self, url: str) -> urllib3.HTTPConnectionPool:
        parsed = urllib3.util.parse_url(url)
        origin = f"{parsed.scheme}://{parsed.netloc}"
        with self._lock:
            pool = self._pools.get(origin)
            if pool is None:
                pool = abortable(urllib3.connection_from_url(origin, maxsize=POOL_KEEPALIVE, block=False, retries=False))
                self._pools[origin] = pool
            return pool

    # ---- the hot path

    def complete(self, request: ChatRequest, abort: Abort | None = None) -> Completion:
        """The whole answer. ``abort``: the client's handle (:mod:`.hangup`); aborting it ends the
        upstream call at once (the endpoint sees the disconnect and stops generating)."""
        model_name = request.model or self.settings.model_name
        route = self._route(model_name)
        started = time.perf_counter()
        route, response = self._forward(route, request, abort=abort)  # the route that answered (refreshed/re-resolved)
        completion = self._completion(route, response)
        if log.isEnabledFor(logging.DEBUG):  # skip computing the arguments on the hot path
            log.debug(
                "scored model %s:%s on %s in %.1f ms (%d messages)",
                route.model_name,
                route.version,
                route.endpoint,
                (time.perf_counter() - started) * 1000,
                len(request.messages),
            )
        self.activity.touch(route.endpoint)
        return completion

    def stream(self, request: ChatRequest, abort: Abort | None = None) -> Iterator[StreamPiece]:
        """The answer piece by piece. Routing, retries and the upstream's status are settled before
        this returns (a ScoringError here is still an HTTP error); the pieces then come as the
        endpoint sends them: it is asked for ``text/event-stream`` (the convention of Azure ML
        streaming deployments) and a deployment that answers JSON instead is one piece.

        At most ``SCORING_MAX_STREAMS`` streams per endpoint at once in this worker (429 past it);
        an upstream that sends nothing for ``SCORING_STREAM_IDLE_S`` ends the stream; aborting
        ``abort`` (the client left) closes the upstream at once."""
        abort = abort or Abort()
        route = self._route(request.model or self.settings.model_name)
        release = self.streams.take(route.endpoint)
        if release is None:
            raise ScoringError(
                429,
                f"this worker already relays {self.streams.limit} streamed answers of model {route.model_name} "
                f"(SCORING_MAX_STREAMS); retry in {STREAMS_RETRY_AFTER_S} s",
                type="rate_limit_exceeded",
                code="too_many_streams",
                retry_after=STREAMS_RETRY_AFTER_S,
            )
        abort.on_close(release)
        try:
            route, response = self._forward(route, request, stream=True, abort=abort)
        except BaseException:
            release()
            raise
        self.activity.touch(route.endpoint)
        if SSE_MEDIA_TYPE not in (response.headers.get("content-type") or ""):
            try:
                completion = self._completion(route, response)
            finally:
                abort.detach()
                response.release_conn()
                release()
            return iter([StreamPiece(completion.text, completion.finish_reason, completion.usage)])
        return self._relay(route, response, abort, release)

    def _relay(self, route: Route, response: urllib3.BaseHTTPResponse, abort: Abort,
               release: Callable[[], None]) -> Iterator[StreamPiece]:
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
                        route.model_name, self.settings.scoring_stream_idle_s)
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

    def _forward(self, route: Route, request: ChatRequest, *, stream: bool = False,
                 abort: Abort | None = None) -> tuple[Route, urllib3.BaseHTTPResponse]:
        """POST to the route's endpoint until it answers 200 (with the retries below); the 200 response.

        With ``stream`` the body is left unread (the caller reads it and releases the connection)
        and each read waits at most ``SCORING_STREAM_IDLE_S``. An aborted ``abort`` (the client
        left) ends the call at once, with no retry."""
        body = endpoint_request_body(request)
        refreshed = rerouted = fell_back = False
        busy_retries = 0
        while True:
            headers = {**route.headers, "Accept": f"{SSE_MEDIA_TYPE}, application/json"} if stream else route.headers
            try:
                with bound(abort):
                    response = route.pool.urlopen(
                        "POST",
                        route.path,
                        body=body,
                        headers=headers,
                        timeout=self._stream_timeout(route) if stream else route.timeout,
                        retries=False,  # retries are ours: 401 refresh, 429/503 back-off, reroute
                        redirect=False,
                        assert_same_host=False,
                        # True reads the body and returns the connection to the pool; a stream is read later
                        preload_content=not stream,
                    )
            except NewConnectionError as exc:  # refused / DNS (urllib3 makes it a ConnectTimeoutError subclass)
                transport_error: HTTPError | None = exc
            except UpstreamTimeout:
                log.warning(
                    "endpoint %s of model %s did not answer within %.0f s",
                    route.endpoint,
                    route.model_name,
                    route.target.timeout_s,
                )
                raise ScoringError(
                    504, f"the endpoint of model {route.model_name} did not answer in time", type=TIMEOUT, code="upstream_timeout"
                ) from None
            except HTTPError as exc:  # reset, protocol or TLS errors
                transport_error = exc
            else:
                transport_error = None
            if transport_error is not None and abort is not None and abort.aborted:
                raise _client_gone(route) from None
            if transport_error is not None:
                log.warning(
                    "endpoint %s of model %s unreachable (%s)", route.endpoint, route.model_name, type(transport_error).__name__
                )
                if not rerouted:
                    # It may have been deleted since the route was cached: ask the ledger again.
                    rerouted = True
                    route = self._reroute(route)
                    continue
                raise self._unreachable(route) or ScoringError(
                    502,
                    f"the endpoint of model {route.model_name} is unreachable",
                    type=UPSTREAM_ERROR,
                    code="upstream_unreachable",
                ) from None

            status = response.status
            if abort is not None and not (stream and status == 200):
                abort.detach()  # read to its end and back in the pool: no longer this client's
            if status == 200:
                return route, response
            if stream:
                _ = response.data  # read the error body, then give the connection back
                response.release_conn()
            served_by = response.headers.get(DEPLOYMENT_HEADER)
            if (status >= 500 and not fell_back and route.champion_deployment and served_by
                    and served_by != route.champion_deployment):
                # A candidate in its canary failed this request: the champion answers it instead
                # (the failure is in the candidate's figures, which is what rolls it back).
                fell_back = True
                log.warning("deployment %s of endpoint %s answered %d; asking the champion %s", served_by,
                            route.endpoint, status, route.champion_deployment)
                headers_pinned = {**route.headers, DEPLOYMENT_HEADER: route.champion_deployment}
                route = dataclasses.replace(route, headers=headers_pinned)
                continue
            if status in (401, 403) and not refreshed:
                refreshed = True
                route = self._refresh_credentials(route)
                continue
            if status in (429, 503) and busy_retries < BUSY_RETRIES:
                delay = self._busy_delay(busy_retries, response.headers.get("retry-after"))
                if delay is not None:
                    busy_retries += 1
                    log.info("endpoint %s answered %d; retry %d in %.2f s", route.endpoint, status, busy_retries, delay)
                    self._sleep(delay)
                    continue
            if status == 404 and not rerouted:
                rerouted = True
                route = self._reroute(route)
                continue
            if status == 502:
                # The endpoint's gateway could not reach its deployment (a dead model server): the
                # same evidence as a refused connection, so the same answer when the backend agrees.
                raise self._unreachable(route) or self._upstream_failure(route, response)
            raise self._upstream_failure(route, response)

    def _stream_timeout(self, route: Route) -> urllib3.Timeout:
        """A stream's reads wait at most SCORING_STREAM_IDLE_S (and never longer than the endpoint's timeout)."""
        read = min(route.target.timeout_s, float(self.settings.scoring_stream_idle_s))
        return urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, read), read=read)

    def _completion(self, route: Route, response: urllib3.BaseHTTPResponse) -> Completion:
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

    def _busy_delay(self, attempt: int, retry_after: str | None) -> float | None:
        """Back-off before retrying a busy endpoint; None when it asked for longer than we wait."""
        asked = _retry_after_seconds(retry_after)
        if asked is not None:
            return asked if asked <= MAX_WAITED_RETRY_AFTER_S else None
        return BACKOFF_BASE_S * (2**attempt) * random.uniform(0.5, 1.0)  # jitter spreads retrying workers

    def _upstream_failure(self, route: Route, response: urllib3.BaseHTTPResponse) -> ScoringError:
        status = response.status
        log.warning("endpoint %s of model %s answered HTTP %d", route.endpoint, route.model_name, status)
        log.debug("endpoint %s error body: %.500r", route.endpoint, response.data)
        model = route.model_name
        if status in (429, 503):
            asked = _retry_after_seconds(response.headers.get("retry-after"))
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

    # ---- routes

    def _route(self, ref: str) -> Route:
        cached = self._routes.get(ref)
        if cached is not None and cached.expires_at > self._clock():
            return cached
        try:
            route = self._resolve(ref)
        except ScoringError:
            raise
        except Exception as exc:  # storage down: the route read last, within its staleness limit, or 503
            route = self.route_reads.fallback(ref, cached, exc)
        else:
            self.route_reads.read(ref)
        self._routes[ref] = route
        return route

    def forget_route(self, ref: str) -> None:
        self._routes.pop(ref, None)

    def _reroute(self, stale: Route) -> Route:
        self.forget_route(stale.ref)
        return self._route(stale.ref)

    def _refresh_credentials(self, route: Route) -> Route:
        log.info("endpoint %s refused the cached credentials; refreshing them", route.endpoint)
        target = self._scoring_target(route.ref, route.model_name, route.version, route.endpoint, refresh=True,
                                      deployment=route.target.deployment)
        fresh = self._make_route(route.ref, route.model_name, route.version, route.endpoint, target,
                                 champion_deployment=route.champion_deployment)
        self._routes[route.ref] = fresh
        return fresh

    def _make_route(self, ref: str, model_name: str, version: str, endpoint: str, target: ScoringTarget,
                    champion_deployment: str | None = None) -> Route:
        return Route(
            champion_deployment=champion_deployment,
            ref=ref,
            model_name=model_name,
            version=version,
            endpoint=endpoint,
            target=target,
            pool=self._pool(target.url),
            path=urllib3.util.parse_url(target.url).request_uri,
            headers=target.headers(),
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, target.timeout_s), read=target.timeout_s),
            expires_at=self._clock() + self._route_ttl_s,
        )

    def _resolve(self, ref: str) -> Route:
        """The live endpoint of ``ref`` (a model name, or ``name:<version>`` / ``name:latest`` /
        ``name:stable``) per the ledger, or the ScoringError saying why there is none."""
        ledger = self.ledger
        model_name, selector = parse_model_selector(ref)
        versions = self._registered_versions(model_name)
        serving = selected_endpoint(model_name, selector, ledger.get(ROUTE, model_name), versions)
        if serving is None and selector is not None and (versions or ledger.get(ROUTE, model_name) is not None):
            known = ", ".join(sorted(versions, key=version_key)) or "none"
            raise ScoringError(
                404,
                f"model {model_name!r} has no version {selector!r} (registered versions: {known}; aliases: stable, latest)",
                param="model",
                code="model_version_not_found",
            )
        if serving is None:
            raise ScoringError(
                404,
                f"model {model_name!r} does not exist (no fine-tuned model of that name)",
                param="model",
                code="model_not_found",
            )
        ep_name = serving.endpoint
        pinned_deployment = None
        if selector is not None and serving.version:
            placed = placement(ledger, model_name, serving.version, ledger.get(ROUTE, model_name))
            if placed is not None:
                ep_name, pinned_deployment = placed
        endpoint = ledger.get(ENDPOINT, ep_name)
        version = serving.version or str((endpoint.get("model_version") if endpoint else "") or "")
        if pinned_deployment is not None:
            if endpoint is None or endpoint.state != EP_SUCCEEDED or not deployment_live(endpoint, pinned_deployment):
                raise ScoringError(404, f"version {version} of model {model_name!r} is not deployed now",
                                   param="model", code="version_not_deployed")
            target = self._scoring_target(ref, model_name, version, ep_name, deployment=pinned_deployment)
            return self._make_route(ref, model_name, version, ep_name, target)

        if endpoint is not None and endpoint.state == EP_PROVISIONING and self._claim_redeploy(
                f"settle:{ep_name}", health.SETTLE_INTERVAL_S):
            endpoint = health.settle_if_ready(self._context(), endpoint)  # (re)deployed meanwhile: serve at once
        if endpoint is not None and endpoint.state == EP_SUCCEEDED:
            target = self._scoring_target(ref, model_name, version, ep_name)
            champion = endpoint.get("deployment") if endpoint.get("deployments") else None
            return self._make_route(ref, model_name, version, ep_name, target, champion_deployment=champion)
        if endpoint is not None and endpoint.state == EP_PROVISIONING:
            retry_after = self._deploy_retry_after(endpoint)
            raise ScoringError(
                503,
                f"model {model_name} (version {version}) is being deployed; retry in {retry_after} s",
                type=UNAVAILABLE,
                code="provisioning",
                retry_after=retry_after,
            )
        if endpoint is not None and endpoint.state == EP_FAILED:
            raise self._healing(model_name, endpoint, health.heal_if_due(self._context(), endpoint))
        raise self._scale_from_zero(
            self._model_ref(model_name, version, endpoint), endpoint.state if endpoint is not None else "missing"
        )

    def _scoring_target(self, ref: str, model_name: str, version: str, ep_name: str, refresh: bool = False,
                        deployment: str | None = None) -> ScoringTarget:
        try:
            if deployment is not None:
                return self.backend.get_scoring_target(ep_name, refresh=refresh, deployment=deployment)
            return self.backend.get_scoring_target(ep_name, refresh=refresh)
        except NotFoundError:
            # The ledger still calls it live but the workspace has no such endpoint (deleted
            # outside the app); reconcile will correct the ledger, redeploying restores service.
            log.warning("endpoint %s of model %s is missing in the workspace", ep_name, model_name)
            self.forget_route(ref)
            raise self._scale_from_zero(self._model_ref(model_name, version, None), "missing") from None
        except TransientBackendError:
            log.warning("scoring target of endpoint %s unavailable for now", ep_name, exc_info=True)
            raise ScoringError(
                503,
                f"the endpoint of model {model_name} cannot be reached right now; retry later",
                type=UNAVAILABLE,
                code="backend_unavailable",
                retry_after=BUSY_RETRY_AFTER_S,
            ) from None
        except BackendError:
            log.error("cannot get the scoring target of endpoint %s", ep_name, exc_info=True)
            raise ScoringError(
                502, f"the endpoint of model {model_name} cannot be called", type=UPSTREAM_ERROR, code="backend_error"
            ) from None

    def _registered_versions(self, model_name: str) -> list[str]:
        prefix = f"{model_name}:"
        return [r.id[len(prefix) :] for r in self.ledger.list(MODEL) if r.id.startswith(prefix)]

    def _model_ref(self, model_name: str, version: str, endpoint: Record | None) -> ModelRef:
        record = self.ledger.get(MODEL, f"{model_name}:{version}") if version else None
        if record is None and not version:
            versions = self._registered_versions(model_name)
            version = max(versions, key=version_key) if versions else ""
            record = self.ledger.get(MODEL, f"{model_name}:{version}") if version else None

        def field(name: str) -> str:
            value = (record.get(name) if record else None) or (endpoint.get(name) if endpoint else None)
            return str(value or "")

        return ModelRef(name=model_name, version=version, job_name=field("job_name"), base_model=field("base_model"))

    # ---- unhealthy endpoints: the health loop (shared.endpoints.health) heals them

    def _context(self) -> Any:
        from shared.context import Context

        return Context(self.settings, self.ledger, self.backend)

    def _unreachable(self, route: Route) -> ScoringError | None:
        """The endpoint did not answer twice: if its backend agrees it is down, start healing it
        and answer 503 + Retry-After; None (a plain 502) when the backend says it is fine."""
        if not self._claim_redeploy(f"health:{route.endpoint}", health.PROBE_INTERVAL_S):
            record = self.ledger.get(ENDPOINT, route.endpoint)
        else:
            record = health.report_unreachable(self._context(), route.endpoint)
        if record is None or record.state == EP_SUCCEEDED:
            return None
        self.forget_route(route.model_name)
        if record.state == EP_PROVISIONING:
            return ScoringError(503, f"the endpoint of model {route.model_name} stopped answering and is being redeployed; "
                                     "retry later", type=UNAVAILABLE, code="endpoint_healing",
                                retry_after=health.retry_after_s(record, self.settings))
        return self._healing(route.model_name, record, record)

    def _healing(self, model_name: str, failed: Record, current: Record) -> ScoringError:
        if current.state == EP_PROVISIONING or health.is_healing(current, self.settings):
            return ScoringError(503, f"the endpoint of model {model_name} is unhealthy and being redeployed; retry later",
                                type=UNAVAILABLE, code="endpoint_healing",
                                retry_after=health.retry_after_s(current, self.settings))
        if current.state == EP_FAILED and current.get("heal_stopped_at"):
            # No Retry-After: it will not come back by itself (a new model version, or a person, is needed).
            return ScoringError(503, f"the endpoint of model {model_name} failed and is not redeployed any more: "
                                     f"{current.get('heal_stopped_reason') or current.get('error')}",
                                type=UNAVAILABLE, code="endpoint_failed")
        return self._scale_from_zero(self._model_ref(model_name, str(failed.get("model_version") or ""), failed), current.state)

    # ---- scale from zero

    def _deploy_retry_after(self, endpoint: Record | None) -> int:
        """An honest Retry-After: this app's recent deployment times (see shared.endpoints.eta)."""
        from shared.endpoints.eta import retry_after_s

        try:
            history = self.ledger.list(ENDPOINT)
        except Exception:  # noqa: BLE001 - an estimate must never fail the answer
            log.debug("no deployment history for the Retry-After estimate", exc_info=True)
            history = []
        return retry_after_s(endpoint, history, datetime.now(UTC), self.settings.scoring_retry_after_s)

    def _scale_from_zero(self, model: ModelRef, endpoint_state: str) -> ScoringError:
        not_serving = self._not_serving(model)
        if not_serving is not None:
            return not_serving
        retry_after = self.settings.scoring_retry_after_s
        if self.settings.scoring_redeploy_on_demand:
            retry_after = self._deploy_retry_after(None)
        if not self.settings.scoring_redeploy_on_demand:
            log.info("model %s has no live endpoint (%s); redeploy on demand is off", model.ref, endpoint_state)
            return ScoringError(
                503,
                f"model {model.name} has no live endpoint and redeploy on demand is off",
                type=UNAVAILABLE,
                code="no_endpoint",
                retry_after=retry_after,
            )
        if model.version and self._claim_redeploy(model.ref, retry_after):
            log.info("scale from zero: redeploying %s (its endpoint is %s)", model.ref, endpoint_state)
            try:
                redeploy = self._redeploy or _deploy_model_scale_from_zero(self.settings, self.ledger, self.backend)
                redeploy(model)
                self._refused.pop(model.ref, None)
            except CapacityError as exc:  # asked again after Retry-After (the claim): room may be freed by then
                self._refused[model.ref] = str(exc)
            except Exception:
                log.error("could not start redeploying %s", model.ref, exc_info=True)
        refused = self._refused.get(model.ref)
        if refused is not None:
            return ScoringError(503, f"model {model.name} was scaled to zero and cannot be redeployed now: {refused}",
                                type=UNAVAILABLE, code="capacity", retry_after=retry_after)
        return ScoringError(
            503,
            f"model {model.name} was scaled to zero; version {model.version} is being redeployed, retry in {retry_after} s",
            type=UNAVAILABLE,
            code="scaled_to_zero",
            retry_after=retry_after,
        )

    def _not_serving(self, model: ModelRef) -> ScoringError | None:
        """Only the version a model's route serves scales from zero (a pin of any other version must
        not start an endpoint): the 404 for a pinned version that is not deployed, None for the serving one."""
        serving = serving_endpoint(model.name, self.ledger.get(ROUTE, model.name), self._registered_versions(model.name))
        if serving is None or not serving.version or serving.version == model.version:
            return None
        log.info("pinned %s has no live endpoint; only version %s of %s is started on demand", model.ref,
                 serving.version, model.name)
        return ScoringError(404, f"version {model.version} of model {model.name!r} is not deployed (only the version "
                                 f"that serves, {serving.version}, is started on demand)",
                            param="model", code="version_not_deployed")

    def _claim_redeploy(self, model_ref: str, interval_s: float) -> bool:
        """At most one redeploy request per model version per worker per interval (deploy_model is idempotent anyway)."""
        now = self._clock()
        with self._lock:
            last = self._redeploy_requested.get(model_ref)
            if last is not None and now - last < interval_s:
                return False
            self._redeploy_requested[model_ref] = now
            return True

    # ---- model list

    def list_models(self) -> list[dict[str, Any]]:
        ledger = self.ledger
        routes = {r.id: r for r in ledger.list(ROUTE)}
        registered: dict[str, list[Record]] = {}
        for record in ledger.list(MODEL):
            registered.setdefault(split_model_ref(record.id)[0], []).append(record)
        endpoints = {r.id: r for r in ledger.list(ENDPOINT)}
        models = []
        for name in sorted(set(routes) | set(registered)):
            versions = sorted(registered.get(name, []), key=lambda r: version_key(split_model_ref(r.id)[1]))
            active = routes.get(name)
            serving = serving_endpoint(name, active, [split_model_ref(r.id)[1] for r in versions])
            assert serving is not None  # every name here has a route or a registered version
            version, ep_name = serving.version, serving.endpoint
            endpoint = endpoints.get(ep_name)
            status = {EP_SUCCEEDED: "ready", EP_PROVISIONING: "starting"}.get(
                endpoint.state if endpoint else "", "scaled_to_zero"
            )
            first = versions[0] if versions else active
            created = parse_iso(first.created_at) if first is not None else None
            models.append(
                {
                    "id": name,
                    "object": "model",
                    "created": int(created.timestamp()) if created else 0,
                    "owned_by": MANAGED_BY_VALUE,
                    "version": version,
                    "versions": [split_model_ref(r.id)[1] for r in versions],  # each can be pinned as id:version
                    "status": status,
                    "default": name == self.settings.model_name,
                }
            )
        return models


_scorers: dict[int, tuple[Settings, Scorer]] = {}
_scorers_lock = threading.Lock()


def scorer_for(settings: Settings | None = None) -> Scorer:
    """The worker's Scorer for ``settings`` (created once, reused by every call)."""
    s = settings or get_settings()
    entry = _scorers.get(id(s))
    if entry is not None and entry[0] is s:
        return entry[1]
    with _scorers_lock:
        entry = _scorers.get(id(s))
        if entry is None or entry[0] is not s:
            entry = (s, Scorer(s))
            _scorers[id(s)] = entry
        return entry[1]


def use_scorer(scorer: Scorer) -> None:
    """Install a Scorer for its settings (tests inject one with a recording redeploy)."""
    with _scorers_lock:
        _scorers[id(scorer.settings)] = (scorer.settings, scorer)


def reset_scorers() -> None:
    """Close and forget every Scorer (tests; a worker never needs it)."""
    with _scorers_lock:
        entries = list(_scorers.values())
        _scorers.clear()
    for _, scorer in entries:
        scorer.close()


# ---- what the HTTP triggers call


def score(body: bytes, settings: Settings | None = None, abort: Abort | None = None) -> dict[str, Any]:
    """``POST /api/score``: Azure ML's request shape in, ``{"output": ...}`` out."""
    scorer = scorer_for(settings)
    return score_response(scorer.complete(parse_score_request(body, scorer.settings), abort))


def chat_completion(body: bytes, settings: Settings | None = None,
                    abort: Abort | None = None) -> dict[str, Any] | Iterator[bytes]:
    """``POST /api/v1/chat/completions``: OpenAI's chat completion in and out; with ``stream: true``
    the server-sent events of ``chat.completion.chunk`` objects (bytes), ending with ``[DONE]``.
    ``abort``: the client's handle (aborting it ends the upstream call, :mod:`.hangup`)."""
    scorer = scorer_for(settings)
    request = parse_chat_completion_request(body, scorer.settings)
    if request.stream:
        model = request.model or scorer.settings.model_name
        return chat_completion_chunks(scorer.stream(request, abort), model, request.include_usage)
    return chat_completion_response(scorer.complete(request, abort))


def list_models(settings: Settings | None = None) -> dict[str, Any]:
    """``GET /api/v1/models``: the fine-tuned models in OpenAI's list shape."""
    try:
        return {"object": "list", "data": scorer_for(settings).list_models()}
    except ScoringError:
        raise
    except Exception as exc:
        if stale_routes.is_storage_outage(exc):
            raise stale_routes.ledger_unavailable("the model list") from None
        raise
