"""Which endpoint serves a model: the one rule, used by scoring and the model list."""

from __future__ import annotations

import dataclasses

from shared.endpoints.naming import endpoint_name
from shared.endpoints.versions import latest
from shared.ledger import ENDPOINT, MODEL, Ledger, Record


@dataclasses.dataclass(frozen=True)
class Serving:
    model_name: str
    version: str  # "" when the route names no version
    endpoint: str  # endpoint name


def serving_endpoint(model_name: str, route: Record | None, versions: list[str]) -> Serving | None:
    """The endpoint that serves ``model_name``: the route's (``active/<model>``) when set, else
    the derived endpoint of the newest registered version; None when the model has neither."""
    if route is not None and route.get("endpoint"):
        return Serving(model_name, str(route.get("model_version") or ""), str(route.get("endpoint")))
    newest = latest(versions)
    if newest is None:
        return None
    return Serving(model_name, newest, endpoint_name(model_name, newest))


def split_model_ref(ref: str) -> tuple[str, str]:
    """``name:version`` (a model record's id) -> (name, version)."""
    name, _, version = ref.rpartition(":")
    return name, version


# ---- pinned versions: what a client may name in ``model``

# ``name`` and ``name:stable``: the version the route serves (moves only when a version becomes
# active or is rolled back to); ``name:latest``: the newest registered version; ``name:<version>``:
# exactly that version, served by its own endpoint for as long as that endpoint lives.
ALIAS_STABLE = "stable"
ALIAS_LATEST = "latest"


def parse_model_selector(text: str) -> tuple[str, str | None]:
    """``name``, ``name:<version>``, ``name:stable``, ``name:latest`` -> (name, selector or None)."""
    name, sep, selector = text.partition(":")
    if not sep or selector == ALIAS_STABLE:
        return name, None
    return name, selector


def selected_endpoint(model_name: str, selector: str | None, route: Record | None, versions: list[str]) -> Serving | None:
    """The endpoint of the version ``selector`` names (see :func:`parse_model_selector`); None when
    the model has no such version (or no version at all)."""
    if selector is None:
        return serving_endpoint(model_name, route, versions)
    version = latest(versions) if selector == ALIAS_LATEST else selector
    if version is None or version not in versions:
        return None
    return Serving(model_name, version, endpoint_name(model_name, version))


# ---- versions deployed beside another in one endpoint (shared.rollout)


def placement(ledger: Ledger, model_name: str, version: str, route: Record | None) -> tuple[str, str] | None:
    """(endpoint, deployment) where ``version`` of ``model_name`` lives as a named deployment of an
    endpoint (a candidate beside its champion, or a version promoted in place), None when it has
    its own endpoint (the derived name) as versions always had. The version the route serves
    is served unpinned (None)."""
    if route is not None and str(route.get("model_version") or "") == version:
        return None
    record = ledger.get(MODEL, f"{model_name}:{version}")
    if record is None or not record.get("deployment") or not record.get("endpoint"):
        return None
    endpoint = ledger.get(ENDPOINT, str(record.get("endpoint")))
    if endpoint is not None and not endpoint.get("deployments") and endpoint.get("model_version") == version:
        return None  # a version alone in its own endpoint
    return str(record.get("endpoint")), str(record.get("deployment"))


def deployment_live(endpoint: Record, deployment: str) -> bool:
    """Whether ``deployment`` still exists in ``endpoint`` (its champion, or a live candidate)."""
    return endpoint.get("deployment") == deployment or deployment in (endpoint.get("deployments") or [])
