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


def start_endpoint_put(ws: Any, endpoint: Any, location: str) -> None:
    """PUT the endpoint (create, or update e.g. its traffic); the 201's operation is not polled."""
    if endpoint.traffic:
        endpoint.traffic = {k: v for k, v in endpoint.traffic.items() if v}
    body = endpoint._to_rest_online_endpoint(location=location)
    _endpoint_ops(ws).begin_create_or_update(endpoint_name=endpoint.name, body=body, polling=False, **_scope(ws))


def start_endpoint_delete(ws: Any, name: str) -> None:
    """DELETE the endpoint; the 202's operation is not polled."""
    _endpoint_ops(ws).begin_delete(endpoint_name=name, polling=False, **_scope(ws))


def start_deployment_put(ws: Any, deployment: Any, location: str) -> None:
    """PUT the deployment of an existing endpoint; the 201's operation is not polled."""
    body = deployment._to_rest_object(location=location)
    _deployment_ops(ws).begin_create_or_update(
        endpoint_name=deployment.endpoint_name, deployment_name=deployment.name, body=body, polling=False, **_scope(ws),
    )


def put_model_version(ws: Any, model: Any) -> None:
    """PUT a workspace model version (the SDK's ``create_or_update`` lists the versions first)."""
    ops = ws.models
    ops._model_versions_operation.create_or_update(
        name=model.name, version=model.version, body=model._to_rest_object(),
        workspace_name=ws.workspace_name, resource_group_name=ws.resource_group_name,
    )


def run_children(ws: Any, run_id: str) -> list[Any]:
    """The run history records (``Run``: status, start/end times, error) of a pipeline job's steps."""
    runs = ws.jobs._runs_operations
    pages = runs._operation.get_child(ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id,
                                      cls=lambda objs: objs)
    return list(pages)


def metric_values(ws: Any, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) points of one scalar metric a run logged (run history's full-fidelity metric)."""
    from azure.ai.ml._restclient.runhistory.models import RetrieveFullFidelityMetricRequest

    result = _metric_ops(ws.jobs._runs_operations).get_full_fidelity_metric(
        ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id,
        body=RetrieveFullFidelityMetricRequest(metric_name=metric),
    )
    points: list[tuple[int, float]] = []
    for value in getattr(result, "value", None) or []:
        data = getattr(value, "data", None) or {}
        number = data.get(metric, next(iter(data.values()), None)) if isinstance(data, dict) else None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            points.append((int(getattr(value, "step", None) or len(points)), float(number)))
    return points


def _metric_ops(runs: Any) -> Any:
    """Run history's metric operations, on the pipeline of the SDK's run history client."""
    from azure.ai.ml._restclient.runhistory.operations import MetricOperations

    op = runs._operation
    return MetricOperations(op._client, op._config, op._serialize, op._deserialize)


def metric_names(ws: Any, run_id: str) -> list[str]:
    """Names of the metrics a run logged."""
    names: list[str] = []
    metric_ops = _metric_ops(ws.jobs._runs_operations)
    for definition in metric_ops.list_metric(ws.subscription_id, ws.resource_group_name, ws.workspace_name, run_id):
        name = getattr(getattr(definition, "metric_key", None), "name", None)
        if name:
            names.append(str(name))
    return names
