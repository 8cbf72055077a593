"""Health of an Azure ML managed online endpoint, for the healing loop (``AzureMLBackend.endpoint_health``).

What the service publishes, and what is read (Azure/azure-rest-api-specs,
specification/machinelearningservices, ``OnlineEndpoint`` / ``OnlineDeployment``):

- the endpoint's ``properties.provisioningState`` (EndpointProvisioningState: Creating,
  Deleting, Succeeded, Failed, Updating, Canceled);
- its deployment's ``properties.provisioningState`` (DeploymentProvisioningState: Creating,
  Deleting, Scaling, Updating, Succeeded, Failed, Canceled);
- the endpoint's ``traffic``: an endpoint that routes no traffic to a deployment that exists
  does not serve.

The REST API publishes no per-instance status. Instances whose container keeps crashing fail
the deployment's liveness probe, and the service then reports the deployment ``Failed`` (or
keeps it ``Updating``/``Scaling`` while it restarts them); the healing loop's per-state
timeouts (:mod:`shared.reconcile.sweep`) cover a deployment stuck in those. When a deployment
is unhealthy the last lines of its inference-server log (``POST .../deployments/{name}/getLogs``,
``DeploymentLogsRequest{containerType, tail}`` -> ``{"content": ...}``; the SDK's
``online_deployments.get_logs``) are added to the reason, so ``status`` can say why.

Every call is bounded by the SDK client's own timeouts; errors reading the workspace give
HEALTH_UNKNOWN (the loop then acts on nothing), never an exception.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.backends.base import HEALTH_HEALTHY, HEALTH_MISSING, HEALTH_STARTING, HEALTH_UNHEALTHY, HEALTH_UNKNOWN, EndpointHealth

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 5
_STARTING = {"creating", "updating", "scaling"}
_BROKEN = {"failed", "canceled"}


def _state(resource: Any) -> str:
    """The provisioning state as a lowercase word (the SDK gives a str or a str enum)."""
    value = getattr(resource, "provisioning_state", None)
    return str(getattr(value, "value", value) or "").lower()


def _not_found(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or (isinstance(exc, HttpResponseError) and exc.status_code == 404)


def _log_tail(workspace: Any, endpoint_name: str, deployment: str) -> str:
    try:
        content = workspace.online_deployments.get_logs(deployment, endpoint_name, LOG_TAIL_LINES)
    except Exception:  # noqa: BLE001 - logs only add detail to the reason
        log.debug("could not read the logs of %s/%s", endpoint_name, deployment, exc_info=True)
        return ""
    lines = [line.strip() for line in str(content or "").splitlines() if line.strip()]
    return f"; last log line: {lines[-1][:200]}" if lines else ""


def serving_deployment(endpoint: Any, default: str) -> str:
    """The deployment that serves ``endpoint``: the one taking the largest share of its traffic (a
    promoted candidate, or a version rolled back to inside the endpoint, serves under its own
    name), ``default`` when none takes any (or on a tie that includes it)."""
    traffic = {str(k): int(v) for k, v in (getattr(endpoint, "traffic", None) or {}).items() if int(v) > 0}
    if not traffic:
        return default
    top = max(traffic.values())
    leaders = sorted(name for name, share in traffic.items() if share == top)
    return default if default in leaders else leaders[0]


def endpoint_health(workspace: Any, endpoint_name: str, deployment: str) -> EndpointHealth:
    """Health of ``endpoint_name`` from its endpoint and its serving deployment (see the module doc;
    ``deployment`` when no deployment takes traffic yet)."""
    try:
        endpoint = workspace.online_endpoints.get(endpoint_name)
    except Exception as exc:  # noqa: BLE001
        if _not_found(exc):
            return EndpointHealth(HEALTH_MISSING, f"endpoint {endpoint_name} does not exist in the workspace")
        return EndpointHealth(HEALTH_UNKNOWN, f"cannot read endpoint {endpoint_name}: {type(exc).__name__}")
    ep_state = _state(endpoint)
    if ep_state == "deleting":
        return EndpointHealth(HEALTH_MISSING, f"endpoint {endpoint_name} is being deleted")
    if ep_state in _BROKEN:
        return EndpointHealth(HEALTH_UNHEALTHY, f"endpoint {endpoint_name} provisioning state is {ep_state}")
    if ep_state in _STARTING:
        return EndpointHealth(HEALTH_STARTING, f"endpoint {endpoint_name} is {ep_state}")
    deployment = serving_deployment(endpoint, deployment)
    try:
        dep = workspace.online_deployments.get(deployment, endpoint_name)
    except Exception as exc:  # noqa: BLE001
        if _not_found(exc):
            return EndpointHealth(HEALTH_UNHEALTHY, f"deployment {deployment} of endpoint {endpoint_name} does not exist")
        return EndpointHealth(HEALTH_UNKNOWN, f"cannot read deployment {deployment} of {endpoint_name}: {type(exc).__name__}")
    dep_state = _state(dep)
    if dep_state in _BROKEN:
        reason = f"deployment {deployment} of endpoint {endpoint_name} provisioning state is {dep_state}"
        return EndpointHealth(HEALTH_UNHEALTHY, reason + _log_tail(workspace, endpoint_name, deployment))
    if dep_state in _STARTING or dep_state == "":
        return EndpointHealth(HEALTH_STARTING, f"deployment {deployment} is {dep_state or 'starting'}")
    if dep_state == "deleting":
        return EndpointHealth(HEALTH_UNHEALTHY, f"deployment {deployment} of endpoint {endpoint_name} is being deleted")
    traffic = {str(k): int(v) for k, v in (getattr(endpoint, "traffic", None) or {}).items()}
    if traffic.get(deployment, 0) <= 0:
        # Succeeded but not routed: traffic is set by the app once the deployment succeeds.
        return EndpointHealth(HEALTH_STARTING, f"deployment {deployment} succeeded; traffic not routed to it yet")
    return EndpointHealth(HEALTH_HEALTHY, f"endpoint and deployment {deployment} succeeded, {traffic[deployment]}% traffic")
