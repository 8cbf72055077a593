"""What would break on first contact with a real workspace, pinned with what Azure publishes.

The real azure-ai-ml SDK drives ``FakeAzureML``, which serves a published model asset spec (the
cookbook's Phi-3-mini-4k-instruct v15 as first published, with tags, for the tag-form checks here) (tags, allow lists, lifecycle dates, model_specific_defaults) and the azure-rest-api-specs
examples and headers (tests/fixtures/SOURCES). One section per defect of issue 15.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import pytest
import responses
import yaml

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.compute_sizes import RETIRED_SIZES
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.backends.azureml.foundation_model import FoundationModel
from shared.backends.base import COMPLETED, FAILED, BackendError, ModelRef
from shared.settings import SPECS
from tests.azureml_fakes import (
    FOUNDATION_SPEC,
    MODEL_NAME,
    MODEL_WAS_CURRENT,
    PHI3_TAG_SPEC,
    PHI3_TAGS,
    PIPELINE_STEPS,
    WS,
    FakeAzureML,
    azure_settings,
    job_put,
    make_backend,
    node_of,
    request_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")


@pytest.fixture
def azure() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeAzureML(rsps, str(INTERFACE_PATH))
        yield fake
        assert fake.violations == [], "request bodies that do not fit the published examples"


@pytest.fixture
def phi3() -> Any:
    """The registry serving the cookbook's Phi-3-mini-4k-instruct v15 as first published (lifecycle and allow lists as tags)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeAzureML(rsps, str(INTERFACE_PATH), spec=PHI3_TAG_SPEC)
        yield fake
        assert fake.violations == [], "request bodies that do not fit the published examples"


def phi3_settings(**env: str) -> Any:
    return azure_settings(FOUNDATION_MODEL_NAME="Phi-3-mini-4k-instruct", **env)


