"""Which endpoint answers a model reference, and how to call it: the scorer's cached routes.

A client names ``name``, ``name:<version>``, ``name:latest`` or ``name:stable``; the ledger says
which endpoint serves it (``active/<model_name>``, a pinned version's placement), the backend where
and how to call it (:class:`ScoringTarget`). A route is trusted for ``ROUTE_TTL_S`` seconds, its
target until the endpoint answers 401/403 (keys rotate) or stops answering. While storage is down
a route read before serves within its staleness limit (:mod:`.routes`).
"""

from __future__ import annotations

import logging
from typing import Any

import urllib3

from shared.backends.base import (
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    BackendError,
    ModelRef,
    NotFoundError,
    ScoringTarget,
    TransientBackendError,
)
from shared.endpoints import healing
from shared.endpoints.serving import deployment_live, parse_model_selector, placement, selected_endpoint
from shared.endpoints.versions import version_key
from shared.ledger import ENDPOINT, MODEL, ROUTE, Record
from shared.scoring.contract import UNAVAILABLE, UPSTREAM_ERROR, ScoringError
from shared.scoring.upstream import BUSY_RETRY_AFTER_S, CONNECT_TIMEOUT_S, Route

log = logging.getLogger(__name__)

# How long a worker trusts its cached model -> endpoint route before re-reading the ledger.
# A newly activated model is picked up within this time; a deleted endpoint is noticed at
# once anyway (the call fails and the route is re-resolved).
ROUTE_TTL_S = 10.0


class RouteResolution:
    """Part of :class:`shared.scoring.scorer.Scorer` (which holds the state: ``_routes``, ``pools``,
    ``route_reads``, the clock); a model without a live endpoint is answered by its
    :class:`shared.scoring.cold_start.ColdStart` part."""

    _routes: dict[str, Route]
    _route_ttl_s: float
    ledger: Any
    backend: Any
    pools: Any
    route_reads: Any
    _clock: Any

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
            pool=self.pools.get(target.url),
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
                f"settle:{ep_name}", healing.SETTLE_INTERVAL_S):
            endpoint = healing.settle_if_ready(self._context(), endpoint)  # (re)deployed meanwhile: serve at once
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
            raise self._healing(model_name, endpoint, healing.heal_if_due(self._context(), endpoint))
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
