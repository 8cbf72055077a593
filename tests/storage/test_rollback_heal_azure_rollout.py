"""Issue 30 on Azure with ``ROLLOUT_CANDIDATES`` on: a version rolled back to inside the serving
endpoint is healed there.

The real azure-ai-ml SDK against the fake Azure ML workspace (tests/fakes/azure_rollout.py, as
tests/storage/test_azureml_rollout.py uses it): version 1 serves as deployment ``demo``, version 2 is
promoted beside it (``demo`` deleted), ``rollback NAME:1`` deploys version 1 into the same endpoint
again under its own deployment name and gives it 100%. That deployment turns Failed: the health loop
re-submits *that* deployment (the one taking the traffic, with version 1's model), the endpoint
serves again, and later health checks read that deployment, not a ``demo`` that no longer exists.
"""

from __future__ import annotations

from collections import Counter

import pytest

from shared import ledger as L
from shared.cli.commands import main as cli
from shared.context import Context, context
from shared.ledger import records as R
from shared.reconcile.run import reconcile
from shared.rollout import advance, deployment_name_for
from tests.fakes.azure_rollout import azure_rollout_flow, complete, judge, serving_champion

pytestmark = [pytest.mark.storage,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")]


@pytest.fixture
def azure_flow(storage_settings):
    with azure_rollout_flow(storage_settings) as flow:
        yield flow


def test_a_failed_deployment_rolled_back_to_inside_the_endpoint_is_resubmitted(azure_flow, fixtures_dir, capsys):
    settings, ledger, azure, backend = azure_flow
    endpoint = serving_champion(azure_flow, fixtures_dir)
    v1 = str(ledger.get(L.ENDPOINT, endpoint).get("model_version"))
    ctx = Context(settings, ledger, backend)
    complete(ledger, settings, azure, fixtures_dir, "job_candidate_2")
    candidate = next(iter(ledger.list(R.ROLLOUT)))
    azure.set_deployment_state(endpoint, "Succeeded", name=candidate.get("deployment"))
    record = advance(candidate, ctx, Counter(), judge=judge(True))
    canary = {**record.get("canary"), "until": record.get("canary")["started_at"]}
    azure.deployment_figures[endpoint] = {"demo": (40, 0, 120.0), candidate.get("deployment"): (6, 0, 130.0)}
    assert advance(ledger.update(record, canary=canary), ctx, Counter()).state == R.ROLLOUT_PROMOTED
    azure.set_endpoint_state(endpoint, "Succeeded")
    assert ledger.get(L.ROUTE, settings.model_name).get("model_version") == candidate.get("version")

    assert cli(["rollback", f"{settings.model_name}:{v1}"]) == 0
    assert f"redeploying version {v1} to endpoint {endpoint}" in capsys.readouterr().out  # the same endpoint
    dep = deployment_name_for(v1)
    azure.set_deployment_state(endpoint, "Succeeded", name=dep)
    reconcile(ctx=context())
    azure.set_endpoint_state(endpoint, "Succeeded")
    route = ledger.get(L.ROUTE, settings.model_name)
    assert (route.get("endpoint"), route.get("model_version")) == (endpoint, v1)
    assert len(ledger.list(L.ENDPOINT)) == 1, "never a second endpoint"
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 0, summary  # it serves under its own deployment name

    azure.set_deployment_state(endpoint, "Failed", name=dep)
    puts = lambda: azure.calls("PUT", rf"/onlineEndpoints/{endpoint}/deployments/")  # noqa: E731
    before = len(puts())
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 1 and summary["endpoints_redeployed"] == 1, summary
    assert [p.path.rsplit("/", 1)[-1] for p in puts()[before:]] == [dep], "the deployment that takes the traffic"
    assert puts()[-1].body["properties"]["model"].endswith(f"/models/{settings.model_name}/versions/{v1}")

    azure.set_deployment_state(endpoint, "Succeeded", name=dep)
    azure.set_endpoint_state(endpoint, "Succeeded")
    reconcile(ctx=context())
    azure.set_endpoint_state(endpoint, "Succeeded")
    record = ledger.get(L.ENDPOINT, endpoint)
    assert record.state == "succeeded" and record.get("healed_at") and record.get("heal_attempts") == 1, record.fields
    summary = reconcile(ctx=context())
    assert summary["endpoints_unhealthy"] == 0 and summary["endpoints_redeployed"] == 0, summary
    route = ledger.get(L.ROUTE, settings.model_name)
    assert (route.get("endpoint"), route.get("model_version")) == (endpoint, v1)  # still the version rolled back to
