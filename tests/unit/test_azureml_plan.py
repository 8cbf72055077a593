"""``python -m shared.cli plan``: the pipeline job the app would submit, as Azure ML v2 YAML, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from typing import Any

import pytest
import responses
import yaml

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.finetune_parameters import ComponentInterface
from shared.cli.plan import plan_pipeline_job
from shared.settings import PROJECT_ROOT
from tests.azureml_fakes import PHI3_CURRENT_SPEC, RG, SUB, WS, FakeAzureML, FakeCredential
from tests.support import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")

TRAIN = "azureml://datastores/autopilot_prepared/paths/datasets/abc/train.jsonl"
TEST = "azureml://datastores/autopilot_prepared/paths/datasets/abc/test.jsonl"
NOTEBOOK_INPUTS = {
    "num_train_epochs": 3, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
    "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "apply_lora": "true", "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}


@pytest.fixture(scope="module")
def fixture_interface(fixtures_dir) -> ComponentInterface:
    return ComponentInterface.load(fixtures_dir / "azureml" / "chat_completion_pipeline.interface.yaml")


def check_plan(document: str, interface: ComponentInterface, expected: dict[str, Any] = NOTEBOOK_INPUTS) -> dict[str, Any]:
    plan = yaml.safe_load(document)
    assert plan["type"] == "pipeline"
    assert plan["settings"] == {"continue_on_step_failure": False, "force_rerun": True}
    assert plan["outputs"] == {"trained_model": {"mode": "rw_mount", "type": "mlflow_model"}}
    [node] = plan["jobs"].values()
    assert node["outputs"] == {"mlflow_model_folder": "${{parent.outputs.trained_model}}"}
    inputs = node["inputs"]
    # YAML keeps the types: "2" must stay a string, 3 an integer.
    assert interface.problems(inputs) == []
    for name, value in expected.items():
        assert inputs[name] == value and type(inputs[name]) is type(value), name
    assert inputs["train_file_path"] == {"type": "uri_file", "path": TRAIN}
    assert inputs["test_file_path"] == {"type": "uri_file", "path": TEST}
    assert inputs["mlflow_model_path"]["type"] == "mlflow_model"
    return plan


def test_plan_offline_uses_the_repo_interface(fixture_interface):
    settings = make_settings()
    backend = AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False):  # no route: every request fails to connect
        plan = plan_pipeline_job(settings, TRAIN, TEST, backend=backend)
    assert plan.component_source.startswith("repo interface copy")
    doc = check_plan(plan.yaml, fixture_interface)
    [node] = doc["jobs"].values()
    assert node["component"] == "azureml://registries/azureml/components/chat_completion_pipeline/labels/latest"
    assert node["inputs"]["mlflow_model_path"]["path"] == "azureml://registries/azureml/models/Phi-4/labels/latest"
    assert node["inputs"]["compute_finetune"] == "serverless"
    assert node["inputs"]["instance_type_finetune"] == "Standard_NC24ads_A100_v4"
    assert "# note: registry not reachable" in plan.yaml


def test_plan_online_uses_the_registry_and_workspace(fixture_interface, fixtures_dir):
    settings = make_settings(ML_BACKEND="azureml", AZURE_SUBSCRIPTION_ID=SUB, AZURE_RESOURCE_GROUP=RG, AZURE_ML_WORKSPACE=WS,
                             FINETUNE_COMPUTE="gpu-cluster")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        azure = FakeAzureML(rsps, str(fixtures_dir / "azureml" / "chat_completion_pipeline.interface.yaml"))
        azure.add_compute("gpu-cluster", "Standard_NC48ads_A100_v4")
        plan = plan_pipeline_job(settings, TRAIN, TEST, backend=AzureMLBackend(settings, credential=FakeCredential()))
    assert plan.component_source == "registry azureml"
    # Phi-4's published model_specific_defaults override the notebook's epochs and DeepSpeed stage.
    doc = check_plan(plan.yaml, fixture_interface, {**NOTEBOOK_INPUTS, "num_train_epochs": 1, "deepspeed_stage": "3"})
    [node] = doc["jobs"].values()
    assert node["component"] == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    assert "# lifecycle of Phi-4:8: no deprecation or retirement date published" in plan.yaml
    assert node["inputs"]["precision"] == "16"  # from the model's model_specific_defaults tag
    assert "learning_rate_min" not in node["inputs"] and "learning_rate_max" not in node["inputs"]
    assert node["inputs"]["number_of_gpu_to_use_finetuning"] == 2
    assert node["inputs"]["compute_finetune"] == "gpu-cluster"
    assert azure.writes() == []  # planning submits nothing


def test_cli_plan_works_without_network_or_credentials(tmp_path, fixture_interface):
    out = tmp_path / "plan.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env.update(ML_BACKEND="azureml", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "plan", "--train", TRAIN, "--test", TEST, "--out", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    check_plan(out.read_text(encoding="utf-8"), fixture_interface)


def test_plan_prints_the_models_lifecycle_and_todays_refusal(fixtures_dir):
    # The cookbook's model as the registry holds it now: its dates only under system_metadata.deprecation
    # (a tag-only reader finds none and plans a job Azure refuses).
    settings = make_settings(ML_BACKEND="azureml", AZURE_SUBSCRIPTION_ID=SUB, AZURE_RESOURCE_GROUP=RG, AZURE_ML_WORKSPACE=WS,
                             FINETUNE_COMPUTE="gpu-cluster", FOUNDATION_MODEL_NAME="Phi-3-mini-4k-instruct")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        azure = FakeAzureML(rsps, str(fixtures_dir / "azureml" / "chat_completion_pipeline.interface.yaml"), spec=PHI3_CURRENT_SPEC)
        assert not any("Date" in tag for tag in azure.foundation_tags)
        azure.add_compute("gpu-cluster", "Standard_NC48ads_A100_v4")
        backend = AzureMLBackend(settings, credential=FakeCredential())
        late = plan_pipeline_job(settings, TRAIN, TEST, backend=backend, today=date(2026, 12, 1))
        early = plan_pipeline_job(settings, TRAIN, TEST, backend=backend, today=date(2025, 7, 15))
    # The dates are the published spec's system_metadata.deprecation.
    assert ("# lifecycle of Phi-3-mini-4k-instruct:15 (archived in the registry): FinetuneDeprecationDate 2025-06-30, FinetuneRetirementDate 2025-08-30, "
            "InferenceLegacyDate 2025-06-09, InferenceDeprecationDate 2025-06-30, InferenceRetirementDate 2025-08-30") in late.yaml
    assert len(late.refusals) == 2 and "retired for fine-tuning on 2025-08-30" in late.refusals[0]
    assert "# REFUSED today (2026-12-01): foundation model Phi-3-mini-4k-instruct:15 was retired for deployment on 2025-08-30" in late.yaml
    assert early.refusals == ()
    assert "# warning: foundation model Phi-3-mini-4k-instruct:15 is deprecated for fine-tuning since 2025-06-30, retirement 2025-08-30" in early.yaml
    yaml.safe_load(late.yaml)  # still a valid job document


def test_plan_offline_says_the_lifecycle_is_unknown():
    settings = make_settings()
    backend = AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        plan = plan_pipeline_job(settings, TRAIN, TEST, backend=backend)
    assert "# lifecycle: unknown (registry not reachable" in plan.yaml and plan.refusals == ()


def test_plan_names_a_retired_instance_type_offline():
    settings = make_settings(INFERENCE_INSTANCE_TYPE="Standard_NC6s_v3")
    backend = AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        plan = plan_pipeline_job(settings, TRAIN, TEST, backend=backend, today=date(2026, 12, 1))
    assert plan.refusals == ("INFERENCE_INSTANCE_TYPE: VM size Standard_NC6s_v3 was retired by Azure on 2025-09-30; "
                             "set INFERENCE_INSTANCE_TYPE to a current size",)