@pytest.fixture(scope="module")
def published() -> dict[str, Any]:
    """The tag-form spec of Phi-3-mini-4k-instruct v15."""
    return yaml.safe_load(PHI3_TAG_SPEC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def default_spec() -> dict[str, Any]:
    """The app's default base model's spec (Phi-4)."""
    return yaml.safe_load(FOUNDATION_SPEC.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- 8. the fakes serve the published spec

def test_the_fake_registry_serves_the_published_tags(phi3, published):
    foundation = make_backend(phi3_settings()).foundation_model()
    tags = published["tags"]
    assert foundation.finetune_compute_allow_list == tags["finetune_compute_allow_list"]
    assert foundation.inference_compute_allow_list == tags["inference_compute_allow_list"]
    assert foundation.model_specific_defaults == tags["model_specific_defaults"]
    assert {k: v.isoformat() for k, v in foundation.lifecycle.items()} == {
        k: tags[k] for k in ("FinetuneDeprecationDate", "FinetuneRetirementDate", "InferenceLegacyDate",
                             "InferenceDeprecationDate", "InferenceRetirementDate")}
    # The registry serves tags as strings (lists as Python literals), like every other tag.
    assert all(isinstance(v, str) for v in PHI3_TAGS.values())


@pytest.mark.parametrize("size", ["Standard_NC24s_v3", "Standard_ND40rs_v2"])
def test_sizes_the_published_finetune_list_lacks_are_refused(phi3, size):
    # The old fake's finetune list held the NCv3 sizes and ND40rs_v2; the published one does not.
    azure = phi3
    azure.add_compute("gpu-cluster", size)
    with pytest.raises(BackendError, match=f"VM size {size} is not in the foundation model's finetune_compute_allow_list"):
        make_backend(phi3_settings(FINETUNE_COMPUTE="gpu-cluster")).submit_finetune(request_for())
    assert azure.writes() == []


# --------------------------------------------------------------------------- 2. retired model, retired sizes, defaults

def test_a_retired_model_is_refused_before_anything_is_submitted(phi3):
    azure = phi3
    backend = make_backend(phi3_settings(), today=date(2026, 12, 1))
    with pytest.raises(BackendError) as info:
        backend.submit_finetune(request_for())
    text = str(info.value)
    assert "Phi-3-mini-4k-instruct:15 was retired for fine-tuning on 2025-08-30" in text
    assert "FinetuneRetirementDate" in text and "FOUNDATION_MODEL_VERSION" in text
    assert azure.writes() == []


def test_a_deprecated_model_is_submitted_with_a_dated_warning(phi3, caplog):
    azure = phi3
    backend = make_backend(phi3_settings(), today=date(2025, 7, 1))
    with caplog.at_level(logging.WARNING, logger="shared.backends.azureml"):
        backend.submit_finetune(request_for())
    assert "is deprecated for fine-tuning since 2025-06-30, retirement 2025-08-30" in caplog.text
    assert len(azure.calls("PUT", r"/jobs/")) == 1


def test_retirement_within_the_grace_warns_with_the_date():
    model = FoundationModel("id", "m", "1", lifecycle={"FinetuneRetirementDate": date(2026, 12, 20)})
    assert model.check_lifecycle("finetune", date(2026, 12, 1)) == "foundation model m:1 retires for fine-tuning on 2026-12-20 (in 19 days)"
    assert model.check_lifecycle("finetune", date(2026, 10, 1)) is None
    with pytest.raises(BackendError, match="retired for fine-tuning on 2026-12-20"):
        model.check_lifecycle("finetune", date(2026, 12, 20))


def test_a_malformed_lifecycle_tag_names_the_tag(phi3):
    azure = phi3
    azure.foundation_tags["FinetuneRetirementDate"] = "end of summer"
    with pytest.raises(BackendError, match="tag FinetuneRetirementDate of foundation model Phi-3-mini-4k-instruct:15 is not an ISO date"):
        make_backend(phi3_settings()).submit_finetune(request_for())
    assert azure.writes() == []


@pytest.mark.parametrize(("env", "setting"), [({"INFERENCE_INSTANCE_TYPE": "Standard_NC6s_v3"}, "INFERENCE_INSTANCE_TYPE")])
def test_a_retired_size_is_refused_even_where_the_allow_list_still_names_it(phi3, env, setting):
    azure = phi3
    # Standard_NC6s_v3 is in the published inference allow list, but Azure retired it on 2025-09-30.
    backend = make_backend(phi3_settings(**env), today=date(2025, 10, 1))
    azure.foundation_tags.update(FinetuneRetirementDate="2027-01-01", InferenceRetirementDate="2027-01-01",
                                 FinetuneDeprecationDate="2027-01-01", InferenceDeprecationDate="2027-01-01")
    with pytest.raises(BackendError, match=f"VM size Standard_NC6s_v3 was retired by Azure on 2025-09-30; set {setting}"):
        backend.submit_finetune(request_for())
    with pytest.raises(BackendError, match="was retired by Azure on 2025-09-30"):
        backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-r", {})
    assert azure.writes() == []


def test_the_default_sizes_are_in_the_published_allow_lists_and_exist_today(default_spec):
    finetune = SPECS["finetune_instance_type"].default
    inference = SPECS["inference_instance_type"].default
    computes = default_spec["system_metadata"]["supportedComputes"]
    assert finetune in computes["finetuneComputes"]
    assert inference in computes["inferenceComputes"]
    assert finetune.lower() not in RETIRED_SIZES and inference.lower() not in RETIRED_SIZES


# --------------------------------------------------------------------------- 3. model_specific_defaults

def test_registry_defaults_the_component_lacks_are_dropped_with_a_warning(phi3, caplog):
    azure = phi3
    # The published tag holds learning_rate_min / learning_rate_max: before the fix every submission raised.
    with caplog.at_level(logging.WARNING, logger="shared.backends.azureml.finetune_parameters"):
        make_backend(phi3_settings()).submit_finetune(request_for())
    inputs = node_of(job_put(azure)[1])["inputs"]
    assert "learning_rate_min" not in inputs and "learning_rate_max" not in inputs
    assert inputs["num_train_epochs"]["value"] == "1" and inputs["logging_steps"]["value"] == "10"  # published defaults kept
    assert "ignoring learning_rate_max, learning_rate_min (not parameters of chat_completion_pipeline 0.0.82)" in caplog.text


def test_unknown_keys_of_finetune_params_stay_an_error(azure):
    with pytest.raises(BackendError, match="FINETUNE_PARAMS: chat_completion_pipeline 0.0.82 has no input named 'learning_rate_min'"):
        make_backend(azure_settings(FINETUNE_PARAMS='{"learning_rate_min": 1e-7}')).submit_finetune(request_for())
    assert azure.writes() == []


# --------------------------------------------------------------------------- 4. the datastore

def test_the_default_datastore_is_the_one_the_deployment_creates():
    assert SPECS["azure_ml_datastore"].default == "autopilot_prepared"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda a: a.datastores.clear(), "datastore autopilot_prepared does not exist in workspace ws-finetune"),
        (lambda a: a.add_datastore("autopilot_prepared", "azureml-blobstore-0e8a2b14"),
         "datastore autopilot_prepared points at container azureml-blobstore-0e8a2b14, not the prepared container prepared"),
        (lambda a: a.add_datastore("autopilot_prepared", "prepared", account="someoneelse"),
         "datastore autopilot_prepared is on storage account someoneelse, not the app's account stautopilotapp"),
        (lambda a: a.add_datastore("autopilot_prepared", "prepared", kind="AzureFile"), "is a azurefile datastore, not blob storage"),
    ],
    ids=["missing", "workspace-container", "other-account", "file-share"],
)
def test_a_datastore_that_cannot_serve_the_prepared_files_is_refused(azure, setup, message):
    setup(azure)
    with pytest.raises(BackendError, match=message):
        make_backend(azure_settings()).submit_finetune(request_for())
    assert azure.writes() == []


