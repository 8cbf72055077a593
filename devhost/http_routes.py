"""The host's HTTP surface (Starlette): ``/api/<route>``, the Event Grid webhook and admin routes.

Routes of HTTP triggers are ASP.NET route templates as in Azure (``items/{id:int}``,
``files/{*path}``, ``{name?}``); they are matched case-insensitively, literal segments before
parameters, and route values reach the function as strings, as the worker passes them.

Every request passes :class:`devhost.access.AccessGuard` first (loopback ``Host`` only, no
cross-site writes). With ``FUNCTION_KEY`` set (``make up`` always sets one) FUNCTION and ADMIN
routes and the Event Grid webhook take it (``x-functions-key`` header or ``code=`` query; in Azure
the subscription's URL carries the eventgrid_extension system key as ``code=``): the local
workspace's webhook URL carries it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import azure.functions as func
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devhost import access, eventgrid_delivery
from devhost.app_index import EVENT_GRID, HTTP, IndexedFunction

if TYPE_CHECKING:
    from devhost.host import Host

log = logging.getLogger(__name__)

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_PARAM = re.compile(r"\{([^{}]+)\}")
# ASP.NET route constraints the templates of HTTP triggers may use; others match any segment.
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}


@dataclasses.dataclass(frozen=True)
class HttpRoute:
    """One HTTP trigger's compiled route template."""

    function: IndexedFunction
    template: str
    methods: frozenset[str]
    auth_level: str
    pattern: re.Pattern[str]
    precedence: tuple[int, ...]  # lower sorts first: literal segments win over parameters

    @classmethod
    def of(cls, fn: IndexedFunction) -> HttpRoute:
        template = (fn.trigger.get("route") or fn.name).strip("/")
        methods = frozenset(m.upper() for m in (fn.trigger.get("methods") or ALL_METHODS))
        pattern, precedence = compile_route(template)
        return cls(fn, template, methods, str(fn.trigger.get("authLevel", "FUNCTION")).upper(), pattern, precedence)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(path.strip("/"))
        if m is None:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}


def compile_route(template: str) -> tuple[re.Pattern[str], tuple[int, ...]]:
    """ASP.NET route template -> (regex over the path below the prefix, precedence key)."""
    parts: list[str] = []
    precedence: list[int] = []
    for index, segment in enumerate(template.split("/") if template else []):
        sep = "/" if index else ""
        whole = _PARAM.fullmatch(segment)
        if whole and (whole.group(1).startswith("*") or whole.group(1).endswith("?")):
            name, regex, rank = _parameter(whole.group(1))
            # an optional or catch-all parameter may be absent together with its separator
            parts.append(f"(?:{sep}(?P<{name}>{regex}))?")
            precedence.append(rank)
            continue
        pieces, last, rank = [], 0, 0
        for m in _PARAM.finditer(segment):
            pieces.append(re.escape(segment[last : m.start()]))
            name, regex, param_rank = _parameter(m.group(1))
            pieces.append(f"(?P<{name}>{regex})")
            rank = max(rank, param_rank)
            last = m.end()
        pieces.append(re.escape(segment[last:]))
        parts.append(sep + "".join(pieces))
        precedence.append(rank)
    return re.compile("".join(parts), re.IGNORECASE), tuple(precedence)


def _parameter(spec: str) -> tuple[str, str, int]:
    """``name``, ``name:int``, ``name?``, ``*name`` -> (group name, regex, precedence rank)."""
    if spec.startswith("*"):
        return spec.lstrip("*").split(":")[0].rstrip("?"), r".*", 4
    spec = spec.split("=")[0].rstrip("?")  # defaults are not supported: the value is just optional
    name, _, constraint = spec.partition(":")
    constraint = constraint.split(":")[0].split("(")[0].lower()
    if constraint in _CONSTRAINTS:
        return name, _CONSTRAINTS[constraint], 2
    return name, r"[^/]+", 3


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _presented_key(request: Request) -> str:
    return request.headers.get("x-functions-key") or request.query_params.get("code") or ""


