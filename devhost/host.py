"""Local Azure Functions host: a Core Tools stand-in that drives the app's decorated functions.

``python -m devhost.host [--app function_app:app] [--port 7071] [--poll-interval 2]``

It indexes the ``func.FunctionApp`` the way the real host does (``app.get_functions()``, each
function's binding JSON, ``get_user_function()``) and serves it:

- HTTP triggers under ``/api/<route>`` on a real ASGI server (Starlette on uvicorn); function keys
  are checked for FUNCTION/ADMIN auth levels when ``FUNCTION_KEY`` is set (Azure checks them, Core
  Tools does not; ``make up`` always sets one); only loopback ``Host`` values are served and
  cross-site writes are refused (devhost.access);
- the Event Grid webhook ``POST /runtime/webhooks/eventgrid?functionName=NAME&code=KEY``;
- ``POST /admin/functions/NAME`` to run a non-HTTP function on demand (202);
- blob triggers by polling storage, with receipts and the poison queue (devhost.blob_poller);
- timer triggers by NCRONTAB (devhost.timers).

Functions read the process-wide settings (``shared.settings.get_settings()``); the host resolves
``%NAME%`` binding expressions and storage against the settings object it is given, so give it
the same object (tests install theirs with ``use_settings``). Programmatic use::

    with run_host("function_app:app", settings=s, port=0, poll_interval_s=0.5) as host:
        httpx.post(f"{host.base_url}/api/score", ...)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import azure.functions as func
import uvicorn
from azure.core.exceptions import AzureError

from devhost import eventgrid_delivery
from devhost.app_index import (
    BLOB,
    EVENT_GRID,
    HTTP,
    QUEUE,
    TIMER,
    AppIndexError,
    IndexedFunction,
    index_app,
    is_disabled,
    load_app,
    resolve_expressions,
)
from devhost.blob_poller import BlobTriggerPoller
from devhost.http_routes import HttpRoute, build_asgi_app
from devhost.invocation import Invoker
from devhost.queues import QueueTriggerPoller
from devhost.timers import TimerScheduler, timer_request
from shared.settings import PROJECT_ROOT, Settings, SettingsError, get_settings
from shared.storage import ensure_storage

log = logging.getLogger(__name__)

DEFAULT_APP = "function_app:app"
DEFAULT_PORT = 7071


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours."""

    poison_blob_threshold: int = 5
    blob_max_parallelism: int = 8 * (os.cpu_count() or 1)  # the blob extension's default
    route_prefix: str = "api"
    queue_batch_size: int = 16  # the queue extension's defaults
    queue_max_dequeue_count: int = 5
    queue_visibility_timeout_s: float = 0.0

    @classmethod
    def load(cls, path: Path | str | None = None) -> HostConfig:
        path = Path(path) if path else PROJECT_ROOT / "host.json"
        if not path.is_file():
            return cls()
        extensions = json.loads(path.read_text(encoding="utf-8")).get("extensions", {})
        blobs, http, queues = extensions.get("blobs", {}), extensions.get("http", {}), extensions.get("queues", {})
        default = cls()
        return cls(
            queue_batch_size=int(queues.get("batchSize", default.queue_batch_size)),
            queue_max_dequeue_count=int(queues.get("maxDequeueCount", default.queue_max_dequeue_count)),
            queue_visibility_timeout_s=_timespan_s(queues.get("visibilityTimeout"), default.queue_visibility_timeout_s),
            poison_blob_threshold=int(blobs.get("poisonBlobThreshold", default.poison_blob_threshold)),
            blob_max_parallelism=int(blobs.get("maxDegreeOfParallelism", default.blob_max_parallelism)),
            route_prefix=str(http.get("routePrefix", default.route_prefix)),
        )


def _timespan_s(value: Any, default: float) -> float:
    """host.json TimeSpan (``hh:mm:ss``) -> seconds."""
    if not value:
        return default
    hours, minutes, seconds = (float(part) for part in str(value).split(":"))
    return hours * 3600 + minutes * 60 + seconds


