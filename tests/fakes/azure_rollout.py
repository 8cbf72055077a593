"""The Azure ML rollout setting shared by the storage tests of candidates and in-endpoint rollbacks:
the real azure-ai-ml SDK against the fake Azure ML workspace (tests/azureml_fakes.py) with
``ROLLOUT_CANDIDATES`` on, a stand-in judge, a job completed through its Event Grid event, and a
champion deployed and settled by reconcile."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def azure_rollout_flow(storage_settings: Any) -> Iterator[tuple[Any, Ledger, FakeAzureML, AzureMLBackend]]:
    """(settings, ledger, fake Azure ML, backend) for one test; the fake's contract violations fail it."""
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
    handle_job_event(parse_job_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, job)), ctx=context())


def serving_champion(flow: Any, fixtures_dir: Any) -> str:
    settings, ledger, azure, backend = flow
    complete(ledger, settings, azure, fixtures_dir, "job_champion_1")
    [endpoint] = [r.id for r in ledger.list(L.ENDPOINT)]
    azure.set_endpoint_state(endpoint, "Succeeded")
    reconcile(ctx=context())
    azure.set_deployment_state(endpoint, "Succeeded")
    reconcile(ctx=context())
    assert ledger.get(L.ENDPOINT, endpoint).state == "succeeded"
    return endpoint
