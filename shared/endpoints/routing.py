"""Which endpoint serves a model: the one rule, used by scoring and the model list."""

from __future__ import annotations

import dataclasses

from shared.endpoints.naming import endpoint_name
from shared.endpoints.versions import latest
from shared.ledger import Record


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