class Host:
    """The app's functions served locally; :meth:`start` / :meth:`stop`, or use :func:`run_host`."""

    def __init__(
        self,
        app: str | func.FunctionApp = DEFAULT_APP,
        *,
        settings: Settings | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        poll_interval_s: float = 2.0,
        host_json: Path | str | None = None,
        host_id: str = "devhost",
        on_start: Callable[[Host], None] | None = None,
        shutdown_timeout_s: float = 10.0,
        timer_past_due_tolerance_s: float = 5.0,
    ) -> None:
        self.settings = settings or get_settings()
        self.config = HostConfig.load(host_json)
        self.host_id = host_id
        self.route_prefix = self.config.route_prefix
        self.poll_interval_s = poll_interval_s
        self.invoker = Invoker()
        indexed = index_app(load_app(app))
        self.disabled = sorted(name for name in indexed if is_disabled(name))
        self.functions: dict[str, IndexedFunction] = {n: f for n, f in indexed.items() if n not in self.disabled}
        self._listen_host = host
        self._requested_port = port
        self._on_start = on_start
        self._shutdown_timeout_s = shutdown_timeout_s
        self._timer_tolerance_s = timer_past_due_tolerance_s
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._server_thread: threading.Thread | None = None
        self._poller: BlobTriggerPoller | None = None
        self._timers: TimerScheduler | None = None
        self._queues: QueueTriggerPoller | None = None
        self.function_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.running = False

    # --- addresses

    @property
    def port(self) -> int:
        if self._socket is None:
            return self._requested_port
        return self._socket.getsockname()[1]

    @property
    def listen_host(self) -> str:
        return self._listen_host

    @property
    def base_url(self) -> str:
        return f"http://{self._listen_host}:{self.port}"

    def eventgrid_url(self, function_name: str, *, with_key: bool = True) -> str:
        """The function's Event Grid webhook URL, with ``code=<FUNCTION_KEY>`` when a key is set."""
        url = f"{self.base_url}/runtime/webhooks/eventgrid?functionName={function_name}"
        return url + (f"&code={quote(self.settings.function_key)}" if with_key and self.settings.function_key else "")

    def _of_kind(self, kind: str) -> list[IndexedFunction]:
        return [f for f in self.functions.values() if f.trigger_type == kind]

    # --- lifecycle

    def start(self) -> Host:
        """Create storage, build every trigger, bind the port, serve HTTP, start the triggers.

        Triggers are built (schedules parsed, blob paths resolved) before the port opens, and
        ``/admin/host/status`` says ``Running`` only once they run: a host that answers is ready.
        """
        try:
            ensure_storage(self.settings)
            self._poller = BlobTriggerPoller(
                self._of_kind(BLOB),
                invoker=self.invoker,
                settings=self.settings,
                host_id=self.host_id,
                interval_s=self.poll_interval_s,
                poison_threshold=self.config.poison_blob_threshold,
                max_parallelism=self.config.blob_max_parallelism,
            )
            self._timers = TimerScheduler(
                self._of_kind(TIMER),
                invoker=self.invoker,
                settings=self.settings,
                host_id=self.host_id,
                past_due_tolerance_s=self._timer_tolerance_s,
            )
            self._queues = QueueTriggerPoller(
                self._of_kind(QUEUE),
                invoker=self.invoker,
                settings=self.settings,
                interval_s=min(self.poll_interval_s, 1.0),
                batch_size=self.config.queue_batch_size,
                max_dequeue_count=self.config.queue_max_dequeue_count,
                visibility_timeout_s=self.config.queue_visibility_timeout_s,
            )
            self._socket = _bind(self._listen_host, self._requested_port)
            if self._on_start is not None:
                self._on_start(self)
            self.function_executor = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="function")
            self._start_server()
            self.running = True
            self._poller.start()
            self._timers.start()
            self._queues.start()
        except BaseException:
            self.stop()
            raise
        log.info("local Functions host listening on %s (%d functions)", self.base_url, len(self.functions))
        if not self.settings.function_key:
            log.warning("FUNCTION_KEY is not set: every route takes requests from any local process "
                        "(`make up` sets one; see devhost.access)")
        return self

    def _start_server(self) -> None:
        config = uvicorn.Config(
            build_asgi_app(self),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(self._shutdown_timeout_s),
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        self._server_thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="devhost-http", daemon=True
        )
        self._server_thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local host's HTTP server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop triggers and the server; wait a bounded time for running invocations."""
        self.running = False
        deadline = time.monotonic() + self._shutdown_timeout_s

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if self._server is not None:
            self._server.should_exit = True
        if self._poller is not None:
            self._poller.stop(left())
            self._poller = None
        if self._timers is not None:
            self._timers.stop(left())
            self._timers = None
        if self._queues is not None:
            self._queues.stop(left())
            self._queues = None
        if self._server_thread is not None:
            self._server_thread.join(left())
            if self._server_thread.is_alive():
                log.warning("the HTTP server did not stop within %.0fs", self._shutdown_timeout_s)
            self._server_thread = None
        self._server = None
        if self.function_executor is not None:
            self.function_executor.shutdown(wait=False, cancel_futures=True)
            if self.invoker.wait_idle(left()):
                self.function_executor.shutdown(wait=True)
            else:
                log.warning("%d invocation(s) still running at shutdown", self.invoker.running)
            self.function_executor = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Host:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- on demand

    def run_on_demand(self, fn: IndexedFunction, value: Any) -> None:
        """Run a non-HTTP function in the background (POST /admin/functions/NAME); ValueError on bad input."""
        if not self.running or self.function_executor is None:
            raise ValueError("the host is not running")
        if fn.trigger_type == TIMER:
            trigger_value: Any = timer_request(past_due=False)
        elif fn.trigger_type == EVENT_GRID:
            event = json.loads(value) if isinstance(value, str) else value
            if not isinstance(event, dict):
                raise ValueError("input must be one event (Event Grid or CloudEvents schema)")
            try:
                trigger_value = eventgrid_delivery.decode_event(eventgrid_delivery.parse_delivery(json.dumps(event).encode())[0])
            except eventgrid_delivery.EventDeliveryError as exc:
                raise ValueError(str(exc)) from None
        elif fn.trigger_type == BLOB and self._poller is not None:
            self._poller.run_on_demand(fn, value)
            return
        elif fn.trigger_type == QUEUE and self._queues is not None:
            body = (value if isinstance(value, str) else json.dumps(value)).encode()
            queues = self._queues

            def run_message() -> None:
                with contextlib.suppress(Exception):  # the invoker logged it
                    queues.run_on_demand(fn, body)

            self.function_executor.submit(run_message)
            return
        else:
            raise ValueError(f"{fn.name!r} cannot be run on demand")

        def run() -> None:
            with contextlib.suppress(Exception):  # the invoker logged it
                self.invoker.call(fn, trigger_value, reason="Manually triggered")

        self.function_executor.submit(run)

    # --- what `func start` prints

    def describe(self) -> list[str]:
        lines = []
        next_runs = self._timers.next_runs() if self._timers else {}
        for fn in self.functions.values():
            if fn.trigger_type == HTTP:
                route = HttpRoute.of(fn)
                methods = ",".join(sorted(route.methods))
                prefix = f"/{self.route_prefix}" if self.route_prefix else ""
                lines.append(f"{fn.name}: [{methods}] {self.base_url}{prefix}/{route.template}")
            elif fn.trigger_type == EVENT_GRID:
                lines.append(f"{fn.name}: eventGridTrigger {self.eventgrid_url(fn.name, with_key=False)}")
            elif fn.trigger_type == BLOB:
                source = " (source EventGrid: polled locally)" if fn.trigger.get("source") == "EventGrid" else ""
                lines.append(f"{fn.name}: blobTrigger {resolve_expressions(fn.trigger['path'], self.settings)}{source}")
            elif fn.trigger_type == QUEUE:
                lines.append(f"{fn.name}: queueTrigger {resolve_expressions(fn.trigger['queueName'], self.settings)}")
            elif fn.trigger_type == TIMER:
                when = next_runs.get(fn.name)
                suffix = f" next {when.isoformat(timespec='seconds')}" if when else ""
                lines.append(f"{fn.name}: timerTrigger {resolve_expressions(fn.trigger['schedule'], self.settings)}{suffix}")
        lines.extend(f"{name}: disabled" for name in self.disabled)
        return lines


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says it is TCP; without it every response waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def run_host(app: str | func.FunctionApp = DEFAULT_APP, **options: Any) -> Iterator[Host]:
    """A started :class:`Host` (options as its constructor), stopped on exit."""
    host = Host(app, **options).start()
    try:
        yield host
    finally:
        host.stop()


