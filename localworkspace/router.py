"""A local online endpoint's front door: named deployments and a traffic split, as Azure ML has.

``python -m localworkspace.router --record F --port P --activity-file A [--host 127.0.0.1]``; the
key comes from ``LOCAL_ENDPOINT_KEY`` (the same key every deployment of the endpoint checks).

An Azure ML managed online endpoint holds several deployments; its ``traffic`` (deployment ->
percent, summing to 100 or 0) splits live requests between them, ``mirror_traffic`` copies a
percentage of requests to a deployment whose answers are dropped, and a request with the header
``azureml-model-deployment: NAME`` goes to that deployment whatever the split says (how Azure ML
answers it: the deployment must exist, traffic or not). Locally each deployment is its own
``localworkspace.serve`` process on its own port; this process owns the endpoint's port, reads
the endpoint's record (``record.json``: ``deployments`` with their ports and states, ``traffic``,
``mirror_traffic``) whenever it changes, and forwards each request, streamed answers included.
Every answer carries the header ``azureml-model-deployment`` naming the deployment that served it.

It counts, per deployment, every forwarded request with its status and its latency (to the end
of the answer): ``GET /metrics?since=EPOCH`` (key required) gives requests, errors (5xx or no
answer) and the p95 latency since then, and the requests in flight now (``in_flight``: a
deployment being deleted is drained of them first). These are the endpoint's own counters, the local
counterpart of Azure Monitor's metrics split by deployment.

A client that disconnects is let go at once: the forwarded request is cancelled (its connection
to the deployment closed, so the model server sees the disconnect and stops generating), while
it waits for the answer and while the answer streams.

``/ping`` and ``/health`` are open: 200 when the endpoint's own deployment (``record.json``'s
``deployment``, the champion) answers its own ``/ping`` while it takes traffic, else the one with
the most traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hmac
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from localworkspace.disconnect import ClientGone, ClosingStreamingResponse, unless_gone
from localworkspace.serve import record_activity  # one writer of the activity file for both processes

log = logging.getLogger("localworkspace.router")

KEY_ENV = "LOCAL_ENDPOINT_KEY"
OPEN_PATHS = frozenset({"/ping", "/health"})
DEPLOYMENT_HEADER = "azureml-model-deployment"
SAMPLES_PER_DEPLOYMENT = 20000  # (time, latency, ok) kept per deployment for /metrics windows
FORWARD_TIMEOUT_S = 300.0
LIVE_STATES = frozenset({"provisioning", "succeeded"})


class Counters:
    """Per deployment: each forwarded request's (end time, latency ms, ok), newest last."""

    def __init__(self, maxlen: int = SAMPLES_PER_DEPLOYMENT) -> None:
        self._samples: dict[str, collections.deque[tuple[float, float, bool]]] = {}
        self._maxlen = maxlen
        self._in_flight: collections.Counter[str] = collections.Counter()

    def start(self, deployment: str) -> None:
        """A request forwarded to ``deployment``; its :meth:`record` ends it."""
        self._in_flight[deployment] += 1

    def record(self, deployment: str, latency_ms: float, ok: bool, at: float | None = None, *,
               mirrored: bool = False) -> None:
        self._samples.setdefault(deployment, collections.deque(maxlen=self._maxlen)).append(
            (time.time() if at is None else at, latency_ms, ok))
        if not mirrored and self._in_flight[deployment] > 0:
            self._in_flight[deployment] -= 1

    def summary(self, since: float = 0.0) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, samples in self._samples.items():
            window = [s for s in samples if s[0] >= since]
            latencies = sorted(s[1] for s in window)
            errors = sum(1 for s in window if not s[2])
            out[name] = {"requests": len(window), "errors": errors,
                         "error_rate": (errors / len(window)) if window else None,
                         "p95_ms": percentile(latencies, 95.0), "in_flight": self._in_flight[name]}
        for name, n in self._in_flight.items():
            out.setdefault(name, {"requests": 0, "errors": 0, "error_rate": None, "p95_ms": None, "in_flight": n})
        return out


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


