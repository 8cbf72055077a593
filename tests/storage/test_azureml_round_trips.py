"""The event-to-endpoint flow on the real SDK against the published-example fakes, with the ledger on
Azurite: a real pipeline event's payload shape is acted on, and every step's ARM round trips are
counted from the fake's request log (docs/azureml-backend.md shows the table).

Each ARM call costs 100-500 ms in Azure; the minimum of each step is what the step cannot do
without (the cookbook's own sequence), and every step must stay within the minimum + 1.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import responses

from shared import ledger as L
from shared.backends import use_backend
from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE
from shared.context import context
from shared.deployment.event_payloads import parse_job_event
from shared.deployment.job_outcome import handle_job_event
from shared.ledger import Ledger
from shared.reconcile.run import reconcile
from shared.settings import use_settings
from tests.azureml_fakes import MODEL_WAS_CURRENT, RG, STORAGE_ACCOUNT, SUB, WS, FakeAzureML, FakeCredential
from tests.fakes.job_event_samples import load_sample, ours

pytestmark = [pytest.mark.storage,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")]

JOB = "quiet_lion_58gh8g6bq9"

# step -> (minimum, why); the measured counts must stay within minimum + 1 (warm worker).
MINIMUM = {
    "RunCompleted": (5, "job GET, model GET, model PUT, endpoint GET, endpoint PUT (the cookbook's sequence)"),
    "deployment PUT": (3, "endpoint GET, deployment GET, deployment PUT"),
    "traffic": (2, "deployment GET (has it succeeded?), endpoint PUT with the traffic"),
    "delete": (1, "endpoint DELETE"),
}


@pytest.fixture
def flow(storage_settings) -> Any:
    settings = storage_settings.replace(
        ml_backend="azureml", azure_subscription_id=SUB, azure_resource_group=RG, azure_ml_workspace=WS,
        storage_account_name=STORAGE_ACCOUNT,
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


def submitted(ledger: Ledger, settings: Any, azure: FakeAzureML, name: str = JOB) -> None:
    """What the preparation leaves behind for one of our jobs, finished in the workspace."""
    ledger.create(L.JOB, name, "submitted", dataset_id=f"ds-{name}", model_name=settings.model_name,
                  base_model=settings.base_model_name, backend="azureml", tags={MANAGED_BY_TAG: MANAGED_BY_VALUE})
    azure.add_job(name, "Running", tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "dataset_id": f"ds-{name}",
                                        "base_model": "Phi-3-mini-4k-instruct"})
    azure.finish_job(name)


def real_pipeline_event(fixtures_dir: Any, settings: Any, run_id: str) -> dict[str, Any]:
    """The official RunCompleted sample, addressed to our job, with the recorded pipeline run's data shape:
    runType azureml.PipelineRun and runTags holding only system tags (azureml.pipelineid ...)."""
    recorded = json.loads((fixtures_dir / "azureml" / "pipeline_run_event.data.json").read_text(encoding="utf-8"))
    event = ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, run_id)
    event["data"].update(runType=recorded["runType"], runTags=copy.deepcopy(recorded["runTags"]),
                         runProperties=copy.deepcopy(recorded["runProperties"]))
    return event


def test_a_real_pipeline_event_with_only_system_tags_is_acted_on(flow, fixtures_dir):
    settings, ledger, azure, _ = flow
    submitted(ledger, settings, azure)
    event = real_pipeline_event(fixtures_dir, settings, JOB)
    parsed = parse_job_event(event)
    assert parsed.tag(MANAGED_BY_TAG) is None and parsed.run_tags  # system tags only, ours absent
    assert parsed.parent_run_id is None  # the pipeline run itself, not a step

    outcome = handle_job_event(parse_job_event(event), ctx=context())
    assert outcome.action not in {"ignored", "error"}, outcome
    assert ledger.get(L.JOB, JOB).state == "completed"
    assert len(azure.calls("PUT", r"/models/")) == 1 and len(azure.calls("PUT", r"/onlineEndpoints/[^/]+$")) == 1


def test_an_event_naming_another_owner_is_still_ignored(flow, fixtures_dir):
    settings, ledger, azure, _ = flow
    submitted(ledger, settings, azure)
    event = real_pipeline_event(fixtures_dir, settings, JOB)
    event["data"]["runTags"][MANAGED_BY_TAG] = "someone-else"
    assert handle_job_event(parse_job_event(event), ctx=context()).reason == "not managed by this app"
    assert azure.requests == []


def measure(azure: FakeAzureML, action: Any) -> list[str]:
    start = len(azure.requests)
    action()
    return [f"{r.method} {r.path.rsplit('/workspaces/', 1)[-1]}" for r in azure.requests[start:]]


def run_flow(fixtures_dir: Any, settings: Any, ledger: Ledger, azure: FakeAzureML, backend: AzureMLBackend,
             job: str) -> dict[str, list[str]]:
    counts: dict[str, list[str]] = {}
    submitted(ledger, settings, azure, job)
    counts["RunCompleted"] = measure(azure, lambda: handle_job_event(parse_job_event(real_pipeline_event(fixtures_dir, settings, job)), ctx=context()))
    [endpoint] = [r for r in ledger.list(L.ENDPOINT) if r.state == "provisioning"]
    azure.set_endpoint_state(endpoint.id, "Succeeded")
    counts["deployment PUT"] = measure(azure, lambda: reconcile(ctx=context()))
    azure.set_deployment_state(endpoint.id, "Succeeded")
    counts["traffic"] = measure(azure, lambda: reconcile(ctx=context()))
    assert ledger.get(L.ENDPOINT, endpoint.id).state == "succeeded"
    counts["delete"] = measure(azure, lambda: backend.begin_delete_endpoint(endpoint.id))
    return counts


def test_every_step_stays_within_the_minimum_plus_one(flow, fixtures_dir):
    settings, ledger, azure, backend = flow
    cold = run_flow(fixtures_dir, settings, ledger, azure, backend, JOB)
    for record in ledger.list(L.ENDPOINT):
        azure.endpoints.pop(record.id, None)
        ledger.transition(L.ENDPOINT, record.id, {record.state}, "deleting")  # as the janitor claims it ...
        ledger.transition(L.ENDPOINT, record.id, {"deleting"}, "deleted")  # ... and records it gone
    warm = run_flow(fixtures_dir, settings, ledger, azure, backend, "brave_owl_9x8")
    rows = []
    for step, (minimum, why) in MINIMUM.items():
        rows.append(f"| {step} | {minimum} | {len(warm[step])} | {len(cold[step])} | {why} |")
        assert len(warm[step]) <= minimum + 1, (step, warm[step])
        # A worker's first call adds at most the one workspace read (region, run history host) it keeps.
        assert len(cold[step]) <= minimum + 1 + (step == "RunCompleted"), (step, cold[step])
    # Shown with `pytest -s` (docs/azureml-backend.md's table).
    print("\n| step | minimum | warm worker | first call of a worker | the minimum |")
    print("\n".join(rows))
    for step, calls in cold.items():
        print(f"{step} (first): {calls}")
    # Nothing polls in the background after the steps returned.
    assert not azure.calls(pattern=r"mfeOperation")
