"""A candidate beside the serving deployment on Azure ML, on the real SDK against the published-example
fakes: the requests of Azure ML's safe rollout (deployment PUT into the serving endpoint, traffic split,
100% to the candidate, DELETE of the old deployment), counted per promotion as
tests/storage/test_azureml_round_trips.py counts the first deployment's steps, and no poller left behind.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
import responses

from shared import ledger as L
from shared.backends import use_backend
from shared.backends.azureml import AzureMLBackend
from shared.backends.azureml_params import INTERFACE_PATH
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE
from shared.context import Context
from shared.deployment.events import parse_job_event
from shared.deployment.job_events import handle_job_event
from shared.deployment.reconcile import reconcile
from shared.ledger import Ledger
from shared.ledger import records as R
from shared.rollout import advance, deployment_name_for
from shared.settings import use_settings
from tests.azureml_fakes import MODEL_WAS_CURRENT, RG, STORAGE_ACCOUNT, SUB, WS, FakeAzureML, FakeCredential
from tests.fakes.events import load_sample, ours

pytestmark = [pytest.mark.storage,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")]

# One promotion's ARM requests at least: the candidate's deployment PUT, one deployment GET that finds it
# ready, the canary's traffic split (endpoint GET + PUT), one deployment GET at the canary's end, 100% to the
# candidate (endpoint GET + PUT) and the DELETE of the old deployment. Azure Monitor reads are not ARM calls.
PROMOTION_MINIMUM = 8
REJECTION_MINIMUM = 3  # deployment PUT, GET (ready), DELETE


@dataclasses.dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    metrics: dict
    report_blob: str | None = None
    decided: bool = True


def judge(promote: bool):  # noqa: ANN201 - judge_candidate's stand-in (the evaluation has its own tests)
    def run(ctx: Any, **kw: Any) -> Verdict:
        return Verdict(promote, "stand-in verdict", {"candidate": {}, "champion": {}})
    return run


@pytest.fixture
def azure_flow(storage_settings) -> Any:
    settings = storage_settings.replace(
        rollout_candidates=True,
        ml_backend="azureml", azure_subscription_id=SUB, azure_resource_group=RG, azure_ml_workspace=WS,
        storage_account_name=STORAGE_ACCOUNT, endpoint_followups=False)
    use_settings(settings)
    with responses.RequestsMock(assert_all_requests_are_fired=False, passthru_prefixes=("http://127.0.0.1",)) as rsps:
        azure = FakeAzureML(rsps, str(INTERFACE_PATH))
        backend = AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 0},
                                 today=lambda: MODEL_WAS_CURRENT)
        use_backend(backend, settings)
        yield settings, Ledger.from_settings(settings), azure, backend
        assert azure.violations == []
    use_backend(None)


def complete(ledger: Ledger, settings: Any, azure: FakeAzureML, fixtures_dir: Any, job: str) -> None:
    ledger.create(L.JOB, job, "submitted", dataset_id=f"ds-{job}", model_name=settings.model_name,
                  base_model=settings.base_model_name, backend="azureml", tags={MANAGED_BY_TAG: MANAGED_BY_VALUE})
    azure.add_job(job, "Running", tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "dataset_id": f"ds-{job}",
                                       "base_model": "Phi-3-mini-4k-instruct"})
    azure.finish_job(job)
    handle_job_event(parse_job_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, job)))


def serving_champion(flow: Any, fixtures_dir: Any) -> str:
    settings, ledger, azure, backend = flow
    complete(ledger, settings, azure, fixtures_dir, "job_champion_1")
    [endpoint] = [r.id for r in ledger.list(L.ENDPOINT)]
    azure.set_endpoint_state(endpoint, "Succeeded")
    reconcile()
    azure.set_deployment_state(endpoint, "Succeeded")
    reconcile()
    assert ledger.get(L.ENDPOINT, endpoint).state == "succeeded"
    return endpoint


def arm(azure: FakeAzureML, start: int) -> list[str]:
    return [f"{r.method} {r.path.rsplit('/workspaces/', 1)[-1]}" for r in azure.requests[start:]
            if "metrics" not in r.url]


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
