"""Where and how to call an endpoint: its scoring URI and key (or token), kept until the token expires."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.deployment_spec import DEPLOYMENT_NAME
from shared.backends.azureml.errors import azure_errors
from shared.backends.base import BackendError, NotFoundError, ScoringTarget, TransientBackendError

SCORING_TIMEOUT_S = 90.0


@dataclasses.dataclass(frozen=True)
class CachedTarget:
    target: ScoringTarget
    expires_at: float | None  # epoch seconds; None: a key, valid until regenerated


class ScoringTargets:
    """The scoring part of :class:`~shared.backends.azureml.backend.AzureMLBackend` (its workspace, lock and endpoint reads)."""

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        target = self._endpoint_target(endpoint_name, refresh)
        # Unpinned, the endpoint's traffic split decides; pinned, the header names the deployment.
        return dataclasses.replace(target, deployment=deployment)

    def _endpoint_target(self, endpoint_name: str, refresh: bool) -> ScoringTarget:
        now = time.time()
        with self._lock:
            cached = self._targets.get(endpoint_name)
        if cached is not None and not refresh and (cached.expires_at is None or cached.expires_at - 60 > now):
            return cached.target
        endpoint = self._read_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_name} does not exist")
        if not endpoint.scoring_uri:
            raise TransientBackendError(f"endpoint {endpoint_name} has no scoring URI yet")
        with azure_errors(f"reading the credentials of endpoint {endpoint_name}"):
            creds = rest.endpoint_credentials(self.workspace, endpoint)
        key = getattr(creds, "primary_key", None) or getattr(creds, "access_token", None)
        if not key:
            raise BackendError(f"endpoint {endpoint_name} returned no key or token")
        expiry = getattr(creds, "expiry_time_utc", None)
        target = ScoringTarget(url=str(endpoint.scoring_uri), key=str(key), timeout_s=SCORING_TIMEOUT_S)
        with self._lock:
            self._targets[endpoint_name] = CachedTarget(target, float(expiry) if expiry else None)
        return target

    def endpoint_health(self, endpoint_name: str) -> Any:
        from shared.backends.azureml.endpoint_health import endpoint_health  # endpoint + deployment provisioning state

        return endpoint_health(self.workspace, endpoint_name, DEPLOYMENT_NAME)
