"""Contract tests: the real azure-ai-ml SDK drives a fake Azure ML over intercepted HTTP.

Each test asserts the requests the backend makes the SDK send (URLs and JSON bodies), and on
error paths that nothing was written (no job, model, endpoint or deployment PUT).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import responses
import yaml

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.deployment_spec import DEPLOYMENT_NAME
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.backends.base import (
    COMPLETED,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    FAILED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    QUEUED,
    RUNNING,
    BackendError,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)
from tests.azureml_fakes import (
    COMPONENT_VERSION,
    FOUNDATION_ID,
    FOUNDATION_NAME,
    LITERAL_TYPES,
    MODEL_NAME,
    WS_ID,
    FakeAzureML,
    azure_settings,
    job_put,
    make_backend,
    node_of,
    request_for,
)

# The SDK's marshmallow schemas warn by the thousand on every import; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")

@pytest.fixture
def azure() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeAzureML(rsps, str(INTERFACE_PATH))


@pytest.fixture(scope="module")
def interface_spec(fixtures_dir) -> dict[str, Any]:
    with open(fixtures_dir / "azureml" / "chat_completion_pipeline.interface.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def wire_problems(rest_inputs: dict[str, Any], interface: dict[str, Any]) -> list[str]:
    """Check the job PUT's component inputs against the official interface fixture (the test's oracle)."""
    found = []
    for name, value in rest_inputs.items():
        spec = interface["inputs"].get(name)
        if spec is None:
            found.append(f"{name}: not in the interface")
            continue
        declared, kind = spec["type"], value.get("job_input_type")
        if declared in LITERAL_TYPES:
            if kind != "literal":
                found.append(f"{name}: declared {declared}, sent as {kind}")
                continue
            text = value["value"]
            if declared == "integer" and not re.fullmatch(r"-?\d+", text):
                found.append(f"{name}: {text!r} is not an integer")
            if declared == "number":
                try:
                    float(text)
                except ValueError:
                    found.append(f"{name}: {text!r} is not a number")
            if "enum" in spec and text not in [str(v) for v in spec["enum"]]:
                found.append(f"{name}: {text!r} not in {spec['enum']}")
            if "min" in spec and float(text) < float(spec["min"]):
                found.append(f"{name}: {text!r} below {spec['min']}")
        elif kind != declared:
            found.append(f"{name}: declared {declared}, sent as {kind}")
    return found


# --------------------------------------------------------------------------- fine-tune

def test_submit_sends_the_notebook_pipeline_serverless(azure, interface_spec):
    backend = make_backend(azure_settings())
    name = backend.submit_finetune(request_for())

    job_name, body = job_put(azure)
    assert name == job_name
    props = body["properties"]
    assert props["jobType"] == "Pipeline"
    assert props["experimentName"] == "chat-finetune-autopilot"
    assert props["settings"]["force_rerun"] is True and props["settings"]["continue_on_step_failure"] is False
    assert props["tags"][MANAGED_BY_TAG] == MANAGED_BY_VALUE and props["tags"]["dataset_id"] == "ds-0123456789abcdef"
    assert props["tags"]["base_model"] == FOUNDATION_NAME and props["tags"]["model_name"] == MODEL_NAME
    assert props["displayName"] == "Phi-4-ds-012345678-bs1-cosine-ds3-lora-save_limit1-seqlen-1"
    assert props["outputs"] == {"trained_model": {"mode": "ReadWriteMount", "jobOutputType": "mlflow_model"}}

    node = node_of(body)
    assert node["componentId"] == f"azureml://registries/azureml/components/chat_completion_pipeline/versions/{COMPONENT_VERSION}"
    assert node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"
    inputs = node["inputs"]
    assert wire_problems(inputs, interface_spec) == []
    literal = {k: v["value"] for k, v in inputs.items() if v["job_input_type"] == "literal"}
    assert literal == {
        # the notebook's values, overridden by Phi-4's published model_specific_defaults (num_train_epochs 1,
        # deepspeed_stage 3 ...)
        "num_train_epochs": "1", "per_device_train_batch_size": "1", "per_device_eval_batch_size": "1",
        "learning_rate": "5e-06", "lr_scheduler_type": "cosine",
        "apply_lora": "true", "apply_deepspeed": "true", "deepspeed_stage": "3",
        "precision": "16", "apply_ort": "false", "ignore_mismatched_sizes": "false", "gradient_accumulation_steps": "1",
        "logging_strategy": "steps", "logging_steps": "10", "save_total_limit": "1",
        "compute_model_import": "serverless", "compute_preprocess": "serverless",
        "compute_finetune": "serverless", "compute_model_evaluation": "serverless",
        "instance_type_finetune": "Standard_NC24ads_A100_v4", "instance_type_model_evaluation": "Standard_NC24ads_A100_v4",
        "number_of_gpu_to_use_finetuning": "1",
    }
    assert inputs["mlflow_model_path"] == {"uri": FOUNDATION_ID, "job_input_type": "mlflow_model"}
    assert inputs["train_file_path"] == {
        "uri": "azureml://datastores/autopilot_prepared/paths/datasets/ds-0123456789abcdef/train.jsonl", "job_input_type": "uri_file"}
    assert inputs["test_file_path"]["uri"].endswith("/datasets/ds-0123456789abcdef/test.jsonl")

    # The submission carried a bearer JWT and nothing waited on the job afterwards (no stream, no polling).
    put = azure.calls("PUT", r"/jobs/")[0]
    assert put.headers["Authorization"].startswith("Bearer ey")
    assert azure.requests[-1] is put
    # The registry model was read by label latest (list ordered by creation, newest first).
    listed = azure.calls("GET", rf"/registries/azureml/models/{FOUNDATION_NAME}/versions$")
    assert listed and listed[0].query.get("$orderBy") == ["createdtime desc"]


def test_submit_on_a_named_cluster_uses_its_gpus(azure, interface_spec):
    azure.add_compute("gpu-cluster", "Standard_NC48ads_A100_v4")
    backend = make_backend(azure_settings(FINETUNE_COMPUTE="gpu-cluster"))
    backend.submit_finetune(request_for())
    _, body = job_put(azure)
    inputs = node_of(body)["inputs"]
    assert wire_problems(inputs, interface_spec) == []
    assert {inputs[f"compute_{s}"]["value"] for s in ("model_import", "preprocess", "finetune", "model_evaluation")} == {"gpu-cluster"}
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "2"  # from the size table (no compute.list_sizes())
    assert "instance_type_finetune" not in inputs
    assert "-bs2-" in body["properties"]["displayName"]


def test_settings_and_request_params_override_the_defaults(azure, interface_spec):
    settings = azure_settings(FINETUNE_PARAMS=json.dumps({"num_train_epochs": 1, "apply_lora": True, "max_seq_length": 2048}))
    backend = make_backend(settings)
    backend.submit_finetune(request_for(learning_rate="1e-5", deepspeed_stage=3))
    inputs = node_of(job_put(azure)[1])["inputs"]
    assert wire_problems(inputs, interface_spec) == []
    assert inputs["num_train_epochs"]["value"] == "1"
    assert inputs["learning_rate"]["value"] == "1e-05"
    assert inputs["deepspeed_stage"]["value"] == "3"
    assert inputs["max_seq_length"]["value"] == "2048"


def test_pinned_foundation_model_and_component_versions(azure):
    backend = make_backend(azure_settings(FOUNDATION_MODEL_VERSION="12", PIPELINE_COMPONENT_VERSION="0.0.50"))
    backend.submit_finetune(request_for())
    node = node_of(job_put(azure)[1])
    assert node["componentId"].endswith("/components/chat_completion_pipeline/versions/0.0.50")
    assert node["inputs"]["mlflow_model_path"]["uri"].endswith(f"/models/{FOUNDATION_NAME}/versions/12")


@pytest.mark.parametrize(
    ("setup", "env", "error", "message"),
    [
        (lambda a: a.add_compute("gpu-cluster", "Standard_NC24ads_A100_v4", state="Failed"), {"FINETUNE_COMPUTE": "gpu-cluster"},
         BackendError, "compute cluster gpu-cluster is in a failed provisioning state"),
        (lambda a: a.add_compute("cpu-cluster", "Standard_DS3_v2"), {"FINETUNE_COMPUTE": "cpu-cluster"},
         BackendError, "VM size Standard_DS3_v2 is not in the foundation model's finetune_compute_allow_list"),
        (lambda a: None, {"FINETUNE_COMPUTE": "missing-cluster"}, NotFoundError, "reading compute cluster missing-cluster: not found"),
        (lambda a: None, {"FINETUNE_INSTANCE_TYPE": "Standard_DS3_v2"},
         BackendError, "serverless instance type Standard_DS3_v2: VM size Standard_DS3_v2 is not in the foundation model's"),
        (lambda a: a.foundation_system_metadata.update(supportedComputes="{'finetuneComputes': ['Standard_NC24ads_A100_v4'"), {},
         BackendError, "system_metadata.supportedComputes of foundation model Phi-4:8 is not a JSON object"),
        (lambda a: a.foundation_tags.update(model_specific_defaults="{'deepspeed_stage': 4}"), {},
         BackendError, "foundation model tag model_specific_defaults: deepspeed_stage=4 is not one of ['2', '3']"),
        (lambda a: None, {"FINETUNE_PARAMS": '{"num_epochs": 2}'},
         BackendError, "FINETUNE_PARAMS: chat_completion_pipeline 0.0.82 has no input named 'num_epochs'"),
    ],
    ids=["failed-compute", "disallowed-size", "missing-compute", "disallowed-serverless", "malformed-system-metadata",
         "bad-model-default", "unknown-param"],
)
def test_submit_refuses_before_sending_anything(azure, setup, env, error, message):
    setup(azure)
    backend = make_backend(azure_settings(**env))
    with pytest.raises(error) as info:
        backend.submit_finetune(request_for())
    assert message in str(info.value)
    assert azure.writes() == []


def test_unsupported_size_without_allow_list(azure):
    azure.foundation_system_metadata.pop("supportedComputes")
    azure.add_compute("old-gpus", "Standard_NC24")
    with pytest.raises(BackendError, match="VM size Standard_NC24 is not supported for fine-tuning"):
        make_backend(azure_settings(FINETUNE_COMPUTE="old-gpus")).submit_finetune(request_for())
    assert azure.writes() == []


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (409, BackendError, "conflict with the resource's current state (HTTP 409"),
        (429, TransientBackendError, "Azure ML answered HTTP 429, retry later"),
        (503, TransientBackendError, "Azure ML answered HTTP 503, retry later"),
        (400, BackendError, "HTTP 400"),
    ],
)
def test_arm_errors_on_job_submission(azure, status, error, message):
    azure.fail("PUT", r"/jobs/", status, message="the service said no", times=None)
    backend = make_backend(azure_settings())
    with pytest.raises(error) as info:
        backend.submit_finetune(request_for())
    text = str(info.value)
    assert message in text and "the service said no" in text
    assert "Bearer" not in text and "eyJ" not in text
    assert type(info.value) is error
    attempts = len(azure.calls("PUT", r"/jobs/"))
    assert attempts == (3 if status in {429, 503} else 1)  # the SDK's retry policy retried only the transient ones
    assert azure.jobs == {}


def test_a_single_5xx_is_absorbed_by_the_sdk_retry(azure):
    azure.fail("PUT", r"/jobs/", 503, times=1)
    name = make_backend(azure_settings()).submit_finetune(request_for())
    assert name in azure.jobs


def test_registry_unavailable_is_transient(azure):
    azure.fail("GET", r"/registries/azureml/discovery$", 503, times=None)
    with pytest.raises(TransientBackendError, match="connecting to registry azureml"):
        make_backend(azure_settings()).submit_finetune(request_for())
    assert azure.writes() == []


# --------------------------------------------------------------------------- jobs

JOB_STATES = [
    ("NotStarted", QUEUED), ("Queued", QUEUED), ("Preparing", QUEUED), ("Starting", QUEUED), ("Provisioning", QUEUED),
    ("Paused", QUEUED), ("Running", RUNNING), ("Finalizing", RUNNING), ("CancelRequested", RUNNING),
    ("NotResponding", RUNNING), ("Completed", COMPLETED), ("Failed", FAILED), ("Canceled", "canceled"),
    ("SomethingNew", RUNNING),
]


def test_get_job_maps_statuses(azure):
    backend = make_backend(azure_settings())
    name = backend.submit_finetune(request_for())
    for status, state in JOB_STATES:
        azure.set_job_status(name, status)
        info = backend.get_job(name)
        assert info.state == state, status
        assert info.tags["dataset_id"] == "ds-0123456789abcdef" and info.tags[MANAGED_BY_TAG] == MANAGED_BY_VALUE
        assert (info.error is not None) == (state in {FAILED, "canceled"}), status
    assert info.log_path.startswith("https://ml.azure.com/runs/")


def test_get_job_missing_is_not_found(azure):
    with pytest.raises(NotFoundError, match="reading job nope"):
        make_backend(azure_settings()).get_job("nope")


# --------------------------------------------------------------------------- registration

def test_register_model_from_the_pipeline_output_once(azure):
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    azure.set_job_status(job, "Completed")
    ref = backend.register_model(job, MODEL_NAME)

    created_s = int(datetime.fromisoformat(azure.jobs[job]["systemData"]["createdAt"].replace("Z", "+00:00")).timestamp())
    assert ref == ModelRef(MODEL_NAME, str(created_s), job, FOUNDATION_NAME)  # epoch seconds, as the cookbook's version
    puts = azure.calls("PUT", r"/models/")
    assert len(puts) == 1
    assert puts[0].path == f"{WS_ID}/models/{MODEL_NAME}/versions/{ref.version}"
    props = puts[0].body["properties"]
    assert props["modelUri"] == f"azureml://jobs/{job}/outputs/trained_model"
    assert props["modelType"] == "mlflow_model"
    assert props["tags"]["job_name"] == job and props["tags"][MANAGED_BY_TAG] == MANAGED_BY_VALUE

    again = backend.register_model(job, MODEL_NAME)  # a repeated completion event
    assert again == ref
    assert len(azure.calls("PUT", r"/models/")) == 1


def test_two_jobs_created_in_the_same_second_get_consecutive_versions(azure):
    backend = make_backend(azure_settings())
    first, second = azure.add_job("job_same_1"), azure.add_job("job_same_2")
    second["systemData"] = dict(first["systemData"])  # same creation time
    a = backend.register_model("job_same_1", MODEL_NAME)
    b = backend.register_model("job_same_2", MODEL_NAME)
    assert int(b.version) == int(a.version) + 1
    assert backend.register_model("job_same_2", MODEL_NAME) == b  # a repeated event finds its own version
    assert len(azure.calls("PUT", r"/models/")) == 2


def test_register_model_conflict_is_an_error(azure):
    backend = make_backend(azure_settings())
    job = azure.add_job("happy_job_2")["name"]
    azure.fail("PUT", r"/models/", 409, message="asset path cannot be changed")
    with pytest.raises(BackendError, match="HTTP 409"):
        backend.register_model(job, MODEL_NAME)
    assert azure.models == {}


# --------------------------------------------------------------------------- deployment

def _registered(azure: FakeAzureML, backend: AzureMLBackend) -> ModelRef:
    azure.add_job("happy_job_1", tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "base_model": FOUNDATION_NAME})
    return backend.register_model("happy_job_1", MODEL_NAME)


def test_deploy_state_machine(azure):
    backend = make_backend(azure_settings())
    model = _registered(azure, backend)
    ep = "phi-ft-1714-abcdef"
    backend.begin_deploy(model, ep, {MANAGED_BY_TAG: MANAGED_BY_VALUE, "job_name": model.job_name})

    # 1. the endpoint PUT (key auth, tags), no deployment yet: it needs an existing endpoint.
    [put] = azure.calls("PUT", r"/onlineEndpoints/[^/]+$")
    assert put.path == f"{WS_ID}/onlineEndpoints/{ep}"
    assert put.body["properties"]["authMode"] == "Key"
    assert put.body["tags"][MANAGED_BY_TAG] == MANAGED_BY_VALUE
    assert put.body["tags"]["model"] == model.ref and put.body["tags"]["job_name"] == model.job_name
    assert azure.calls("PUT", r"/deployments/") == []
    assert backend.get_endpoint(ep).state == EP_PROVISIONING
    assert azure.calls("PUT", r"/deployments/") == []

    # 2. the endpoint exists: get_endpoint starts the deployment "demo" of the tagged model.
    azure.set_endpoint_state(ep, "Succeeded")
    info = backend.get_endpoint(ep)
    assert info.state == EP_PROVISIONING and info.deployment == DEPLOYMENT_NAME
    [dput] = azure.calls("PUT", r"/deployments/")
    assert dput.path == f"{WS_ID}/onlineEndpoints/{ep}/deployments/{DEPLOYMENT_NAME}"
    dprops = dput.body["properties"]
    assert dprops["instanceType"] == "Standard_NC24ads_A100_v4"
    assert dprops["livenessProbe"]["initialDelay"] == "PT10M"
    assert dprops["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert dprops["model"] == f"{WS_ID}/models/{model.name}/versions/{model.version}"
    assert dput.body["sku"]["capacity"] == 1
    backend.get_endpoint(ep)
    assert len(azure.calls("PUT", r"/deployments/")) == 1  # never started twice

    # 3. deployment succeeded: traffic 100% to it, once.
    azure.set_deployment_state(ep, "Succeeded")
    info = backend.get_endpoint(ep)
    assert (info.state, info.instance_type, info.model) == (EP_SUCCEEDED, "Standard_NC24ads_A100_v4", model.ref)
    backend.set_traffic(ep)
    traffic_put = azure.calls("PUT", r"/onlineEndpoints/[^/]+$")[-1]
    assert traffic_put.body["properties"]["traffic"] == {DEPLOYMENT_NAME: 100}
    assert traffic_put.body["properties"]["authMode"] == "Key"
    before = len(azure.writes())
    backend.set_traffic(ep)
    assert len(azure.writes()) == before


def test_begin_deploy_again_while_creating_sends_nothing(azure):
    backend = make_backend(azure_settings())
    model = ModelRef(MODEL_NAME, "1", "job")
    backend.begin_deploy(model, "phi-ep-x", {})
    before = len(azure.writes())
    backend.begin_deploy(model, "phi-ep-x", {})
    assert len(azure.writes()) == before


def test_deploy_refuses_an_instance_type_outside_the_allow_list(azure):
    backend = make_backend(azure_settings(INFERENCE_INSTANCE_TYPE="Standard_DS3_v2"))
    backend.foundation_model()  # a worker that knows the model (it submitted the job) re-checks without a registry call
    model = ModelRef(MODEL_NAME, "1", "job")
    before = len(azure.requests)
    with pytest.raises(BackendError, match="Standard_DS3_v2 is not in the inference allow list"):
        backend.begin_deploy(model, "phi-ep-x", {})
    assert azure.writes() == [] and len(azure.requests) == before


def test_submit_refuses_an_inference_size_it_could_not_deploy(azure):
    # Checked before the GPU hours are spent, not when the trained model is deployed.
    backend = make_backend(azure_settings(INFERENCE_INSTANCE_TYPE="Standard_DS3_v2"))
    with pytest.raises(BackendError, match="Standard_DS3_v2 is not in the inference allow list"):
        backend.submit_finetune(request_for())
    assert azure.writes() == []


def test_deploy_with_aml_token_auth(azure):
    backend = make_backend(azure_settings(ENDPOINT_AUTH_MODE="aml_token"))
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-t", {})
    [put] = azure.calls("PUT", r"/onlineEndpoints/")
    assert put.body["properties"]["authMode"] == "AMLToken"
    target = backend.get_scoring_target("phi-ep-t")
    assert target.key == "aml-token-phi-ep-t"
    assert azure.calls("POST", r"/token$")


@pytest.mark.parametrize(("status", "error"), [(429, TransientBackendError), (500, TransientBackendError), (409, BackendError)])
def test_endpoint_put_errors(azure, status, error):
    azure.fail("PUT", r"/onlineEndpoints/", status, times=None)
    backend = make_backend(azure_settings())
    with pytest.raises(error, match="creating endpoint phi-ep-e"):
        backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-e", {})
    assert azure.endpoints == {}


def test_failed_deployment_is_reported(azure):
    backend = make_backend(azure_settings())
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-f", {})
    azure.set_endpoint_state("phi-ep-f", "Succeeded")
    backend.get_endpoint("phi-ep-f")
    azure.set_deployment_state("phi-ep-f", "Failed")
    info = backend.get_endpoint("phi-ep-f")
    assert info.state == EP_FAILED and "get-logs" in info.error


def test_deployment_put_rejected_is_a_failed_endpoint(azure):
    backend = make_backend(azure_settings())
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-q", {})
    azure.set_endpoint_state("phi-ep-q", "Succeeded")
    azure.fail("PUT", r"/deployments/", 400, code="QuotaExceeded", message="not enough quota for Standard_NC6s_v3")
    info = backend.get_endpoint("phi-ep-q")
    assert info.state == EP_FAILED and "not enough quota" in info.error
    azure.fail("PUT", r"/deployments/", 429, times=None)
    with pytest.raises(TransientBackendError):
        backend.get_endpoint("phi-ep-q")


def test_missing_endpoint_is_none(azure):
    backend = make_backend(azure_settings())
    assert backend.get_endpoint("nope") is None
    with pytest.raises(NotFoundError):
        backend.set_traffic("nope")


# --------------------------------------------------------------------------- endpoints

def _live_endpoint(azure: FakeAzureML, backend: AzureMLBackend, name: str) -> None:
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), name, {})
    azure.set_endpoint_state(name, "Succeeded")
    backend.get_endpoint(name)
    azure.set_deployment_state(name, "Succeeded")
    backend.set_traffic(name)
    azure.set_endpoint_state(name, "Succeeded")


def test_list_endpoints_only_managed_with_last_activity(azure):
    backend = make_backend(azure_settings())
    _live_endpoint(azure, backend, "phi-ep-a")
    _live_endpoint(azure, backend, "phi-ep-b")
    azure.endpoints["someone-elses"] = {**azure.endpoints["phi-ep-b"], "name": "someone-elses", "tags": {"team": "x"},
                                        "id": f"{WS_ID}/onlineEndpoints/someone-elses"}
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    azure.metrics["phi-ep-a"] = [(minute - timedelta(minutes=30), 2.0), (minute - timedelta(minutes=20), 0.0)]
    azure.metrics["phi-ep-b"] = [(minute - timedelta(minutes=5), 0.0)]

    listed = {e.name: e for e in backend.list_endpoints()}
    assert set(listed) == {"phi-ep-a", "phi-ep-b"}
    a = listed["phi-ep-a"]
    assert a.state == EP_SUCCEEDED and a.managed and a.model == f"{MODEL_NAME}:1" and a.traffic == {DEPLOYMENT_NAME: 100}
    assert a.last_activity == minute - timedelta(minutes=30)
    assert listed["phi-ep-b"].last_activity is None  # no request in the window
    assert a.created_at is not None
    [query] = azure.calls("POST", r"metrics:getBatch$")
    assert query.query["metricnames"] == ["RequestsPerMinute"] and query.query["aggregation"] == ["Average"]
    assert query.query["metricnamespace"] == ["Microsoft.MachineLearningServices/workspaces/onlineEndpoints"]
    assert sorted(query.body["resourceids"]) == [f"{WS_ID}/onlineEndpoints/phi-ep-a", f"{WS_ID}/onlineEndpoints/phi-ep-b"]


def test_unreadable_metrics_mean_unknown_activity(azure):
    backend = make_backend(azure_settings())
    _live_endpoint(azure, backend, "phi-ep-m")
    azure.metrics_status = 403
    [info] = backend.list_endpoints()
    assert info.last_activity is None and info.state == EP_SUCCEEDED


def test_scoring_target_is_cached_and_refreshed(azure):
    backend = make_backend(azure_settings())
    _live_endpoint(azure, backend, "phi-ep-s")
    target = backend.get_scoring_target("phi-ep-s")
    assert target.url == "https://phi-ep-s.eastus.inference.ml.azure.com/score"
    assert target.key == "pk-phi-ep-s" and target.timeout_s == 90
    assert target.headers()["Authorization"] == "Bearer pk-phi-ep-s"
    backend.get_scoring_target("phi-ep-s")
    assert len(azure.calls("POST", r"/listKeys$")) == 1
    backend.get_scoring_target("phi-ep-s", refresh=True)
    assert len(azure.calls("POST", r"/listKeys$")) == 2
    with pytest.raises(NotFoundError):
        backend.get_scoring_target("nope")


def test_delete_is_started_not_waited(azure):
    backend = make_backend(azure_settings())
    _live_endpoint(azure, backend, "phi-ep-d")
    backend.begin_delete_endpoint("phi-ep-d")
    [delete] = azure.calls("DELETE")
    assert delete.path == f"{WS_ID}/onlineEndpoints/phi-ep-d"
    assert backend.get_endpoint("phi-ep-d").state == "deleting"
    backend.begin_delete_endpoint("never-existed")  # idempotent


def test_delete_throttled_is_transient(azure):
    azure.fail("DELETE", r"/onlineEndpoints/", 429, times=None)
    with pytest.raises(TransientBackendError, match="deleting endpoint phi-ep-z"):
        make_backend(azure_settings()).begin_delete_endpoint("phi-ep-z")


def test_backend_is_chosen_by_setting_and_imports_lazily():
    import subprocess
    import sys

    code = (
        "import sys; from shared.backends import get_backend; from shared.settings import load_settings;"
        "b = get_backend(load_settings(environ={'ML_BACKEND': 'azureml', 'AZURE_SUBSCRIPTION_ID': 's',"
        " 'AZURE_RESOURCE_GROUP': 'r', 'AZURE_ML_WORKSPACE': 'w'}));"
        "print(type(b).__name__, 'azure.ai.ml' in sys.modules, b.workspace_id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["AzureMLBackend", "False", "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"]
