"""Azure endpoint health (shared.backends.azureml.endpoint_health) through the real azure-ai-ml SDK against the
fake Azure ML over intercepted HTTP (tests/azureml_fakes.py): provisioning states -> health."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.deployment_spec import DEPLOYMENT_NAME
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.backends.base import (
    HEALTH_HEALTHY,
    HEALTH_MISSING,
    HEALTH_STARTING,
    HEALTH_UNHEALTHY,
    HEALTH_UNKNOWN,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    ModelRef,
)
from tests.azureml_fakes import RG, SUB, WS, FakeAzureML, FakeCredential
from tests.support import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")


@pytest.fixture
def azure() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeAzureML(rsps, str(INTERFACE_PATH))


def backend() -> AzureMLBackend:
    settings = make_settings(ML_BACKEND="azureml", AZURE_SUBSCRIPTION_ID=SUB, AZURE_RESOURCE_GROUP=RG, AZURE_ML_WORKSPACE=WS)
    return AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0})


def deployed(azure: FakeAzureML, b: AzureMLBackend, ep: str) -> None:
    b.begin_deploy(ModelRef("phi-ft", "1", "job"), ep, {MANAGED_BY_TAG: MANAGED_BY_VALUE})
    azure.set_endpoint_state(ep, "Succeeded")
    b.get_endpoint(ep)  # starts the deployment
    azure.set_deployment_state(ep, "Succeeded")
    b.set_traffic(ep)
    azure.set_endpoint_state(ep, "Succeeded")
    assert b.endpoint_health(ep).status == HEALTH_HEALTHY


def test_provisioning_states_map_to_health(azure):
    b = backend()
    assert b.endpoint_health("phi-none").status == HEALTH_MISSING
    b.begin_deploy(ModelRef("phi-ft", "1", "job"), "phi-h", {MANAGED_BY_TAG: MANAGED_BY_VALUE})
    assert b.endpoint_health("phi-h").status == HEALTH_STARTING  # endpoint Creating
    azure.set_endpoint_state("phi-h", "Succeeded")
    assert b.endpoint_health("phi-h").status == HEALTH_UNHEALTHY  # Succeeded endpoint, no deployment
    b.get_endpoint("phi-h")
    assert b.endpoint_health("phi-h").status == HEALTH_STARTING  # deployment Creating
    azure.set_deployment_state("phi-h", "Succeeded")
    assert b.endpoint_health("phi-h").status == HEALTH_STARTING  # not routed yet
    b.set_traffic("phi-h")
    assert b.endpoint_health("phi-h").status == HEALTH_STARTING  # endpoint Updating (the traffic PUT)
    azure.set_endpoint_state("phi-h", "Succeeded")
    health = b.endpoint_health("phi-h")
    assert health.status == HEALTH_HEALTHY and DEPLOYMENT_NAME in health.reason


@pytest.mark.parametrize(("resource", "state"), [("deployment", "Failed"), ("deployment", "Canceled"), ("endpoint", "Failed")])
def test_a_failed_endpoint_or_deployment_is_unhealthy_with_the_state(azure, resource, state):
    b = backend()
    deployed(azure, b, "phi-f")
    if resource == "deployment":
        azure.set_deployment_state("phi-f", state)
    else:
        azure.set_endpoint_state("phi-f", state)
    health = b.endpoint_health("phi-f")
    assert health.status == HEALTH_UNHEALTHY and health.definite
    assert f"{resource} " in health.reason and state.lower() in health.reason


def test_a_deleting_endpoint_is_missing_and_an_unreachable_workspace_unknown(azure):
    b = backend()
    deployed(azure, b, "phi-d")
    azure.set_endpoint_state("phi-d", "Deleting")
    assert b.endpoint_health("phi-d").status == HEALTH_MISSING
    azure.fail("GET", r"/onlineEndpoints/phi-d$", 503, times=None)
    assert b.endpoint_health("phi-d").status == HEALTH_UNKNOWN  # proves nothing: the loop acts on nothing


def test_a_heal_attempt_resubmits_a_failed_deployment_but_reading_the_endpoint_never_does(azure):
    b = backend()
    ep = "phi-heal"
    deployed(azure, b, ep)
    azure.set_deployment_state(ep, "Failed")
    puts = lambda: azure.calls("PUT", rf"/onlineEndpoints/{ep}/deployments/")  # noqa: E731
    before = len(puts())
    b.get_endpoint(ep)  # the reconcile's read: a Failed deployment stays Failed (the health loop decides)
    assert len(puts()) == before
    b.begin_deploy(ModelRef("phi-ft", "1", "job"), ep, {MANAGED_BY_TAG: MANAGED_BY_VALUE})  # a heal attempt
    assert len(puts()) == before + 1


@pytest.mark.parametrize(("traffic", "serving"), [
    (None, DEPLOYMENT_NAME),  # nothing routed yet: the first deployment
    ({"demo": 100}, "demo"),
    ({"version-3": 100}, "version-3"),  # a promoted candidate, or a version rolled back to in the endpoint
    ({"demo": 0, "version-3": 100}, "version-3"),
    ({"version-2": 90, "version-3": 10}, "version-2"),  # a canary: the champion serves
    ({"demo": 50, "version-3": 50}, "demo"),
])
def test_the_serving_deployment_is_the_one_with_the_traffic(traffic, serving):
    from types import SimpleNamespace

    from shared.backends.azureml.endpoint_health import serving_deployment

    assert serving_deployment(SimpleNamespace(traffic=traffic), DEPLOYMENT_NAME) == serving
