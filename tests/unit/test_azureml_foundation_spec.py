"""The default base model and the registry's lifecycle metadata, held against the published specs.

Fixtures (tests/fixtures/azureml/SOURCES.md): the asset specs of Phi-4 v8 and of the cookbook's
Phi-3-mini-4k-instruct v15 as Azure/azureml-assets holds them now (archived, lifecycle and computes
under ``system_metadata`` only), and Phi-3-mini-4k-instruct v15 as first published (tags), and the
``chat_completion_pipeline`` 0.0.82 interface.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
import responses
import yaml

from shared.backends.azureml.finetune_parameters import INTERFACE_PATH, ComponentInterface, ParameterError, finetune_parameters
from shared.backends.azureml.foundation_model import FoundationModel
from shared.backends.base import BackendError
from shared.settings import SPECS
from tests import infra_template as tpl
from tests.azureml_fakes import (
    FOUNDATION_SPEC,
    PHI3_CURRENT_SPEC,
    PHI3_TAG_SPEC,
    FakeAzureML,
    azure_settings,
    make_backend,
    registry_system_metadata,
    request_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")

TODAY = date(2026, 12, 3)


def spec(path: Any) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture
def registry() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeAzureML(rsps, str(INTERFACE_PATH))


# --------------------------------------------------------------------------- the default is fine-tunable today

def test_the_default_base_model_is_the_published_fine_tunable_spec():
    published = spec(FOUNDATION_SPEC)
    meta = published["system_metadata"]
    assert SPECS["foundation_model_name"].default == published["name"] == "Phi-4"
    assert not published.get("isArchived", False)
    assert "chat-completion" in meta["tasks"]["fineTuningTasks"]
    assert SPECS["finetune_instance_type"].default in meta["supportedComputes"]["finetuneComputes"]
    assert SPECS["inference_instance_type"].default in meta["supportedComputes"]["inferenceComputes"]
    retirement = [v for k, v in (meta.get("deprecation") or {}).items() if "Retirement" in k]
    assert all(date.fromisoformat(str(v)[:10]) > TODAY for v in retirement), retirement


def test_the_cookbook_model_is_retired_and_archived_in_the_current_spec():
    published = spec(PHI3_CURRENT_SPEC)
    assert published["name"] == "Phi-3-mini-4k-instruct" and published["isArchived"] is True
    assert published["system_metadata"]["deprecation"]["finetuneRetirementDate"].startswith("2025-08-30")
    assert "FinetuneRetirementDate" not in (published.get("tags") or {})  # tags hold no dates any more


def test_azd_up_takes_the_model_as_a_parameter_with_the_same_default():
    raw = tpl.app_settings_raw()
    params = tpl.main_doc()["parameters"]
    assert raw["FOUNDATION_MODEL_NAME"] == "foundationModelName"
    assert raw["FOUNDATION_MODEL_VERSION"] == "foundationModelVersion"
    assert params["foundationModelName"]["default"] == SPECS["foundation_model_name"].default
    mapping = json.loads((tpl.MAIN.parent / "main.parameters.json").read_text())["parameters"]
    assert mapping["foundationModelName"]["value"] == "${FOUNDATION_MODEL_NAME=Phi-4}"


# --------------------------------------------------------------------------- system_metadata is read

def test_lifecycle_and_computes_are_read_from_system_metadata():
    published = spec(PHI3_CURRENT_SPEC)
    served = registry_system_metadata(PHI3_CURRENT_SPEC)
    assert isinstance(served["deprecation"], str)  # as the publisher stores it: JSON in a string
    model = FoundationModel.from_tags("id", "Phi-3-mini-4k-instruct", "15", published.get("tags"), served, archived=True)
    assert {k: v.isoformat() for k, v in model.lifecycle.items()} == {
        "FinetuneDeprecationDate": "2025-06-30", "FinetuneRetirementDate": "2025-08-30", "InferenceLegacyDate": "2025-06-09",
        "InferenceDeprecationDate": "2025-06-30", "InferenceRetirementDate": "2025-08-30"}
    assert model.finetune_compute_allow_list == published["system_metadata"]["supportedComputes"]["finetuneComputes"]
    assert model.inference_compute_allow_list == published["system_metadata"]["supportedComputes"]["inferenceComputes"]
    assert model.finetuning_tasks == ["chat-completion"] and model.archived
    with pytest.raises(BackendError, match="retired for fine-tuning on 2025-08-30"):
        model.check_lifecycle("finetune", TODAY)


def test_the_tag_form_is_still_read():
    published = spec(PHI3_TAG_SPEC)
    tags = {k: repr(v) if isinstance(v, (list, dict)) else str(v) for k, v in published["tags"].items()}
    model = FoundationModel.from_tags("id", "Phi-3-mini-4k-instruct", "15", tags)
    assert model.lifecycle["FinetuneRetirementDate"] == date(2025, 8, 30)
    assert model.finetune_compute_allow_list == published["tags"]["finetune_compute_allow_list"]


def test_system_metadata_wins_over_tags():
    tags = {"FinetuneRetirementDate": "2030-01-01", "finetune_compute_allow_list": "['Standard_NC6s_v3']"}
    meta = {"deprecation": json.dumps({"finetuneRetirementDate": "2025-08-30T00:00:00.000000Z"}),
            "supportedComputes": json.dumps({"finetuneComputes": ["Standard_NC24ads_A100_v4"]})}
    model = FoundationModel.from_tags("id", "m", "1", tags, meta)
    assert model.lifecycle["FinetuneRetirementDate"] == date(2025, 8, 30)
    assert model.finetune_compute_allow_list == ["Standard_NC24ads_A100_v4"]


def test_the_backend_refuses_the_archived_cookbook_model_from_its_system_metadata(registry):
    registry.use_spec(PHI3_CURRENT_SPEC)
    backend = make_backend(azure_settings(FOUNDATION_MODEL_NAME="Phi-3-mini-4k-instruct"), today=TODAY)
    with pytest.raises(BackendError, match=r"Phi-3-mini-4k-instruct:15 was retired for fine-tuning on 2025-08-30"):
        backend.submit_finetune(request_for())
    assert registry.writes() == []


def test_the_backend_submits_the_default_model_today(registry):
    backend = make_backend(azure_settings(), today=TODAY)
    foundation = backend.foundation_model()
    assert foundation.label == "Phi-4:8" and foundation.lifecycle == {}
    assert foundation.finetune_compute_allow_list == spec(FOUNDATION_SPEC)["system_metadata"]["supportedComputes"]["finetuneComputes"]
    backend.submit_finetune(request_for())
    assert len(registry.calls("PUT", r"/jobs/")) == 1


def test_a_model_that_cannot_be_fine_tuned_for_chat_is_refused(registry):
    registry.foundation_system_metadata["tasks"] = json.dumps({"fineTuningTasks": ["text-classification"]})
    with pytest.raises(BackendError, match="does not support chat-completion fine-tuning"):
        make_backend(azure_settings(), today=TODAY).submit_finetune(request_for())
    assert registry.writes() == []


# --------------------------------------------------------------------------- the component interface 0.0.82

def test_the_interface_copy_is_the_registry_s_current_version():
    interface = ComponentInterface.load()
    assert interface.version == "0.0.82"
    assert interface.inputs["optim"].enum == ("adamw_torch", "adafactor")


def test_adamw_hf_is_refused_as_the_current_component_refuses_it():
    with pytest.raises(ParameterError, match="optim"):
        finetune_parameters(ComponentInterface.load(), settings_params={"optim": "adamw_hf"})