class EndpointRecord:
    """The endpoint's ``record.json``, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.data: dict[str, Any] = {}

    def current(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.data
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
                self._stamp = stamp
            except (OSError, ValueError):  # replaced atomically: a failed read is retried next request
                pass
        return self.data


def live_deployments(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: d for name, d in (record.get("deployments") or {}).items()
            if isinstance(d, dict) and d.get("state") in LIVE_STATES and d.get("port")}


def choose_deployment(record: dict[str, Any], pinned: str | None, rand: float) -> tuple[str | None, str]:
    """(deployment, why not) for one request: the pinned one, else a draw (``rand`` in [0, 1)) over
    the traffic split among live deployments."""
    live = live_deployments(record)
    if pinned:
        if pinned in live:
            return pinned, ""
        return None, f"deployment {pinned!r} does not exist in this endpoint"
    split = [(name, float(pct)) for name, pct in sorted((record.get("traffic") or {}).items())
             if name in live and float(pct) > 0]
    total = sum(p for _, p in split)
    if total <= 0:
        return None, "no deployment of this endpoint takes traffic"
    edges, acc = [], 0.0
    for _, pct in split:
        acc += pct
        edges.append(acc)
    index = min(bisect.bisect_right(edges, rand * total), len(split) - 1)
    return split[index][0], ""


def primary_deployment(record: dict[str, Any]) -> str | None:
    """The deployment whose health is the endpoint's: its champion while that takes traffic (a
    50/50 canary must not make the candidate's health the endpoint's), else the most traffic."""
    traffic = {k: float(v) for k, v in (record.get("traffic") or {}).items() if float(v) > 0}
    if record.get("deployment") in traffic:
        return record.get("deployment")
    if traffic:
        return max(sorted(traffic), key=lambda k: traffic[k])
    return record.get("deployment")


def build_app(record_path: Path, key: str, activity_file: Path, *, rng: random.Random | None = None):  # noqa: ANN201
    import anyio
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    record = EndpointRecord(record_path)
    counters = Counters()
    expected = f"Bearer {key}".encode()
    draw = rng or random.Random()
    client = httpx.AsyncClient(timeout=httpx.Timeout(FORWARD_TIMEOUT_S, connect=5.0))
    background: set[asyncio.Task] = set()

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return bool(key) and hmac.compare_digest(given, expected)

    async def health(request: Request) -> Response:
        data = record.current()
        name = primary_deployment(data)
        dep = (data.get("deployments") or {}).get(name or "") or {}
        if not dep.get("port"):
            return JSONResponse({"status": "no deployment"}, status_code=503)
        try:
            reply = await client.get(f"http://127.0.0.1:{dep['port']}/ping", timeout=2.5)
        except httpx.HTTPError as exc:
            return JSONResponse({"status": f"deployment {name} unreachable: {type(exc).__name__}"}, status_code=503)
        return JSONResponse({"status": "ok" if reply.status_code == 200 else f"deployment {name} answered {reply.status_code}",
                             "deployment": name}, status_code=200 if reply.status_code == 200 else 503)

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "missing or invalid key"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since must be seconds since the epoch"}, status_code=400)
        return JSONResponse({"since": since, "at": time.time(), "deployments": counters.summary(since)})

    def forward_headers(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items()
                if k.lower() in {"authorization", "content-type", "accept"}}

    async def mirror(name: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> None:
        started = time.perf_counter()
        try:
            reply = await client.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers)
            ok = reply.status_code < 500
        except httpx.HTTPError:
            ok = False
        counters.record(name, (time.perf_counter() - started) * 1000, ok, mirrored=True)

    async def forward(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "missing or invalid key"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        record_activity(activity_file)
        data = record.current()
        name, why = choose_deployment(data, request.headers.get(DEPLOYMENT_HEADER), draw.random())
        if name is None:
            return JSONResponse({"error": why}, status_code=404 if request.headers.get(DEPLOYMENT_HEADER) else 503)
        port = live_deployments(data)[name]["port"]
        body = await request.body()
        headers = forward_headers(request)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method == "POST" and not request.headers.get(DEPLOYMENT_HEADER):
            for target, pct in (data.get("mirror_traffic") or {}).items():
                mirror_to = live_deployments(data).get(target)
                if mirror_to and target != name and draw.random() * 100 < float(pct):
                    task = asyncio.create_task(mirror(target, mirror_to["port"], path, body, headers))
                    background.add(task)
                    task.add_done_callback(background.discard)
        counters.start(name)
        started = time.perf_counter()
        try:
            upstream = await unless_gone(request.receive, client.send(
                client.build_request(request.method, f"http://127.0.0.1:{port}{path}", content=body, headers=headers),
                stream=True))
        except ClientGone:  # the request to the deployment was cancelled: its connection is closed
            log.info("the client left before deployment %s answered", name)
            counters.record(name, (time.perf_counter() - started) * 1000, True)  # not the deployment's failure
            return Response(status_code=499, headers={DEPLOYMENT_HEADER: name})
        except httpx.HTTPError as exc:
            counters.record(name, (time.perf_counter() - started) * 1000, False)
            log.warning("deployment %s unreachable: %s", name, type(exc).__name__)
            return JSONResponse({"error": f"deployment {name} is unreachable"}, status_code=502,
                                headers={DEPLOYMENT_HEADER: name})
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in {"content-type", "retry-after"}}
        out_headers[DEPLOYMENT_HEADER] = name
        status = upstream.status_code

        ended = False

        async def end(ok: bool) -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            # Also when the client left (the cancellation Starlette delivers): the connection
            # to the deployment is closed, not left to a garbage collector.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            counters.record(name, (time.perf_counter() - started) * 1000, ok)

        async def relay():  # noqa: ANN202
            ok = status < 500
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                ok = False
                raise
            finally:
                await end(ok)

        # on_close: the client may leave before the relay ever ran (then no finally of it runs)
        return ClosingStreamingResponse(relay(), status_code=status, headers=out_headers,
                                        on_close=lambda: end(status < 500))

    routes = [
        Route("/ping", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/{path:path}", forward, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.counters = counters
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localworkspace.router")
    parser.add_argument("--record", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--activity-file", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(f"{KEY_ENV} is not set: refusing to serve without a key", file=sys.stderr)
        return 2
    import uvicorn

    app = build_app(Path(args.record), key, Path(args.activity_file))
    log.info("endpoint router on http://%s:%d", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
