"""Which endpoint serves a model, and which endpoints a model still needs: the rules, used by
scoring, the model list and the health loop."""

from __future__ import annotations

import dataclasses

from shared.endpoints.naming import endpoint_name
from shared.endpoints.versions import is_newer, latest
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


def lived_in(endpoint: Record, model: Record) -> bool:
    """Whether the version of ``model`` (its model record, ``name:version``) lived or lives as a
    deployment of ``endpoint``: it was deployed there (beside a champion, or promoted in place:
    the model record names that endpoint), or ``endpoint`` is its own derived endpoint, where a
    later version was promoted beside it. A version deployed as its own endpoint elsewhere (the
    default, ``ROLLOUT_CANDIDATES`` off) did not: a rollback to it moves the route to that endpoint,
    never into ``endpoint`` (issue 30)."""
    name, version = split_model_ref(model.id)
    return str(model.get("endpoint") or "") == endpoint.id or endpoint_name(name, version) == endpoint.id


def deployment_live(endpoint: Record, deployment: str) -> bool:
    """Whether ``deployment`` still exists in ``endpoint`` (its champion, or a live candidate)."""
    return endpoint.get("deployment") == deployment or deployment in (endpoint.get("deployments") or [])


# ---- which endpoints a model still needs (the health loop heals exactly these)


@dataclasses.dataclass(frozen=True)
class Need:
    needed: bool
    reason: str  # why it is (or is not) needed, for logs and the ledger's heal_stopped_reason


def endpoint_need(endpoint: Record, route: Record | None) -> Need:
    """Whether ``endpoint``'s model still needs it, decided from the model's route (``active/<model>``)
    alone, so that rollback, promotion and replacement cannot disagree: a ``replaced_by`` mark is a
    note of history, never the decision (a rollback makes a replaced endpoint the serving one again).

    Needed: the endpoint the route serves; the version a rollback waits for (``rollback_to``); a
    version newer than the active one that would take over when ready (newer than the version a
    rollback stepped back from, too: :func:`shared.endpoints.lifecycle.activate`'s rule). Anything
    else is not (an older or rolled-back-from version; a client may still name it as a pin while
    its endpoint lives). Canary and pinned deployments, once recorded, are added here.
    """
    model_name = endpoint.get("model_name")
    version = str(endpoint.get("model_version") or "")
    if not model_name or route is None or not route.get("endpoint"):
        return Need(True, f"model {model_name or '?'} has no active endpoint yet: this one becomes active when ready")
    if route.get("endpoint") == endpoint.id:
        return Need(True, f"it serves model {model_name} (its route)")
    if version and str(route.get("rollback_to") or "") == version:
        return Need(True, f"a rollback of model {model_name} to version {version} waits for it")
    rolled_back_from = route.get("rolled_back_from")
    if is_newer(version, route.get("model_version")) and (not rolled_back_from or is_newer(version, rolled_back_from)):
        return Need(True, f"version {version} is newer than the active {route.get('model_version')}: it takes over when ready")
    if endpoint.get("replaced_by"):
        return Need(False, f"replaced by {endpoint.get('replaced_by')}")
    rolled = f", rolled back from version {rolled_back_from}" if rolled_back_from else ""
    return Need(False, f"model {model_name} is served by {route.get('endpoint')} (version {route.get('model_version')}{rolled})")
