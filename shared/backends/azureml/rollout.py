"""A second deployment in one managed online endpoint, its traffic, its figures (Azure ML).

The requests are Azure ML's safe-rollout sequence (how-to-safely-rollout-online-endpoints; the
azureml-examples script ``cli/deploy-safe-rollout-online-endpoints.sh``): a deployment PUT of the
candidate into the existing endpoint (no traffic: an endpoint's ``traffic`` names only the
deployments that take some), an endpoint PUT whose ``traffic`` splits live requests
(``{"blue": 90, "green": 10}``), one that gives the candidate 100, then a DELETE of the old
deployment. Every call is one request through azure-ai-ml's generated operations with
``polling=False`` (:mod:`shared.backends.azureml.single_requests`): nothing polls in a thread afterwards;
``get_deployment`` is how progress is read.

Live figures per deployment come from Azure Monitor's metrics of the endpoint resource
(``Microsoft.MachineLearningServices/workspaces/onlineEndpoints``), split by the ``deployment``
dimension: ``RequestsPerMinute`` (requests; with ``statusCodeClass`` eq ``5xx``: errors) and
``RequestLatency_P95`` (milliseconds). Names, dimensions and aggregations are those of Azure
Monitor's published table for that resource type (supported-metrics
microsoft-machinelearningservices-workspaces-onlineendpoints-metrics; a copy in
tests/fixtures/azure-monitor): both metrics list only the ``Average`` aggregation, so at PT1M a
minute's ``RequestsPerMinute`` average is that minute's request count, summed over the window.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.deployment_spec import managed_deployment
from shared.backends.azureml.errors import azure_errors
from shared.backends.base import (
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    BackendError,
    DeploymentInfo,
    DeploymentMetrics,
    ModelRef,
    NotFoundError,
    TransientBackendError,
    check_traffic,
)

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
REQUESTS_METRIC = "RequestsPerMinute"
P95_METRIC = "RequestLatency_P95"
DEPLOYMENT_DIMENSION = "deployment"
STATUS_CLASS_DIMENSION = "statusCodeClass"

_STATES = {"creating": EP_PROVISIONING, "updating": EP_PROVISIONING, "scaling": EP_PROVISIONING,
           "succeeded": EP_SUCCEEDED, "failed": EP_FAILED, "canceled": EP_FAILED, "deleting": EP_DELETING}


def deployment_state(provisioning_state: Any) -> str:
    return _STATES.get(str(getattr(provisioning_state, "value", provisioning_state) or "").lower(), EP_PROVISIONING)


def deployment_ops(ws: Any) -> Any:
    return ws.online_deployments._online_deployment  # service client 2023-04-01-preview


def start_deployment_delete(ws: Any, endpoint_name: str, deployment_name: str) -> None:
    """DELETE one deployment; the 202's operation is not polled."""
    deployment_ops(ws).begin_delete(endpoint_name=endpoint_name, deployment_name=deployment_name, polling=False,
                                    resource_group_name=ws.resource_group_name, workspace_name=ws.workspace_name)


def get_deployment_rest(ws: Any, endpoint_name: str, deployment_name: str) -> Any:
    """One GET of a deployment (the generated operation, not the SDK's wrapper that also reads the endpoint)."""
    return deployment_ops(ws).get(endpoint_name=endpoint_name, deployment_name=deployment_name,
                                  resource_group_name=ws.resource_group_name, workspace_name=ws.workspace_name)


def deployment_info(rest_deployment: Any, traffic: int = 0) -> DeploymentInfo:
    props = rest_deployment.properties
    state = deployment_state(getattr(props, "provisioning_state", None))
    tags = dict(getattr(rest_deployment, "tags", None) or {})
    error = None
    if state == EP_FAILED:
        error = f"deployment {rest_deployment.name} provisioning {getattr(props, 'provisioning_state', '')}"
    return DeploymentInfo(name=str(rest_deployment.name), state=state, model=tags.get("model"), traffic=traffic,
                          error=error)


def begin_deploy_deployment(backend: Any, model: ModelRef, endpoint_name: str, deployment_name: str) -> None:
    """PUT ``model`` as deployment ``deployment_name`` of an existing endpoint (no traffic)."""
    deployment = managed_deployment(backend.settings, deployment_name, endpoint_name, backend._model_arm_id(model.ref), model.ref)
    with azure_errors(f"creating deployment {deployment_name} of endpoint {endpoint_name}"):
        rest.start_deployment_put(backend.workspace, deployment, backend.location())
    log.info("started deployment %s of %s beside the serving one in endpoint %s", deployment_name, model.ref, endpoint_name)


