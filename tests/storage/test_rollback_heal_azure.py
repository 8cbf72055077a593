"""Issue 30 on Azure: a version made active again by rollback is healed like any active one.

The real azure-ai-ml SDK against the fake Azure ML workspace (tests/azureml_fakes.py, published
examples) with the ledger on Azurite, each version its own endpoint (``ROLLOUT_CANDIDATES`` off,
the default): version 2 replaces version 1, ``rollback NAME:1`` makes version 1 active again at
once (its endpoint still serves: the route moves there, nothing is deployed into version 2's
endpoint), its deployment turns Failed, and the health loop (a reconcile run) re-submits it.
"""

from __future__ import annotations

from typing import Any

import pytest
import responses

from shared import ledger as L
from shared.backends import use_backend
from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.backends.base import ModelRef
from shared.cli.commands import main as cli
from shared.context import context
from shared.endpoints import lifecycle
from shared.endpoints.naming import endpoint_name
from shared.ledger import Ledger
from shared.reconcile.run import reconcile
from shared.settings import use_settings
from tests.azureml_fakes import MODEL_WAS_CURRENT, RG, STORAGE_ACCOUNT, SUB, WS, FakeAzureML, FakeCredential

pytestmark = [pytest.mark.storage,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")]

MODEL = "phi-rb"


@pytest.fixture
def flow(storage_settings) -> Any:
    settings = storage_settings.replace(
        ml_backend="azureml", azure_subscription_id=SUB, azure_resource_group=RG, azure_ml_workspace=WS,
        storage_account_name=STORAGE_ACCOUNT, endpoint_heal_attempts=3, endpoint_heal_backoff_s=30,
        rollout_candidates=False,
    )
    use_settings(settings)
    with responses.RequestsMock(assert_all_requests_are_fired=False, passthru_prefixes=("http://127.0.0.1",)) as rsps:
        azure = FakeAzureML(rsps, str(INTERFACE_PATH))
        backend = AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0},
                                 today=lambda: MODEL_WAS_CURRENT)
        use_backend(backend, settings)
        ledger = Ledger.from_settings(settings)
        yield settings, ledger, azure, backend
        assert azure.violations == []
    use_backend(None)
    use_settings(None)


def serve(settings: Any, ledger: Ledger, azure: FakeAzureML, backend: AzureMLBackend, version: str) -> str:
    """Version ``version`` registered, deployed in the fake workspace and settled by reconcile."""
    model = ModelRef(MODEL, version, f"job-{version}", settings.base_model_name)
    ledger.create(L.MODEL, model.ref, "registered", job_name=model.job_name, base_model=model.base_model)
    ep = lifecycle.deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=backend), reason="test").id
    azure.set_endpoint_state(ep, "Succeeded")
    reconcile(ctx=context())  # the deployment PUT
    azure.set_deployment_state(ep, "Succeeded")
    reconcile(ctx=context())  # traffic, succeeded, the route
    azure.set_endpoint_state(ep, "Succeeded")
    assert ledger.get(L.ENDPOINT, ep).state == "succeeded"
    return ep


def test_a_failed_deployment_of_the_rolled_back_version_is_resubmitted(flow, capsys):
    settings, ledger, azure, backend = flow
    ep1 = serve(settings, ledger, azure, backend, "1")
    ep2 = serve(settings, ledger, azure, backend, "2")
    assert ledger.get(L.ROUTE, MODEL).get("endpoint") == ep2
    assert ledger.get(L.ENDPOINT, ep1).get("replaced_by") == ep2  # version 2 replaced it

    assert cli(["rollback", f"{MODEL}:1"]) == 0
    assert "version 1 is active again" in capsys.readouterr().out
    route = ledger.get(L.ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version"), route.get("rolled_back_from")) == (ep1, "1", "2")
    assert not azure.calls("PUT", rf"/onlineEndpoints/{ep2}/deployments/version-"), "never into version 2's endpoint"

    azure.set_deployment_state(ep1, "Failed")
    puts = lambda: azure.calls("PUT", rf"/onlineEndpoints/{ep1}/deployments/")  # noqa: E731
    before = len(puts())
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 1 and summary["endpoints_redeployed"] == 1, summary
    assert summary["endpoints_heal_stopped"] == 0, summary
    record = ledger.get(L.ENDPOINT, ep1)
    assert record.state == "provisioning" and record.get("heal_attempts") == 1, record.fields
    assert not record.get("heal_stopped_at")
    assert len(puts()) == before + 1  # the Failed deployment is re-submitted, with version 1's model
    assert puts()[-1].body["properties"]["model"].endswith(f"/models/{MODEL}/versions/1"), puts()[-1].body

    azure.set_deployment_state(ep1, "Succeeded")
    reconcile(ctx=context())
    azure.set_endpoint_state(ep1, "Succeeded")
    summary = reconcile(ctx=context())
    record = ledger.get(L.ENDPOINT, ep1)
    assert record.state == "succeeded" and record.get("healed_at"), record.fields
    assert ledger.get(L.ROUTE, MODEL).get("endpoint") == ep1  # still the rolled-back version
    assert record.get("replaced_by") is None  # the stale mark is gone


def test_the_version_rolled_back_from_is_not_healed(flow, capsys):
    """The other side of the same rule: after the rollback, version 2 is needed by nobody."""
    settings, ledger, azure, backend = flow
    serve(settings, ledger, azure, backend, "1")
    ep2 = serve(settings, ledger, azure, backend, "2")
    assert cli(["rollback", MODEL, "1"]) == 0
    azure.set_deployment_state(ep2, "Failed")
    before = len(azure.calls("PUT", rf"/onlineEndpoints/{ep2}/deployments/"))
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 1 and summary["endpoints_redeployed"] == 0, summary
    record = ledger.get(L.ENDPOINT, ep2)
    assert record.state == "failed" and "rolled back from version 2" in record.get("heal_stopped_reason")
    assert len(azure.calls("PUT", rf"/onlineEndpoints/{ep2}/deployments/")) == before
    assert endpoint_name(MODEL, "1") == ledger.get(L.ROUTE, MODEL).get("endpoint")
