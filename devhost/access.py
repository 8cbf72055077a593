"""Who may call the local host: its function key, loopback ``Host`` values, no cross-site writes.

A web page the developer opens can reach ``127.0.0.1`` too: a simple cross-site POST needs no
preflight (it could start the janitor or reconcile), and DNS rebinding lets a page read answers
under its own host name. So every request, before any route runs (:class:`AccessGuard`):

- its ``Host`` must be a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``, with any port) or
  the address the host was told to listen on: 403 otherwise (DNS rebinding sends the attacker's name);
- a request that changes things (any method but GET, HEAD, OPTIONS) is refused (403) when the
  browser says it comes from another site: ``Sec-Fetch-Site: cross-site`` or ``same-site``, or an
  ``Origin`` that is not the host's own (``null`` included);
- FUNCTION / ADMIN routes and the Event Grid webhook take the function key (``x-functions-key``
  header or ``code=`` query, as Azure's ``code=`` on webhook URLs): 401 without it
  (:func:`authorized`). ``make up`` always runs the host with one (:func:`stack_function_key`).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.settings import PROJECT_ROOT

KEY_FILE = PROJECT_ROOT / ".local" / "function_key"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARD = frozenset({"", "0.0.0.0", "::", "[::]"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(value: str) -> str:
    """``Host`` header value -> the name without its port, lower case (``[::1]:7071`` -> ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(listen_host: str) -> frozenset[str]:
    """Loopback names, and the address the host listens on when it was given one (not a wildcard)."""
    extra = {host_name(f"[{listen_host}]" if ":" in listen_host and not listen_host.startswith("[") else listen_host)}
    return LOOPBACK_HOSTS | (extra - _WILDCARD)


def refusal(method: str, headers: dict[str, str], hosts: Iterable[str]) -> str | None:
    """Why this request is refused (403), or None: a foreign ``Host``, or a cross-site write (module doc)."""
    host = headers.get("host", "")
    if host_name(host) not in set(hosts):
        return (f"Host {host[:100]!r} is not this local host (only {', '.join(sorted(hosts))} are served: "
                "a page on another site cannot reach it by DNS rebinding)")
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in {"cross-site", "same-site"}:
        return f"a {site} {method.upper()} is refused (Sec-Fetch-Site): the local host takes writes from itself and from tools only"
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip())
        if parts.scheme not in {"http", "https"} or parts.netloc.lower() != host.strip().lower():
            return f"a cross-origin {method.upper()} from Origin {origin[:100]!r} is refused: the local host takes writes from itself and from tools only"
    return None


def authorized(function_key: str, presented: str) -> bool:
    """Whether ``presented`` is the function key (always, when no key is configured)."""
    if not function_key:
        return True
    return hmac.compare_digest(presented.encode(), function_key.encode())


class AccessGuard:
    """ASGI middleware applying :func:`refusal` to every HTTP request before it is routed."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]):
        self.app = app
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        problem = refusal(str(scope.get("method", "GET")), headers, self.hosts)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": problem}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def stack_function_key(configured: str, path: Path = KEY_FILE) -> tuple[str, str]:
    """The key ``make up`` runs the host with: (key, where it came from).

    ``FUNCTION_KEY`` when set; else the one kept in ``path`` (``.local/function_key``, mode 0600)
    by an earlier ``make up``; else a new random one written there.
    """
    if configured:
        return configured, "FUNCTION_KEY"
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        os.chmod(path, 0o600)
        return kept, str(path)
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key, f"{path} (new)"
