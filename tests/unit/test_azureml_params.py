"""Fine-tune parameters, foundation model tags and compute checks of the Azure ML backend (no SDK, no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from shared.backends.azureml.compute_sizes import check_cluster_state, check_finetune_size, gpus_per_node, planned_gpus_per_node
from shared.backends.azureml.finetune_parameters import (
    INTERFACE_PATH,
    NOTEBOOK_PARAMETERS,
    ComponentInterface,
    ParameterError,
    finetune_parameters,
    pipeline_display_name,
)
from shared.backends.azureml.foundation_model import MAX_MODEL_VERSION, FoundationModel, literal_tag, registered_model_version
from shared.backends.base import BackendError


@pytest.fixture(scope="module")
def interface() -> ComponentInterface:
    return ComponentInterface.load()


def test_repo_copy_of_the_interface_is_the_fixture(fixtures_dir):
    official = fixtures_dir / "azureml" / "chat_completion_pipeline.interface.yaml"
    assert INTERFACE_PATH.read_text(encoding="utf-8") == official.read_text(encoding="utf-8")


def test_interface_is_read_with_types_enums_and_minimums(interface):
    assert (interface.name, interface.version) == ("chat_completion_pipeline", "0.0.82")
    assert interface.inputs["deepspeed_stage"].type == "string"
    assert interface.inputs["deepspeed_stage"].enum == ("2", "3")
    assert interface.inputs["num_train_epochs"].min == 1
    assert interface.inputs["train_file_path"].type == "uri_file"
    assert interface.outputs["mlflow_model_folder"] == "mlflow_model"


def test_notebook_defaults_are_typed_as_the_component_declares(interface):
    params = finetune_parameters(interface)
    assert params == NOTEBOOK_PARAMETERS
    assert params["deepspeed_stage"] == "2" and params["apply_lora"] == "true" and params["apply_deepspeed"] == "true"
    assert params["num_train_epochs"] == 3 and isinstance(params["num_train_epochs"], int)
    assert params["learning_rate"] == 5e-6 and params["lr_scheduler_type"] == "cosine"
    assert interface.problems(params) == []


def test_layers_override_in_order_and_are_coerced(interface):
    params = finetune_parameters(
        interface,
        model_specific_defaults={"deepspeed_stage": 3, "apply_lora": True, "precision": 16, "num_train_epochs": 2},
        settings_params={"num_train_epochs": "1", "learning_rate": "2e-5"},
        request_params={"learning_rate": 1e-4, "apply_deepspeed": "False"},
    )
    assert params["deepspeed_stage"] == "3"  # int from the model tag -> the string the enum declares
    assert params["apply_lora"] == "true"  # bool -> "true"
    assert params["precision"] == "16"
    assert params["num_train_epochs"] == 1  # the setting beats the model's default
    assert params["learning_rate"] == 1e-4  # the request beats the setting
    assert params["apply_deepspeed"] == "false"
    assert interface.problems(params) == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_train_epoch", 1, "did you mean 'num_train_epochs'"),
        ("deepspeed_stage", 4, "not one of ['2', '3']"),
        ("apply_lora", "yes", "not one of ['true', 'false']"),
        ("num_train_epochs", 0, "below the minimum 1"),
        ("num_train_epochs", 1.5, "not an integer"),
        ("num_train_epochs", True, "got a boolean"),
        ("learning_rate", "fast", "not a number"),
        ("lr_scheduler_type", "step", "not one of"),
        ("train_file_path", "x.jsonl", "set by the app"),
        ("compute_finetune", "my-cluster", "set by the app"),
        ("deepspeed", "ds.json", "uri_file input"),
    ],
)
def test_bad_parameters_are_clear_errors(interface, name, value, message):
    with pytest.raises(ParameterError, match="FINETUNE_PARAMS") as info:
        finetune_parameters(interface, settings_params={name: value})
    assert message in str(info.value)


def test_problems_are_strict_about_python_types(interface):
    found = interface.problems({"deepspeed_stage": 2, "num_train_epochs": "3", "nope": 1, "train_file_path": 5,
                                "mlflow_model_path": {"type": "uri_folder", "path": "x"}})
    text = "\n".join(found)
    assert "deepspeed_stage: declared string, passed int 2" in text
    assert "num_train_epochs: declared integer, passed str '3'" in text
    assert "nope: not an input" in text
    assert "train_file_path: a uri_file input needs an asset" in text
    assert "mlflow_model_path: declared mlflow_model, passed uri_folder" in text


def test_display_name_follows_the_notebook():
    params = finetune_parameters(ComponentInterface.load(), settings_params={"gradient_accumulation_steps": 2})
    assert pipeline_display_name("Phi-3-mini-4k-instruct", "ultrachat", params, 4) == (
        "Phi-3-mini-4k-instruct-ultrachat-bs8-cosine-ds2-lora-save_limit-1-seqlen-1"
    )
    assert pipeline_display_name("m", "d", {"apply_deepspeed": "false", "apply_lora": "false"}, 1) == (
        "m-d-bs1-linear-nods-nolora-save_limit-1-seqlen-1"
    )


def test_foundation_model_tags_are_parsed_safely():
    tags = {
        "finetune_compute_allow_list": "['Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4']",
        "inference_compute_allow_list": "('Standard_NC6s_v3',)",
        "model_specific_defaults": "{'apply_lora': 'true', 'precision': '16'}",
    }
    fm = FoundationModel.from_tags("azureml://registries/azureml/models/Phi/versions/1", "Phi", "1", tags)
    assert fm.finetune_compute_allow_list == ["Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4"]
    assert fm.inference_compute_allow_list == ["Standard_NC6s_v3"]
    assert fm.model_specific_defaults == {"apply_lora": "true", "precision": "16"}
    assert FoundationModel.from_tags("id", "Phi", "1", {}).finetune_compute_allow_list is None


@pytest.mark.parametrize(
    ("tag", "raw", "message"),
    [
        ("finetune_compute_allow_list", "['Standard_NC6s_v3'", "not a valid Python literal"),
        ("finetune_compute_allow_list", "__import__('os').system('id')", "not a valid Python literal"),
        ("inference_compute_allow_list", "{'a': 1}", "must be a list"),
        ("finetune_compute_allow_list", "[1, 2]", "instance type names"),
        ("model_specific_defaults", "['apply_lora']", "must be a dict"),
    ],
)
def test_malformed_tags_name_the_tag(tag, raw, message):
    with pytest.raises(BackendError, match=tag) as info:
        FoundationModel.from_tags("id", "Phi-3-mini-4k-instruct", "15", {tag: raw})
    assert message in str(info.value)
    assert "Phi-3-mini-4k-instruct:15" in str(info.value)


def test_literal_tag_absent_is_none():
    assert literal_tag(None, "x", list) is None
    assert literal_tag({"x": ""}, "x", list) is None


def test_inference_allow_list_check():
    fm = FoundationModel("id", "Phi", "1", inference_compute_allow_list=["Standard_NC6s_v3"])
    fm.check_inference_instance("standard_nc6s_v3")
    with pytest.raises(BackendError, match="INFERENCE_INSTANCE_TYPE"):
        fm.check_inference_instance("Standard_DS3_v2")
    FoundationModel("id", "Phi", "1").check_inference_instance("anything")  # no allow list: no opinion


def test_finetune_size_checks():
    check_finetune_size("standard_nc24ads_a100_v4", ["Standard_NC24ads_A100_v4"], "c")
    with pytest.raises(BackendError, match="not in the foundation model's finetune_compute_allow_list"):
        check_finetune_size("Standard_NC6s_v3", ["Standard_NC24ads_A100_v4"], "c")
    with pytest.raises(BackendError, match="not supported for fine-tuning"):
        check_finetune_size("Standard_NC24r", None, "c")
    check_finetune_size("Standard_NC24s_v3", None, "c")
    with pytest.raises(BackendError, match="failed provisioning state"):
        check_cluster_state("gpu", "Failed")
    check_cluster_state("gpu", "Succeeded")


def test_gpus_per_node_from_the_size_list():
    skus = [SimpleNamespace(name="Standard_NC48ads_A100_v4", gpus=2), SimpleNamespace(name="Standard_DS3_v2", gpus=0)]
    assert gpus_per_node("standard_nc48ads_a100_v4", skus, "c") == 2
    with pytest.raises(BackendError, match="has no GPU"):
        gpus_per_node("Standard_DS3_v2", skus, "c")
    with pytest.raises(BackendError, match="not available in the workspace's region"):
        gpus_per_node("Standard_ND96asr_v4", skus, "c")
    assert planned_gpus_per_node("Standard_NC24s_v3") == 4 and planned_gpus_per_node("Unknown") == 1


def test_registered_version_is_fixed_per_job_and_increases():
    first = registered_model_version("job_a", datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC))
    # Epoch seconds (the cookbook's timestamp version), not milliseconds: 10 digits, a safe 32-bit integer.
    assert first == "1714564800" == registered_model_version("job_a", datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC))
    assert 0 < int(first) <= MAX_MODEL_VERSION == 2**31 - 1
    later = registered_model_version("job_b", datetime(2024, 5, 2, tzinfo=UTC))
    assert int(later) > int(first)
    fallback = registered_model_version("job_c", None)
    assert fallback.isdigit() and fallback == registered_model_version("job_c", None)
