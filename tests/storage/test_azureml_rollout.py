"""A candidate beside the serving deployment on Azure ML, on the real SDK against the published-example
fakes: the requests of Azure ML's safe rollout (deployment PUT into the serving endpoint, traffic split,
100% to the candidate, DELETE of the old deployment), counted per promotion as
tests/storage/test_azureml_round_trips.py counts the first deployment's steps, and no poller left behind.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from shared import ledger as L
from shared.backends.azureml import single_requests as rest
from shared.backends.base import BackendError
from shared.context import Context
from shared.ledger import records as R
from shared.rollout import advance, deployment_name_for
from tests.azureml_fakes import (
    DEPLOYMENT_PUT_EXAMPLE,
    ENDPOINT_PUT_EXAMPLE,
    RG,
    SUB,
    WS,
    FakeAzureML,
    example,
    unknown_keys,
)
from tests.fakes.azure_rollout import azure_rollout_flow, complete, judge, serving_champion

pytestmark = [pytest.mark.storage,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")]

# One promotion's ARM requests at least: the candidate's deployment PUT, one deployment GET that finds it
# ready, the canary's traffic split (endpoint GET + PUT), one deployment GET at the canary's end, 100% to the
# candidate (endpoint GET + PUT) and the DELETE of the old deployment. Azure Monitor reads are not ARM calls.
PROMOTION_MINIMUM = 8
REJECTION_MINIMUM = 3  # deployment PUT, GET (ready), DELETE


@pytest.fixture
def azure_flow(storage_settings) -> Any:
    with azure_rollout_flow(storage_settings) as flow:
        yield flow


def arm(azure: FakeAzureML, start: int) -> list[str]:
    return [f"{r.method} {r.path.rsplit('/workspaces/', 1)[-1]}" for r in azure.requests[start:]
            if "metrics" not in r.url]


def pollers() -> list[str]:
    """azure-core's LROPoller threads (``LROPoller(<uuid>)``) still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith("LROPoller")]


ENDPOINT_PATH = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}/onlineEndpoints/{ep}"
DEPLOYMENT_PATH = ENDPOINT_PATH + "/deployments/{dep}"
ENDPOINT_PARAMETERS = {"subscriptionId", "resourceGroupName", "workspaceName", "endpointName", "api-version"}


def check_url(r: Any, published: dict[str, Any], endpoint: str, deployment: str | None) -> None:
    """The request's URL is the example's operation with this request's names: the same path parameters, api-version."""
    names = set(published["parameters"]) - {"body"}
    if deployment is None:
        assert names == ENDPOINT_PARAMETERS, names
        assert r.path == ENDPOINT_PATH.format(sub=SUB, rg=RG, ws=WS, ep=endpoint), r.path
    else:
        assert names == ENDPOINT_PARAMETERS | {"deploymentName"}, names
        assert r.path == DEPLOYMENT_PATH.format(sub=SUB, rg=RG, ws=WS, ep=endpoint, dep=deployment), r.path
    assert set(r.query) == {"api-version"}, r.url


