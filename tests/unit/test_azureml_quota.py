"""GPU quota: what the configured sizes need, and the region's usages where the caller may read them (issue 25.4).

Published data: the model specs' compute lists (tests/fixtures/azureml), the component interface's
own default instance type, and the azure-rest-api-specs Usage/list example the fake serves.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
import responses
import yaml

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.compute_sizes import RETIRED_SIZES, SIZES, known_gpus_per_node
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH, ComponentInterface
from shared.backends.azureml.quota import QuotaNeed, quota_lines, quota_needs
from shared.backends.base import BackendError
from shared.cli.plan import plan_pipeline_job
from tests.azureml_fakes import FOUNDATION_SPEC, PHI3_CURRENT_SPEC, RG, SUB, USAGES_EXAMPLE, WS, FakeAzureML, FakeCredential
from tests.support import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")

TRAIN = "azureml://datastores/autopilot_prepared/paths/datasets/abc/train.jsonl"
TEST = "azureml://datastores/autopilot_prepared/paths/datasets/abc/test.jsonl"
NCADS = "Standard NCADS_A100_v4 Family"


def published_usage(family: str, limit: int, current: int) -> dict[str, Any]:
    """An entry shaped exactly as the published example's NC family entry, for another family."""
    entry = copy.deepcopy(next(u for u in USAGES_EXAMPLE["responses"]["200"]["body"]["value"]
                               if u["name"]["value"] == "Standard NC Family Cluster Dedicated vCPUs"))
    name = f"{family} Cluster Dedicated vCPUs"
    entry.update(id=entry["id"].rsplit("/", 1)[0] + "/" + name.replace(" ", "_"), limit=limit, currentValue=current)
    entry["name"] = {"localizedValue": name, "value": name}
    return entry


def azure_plan_settings(**env: str) -> Any:
    return make_settings(ML_BACKEND="azureml", AZURE_SUBSCRIPTION_ID=SUB, AZURE_RESOURCE_GROUP=RG, AZURE_ML_WORKSPACE=WS, **env)


def online_plan(setup: Any = None, **env: str) -> Any:
    settings = azure_plan_settings(**env)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        azure = FakeAzureML(rsps, str(INTERFACE_PATH))
        if setup:
            setup(azure)
        return plan_pipeline_job(settings, TRAIN, TEST, backend=AzureMLBackend(settings, credential=FakeCredential()),
                                 today=date(2026, 12, 3))


# --------------------------------------------------------------------------- what the sizes need

def test_the_default_sizes_need_53_ncads_vcpus_with_the_endpoint_reserve():
    [need] = quota_needs("Standard_NC24ads_A100_v4", 1, "Standard_NC24ads_A100_v4", 1)
    assert need.family == NCADS
    assert need.vcpus == 24 + 29  # ceil(24 x 1.2) = 29 for the endpoint: managed online endpoints reserve 20%
    assert "+20% that managed online endpoints reserve" in need.parts[1]


def test_two_endpoint_instances_and_two_nodes_count_twice():
    [need] = quota_needs("Standard_NC48ads_A100_v4", 2, "Standard_NC24ads_A100_v4", 2)
    assert need.vcpus == 2 * 48 + 58  # ceil(2 x 24 x 1.2)


def test_every_published_compute_of_the_registry_chat_models_is_in_the_size_table():
    # The app no longer asks compute.list_sizes(): every size a model publishes must be known.
    for path in (FOUNDATION_SPEC, PHI3_CURRENT_SPEC):
        computes = yaml.safe_load(path.read_text(encoding="utf-8"))["system_metadata"]["supportedComputes"]
        for size in computes["finetuneComputes"] + computes["inferenceComputes"]:
            assert size.lower() in SIZES, f"{size} ({path.name}) is not in compute_sizes.SIZES"
            assert known_gpus_per_node(size, "t") >= 1
    with pytest.raises(BackendError, match="does not know how many GPUs VM size Standard_XYZ"):
        known_gpus_per_node("Standard_XYZ", "serverless instance type Standard_XYZ")


def test_the_component_s_own_default_finetune_size_is_retired():
    # chat_completion_pipeline 0.0.82 defaults instance_type_finetune to Standard_nc24rs_v3 (NCv3, retired):
    # the app always sets the serverless instance types, and refuses that size.
    interface = ComponentInterface.load()
    default = interface.inputs["instance_type_finetune"].default
    assert default.lower() == "standard_nc24rs_v3" and RETIRED_SIZES[default.lower()] == date(2025, 9, 30)
    plan = plan_pipeline_job(make_settings(FINETUNE_INSTANCE_TYPE="Standard_NC24rs_v3"), TRAIN, TEST, today=date(2026, 12, 3),
                             backend=AzureMLBackend(make_settings(), credential=FakeCredential(), client_kwargs={"retry_total": 0}))
    assert any("Standard_NC24rs_v3 was retired by Azure on 2025-09-30" in r for r in plan.refusals)


# --------------------------------------------------------------------------- the usages

def test_the_published_usage_entry_is_read_as_limit_use_and_free():
    need = QuotaNeed("Standard NC Family", 6, ("6 (test)",))
    lines = quota_lines([need], USAGES_EXAMPLE["responses"]["200"]["body"]["value"])
    assert lines[1] == "# quota check: Standard NC Family Cluster Dedicated vCPUs: limit 24, in use 12, free 12, needed 6: enough"
    [ncv3] = quota_lines([QuotaNeed("Standard NCSv3 Family", 6, ())], [])[1:]
    assert "lists no 'Standard NCSv3 Family Cluster Dedicated vCPUs'" in ncv3


def test_plan_offline_states_the_quota_and_says_it_was_not_checked():
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        plan = plan_pipeline_job(make_settings(), TRAIN, TEST, backend=AzureMLBackend(
            make_settings(), credential=FakeCredential(), client_kwargs={"retry_total": 0}))
    assert plan.quota[0].startswith(f"# quota needed: 53 vCPUs of {NCADS} = 24 (fine-tuning: 1 node(s) x 24 vCPUs")
    assert plan.quota[1].startswith("# quota not checked")
    assert plan.quota[0] in plan.yaml


def test_plan_names_a_region_without_the_family():
    plan = online_plan()  # the published list: no NCADS_A100_v4 entry
    assert f"lists no '{NCADS} Cluster Dedicated vCPUs'" in plan.quota[1]


@pytest.mark.parametrize(("limit", "current", "verdict"), [(48, 0, "NOT ENOUGH: request 5 more vCPUs"), (100, 24, "enough")])
def test_plan_checks_the_region_s_usage(limit, current, verdict):
    plan = online_plan(lambda a: a.extra_usages.append(published_usage(NCADS, limit, current)))
    assert plan.quota[1] == (f"# quota check: {NCADS} Cluster Dedicated vCPUs: limit {limit}, in use {current}, "
                             f"free {limit - current}, needed 53: {verdict}" + (f" of {NCADS}" if "NOT" in verdict else ""))


def test_plan_says_when_the_user_may_not_read_usages():
    plan = online_plan(lambda a: setattr(a, "usages_status", 403))
    assert "quota not checked: the signed-in identity may not read usages" in plan.quota[1]
