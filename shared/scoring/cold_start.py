"""A model whose endpoint is not serving: what the client is told, and what is started.

An endpoint being deployed answers 503 with an honest ``Retry-After`` (this app's recent
deployment times); one that failed or stopped answering is healed by the health loop
(:mod:`shared.endpoints.healing`); a model with no live endpoint (the janitor deleted it as idle,
it never got one) is redeployed if ``scoring_redeploy_on_demand``: Azure ML managed endpoints
cannot scale to zero, so deleting and redeploying on demand is how this app scales from zero.
Each request is made at most once per interval per worker (:meth:`ColdStart._claim_redeploy`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.backends.base import EP_FAILED, EP_PROVISIONING, EP_SUCCEEDED, MLBackend, ModelRef
from shared.endpoints import healing
from shared.endpoints.capacity import CapacityError
from shared.endpoints.serving import serving_endpoint
from shared.ledger import ENDPOINT, ROUTE, Ledger, Record
from shared.scoring.contract import UNAVAILABLE, ScoringError
from shared.scoring.upstream import Route
from shared.settings import Settings

log = logging.getLogger(__name__)

Redeploy = Callable[[ModelRef], Any]


def _deploy_model_scale_from_zero(settings: Settings, ledger: Ledger, backend: MLBackend) -> Redeploy:
    def redeploy(model: ModelRef) -> Any:
        from shared.context import Context
        from shared.endpoints.lifecycle import deploy_model  # the owner of endpoint records

        return deploy_model(model, ctx=Context(settings, ledger, backend), reason="scale-from-zero")

    return redeploy


class ColdStart:
    """Part of :class:`shared.scoring.scorer.Scorer` (which holds the state: ``_redeploy_requested``,
    ``_refused``, the lock, the clock); routes are forgotten and model versions read through its
    :class:`shared.scoring.resolution.RouteResolution` part."""

    settings: Settings
    ledger: Any
    backend: Any
    _redeploy: Redeploy | None
    _redeploy_requested: dict[str, float]
    _refused: dict[str, str]
    _lock: threading.Lock
    _clock: Callable[[], float]

    def _context(self) -> Any:
        from shared.context import Context

        return Context(self.settings, self.ledger, self.backend)

    def _unreachable(self, route: Route) -> ScoringError | None:
        """The endpoint did not answer twice: if its backend agrees it is down, start healing it
        and answer 503 + Retry-After; None (a plain 502) when the backend says it is fine."""
        if not self._claim_redeploy(f"health:{route.endpoint}", healing.PROBE_INTERVAL_S):
            record = self.ledger.get(ENDPOINT, route.endpoint)
        else:
            record = healing.report_unreachable(self._context(), route.endpoint)
        if record is None or record.state == EP_SUCCEEDED:
            return None
        self.forget_route(route.model_name)
        if record.state == EP_PROVISIONING:
            return ScoringError(503, f"the endpoint of model {route.model_name} stopped answering and is being redeployed; "
                                     "retry later", type=UNAVAILABLE, code="endpoint_healing",
                                retry_after=healing.retry_after_s(record, self.settings))
        return self._healing(route.model_name, record, record)

    def _healing(self, model_name: str, failed: Record, current: Record) -> ScoringError:
        if current.state == EP_PROVISIONING or healing.is_healing(current, self.settings):
            return ScoringError(503, f"the endpoint of model {model_name} is unhealthy and being redeployed; retry later",
                                type=UNAVAILABLE, code="endpoint_healing",
                                retry_after=healing.retry_after_s(current, self.settings))
        if current.state == EP_FAILED and current.get("heal_stopped_at"):
            # No Retry-After: it will not come back by itself (a new model version, or a person, is needed).
            return ScoringError(503, f"the endpoint of model {model_name} failed and is not redeployed any more: "
                                     f"{current.get('heal_stopped_reason') or current.get('error')}",
                                type=UNAVAILABLE, code="endpoint_failed")
        return self._scale_from_zero(self._model_ref(model_name, str(failed.get("model_version") or ""), failed), current.state)

    # ---- scale from zero

    def _deploy_retry_after(self, endpoint: Record | None) -> int:
        """An honest Retry-After: this app's recent deployment times (see shared.endpoints.eta)."""
        from shared.endpoints.eta import retry_after_s

        try:
            history = self.ledger.list(ENDPOINT)
        except Exception:  # noqa: BLE001 - an estimate must never fail the answer
            log.debug("no deployment history for the Retry-After estimate", exc_info=True)
            history = []
        return retry_after_s(endpoint, history, datetime.now(UTC), self.settings.scoring_retry_after_s)

    def _scale_from_zero(self, model: ModelRef, endpoint_state: str) -> ScoringError:
        not_serving = self._not_serving(model)
        if not_serving is not None:
            return not_serving
        retry_after = self.settings.scoring_retry_after_s
        if self.settings.scoring_redeploy_on_demand:
            retry_after = self._deploy_retry_after(None)
        if not self.settings.scoring_redeploy_on_demand:
            log.info("model %s has no live endpoint (%s); redeploy on demand is off", model.ref, endpoint_state)
            return ScoringError(
                503,
                f"model {model.name} has no live endpoint and redeploy on demand is off",
                type=UNAVAILABLE,
                code="no_endpoint",
                retry_after=retry_after,
            )
        if model.version and self._claim_redeploy(model.ref, retry_after):
            log.info("scale from zero: redeploying %s (its endpoint is %s)", model.ref, endpoint_state)
            try:
                redeploy = self._redeploy or _deploy_model_scale_from_zero(self.settings, self.ledger, self.backend)
                redeploy(model)
                self._refused.pop(model.ref, None)
            except CapacityError as exc:  # asked again after Retry-After (the claim): room may be freed by then
                self._refused[model.ref] = str(exc)
            except Exception:
                log.error("could not start redeploying %s", model.ref, exc_info=True)
        refused = self._refused.get(model.ref)
        if refused is not None:
            return ScoringError(503, f"model {model.name} was scaled to zero and cannot be redeployed now: {refused}",
                                type=UNAVAILABLE, code="capacity", retry_after=retry_after)
        return ScoringError(
            503,
            f"model {model.name} was scaled to zero; version {model.version} is being redeployed, retry in {retry_after} s",
            type=UNAVAILABLE,
            code="scaled_to_zero",
            retry_after=retry_after,
        )

    def _not_serving(self, model: ModelRef) -> ScoringError | None:
        """Only the version a model's route serves scales from zero (a pin of any other version must
        not start an endpoint): the 404 for a pinned version that is not deployed, None for the serving one."""
        serving = serving_endpoint(model.name, self.ledger.get(ROUTE, model.name), self._registered_versions(model.name))
        if serving is None or not serving.version or serving.version == model.version:
            return None
        log.info("pinned %s has no live endpoint; only version %s of %s is started on demand", model.ref,
                 serving.version, model.name)
        return ScoringError(404, f"version {model.version} of model {model.name!r} is not deployed (only the version "
                                 f"that serves, {serving.version}, is started on demand)",
                            param="model", code="version_not_deployed")

    def _claim_redeploy(self, model_ref: str, interval_s: float) -> bool:
        """At most one redeploy request per model version per worker per interval (deploy_model is idempotent anyway)."""
        now = self._clock()
        with self._lock:
            last = self._redeploy_requested.get(model_ref)
            if last is not None and now - last < interval_s:
                return False
            self._redeploy_requested[model_ref] = now
            return True
