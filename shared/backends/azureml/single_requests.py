"""Single ARM calls through azure-ai-ml's own generated clients: no poller, no extra lookups.

The SDK's public ``begin_*`` methods start an ``LROPoller`` that polls the operation in a daemon
thread of the worker (every 5 s for deployments and deletes, 30 s for endpoints) and prints
progress dots, and several public calls add round trips the app does not need
(``online_endpoints.get`` also lists the deployments; ``begin_create_or_update`` reads the
workspace for its location on every call; ``online_deployments.begin_create_or_update`` reads the
endpoint again; ``models.create_or_update`` lists the model's versions). Inside a function host the
``reconcile`` timer is the poller, so these helpers send exactly the one request of each step
through the same generated operation objects (same api-versions, same serialization) with
``polling=False``: azure-core's ``NoPolling`` is finished at once, so no thread is started.

They rely on attributes of azure-ai-ml 1.35 (pinned in requirements.txt); the contract tests run
the real SDK against fakes of the published REST examples, so a change there shows up as a test
failure, not in production. Callers map errors with ``azure_errors``.
"""

from __future__ import annotations

from typing import Any


def _endpoint_ops(ws: Any) -> Any:
    return ws.online_endpoints._online_operation  # service client 2022-02-01-preview


def _deployment_ops(ws: Any) -> Any:
    return ws.online_deployments._online_deployment  # service client 2023-04-01-preview


def _scope(ws: Any) -> dict[str, str]:
    return {"resource_group_name": ws.resource_group_name, "workspace_name": ws.workspace_name}


def get_endpoint(ws: Any, name: str) -> Any:
    """The endpoint entity from one GET (the SDK's ``get`` also lists its deployments)."""
    from azure.ai.ml.entities import OnlineEndpoint

    rest = _endpoint_ops(ws).get(endpoint_name=name, **_scope(ws))
    return OnlineEndpoint._from_rest_object(rest)


def endpoint_put_body(endpoint: Any, location: str) -> Any:
    """The endpoint PUT's body in the published example's shape (2022-02-01-preview OnlineEndpoint/createOrUpdate).

    The SDK's shared client (models of a later api-version) always adds ``properties.mirrorTraffic``,
    empty when nothing is mirrored; no published OnlineEndpoint example carries that key (docs/azureml-backend.md),
    so the empty one is left out and a non-empty one is refused.
    """
    if endpoint.traffic:
        endpoint.traffic = {k: v for k, v in endpoint.traffic.items() if v}
    body = endpoint._to_rest_online_endpoint(location=location)
    if body.properties.get("mirrorTraffic"):
        from shared.backends.base import BackendError

        raise BackendError(f"endpoint {endpoint.name} mirrors traffic ({dict(body.properties['mirrorTraffic'])}): "
                           "no published example of the api-version sent carries mirrorTraffic")
    body.properties.pop("mirrorTraffic", None)
    return body


def start_endpoint_put(ws: Any, endpoint: Any, location: str) -> None:
    """PUT the endpoint (create, or update e.g. its traffic); the 201's operation is not polled."""
    body = endpoint_put_body(endpoint, location)
    _endpoint_ops(ws).begin_create_or_update(endpoint_name=endpoint.name, body=body, polling=False, **_scope(ws))


_REST_AUTH_MODES = {"key": "Key", "aml_token": "AMLToken", "aad_token": "AADToken"}


def endpoint_credentials(ws: Any, endpoint: Any) -> Any:
    """Keys or token of an endpoint just read (the SDK's ``get_keys`` reads the endpoint again for its auth mode)."""
    mode = _REST_AUTH_MODES.get(str(getattr(endpoint, "auth_mode", "") or "").lower())
    return ws.online_endpoints._get_online_credentials(endpoint.name, auth_mode=mode)


def start_endpoint_delete(ws: Any, name: str) -> None:
    """DELETE the endpoint; the 202's operation is not polled."""
    _endpoint_ops(ws).begin_delete(endpoint_name=name, polling=False, **_scope(ws))


def start_deployment_put(ws: Any, deployment: Any, location: str) -> None:
    """PUT the deployment of an existing endpoint; the 201's operation is not polled."""
    body = deployment._to_rest_object(location=location)
    _deployment_ops(ws).begin_create_or_update(
        endpoint_name=deployment.endpoint_name, deployment_name=deployment.name, body=body, polling=False, **_scope(ws),
    )


