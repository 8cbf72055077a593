"""Serve client apps: route a chat request to the model's live endpoint and return its answer.

One :class:`Scorer` per worker keeps what scoring calls share: the routes (which endpoint serves a
model and how to call it, :mod:`.resolution`), the connection pools to the endpoints
(:mod:`.upstream`), the activity throttle (:mod:`.activity`) and the redeploy requests of models
that have no live endpoint (:mod:`.cold_start`). Here: the hot path (a whole answer, or a stream
relayed piece by piece), the retries of one call (401 refresh, 429/503 back-off, reroute, the
champion when a candidate fails), the model list, and what the HTTP triggers call.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as UpstreamTimeout

from shared.backends import get_backend
from shared.backends.base import DEPLOYMENT_HEADER, EP_PROVISIONING, EP_SUCCEEDED, MANAGED_BY_VALUE, MLBackend
from shared.endpoints.serving import serving_endpoint, split_model_ref
from shared.endpoints.versions import version_key
from shared.ledger import ENDPOINT, MODEL, ROUTE, Ledger, Record, parse_iso
from shared.scoring import routes as stale_routes
from shared.scoring.activity import ActivityRecorder
from shared.scoring.answers import (
    SSE_MEDIA_TYPE,
    Completion,
    StreamPiece,
    chat_completion_chunks,
    chat_completion_response,
    endpoint_request_body,
    score_response,
)
from shared.scoring.cold_start import ColdStart, Redeploy
from shared.scoring.contract import (
    TIMEOUT,
    UPSTREAM_ERROR,
    ChatRequest,
    ScoringError,
    parse_chat_completion_request,
    parse_score_request,
)
from shared.scoring.hangup import Abort, StreamSlots, bound
from shared.scoring.resolution import ROUTE_TTL_S, RouteResolution
from shared.scoring.upstream import (
    BUSY_RETRIES,
    ConnectionPools,
    Route,
    busy_delay,
    client_gone,
    read_completion,
    relay,
    stream_timeout,
    upstream_failure,
)
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Retry-After sent with the 429 of a worker already relaying SCORING_MAX_STREAMS streams of an endpoint.
STREAMS_RETRY_AFTER_S = 1


class Scorer(RouteResolution, ColdStart):
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
        self.pools = ConnectionPools()
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
        self.pools.close()

    # ---- the hot path

    def complete(self, request: ChatRequest, abort: Abort | None = None) -> Completion:
        """The whole answer. ``abort``: the client's handle (:mod:`.hangup`); aborting it ends the
        upstream call at once (the endpoint sees the disconnect and stops generating)."""
        model_name = request.model or self.settings.model_name
        route = self._route(model_name)
        started = time.perf_counter()
        route, response = self._forward(route, request, abort=abort)  # the route that answered (refreshed/re-resolved)
        completion = read_completion(route, response)
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
                completion = read_completion(route, response)
            finally:
                abort.detach()
                response.release_conn()
                release()
            return iter([StreamPiece(completion.text, completion.finish_reason, completion.usage)])
        return relay(route, response, abort, release, self.settings.scoring_stream_idle_s)


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
                        timeout=stream_timeout(route, self.settings.scoring_stream_idle_s) if stream else route.timeout,
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
                raise client_gone(route) from None
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
                delay = busy_delay(busy_retries, response.headers.get("retry-after"))
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
                raise self._unreachable(route) or upstream_failure(route, response)
            raise upstream_failure(route, response)


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