def test_the_datastore_is_checked_once_per_worker_and_adls_works(azure):
    azure.add_datastore("autopilot_prepared", "prepared", kind="AzureDataLakeGen2")
    backend = make_backend(azure_settings())
    backend.submit_finetune(request_for("ds-1"))
    backend.submit_finetune(request_for("ds-2"))
    assert len(azure.calls("GET", r"/datastores/autopilot_prepared$")) == 1
    inputs = node_of(azure.calls("PUT", r"/jobs/")[-1].body)["inputs"]
    assert inputs["train_file_path"]["uri"] == "azureml://datastores/autopilot_prepared/paths/datasets/ds-2/train.jsonl"


# --------------------------------------------------------------------------- 6. no poller left running

def _poller_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("LROPoller")]


def test_long_operations_leave_no_poller_and_no_request_after_they_return(azure):
    backend = make_backend(azure_settings())
    steps = []

    def step(label: str, action: Any) -> None:
        action()
        steps.append((label, len(azure.requests), azure.requests[-1]))

    model = ModelRef(MODEL_NAME, "1", "job")
    step("endpoint PUT", lambda: backend.begin_deploy(model, "phi-ep-p", {}))
    azure.set_endpoint_state("phi-ep-p", "Succeeded")
    step("deployment PUT", lambda: backend.get_endpoint("phi-ep-p"))
    azure.set_deployment_state("phi-ep-p", "Succeeded")
    backend.get_endpoint("phi-ep-p")
    step("traffic PUT", lambda: backend.set_traffic("phi-ep-p"))
    step("DELETE", lambda: backend.begin_delete_endpoint("phi-ep-p"))
    # The fakes answered with the headers the spec declares: an SDK poller would poll them at once.
    assert all(r.method in {"PUT", "DELETE"} for _, _, r in steps), [(label, r.method, r.path) for label, _, r in steps]
    assert not azure.calls(pattern=r"mfeOperation")
    time.sleep(0.5)
    assert len(azure.requests) == steps[-1][1], [r.path for r in azure.requests[steps[-1][1]:]]
    assert _poller_threads() == []


def test_the_fake_declares_the_published_lro_headers(azure):
    backend = make_backend(azure_settings())
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-h", {})
    backend.begin_delete_endpoint("phi-ep-h")
    # What the fake answers is what the REST spec declares (tests/fixtures/rest-api-specs/lro-headers.json).
    import json

    declared = json.loads((FOUNDATION_SPEC.parent.parent / "rest-api-specs" / "lro-headers.json").read_text(encoding="utf-8"))
    put_headers = azure._async_headers()
    assert set(put_headers) == set(declared["OnlineDeployments_CreateOrUpdate"]["201"])
    status, _, delete_headers = azure._delete_endpoint(azure.calls("DELETE")[0], "phi-ep-h")
    retry = declared["OnlineDeployments_Delete"]["202"]["Retry-After"]
    assert status == 202 and set(delete_headers) == set(declared["OnlineDeployments_Delete"]["202"])
    assert retry["minimum"] <= int(delete_headers["Retry-After"]) <= retry["maximum"]


# --------------------------------------------------------------------------- 7. run history

def test_a_finished_job_reports_its_steps_times_and_failure_reason(azure):
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    started = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    azure.finish_job(job, "Failed", failed_step="finetune", error=("UserError", "CUDA out of memory. Tried to allocate 2.00 GiB"),
                     started=started)
    info = backend.get_job(job)
    assert info.state == FAILED
    assert info.error == "step finetune failed: UserError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert [s.display_name for s in info.steps] == ["model_import", "preprocess", "finetune"]
    assert info.started_at == started
    assert info.ended_at == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # 6 + 4 + 50 minutes