def test_a_promotion_is_azure_mls_safe_rollout_within_the_minimum_plus_one(azure_flow, fixtures_dir, capsys):
    settings, ledger, azure, backend = azure_flow
    endpoint = serving_champion(azure_flow, fixtures_dir)
    ctx = Context(settings, ledger, backend)
    start = len(azure.requests)
    endpoint_puts = len(azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$"))
    complete(ledger, settings, azure, fixtures_dir, "job_candidate_2")
    rollout = next(r for r in ledger.list(R.ROLLOUT))
    dep = deployment_name_for(rollout.get("version"))
    assert rollout.get("endpoint") == endpoint, "beside the champion, in its endpoint"
    assert len([r for r in ledger.list(L.ENDPOINT)]) == 1, "never a second endpoint"
    after_event = len(azure.requests)
    [put] = azure.calls("PUT", rf"/onlineEndpoints/{endpoint}/deployments/{dep}$")
    assert put.body["properties"]["model"].endswith(f"/models/{settings.model_name}/versions/{rollout.get('version')}")
    assert len(azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$")) == endpoint_puts, "the endpoint is untouched"

    azure.set_deployment_state(endpoint, "Succeeded", name=dep)
    record = advance(ledger.get(R.ROLLOUT, rollout.id), ctx, Counter(), judge=judge(True))
    assert record.state == R.ROLLOUT_CANARY
    split = azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$")[-1]
    assert split.body["properties"]["traffic"] == {"demo": 90, dep: 10}

    azure.deployment_figures[endpoint] = {"demo": (40, 0, 120.0), dep: (6, 0, 130.0)}
    canary = dict(record.get("canary"))
    canary["until"] = canary["started_at"]
    record = advance(ledger.update(record, canary=canary), ctx, Counter())
    assert record.state == R.ROLLOUT_PROMOTED, record.get("reason")
    assert record.get("canary")["figures"]["candidate"]["requests"] == 6
    final = azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$")[-1]
    assert final.body["properties"]["traffic"] == {dep: 100}
    assert final.body["tags"]["model"] == f"{settings.model_name}:{rollout.get('version')}"
    assert azure.calls("DELETE", rf"/onlineEndpoints/{endpoint}/deployments/demo$")
    calls = arm(azure, start)
    event_calls = after_event - start
    promotion = calls[event_calls - 1:]  # from the candidate's deployment PUT on
    print(f"\npromotion ARM calls ({len(promotion)}, minimum {PROMOTION_MINIMUM}): {promotion}")
    assert len(promotion) <= PROMOTION_MINIMUM + 1, promotion
    assert not azure.calls(pattern=r"mfeOperation"), "nothing polls after the calls returned"
    assert pollers() == [], "no LROPoller thread left running"

    # Every request of the promotion in the published example's shape: URL, api-version, body keys.
    put_example, get_example = example(ENDPOINT_PUT_EXAMPLE), example("2022-02-01-preview/examples/OnlineEndpoint/get.json")
    dep_example, del_example = example(DEPLOYMENT_PUT_EXAMPLE), example("2022-02-01-preview/examples/OnlineDeployment/delete.json")
    for r in azure.requests[start + event_calls - 1:]:
        if "metrics" in r.url:
            continue
        name = r.path.rsplit("/deployments/", 1)[-1] if "/deployments/" in r.path else None
        if name is None:
            published = put_example if r.method == "PUT" else get_example
            assert r.query["api-version"] == [published["parameters"]["api-version"]], r.url
        else:
            published = dep_example if r.method == "PUT" else del_example
            # The deployment client's api-version is its PUT example's (SOURCES.md: no DELETE/GET copy of it).
            assert r.query["api-version"] == [dep_example["parameters"]["api-version"]], r.url
        check_url(r, published, endpoint, name)
        if r.method == "PUT":
            assert unknown_keys(r.body, published["parameters"]["body"], strict=name is None) == [], (r.path, r.body)
    assert set(split.body["properties"]) <= set(put_example["parameters"]["body"]["properties"]), split.body


def test_a_rejected_candidate_is_deleted_and_the_endpoint_never_changes(azure_flow, fixtures_dir):
    settings, ledger, azure, backend = azure_flow
    endpoint = serving_champion(azure_flow, fixtures_dir)
    ctx = Context(settings, ledger, backend)
    endpoint_puts = len(azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$"))
    complete(ledger, settings, azure, fixtures_dir, "job_candidate_3")
    rollout = next(r for r in ledger.list(R.ROLLOUT))
    dep = deployment_name_for(rollout.get("version"))
    start = len(azure.requests) - 1  # the deployment PUT was the event's last call
    azure.set_deployment_state(endpoint, "Succeeded", name=dep)
    record = advance(ledger.get(R.ROLLOUT, rollout.id), ctx, Counter(), judge=judge(False))
    assert record.state == R.ROLLOUT_REJECTED
    assert len(azure.calls("PUT", rf"/onlineEndpoints/{endpoint}$")) == endpoint_puts, "no traffic ever"
    assert azure.calls("DELETE", rf"/onlineEndpoints/{endpoint}/deployments/{dep}$")
    calls = arm(azure, start)
    assert len(calls) <= REJECTION_MINIMUM + 1, calls
    assert not azure.calls(pattern=r"mfeOperation")


def test_a_mirror_is_refused_before_any_request_and_never_sent_in_an_unpublished_shape(azure_flow, fixtures_dir):
    """No published OnlineEndpoint example carries mirrorTraffic (docs/azureml-backend.md): the backend
    refuses a mirror before sending anything, and the body builder refuses one the SDK would add."""
    settings, ledger, azure, backend = azure_flow
    endpoint = serving_champion(azure_flow, fixtures_dir)
    assert "mirrorTraffic" not in str(example(ENDPOINT_PUT_EXAMPLE)), "a published mirror shape: send it, drop this refusal"
    start = len(azure.requests)
    with pytest.raises(BackendError, match="mirrored traffic"):
        backend.set_traffic(endpoint, {"demo": 100}, mirror={"demo": 10})
    assert azure.requests[start:] == [], "refused before any ARM call"

    # The SDK serializes mirror_traffic into the body: the builder refuses it, and the fake (the published
    # example's keys, strictly) would answer it 400, as it answers the SDK's own empty mirrorTraffic.
    current = rest.get_endpoint(backend.workspace, endpoint)
    current.mirror_traffic = {"demo": 10}
    with pytest.raises(BackendError, match="mirrorTraffic"):
        rest.endpoint_put_body(current, "eastus")
    sdk_body = current._to_rest_online_endpoint(location="eastus")
    ops = backend.workspace.online_endpoints._online_operation
    with pytest.raises(Exception, match="mirrorTraffic"):
        ops.begin_create_or_update(endpoint_name=endpoint, body=sdk_body, polling=False,
                                   resource_group_name=RG, workspace_name=WS)
    assert any("mirrorTraffic" in v for v in azure.violations)
    azure.violations.clear()
    current.mirror_traffic = {}
    empty = current._to_rest_online_endpoint(location="eastus")
    assert "mirrorTraffic" in empty.properties, "the SDK adds it even when empty ..."
    assert "mirrorTraffic" not in rest.endpoint_put_body(current, "eastus").properties, "... the app's body does not"
    assert pollers() == []
