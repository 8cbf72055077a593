"""Settings: typed, frozen, read once, clear errors naming the variable."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from shared.backends.azureml.compute_sizes import RETIRED_SIZES
from shared.settings import (
    PARSERS,
    SPECS,
    Settings,
    SettingsError,
    app_setting,
    load_settings,
    local_settings_values,
    setting,
    specs_of,
)
from tests.support import make_settings


def test_defaults_load() -> None:
    s = load_settings(environ={})
    assert s.ml_backend == "local"
    assert s.chat_data_container == "chat-data"
    assert s.test_fraction == 0.1 and s.min_valid_examples == 10
    assert s.model_name == "smollm2-135m-instruct-chat-ft"
    assert s.instance_hourly_prices["Standard_NC24ads_A100_v4"] == pytest.approx(3.67)
    assert not any(size.lower() in RETIRED_SIZES for size in s.instance_hourly_prices), "a retired size is priced"
    assert not any(size.lower() in RETIRED_SIZES for size in s.training_tokens_per_second)


def test_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ml_backend = "azureml"  # type: ignore[misc]


def test_every_field_has_a_spec() -> None:
    assert list(SPECS) == [f.name for f in dataclasses.fields(Settings)]
    assert {spec.type for spec in SPECS.values()} >= {"str", "int", "float", "bool", "dict[str, Any]", "float | None"}
    assert SPECS["quality_gate"].parse is PARSERS["bool"] and SPECS["scoring_max_streams"].parse is not PARSERS["int"]


def test_a_setting_whose_type_has_no_parser_is_refused_when_declared() -> None:
    @dataclasses.dataclass(frozen=True)
    class Declared:
        when: list[str] = setting("WHEN", "", "a list")
        port: int = setting("PORT", "1", "a port")

    with pytest.raises(TypeError, match="no parser for type 'list\\[str\\]'"):
        specs_of(Declared)
    specs = specs_of(dataclasses.make_dataclass("Named", [("when", "list[str]", setting("WHEN", "", "a list", parse=str.split))]))
    assert specs["when"].parse is str.split and specs["when"].env == "WHEN"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MIN_VALID_EXAMPLES": "ten"}, "MIN_VALID_EXAMPLES"),
        ({"TEST_FRACTION": "1.5"}, "TEST_FRACTION"),
        ({"QUALITY_GATE": "maybe"}, "QUALITY_GATE"),
        ({"ML_BACKEND": "sagemaker"}, "ML_BACKEND"),
        ({"FINETUNE_PARAMS": "[1]"}, "FINETUNE_PARAMS"),
        ({"FINETUNE_PARAMS": "{bad"}, "FINETUNE_PARAMS"),
        ({"ML_BACKEND": "azureml"}, "AZURE_SUBSCRIPTION_ID"),
        ({"ML_BACKEND": "azureml", "AZURE_SUBSCRIPTION_ID": "s", "AZURE_RESOURCE_GROUP": "rg"}, "AZURE_ML_WORKSPACE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load_settings(environ=env)


def test_azureml_workspace_id() -> None:
    s = load_settings(environ={"ML_BACKEND": "azureml", "AZURE_SUBSCRIPTION_ID": "sub", "AZURE_RESOURCE_GROUP": "rg",
                               "AZURE_ML_WORKSPACE": "ws"})
    assert s.workspace_resource_id.endswith("/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws")
    assert s.model_name == "phi-4-chat-ft"


def test_local_settings_json_values(tmp_path, monkeypatch) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"IDLE_ENDPOINT_MINUTES": "5"}}))
    monkeypatch.delenv("IDLE_ENDPOINT_MINUTES", raising=False)
    assert local_settings_values(path) == {"IDLE_ENDPOINT_MINUTES": "5"}
    assert load_settings(local_settings=path).idle_endpoint_minutes == 5
    monkeypatch.setenv("IDLE_ENDPOINT_MINUTES", "7")  # the environment wins, as under Core Tools
    assert load_settings(local_settings=path).idle_endpoint_minutes == 7


def test_app_setting_falls_back_to_default() -> None:
    assert app_setting("JANITOR_SCHEDULE", environ={}) == "0 */10 * * * *"
    assert app_setting("JANITOR_SCHEDULE", environ={"JANITOR_SCHEDULE": "*/5 * * * * *"}) == "*/5 * * * * *"
    assert app_setting("NOPE", environ={}) is None


def test_the_local_job_limit_defaults_from_the_core_count_and_is_validated() -> None:
    assert make_settings().local_max_parallel_jobs == max(1, (os.cpu_count() or 1) // 2)
    assert make_settings(LOCAL_MAX_PARALLEL_JOBS="3").local_max_parallel_jobs == 3
    with pytest.raises(SettingsError, match="LOCAL_MAX_PARALLEL_JOBS"):
        make_settings(LOCAL_MAX_PARALLEL_JOBS="0")