def test_completed_job_durations_and_metrics_for_the_quality_gate(azure):
    backend = make_backend(azure_settings(QUALITY_GATE="true"))
    job = backend.submit_finetune(request_for())
    azure.finish_job(job, metrics={"train_loss": [(10, 2.1), (20, 1.7)], "eval_loss": [(20, 1.9)]})
    info = backend.get_job(job)
    assert info.state == COMPLETED
    assert (info.ended_at - info.started_at).total_seconds() == 70 * 60
    finetune = next(s for s in info.steps if s.display_name == "finetune")
    assert finetune.metrics == {"train_loss": [(10, 2.1), (20, 1.7)], "eval_loss": [(20, 1.9)]}
    assert info.metrics["finetune/train_loss"] == 1.7 and info.metrics["eval_loss"] == 1.9
    assert {s.state for s in info.steps} == {COMPLETED} and len(info.steps) == len(PIPELINE_STEPS)


def test_without_the_gate_no_metric_is_read(azure):
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    azure.finish_job(job, metrics={"train_loss": [(1, 1.0)]})
    info = backend.get_job(job)
    assert info.metrics == {} and info.started_at is not None
    assert azure.calls(pattern=r"/metric/v2\.0/") == []


def test_run_history_unreadable_keeps_the_job_state(azure, caplog):
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    azure.finish_job(job, "Failed", failed_step="preprocess")
    azure.fail("GET", r"/children$", 403, code="AuthorizationFailed", times=None)
    with caplog.at_level(logging.WARNING):
        info = backend.get_job(job)
    assert info.state == FAILED and info.steps == () and info.error == f"job {job} Failed"
    assert f"cannot read the steps of job {job}" in caplog.text


def test_queued_jobs_cost_one_request(azure):
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    before = len(azure.requests)
    assert backend.get_job(job).steps == ()
    assert len(azure.requests) == before + 1


# --------------------------------------------------------------------------- request bodies fit the published examples

def test_every_put_body_fits_the_published_example(azure):
    backend = make_backend(azure_settings())
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-b", {})
    azure.set_endpoint_state("phi-ep-b", "Succeeded")
    backend.get_endpoint("phi-ep-b")
    assert azure.calls("PUT", r"/deployments/demo$") and azure.violations == []


def test_a_body_outside_the_published_example_is_answered_400(azure):
    # The check itself: the body the SDK sent, plus one key the published request example lacks.
    import copy

    import requests

    backend = make_backend(azure_settings())
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-v", {})
    [sent] = azure.calls("PUT", r"/onlineEndpoints/phi-ep-v$")
    body = copy.deepcopy(sent.body)
    body["properties"]["publicNetworkAccess"] = "Enabled"  # a later api-version's property, not 2022-02-01-preview's
    answer = requests.put(sent.url, json=body, timeout=5)
    assert answer.status_code == 400 and "unknown properties properties.publicNetworkAccess" in answer.text
    assert azure.violations == [f"PUT {sent.path}: properties.publicNetworkAccess"]
    azure.violations.clear()


def test_model_was_current_is_before_the_published_deprecation(published):
    assert MODEL_WAS_CURRENT < date.fromisoformat(published["tags"]["FinetuneDeprecationDate"])


def test_backend_today_defaults_to_the_real_date():
    backend = AzureMLBackend(azure_settings())
    assert backend._today() == datetime.now(UTC).date()


@pytest.mark.parametrize("auth", ["key", "aml_token"])
def test_a_scoring_target_costs_the_endpoint_read_and_the_credentials(azure, auth):
    backend = make_backend(azure_settings(ENDPOINT_AUTH_MODE=auth))
    backend.begin_deploy(ModelRef(MODEL_NAME, "1", "job"), "phi-ep-k", {})
    before = len(azure.requests)
    target = backend.get_scoring_target("phi-ep-k", refresh=True)
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in azure.requests[before:]]
    assert calls == [("GET", "phi-ep-k"), ("POST", "listKeys" if auth == "key" else "token")]
    assert target.key == ("pk-phi-ep-k" if auth == "key" else "aml-token-phi-ep-k")


@pytest.mark.parametrize("tracking_uri", [True, False], ids=["tracking-uri", "discovery"])
def test_run_history_host_comes_from_the_workspace_read_once(azure, tracking_uri):
    azure.workspace_tracking_uri = tracking_uri
    backend = make_backend(azure_settings())
    job = backend.submit_finetune(request_for())
    azure.finish_job(job)
    before = len(azure.requests)
    info = backend.get_job(job)
    calls = [r.url.split("?")[0].rsplit("/", 1)[-1] for r in azure.requests[before:]]
    # The submission no longer reads the workspace for its region (no VM size list): the first run history read does.
    expected = [job, WS, "discovery", "children"] if not tracking_uri else [job, WS, "children"]
    assert calls == expected and len(info.steps) == len(PIPELINE_STEPS)
    assert all(r.url.startswith("https://eastus.api.azureml.ms/") for r in azure.calls(pattern=r"/children$"))