def _authorized(host: Host, request: Request, auth_level: str) -> bool:
    return auth_level == "ANONYMOUS" or access.authorized(host.settings.function_key, _presented_key(request))


def _to_starlette(result: Any) -> Response:
    if result is None:
        return Response(status_code=204)
    if isinstance(result, str | bytes):
        return Response(result, media_type="text/plain")
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"HTTP function returned {type(result).__name__}, expected func.HttpResponse")
    headers = dict(result.headers.items()) if result.headers else {}
    if not any(k.lower() == "content-type" for k in headers) and result.mimetype:
        headers["content-type"] = f"{result.mimetype}; charset={result.charset}" if result.charset else result.mimetype
    return Response(result.get_body(), status_code=result.status_code, headers=headers)


def build_asgi_app(host: Host) -> access.AccessGuard:
    """The ASGI app serving ``host``'s functions: the Starlette routes behind the access guard."""
    routes = sorted(
        (HttpRoute.of(fn) for fn in host.functions.values() if fn.trigger_type == HTTP),
        key=lambda r: r.precedence,
    )
    prefix = host.route_prefix.strip("/")

    async def http_trigger(request: Request) -> Response:
        path = request.url.path.strip("/")
        if prefix:
            if not (path.lower() == prefix.lower() or path.lower().startswith(prefix.lower() + "/")):
                return _error(404, "not found")
            path = path[len(prefix) :]
        candidates = [(r, values) for r in routes if (values := r.match(path)) is not None]
        if not candidates:
            return _error(404, "no function matches this route")
        allowed = [(r, v) for r, v in candidates if request.method in r.methods]
        if not allowed:
            methods = sorted({m for r, _ in candidates for m in r.methods})
            return _error(405, f"method {request.method} not allowed", allowed=methods)
        route, route_params = allowed[0]
        if not _authorized(host, request, route.auth_level):
            return _error(401, "a function key is required (x-functions-key header or code query parameter)")
        if takes_asgi_request(route.function):
            return await _call_streaming(host, route.function, request, route_params)
        http_request = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=dict(request.query_params),
            route_params=route_params,
            body=await request.body(),
        )
        try:
            result = await host.invoker.call_async(
                route.function, http_request, reason="HTTP request", executor=host.function_executor
            )
            return _to_starlette(result)
        except Exception:  # already logged by the invoker; Azure answers 500 with no detail
            return _error(500, "the function failed")

    async def eventgrid_webhook(request: Request) -> Response:
        if request.method == "OPTIONS":  # CloudEvents webhook abuse-protection handshake
            origin = request.headers.get("webhook-request-origin")
            if not origin:
                return _error(400, "WebHook-Request-Origin header missing")
            return Response(status_code=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
        if not _authorized(host, request, "FUNCTION"):
            return _error(401, "the Event Grid webhook takes the function key (code query parameter)")
        name = request.query_params.get("functionName", "")
        fn = host.functions.get(name)
        if fn is None or fn.trigger_type != EVENT_GRID:
            return _error(404, f"no Event Grid function named {name!r}")
        event_type = request.headers.get("aeg-event-type", "")
        if not event_type and "cloudevents" in request.headers.get("content-type", ""):
            event_type = "Notification"
        if event_type == "Unsubscribe":
            return Response(status_code=202)
        if event_type not in ("SubscriptionValidation", "Notification"):
            return _error(400, f"unsupported aeg-event-type {event_type!r}")
        try:
            events = eventgrid_delivery.parse_delivery(await request.body())
            if event_type == "SubscriptionValidation":
                return JSONResponse({"validationResponse": eventgrid_delivery.validation_code(events)})
            decoded = eventgrid_delivery.decode_events(events)
        except eventgrid_delivery.EventDeliveryError as exc:
            return _error(400, str(exc))
        failed = await _deliver(host, fn, decoded)
        if failed:
            # Event Grid retries the delivery on any non-2xx answer.
            return _error(500, "the function failed", failed_event_ids=failed)
        return Response(status_code=202)

    async def run_function(request: Request) -> Response:
        if not _authorized(host, request, "ADMIN"):
            return _error(401, "a function key is required")
        name = request.path_params["name"]
        fn = host.functions.get(name)
        if fn is None:
            return _error(404, f"no function named {name!r}")
        if fn.trigger_type == HTTP:
            return _error(400, f"{name!r} is an HTTP function: call its /{host.route_prefix}/ route")
        raw = await request.body()
        try:
            payload = eventgrid_delivery.loads(raw) if raw.strip() else {}
        except eventgrid_delivery.EventDeliveryError as exc:
            return _error(400, str(exc))
        value = payload.get("input") if isinstance(payload, dict) else None
        try:
            host.run_on_demand(fn, value)
        except ValueError as exc:
            return _error(400, str(exc))
        except RecursionError:  # an "input" string of deeply nested JSON, parsed by run_on_demand
            return _error(400, "input nests JSON arrays/objects too deeply")
        return Response(status_code=202)

    async def list_functions(request: Request) -> Response:
        if not _authorized(host, request, "ADMIN"):
            return _error(401, "a function key is required")
        return JSONResponse([{"name": fn.name, "trigger": fn.trigger_type} for fn in host.functions.values()])

    async def host_status(request: Request) -> Response:
        return JSONResponse({"state": "Running" if host.running else "Stopped", "id": host.host_id})

    async def not_found(request: Request) -> Response:
        return _error(404, "not found")

    http_paths = [f"/{prefix}", f"/{prefix}/{{path:path}}"] if prefix else ["/{path:path}"]
    routed = Starlette(
        routes=[
            Route("/runtime/webhooks/eventgrid", eventgrid_webhook, methods=["POST", "OPTIONS"]),
            Route("/admin/functions/{name}", run_function, methods=["POST"]),
            Route("/admin/functions", list_functions, methods=["GET"]),
            Route("/admin/host/status", host_status, methods=["GET"]),
            *(Route(p, http_trigger, methods=list(ALL_METHODS)) for p in http_paths),
            Route("/{path:path}", not_found, methods=list(ALL_METHODS)),
        ]
    )
    return access.AccessGuard(routed, access.allowed_hosts(host.listen_host))


def takes_asgi_request(fn: IndexedFunction) -> bool:
    """Whether an HTTP function takes the FastAPI ``Request`` (``azurefunctions-extensions-http-fastapi``,
    Azure Functions' HTTP streams) instead of ``func.HttpRequest``."""
    return isinstance(fn.param_type, type) and issubclass(fn.param_type, Request)


async def _call_streaming(host: Host, fn: IndexedFunction, request: Request, route_params: dict[str, str]) -> Response:
    """As the worker's HTTP streams do: the function gets the request itself (body unread, route
    values as path parameters) and its FastAPI response is sent as is, a StreamingResponse chunk
    by chunk."""
    from fastapi import Request as FastApiRequest

    scope = dict(request.scope)
    scope["path_params"] = dict(route_params)
    fast_request = FastApiRequest(scope, request.receive)
    try:
        result = await host.invoker.call_async(fn, fast_request, reason="HTTP request", executor=host.function_executor)
    except Exception:  # already logged by the invoker; Azure answers 500 with no detail
        return _error(500, "the function failed")
    if isinstance(result, Response):
        return result
    return _to_starlette(result)


async def _deliver(host: Host, fn: IndexedFunction, events: Iterable[Any]) -> list[str]:
    """Invoke ``fn`` once per event, in order; the ids of the events whose invocation failed."""
    failed = []
    for event in events:
        try:
            await host.invoker.call_async(fn, event, reason="EventGrid delivery", executor=host.function_executor)
        except Exception:
            failed.append(event.id)
    return failed
