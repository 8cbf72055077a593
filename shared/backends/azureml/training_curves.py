"""Training curves of Azure ML pipeline jobs, read from the workspace's MLflow tracking server.

Azure ML records every job (the pipeline and each of its steps) as an MLflow run whose id is the
job name, served by the workspace's MLflow REST API: the workspace's ``mlflow_tracking_uri``
(``azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/.../workspaces/<ws>``) with
``https`` for ``azureml`` is the base URL, the MLflow REST routes under ``/api/2.0/mlflow``, and
an Azure Resource Manager token authorises the call (Azure/azureml-examples,
sdk/python/using-mlflow/using-rest-api/using_mlflow_rest_api.ipynb). The REST calls are made
with httpx, so neither ``mlflow`` nor ``azureml-mlflow`` has to be installed in the Function App.

The ``chat_completion_pipeline``'s fine-tune step logs the Hugging Face trainer's metrics:
``loss`` per logging step (shown as ``train_loss``), ``eval_loss`` per evaluation on the
validation (our test) split, and final values such as ``train_loss``. The curves are collected
from the pipeline run and its step runs (children, by the ``mlflow.parentRunId`` tag).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from shared.backends.base import MetricsHistory, NotFoundError, TransientBackendError

log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
API = "api/2.0/mlflow"
# Trainer metric key -> the curve it is shown as (the first key found wins for a curve).
SERIES_KEYS = {"train_loss": ("loss", "train_loss"), "eval_loss": ("eval_loss",), "learning_rate": ("learning_rate",)}
MAX_DEPTH = 3  # pipeline -> step -> nested step
MAX_RUNS = 50
TIMEOUT_S = 20.0

_bases: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_bases_lock = threading.Lock()


def rest_base(tracking_uri: str) -> str:
    """The MLflow REST base URL of a workspace from its ``mlflow_tracking_uri``."""
    uri = tracking_uri.strip().rstrip("/")
    if uri.startswith("azureml://"):
        uri = "https://" + uri[len("azureml://"):]
    if not uri.startswith("https://"):
        raise ValueError(f"unexpected MLflow tracking URI {tracking_uri!r} (expected azureml:// or https://)")
    return uri


class MlflowRest:
    """The few MLflow REST calls the curves need, against one tracking server."""

    def __init__(self, base_url: str, credential: Any, client: Any = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.client = client or httpx.Client(timeout=TIMEOUT_S)

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        token = self.credential.get_token(ARM_SCOPE).token
        reply = self.client.request(method, f"{self.base_url}/{API}/{route}",
                                    headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if reply.status_code == 404:
            raise NotFoundError(f"MLflow {route}: not found")
        if reply.status_code == 429 or reply.status_code >= 500:
            raise TransientBackendError(f"MLflow {route}: HTTP {reply.status_code}")
        if reply.status_code >= 400:
            body = reply.text[:300]
            if "RESOURCE_DOES_NOT_EXIST" in body:
                raise NotFoundError(f"MLflow {route}: {body}")
            raise TransientBackendError(f"MLflow {route}: HTTP {reply.status_code}: {body}")
        return reply.json()

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", "runs/get", params={"run_id": run_id})["run"]

    def children(self, experiment_id: str, run_id: str) -> list[dict[str, Any]]:
        body = {"experiment_ids": [experiment_id], "filter": f"tags.mlflow.parentRunId = '{run_id}'", "max_results": MAX_RUNS}
        return list(self._call("POST", "runs/search", json=body).get("runs") or [])

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        points: list[tuple[int, float]] = []
        token: str | None = None
        for _ in range(20):  # pages
            params = {"run_id": run_id, "metric_key": key, **({"page_token": token} if token else {})}
            page = self._call("GET", "metrics/get-history", params=params)
            points += [(int(m.get("step") or 0), float(m["value"])) for m in page.get("metrics") or []]
            token = page.get("next_page_token")
            if not token:
                break
        return sorted(points)


def _latest_metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in (run.get("data") or {}).get("metrics") or [] if "key" in m and "value" in m}


def history_from(rest: MlflowRest, job_name: str) -> MetricsHistory:
    """Collect the curves of ``job_name`` (a pipeline run) and its step runs."""
    parent = rest.get_run(job_name)
    experiment_id = str(parent["info"]["experiment_id"])
    runs, frontier = [parent], [parent]
    for _ in range(MAX_DEPTH):
        nxt = []
        for run in frontier:
            nxt += rest.children(experiment_id, run["info"]["run_id"])
        runs += nxt
        frontier = nxt
        if not frontier or len(runs) >= MAX_RUNS:
            break
    series: dict[str, list[tuple[int, float]]] = {}
    final: dict[str, float] = {}
    for run in runs:
        latest = _latest_metrics(run)
        for name, keys in SERIES_KEYS.items():
            if name in series:
                continue
            key = next((k for k in keys if k in latest), None)
            if key is not None:
                points = rest.history(run["info"]["run_id"], key)
                if points:
                    series[name] = points
        for key, value in latest.items():
            final.setdefault(key, value)
    # The pipeline evaluates on our test split: its last eval_loss is the fine-tuned test loss.
    if "test_loss" not in final and "eval_loss" in final:
        final["test_loss"] = final["eval_loss"]
    for name in ("loss", "learning_rate", "eval_loss"):
        final.pop(name, None)
    return MetricsHistory(job_name, series=series, final=final)


def job_metrics_history(backend: Any, job_name: str, client: Any = None) -> MetricsHistory:
    """``AzureMLBackend.job_metrics_history``: find the tracking server once, then read the curves."""
    with _bases_lock:
        base = _bases.get(backend)
    if base is None:
        workspace = backend.workspace
        name = backend.settings.azure_ml_workspace or workspace.workspace_name
        base = rest_base(workspace.workspaces.get(name).mlflow_tracking_uri)
        with _bases_lock:
            _bases[backend] = base
    if client is not None:
        return history_from(MlflowRest(base, backend.credential, client), job_name)
    import httpx

    with httpx.Client(timeout=TIMEOUT_S) as own:
        return history_from(MlflowRest(base, backend.credential, own), job_name)