def set_traffic_split(backend: Any, endpoint_name: str, traffic: dict[str, int], mirror: dict[str, int] | None) -> None:
    """One endpoint PUT with ``traffic`` (the endpoint read moments ago, else one GET first)."""
    if mirror:
        # azure-ai-ml 1.35 sends endpoint PUTs with 2022-02-01-preview; no published OnlineEndpoint example
        # (of that api-version or any other the specs repository holds) carries mirrorTraffic, so a mirror
        # cannot be sent in a published shape (docs/azureml-backend.md); the local workspace mirrors.
        raise BackendError("mirrored traffic is not supported on the Azure ML backend of this app")
    endpoint = backend._recent_endpoint(endpoint_name)
    if endpoint is None:
        raise NotFoundError(f"endpoint {endpoint_name} does not exist")
    current = {str(k): int(v) for k, v in (endpoint.traffic or {}).items() if int(v)}
    known = set(current) | set(traffic)
    check_traffic(endpoint_name, traffic, known)
    wanted = {k: int(v) for k, v in traffic.items() if int(v)}
    if current == wanted:
        return
    endpoint.traffic = wanted
    full = [k for k, v in wanted.items() if v == 100]
    if full:  # the deployment given everything is the endpoint's now: its model is the one to redeploy
        model = backend._deployment_models.get((endpoint_name, full[0]))
        if model:
            endpoint.tags = {**(endpoint.tags or {}), "model": model, "model_version": model.rpartition(":")[2]}
    with azure_errors(f"routing traffic of endpoint {endpoint_name}: {wanted}"):
        rest.start_endpoint_put(backend.workspace, endpoint, str(endpoint.location or "") or backend.location())
    backend._forget_endpoint(endpoint_name)  # the read above no longer says what the endpoint routes
    log.info("endpoint %s traffic: %s", endpoint_name, wanted)


def deployment_metrics(backend: Any, endpoint_name: str, since: datetime) -> dict[str, DeploymentMetrics]:
    """Requests, 5xx and p95 per deployment since ``since`` (Azure Monitor, PT1M)."""
    from azure.monitor.querymetrics import MetricAggregationType, MetricsClient

    # The endpoint's resource id and region are known without reading it (no ARM call per look).
    region = str(backend.location()).lower().replace(" ", "")
    client = backend._metrics_clients.get(region)
    if client is None:
        client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", backend.credential)
        backend._metrics_clients[region] = client
    start = since.astimezone(UTC).replace(second=0, microsecond=0)
    end = max(datetime.now(UTC), start + timedelta(minutes=1))
    resource = f"{backend.workspace_id}/onlineEndpoints/{endpoint_name}"
    try:
        requests = client.query_resources(
            resource_ids=[resource], metric_namespace=METRICS_NAMESPACE, metric_names=[REQUESTS_METRIC],
            timespan=(start, end), granularity=timedelta(minutes=1), aggregations=[MetricAggregationType.AVERAGE],
            filter=f"{DEPLOYMENT_DIMENSION} eq '*' and {STATUS_CLASS_DIMENSION} eq '*'")
        latency = client.query_resources(
            resource_ids=[resource], metric_namespace=METRICS_NAMESPACE, metric_names=[P95_METRIC],
            timespan=(start, end), granularity=timedelta(minutes=1), aggregations=[MetricAggregationType.AVERAGE],
            filter=f"{DEPLOYMENT_DIMENSION} eq '*'")
    except Exception as exc:  # noqa: BLE001 - figures unavailable now: the canary waits, never decides blind
        raise TransientBackendError(f"Azure Monitor metrics of endpoint {endpoint_name}: {type(exc).__name__}") from None
    counts: dict[str, list[float]] = {}
    for result in requests:
        for metric in result.metrics:
            for series in metric.timeseries:
                dims = {str(k).lower(): str(v) for k, v in (series.metadata_values or {}).items()}
                name = dims.get(DEPLOYMENT_DIMENSION.lower())
                if not name:
                    continue
                total = sum(float(p.average or 0) for p in series.data)  # per minute: that minute's requests
                entry = counts.setdefault(name, [0.0, 0.0])
                entry[0] += total
                if dims.get(STATUS_CLASS_DIMENSION.lower(), "").lower() == "5xx":
                    entry[1] += total
    p95: dict[str, float] = {}
    for result in latency:
        for metric in result.metrics:
            for series in metric.timeseries:
                dims = {str(k).lower(): str(v) for k, v in (series.metadata_values or {}).items()}
                name = dims.get(DEPLOYMENT_DIMENSION.lower())
                values = [float(p.average) for p in series.data if p.average is not None]
                if name and values:
                    p95[name] = max(values)  # the worst minute's p95: a conservative window figure
    return {name: DeploymentMetrics(requests=int(round(c[0])), errors=int(round(c[1])), p95_ms=p95.get(name))
            for name, c in counts.items()}


class SideBySideDeployments:
    """The rollout part of :class:`~shared.backends.azureml.backend.AzureMLBackend`: a candidate's deployment
    beside the serving one, read, deleted, and its live figures."""

    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        begin_deploy_deployment(self, model, endpoint_name, deployment)
        self._deployment_models[(endpoint_name, deployment)] = model.ref

    def get_deployment(self, endpoint_name: str, deployment: str) -> Any:
        try:
            with azure_errors(f"reading deployment {deployment} of endpoint {endpoint_name}"):
                found = get_deployment_rest(self.workspace, endpoint_name, deployment)
        except NotFoundError:
            return None
        info = deployment_info(found)
        if info.model:
            self._deployment_models[(endpoint_name, deployment)] = info.model
        return info

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        with azure_errors(f"deleting deployment {deployment} of endpoint {endpoint_name}"):
            start_deployment_delete(self.workspace, endpoint_name, deployment)
        self._deployment_models.pop((endpoint_name, deployment), None)
        log.info("started deleting deployment %s of endpoint %s", deployment, endpoint_name)

    def deployment_metrics(self, endpoint_name: str, since: datetime) -> Any:
        return deployment_metrics(self, endpoint_name, since)