def registry_model(registry: Any, name: str, version: str | None) -> tuple[Any, dict[str, Any]]:
    """A registry model version (pinned, or label latest) and its raw ``properties``.

    The SDK's ``Model`` entity drops ``properties.system_metadata`` (it looks for an attribute the
    REST model does not declare), where the registry now keeps the lifecycle dates and compute
    lists; the REST object still holds it. Same requests as ``models.get``: the label is resolved
    the SDK's way (one list), then the version is read once.
    """
    from azure.ai.ml._utils._asset_utils import _resolve_label_to_asset
    from azure.ai.ml.entities import Model

    ops = registry.models
    if not version:
        version = str(_resolve_label_to_asset(ops, name, "latest").version)
    rest_object = ops._get(name, version)
    properties = getattr(rest_object, "properties", None)
    raw = dict(properties) if hasattr(properties, "keys") else {}
    return Model._from_rest_object(rest_object), raw


def put_model_version(ws: Any, model: Any) -> None:
    """PUT a workspace model version (the SDK's ``create_or_update`` lists the versions first)."""
    ops = ws.models
    ops._model_versions_operation.create_or_update(
        name=model.name, version=model.version, body=model._to_rest_object(),
        workspace_name=ws.workspace_name, resource_group_name=ws.resource_group_name,
    )


def prime_api_url(ws: Any, workspace: Any) -> None:
    """Set the jobs operations' data-plane host (run history) from the workspace resource already read.

    The workspace's MLflow tracking URI names that host (``azureml://<host>/mlflow/v1.0/...``, the
    host MLflow logs the run history metrics to); without it, the workspace's discovery document
    is read (one GET) as ``JobOperations._get_workspace_url`` does, without its second workspace read.
    """
    import json
    from urllib.parse import urlsplit

    jobs = ws.jobs
    tracking = urlsplit(str(getattr(workspace, "mlflow_tracking_uri", "") or ""))
    if tracking.scheme == "azureml" and tracking.hostname and tracking.path.startswith("/mlflow/"):
        jobs._api_base_url = f"https://{tracking.hostname}"
        return
    from azure.ai.ml._utils.utils import create_requests_pipeline_with_retry, download_text_from_url

    urls = json.loads(download_text_from_url(
        str(workspace.discovery_url), create_requests_pipeline_with_retry(requests_pipeline=jobs._requests_pipeline),
    ))
    jobs._api_base_url = urls["api"]


def run_children(ws: Any, run_id: str) -> list[Any]:
    """The run history records (``Run``: status, start/end times, error) of a pipeline job's steps."""
    runs = ws.jobs._runs_operations
    pages = runs._operation.get_child(ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id,
                                      cls=lambda objs: objs)
    return list(pages)


def _metrics_ops(ws: Any) -> Any:
    """Run history's metric operations, on the pipeline of the SDK's run history client."""
    from azure.ai.ml._restclient.runhistory.operations import MetricsOperations

    op = ws.jobs._runs_operations._operation
    return MetricsOperations(op._client, op._config, op._serialize, op._deserialize)


def metric_names(ws: Any, run_id: str) -> list[str]:
    """Names of the metrics a run logged (one request; pages followed)."""
    ops = _metrics_ops(ws)
    names: list[str] = []
    token: str | None = None
    for _ in range(20):
        body: dict[str, Any] = {"continuationToken": token} if token else {}
        page = ops.list_metric(ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id, body=body)
        for definition in getattr(page, "value", None) or []:
            name = getattr(getattr(definition, "metric_key", None), "name", None)
            if name:
                names.append(str(name))
        token = getattr(page, "continuation_token", None)
        if not token:
            break
    return names


def metric_values(ws: Any, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) points of one scalar metric a run logged, in logging order (run history's full-fidelity metric)."""
    ops = _metrics_ops(ws)
    points: list[tuple[int, float]] = []
    token: str | None = None
    for _ in range(100):
        body: dict[str, Any] = {"metricName": metric, **({"continuationToken": token} if token else {})}
        page = ops.get_full_fidelity_metric(ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id, body=body)
        for value in getattr(page, "value", None) or []:
            data = getattr(value, "data", None) or {}
            raw = data.get(metric, next(iter(data.values()), None)) if hasattr(data, "get") else None
            number = _number(raw)
            if number is not None:
                step = getattr(value, "step", None)
                points.append((int(step) if step is not None else len(points), number))
        token = getattr(page, "continuation_token", None)
        if not token:
            break
    return points


def _number(raw: Any) -> float | None:
    """A scalar metric value (the SDK's model types ``data`` as strings: ``"2.1"``)."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None
