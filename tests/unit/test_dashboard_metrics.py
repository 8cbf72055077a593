"""Training curves from the backends: the local MLflow store, and Azure ML's MLflow REST API.

The local test writes a run the way ``localworkspace.trainer.run_finetune_job`` does (same tags
and metric names) into a real MLflow SQLite store. The Azure ML test serves the MLflow REST
routes (shapes from MLflow's REST API reference: ``runs/get``, ``runs/search``,
``metrics/get-history``) from an httpx MockTransport and checks the requests sent.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import httpx
import pytest

from shared.backends.azureml import training_curves
from shared.backends.base import NotFoundError
from shared.backends.local import LocalBackend
from tests.azureml_fakes import FakeCredential


def test_local_backend_reads_the_curve_of_a_running_and_a_finished_job(unit_settings) -> None:
    import mlflow

    from localworkspace.trainer import ensure_experiment
    from localworkspace.workspace import write_json

    backend = LocalBackend(unit_settings)
    ws = backend.ws
    ws.ensure()
    mlflow.set_tracking_uri(ws.tracking_uri)
    experiment = ensure_experiment("curves", ws.artifact_root)
    job = "ftjob-curve"
    ws.job_dir(job).mkdir(parents=True)
    with mlflow.start_run(experiment_id=experiment, run_name=job, tags={"job": job}) as run:
        for step, loss in [(1, 2.5), (2, 1.75), (3, 0.5)]:
            mlflow.log_metrics({"train_loss": loss, "learning_rate": 1e-4}, step=step)
        mlflow.log_metrics({"base_test_loss": 3.1, "test_loss": 0.4, "train_seconds": 12.0})
    # running: the state knows the experiment, not yet the run id (recorded when the job ends)
    write_json(ws.job_state_path(job), {"state": "running", "experiment_id": experiment})
    running = backend.job_metrics_history(job)
    assert running.series["train_loss"] == [(1, 2.5), (2, 1.75), (3, 0.5)]
    write_json(ws.job_state_path(job), {"state": "completed", "experiment_id": experiment, "run_id": run.info.run_id})
    done = backend.job_metrics_history(job)
    assert done.series["train_loss"] == running.series["train_loss"]
    assert done.final == {"base_test_loss": 3.1, "test_loss": 0.4, "train_seconds": 12.0}
    assert done.as_dict()["series"]["train_loss"][0] == [1, 2.5]

    write_json(ws.job_state_path("ftjob-queued"), {"state": "queued"})
    assert backend.job_metrics_history("ftjob-queued").series == {}
    with pytest.raises(NotFoundError):
        backend.job_metrics_history("ftjob-none")


BASE = ("https://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/sub/resourceGroups/rg/providers/"
        "Microsoft.MachineLearningServices/workspaces/ws")


def _run(run_id: str, metrics: dict[str, float]) -> dict:
    return {"info": {"run_id": run_id, "experiment_id": "exp-1", "status": "FINISHED"},
            "data": {"metrics": [{"key": k, "value": v, "timestamp": 1700000000000, "step": 0} for k, v in metrics.items()],
                     "tags": []}}


class FakeMlflowServer:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.histories = {("step-ft", "loss"): [(10, 2.0), (20, 1.0), (30, 0.5)], ("step-ft", "eval_loss"): [(30, 0.7)]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = request.url.path.split("/api/2.0/mlflow/")[1]
        if route == "runs/get":
            run_id = request.url.params["run_id"]
            if run_id != "pipeline-job":
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run not found"})
            return httpx.Response(200, json={"run": _run("pipeline-job", {})})
        if route == "runs/search":
            body = json.loads(request.content)
            parent = body["filter"].split("'")[1]
            children = {"pipeline-job": [_run("step-ft", {"loss": 0.5, "eval_loss": 0.7, "train_loss": 1.1}), _run("step-eval", {})]}
            return httpx.Response(200, json={"runs": children.get(parent, [])})
        if route == "metrics/get-history":
            key = (request.url.params["run_id"], request.url.params["metric_key"])
            points = self.histories.get(key, [])
            return httpx.Response(200, json={"metrics": [{"key": key[1], "value": v, "timestamp": 1, "step": s} for s, v in points]})
        return httpx.Response(400, json={"error_code": "ENDPOINT_NOT_FOUND"})


def _audience(authorization: str) -> str:
    """The audience of an Authorization header's bearer token (FakeCredential's are unsigned JWTs)."""
    scheme, token = authorization.split(" ", 1)
    assert scheme == "Bearer"
    claims = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["aud"]


def test_azure_ml_curves_come_from_the_pipeline_steps_mlflow_runs() -> None:
    server, credential = FakeMlflowServer(), FakeCredential()
    rest = training_curves.MlflowRest(training_curves.rest_base("azureml://" + BASE.removeprefix("https://")), credential,
                                      httpx.Client(transport=httpx.MockTransport(server)))
    history = training_curves.history_from(rest, "pipeline-job")
    assert history.series["train_loss"] == [(10, 2.0), (20, 1.0), (30, 0.5)]  # the trainer's per-step "loss"
    assert history.series["eval_loss"] == [(30, 0.7)]
    assert history.final["test_loss"] == 0.7 and history.final["train_loss"] == 1.1
    assert set(credential.scopes) == {"https://management.azure.com/.default"}
    assert all(_audience(r.headers["authorization"]) == "https://management.azure.com"
               and str(r.url).startswith(BASE + "/api/2.0/mlflow/") for r in server.requests)
    searches = [json.loads(r.content) for r in server.requests if r.url.path.endswith("runs/search")]
    assert searches[0] == {"experiment_ids": ["exp-1"], "filter": "tags.mlflow.parentRunId = 'pipeline-job'", "max_results": 50}
    with pytest.raises(NotFoundError):
        training_curves.history_from(rest, "no-such-job")


def test_tracking_uri_must_be_azureml_or_https() -> None:
    assert training_curves.rest_base("azureml://x.api.azureml.ms/mlflow/v1.0/a/") == "https://x.api.azureml.ms/mlflow/v1.0/a"
    with pytest.raises(ValueError):
        training_curves.rest_base("sqlite:///mlflow.db")


def test_the_backend_finds_its_tracking_server_once() -> None:
    server, credential = FakeMlflowServer(), FakeCredential()
    lookups: list[str] = []

    def get(name: str):
        lookups.append(name)
        return SimpleNamespace(mlflow_tracking_uri="azureml://" + BASE.removeprefix("https://"))

    class Backend:  # what training_curves reads of AzureMLBackend
        settings = SimpleNamespace(azure_ml_workspace="ws")
        workspace = SimpleNamespace(workspace_name="ws", workspaces=SimpleNamespace(get=get))

    backend = Backend()
    backend.credential = credential
    client = httpx.Client(transport=httpx.MockTransport(server))
    for _ in range(2):
        history = training_curves.job_metrics_history(backend, "pipeline-job", client=client)
        assert history.series["train_loss"][-1] == (30, 0.5)
    assert lookups == ["ws"]  # the workspace's tracking URI is read once per backend
