"""Rollback: make an earlier version of a model the one its route serves again, at once when its
endpoint still serves, else once its redeployed endpoint is ready (:func:`shared.endpoints.lifecycle.activate`);
inside one endpoint, traffic moves between its deployments (:mod:`shared.rollout`).
``python -m shared.cli rollback`` is :func:`cli_rollback`."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from shared.backends.base import EP_SUCCEEDED
from shared.context import Context, context
from shared.endpoints import capacity, deletion
from shared.endpoints.lifecycle import clear_replaced_mark, deploy_model, model_ref_of
from shared.endpoints.naming import endpoint_name
from shared.endpoints.serving import lived_in
from shared.endpoints.versions import is_newer, version_key
from shared.ledger import ConflictError, Record, iso, retry_on_conflict, utcnow
from shared.ledger import records as R
from shared.rollout import roll_back_in_endpoint

log = logging.getLogger(__name__)


class RollbackError(ValueError):
    """The rollback cannot be done as asked (unknown model or version, nothing older); says why."""


@dataclasses.dataclass(frozen=True)
class Rollback:
    model_name: str
    from_version: str | None
    to_version: str
    endpoint: str
    state: str  # "active": serving now; "redeploying": its endpoint is being redeployed, active when ready


def rollback(
    model_name: str,
    version: str | None = None,
    *,
    ctx: Context,
) -> Rollback:
    """Make an earlier version of ``model_name`` the one its route serves (default: the newest
    version older than the active one).

    When that version's endpoint still serves, the route points at it at once; otherwise its
    endpoint is redeployed and the route records ``rollback_to``: the current version keeps serving
    until the old one is ready, then :func:`activate` switches. Either way the route keeps
    ``rolled_back_from`` (no version up to it takes over automatically again; a newer fine-tune
    does) and the rollback is appended to its ``rollbacks`` history.
    """
    prefix = f"{model_name}:"
    models = {r.id[len(prefix):]: r for r in ctx.ledger.list(R.MODEL) if r.id.startswith(prefix)}
    route = ctx.ledger.get(R.ROUTE, model_name)
    if not models:
        raise RollbackError(f"no registered model named {model_name!r}")
    current = str(route.get("model_version") or "") or None if route is not None else None
    if version is None:
        older = [v for v in models if current is None or is_newer(current, v)]
        if not older:
            raise RollbackError(f"model {model_name!r} has no version older than {current} to roll back to")
        version = max(older, key=version_key)
    if version not in models:
        known = ", ".join(sorted(models, key=version_key))
        raise RollbackError(f"model {model_name!r} has no version {version!r} (registered: {known})")
    if version == current and route is not None and not route.get("rollback_to"):
        raise RollbackError(f"version {version} of {model_name!r} is already the active one")
    serving_ep = ctx.ledger.get(R.ENDPOINT, str(route.get("endpoint") or "")) if route is not None else None
    if (serving_ep is not None and serving_ep.state == EP_SUCCEEDED
            and str(serving_ep.get("model_version") or "") != version
            and lived_in(serving_ep, models[version])):
        # The version lived (or lives) as a deployment of the serving endpoint: traffic moves between
        # that endpoint's deployments (shared.rollout), never to another endpoint.
        state = roll_back_in_endpoint(model_ref_of(models[version]), serving_ep, ctx)
        log.info("rolling %s back from version %s to %s inside endpoint %s (%s)", model_name, current, version,
                 serving_ep.id, state)
        return Rollback(model_name, current, version, serving_ep.id, state)
    ep_name = endpoint_name(model_name, version)
    endpoint = ctx.ledger.get(R.ENDPOINT, ep_name)
    info = deletion.current_endpoint(ctx.backend, ep_name) if endpoint is not None and endpoint.state == EP_SUCCEEDED else None
    live = info is not None and info.state == EP_SUCCEEDED
    now = iso(utcnow()) or ""
    entry = {"at": now, "from_version": current, "to_version": version, "endpoint": ep_name,
             "redeployed": not live}

    def hold(existing: Record | None) -> str | None:
        held = [v for v in (current, existing.get("rolled_back_from") if existing else None) if v]
        return max(held, key=version_key) if held else None

    def attempt() -> None:
        existing = ctx.ledger.get(R.ROUTE, model_name)
        history = list((existing.get("rollbacks") if existing else None) or [])[-19:] + [entry]
        if live:
            fields = {"endpoint": ep_name, "model_version": version, "since": now, "rollback_to": None,
                      "previous_endpoint": existing.get("endpoint") if existing else None}
        else:
            fields = {"rollback_to": version}
        fields.update(rolled_back_from=hold(existing), rollbacks=history)
        if existing is None:
            fields.setdefault("endpoint", None)
            if ctx.ledger.create(R.ROUTE, model_name, R.ROUTE_SET, **fields) is None:
                raise ConflictError(f"route/{model_name} created concurrently")
        else:
            ctx.ledger.update(existing, R.ROUTE_SET, **fields)

    retry_on_conflict(attempt, f"active/{model_name}")
    if live:
        clear_replaced_mark(ep_name, ctx)
        log.info("rolled %s back from version %s to %s (endpoint %s)", model_name, current, version, ep_name)
        return Rollback(model_name, current, version, ep_name, "active")
    model = model_ref_of(models[version])
    deploy_model(model, ctx=ctx, reason="rollback")
    log.info("rolling %s back from version %s to %s: redeploying it to %s", model_name, current, version, ep_name)
    return Rollback(model_name, current, version, ep_name, "redeploying")


def cli_rollback(args: Any) -> int:
    """``python -m shared.cli rollback MODEL [VERSION]`` (or ``MODEL:VERSION``, as ``model`` names it in scoring)."""
    model, version = args.model, args.version
    if version is None and ":" in model:
        model, _, version = model.rpartition(":")
    try:
        done = rollback(model, version or None, ctx=context())
    except (RollbackError, capacity.CapacityError) as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 2
    if done.state == "active":
        print(f"{done.model_name}: version {done.to_version} is active again (was {done.from_version}), "
              f"served by endpoint {done.endpoint}")
    else:
        print(f"{done.model_name}: redeploying version {done.to_version} to endpoint {done.endpoint}; it becomes "
              f"active when ready (version {done.from_version} serves until then)")
    return 0