def _warm_backend_in_background(_host: Host) -> None:
    """Warm the ML backend's clients off the request path, like a worker's first invocation would.

    The Event Grid handler must answer within seconds; the local backend's first MLflow registry
    access costs several seconds, so the CLI host pays it at start-up instead.
    """

    def warm() -> None:
        try:
            from shared.backends import get_backend

            warm_up = getattr(get_backend(), "warm_up", None)
            if warm_up is not None:
                warm_up()
                log.info("ML backend warmed up")
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation, never fatal
            log.warning("could not warm up the ML backend: %s", exc)

    threading.Thread(target=warm, name="warm-backend", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.host", description="Serve the Function App locally (Core Tools stand-in)."
    )
    parser.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the func.FunctionApp (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="0 picks a free port (default: LOCAL_HOST_PORT, 7071)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between blob trigger polls")
    parser.add_argument("--host-json", default=None, help="host.json to read (default: the project's)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        port = args.port if args.port is not None else get_settings().local_host_port
        host = Host(args.app, host=args.host, port=port, poll_interval_s=args.poll_interval, host_json=args.host_json,
                    on_start=_warm_backend_in_background)
        host.start()
    except SettingsError as exc:
        # One line, no traceback (the stack prints the last line of this log when the host exits).
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    except AzureError as exc:
        print(f"storage is not reachable ({type(exc).__name__}): is Azurite running? `make up` starts it",
              file=sys.stderr, flush=True)
        return 1
    except (AppIndexError, ValueError, RuntimeError) as exc:  # a binding the host cannot drive, a busy port
        print(f"the local host cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\nFunctions:\n", flush=True)
    for line in host.describe():
        print(f"        {line}\n", flush=True)
    print(f"Host running at {host.base_url} (Ctrl+C to stop)", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down")
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
