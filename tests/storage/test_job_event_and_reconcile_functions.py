"""The decorated functions `on_job_event` and `reconcile`, called with real azure.functions objects."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from devhost.app_index import functions_of
from functions import on_job_event
from functions import reconcile as reconcile_function
from shared import ledger as L
from shared.backends import use_backend
from shared.backends.base import COMPLETED, FAILED, MANAGED_BY_TAG, RUNNING, TransientBackendError
from shared.endpoints.naming import endpoint_name
from shared.ledger import Ledger
from tests.fakes.job_event_samples import grid_event, load_sample, ours, submit_job, timer
from tests.fakes.workspace import InMemoryWorkspace

HANDLER_BUDGET_S = 1.0  # the handler must answer fast; Event Grid gives 30 s in all


def test_bindings_keep_their_stable_names_and_schedule():
    app = func.FunctionApp()
    app.register_functions(on_job_event.bp)
    app.register_functions(reconcile_function.bp)
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in functions_of(app)}
    assert functions["on_job_event"]["bindings"] == [{"direction": "IN", "type": "eventGridTrigger", "name": "event"}]
    timer = functions["reconcile"]["bindings"][0]
    assert (timer["type"], timer["schedule"], timer["useMonitor"], timer["runOnStartup"]) == (
        "timerTrigger",
        "%RECONCILE_SCHEDULE%",
        True,
        False,
    )


def call_timed(function, arg):
    start = time.perf_counter()
    function(arg)
    return time.perf_counter() - start


@pytest.fixture
def env(storage_settings):
    ws = InMemoryWorkspace(storage_settings.workspace_resource_id, base_model=storage_settings.base_model_name)
    use_backend(ws, storage_settings)
    return storage_settings, Ledger.from_settings(storage_settings), ws


@pytest.mark.storage
def test_completed_event_deploys_and_reconcile_timer_activates(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-1", COMPLETED)
    event = grid_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, "job-1"))
    assert isinstance(event, func.EventGridEvent)

    latencies = [call_timed(on_job_event.on_job_event, event) for _ in range(3)]  # first one + two repeats

    ep = endpoint_name(settings.model_name, "1")
    assert ledger.get(L.JOB, "job-1").get("model") == f"{settings.model_name}:1"
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning"
    assert ws.calls["register_model"] == 1 and ws.calls["begin_deploy"] == 1
    assert max(latencies) < HANDLER_BUDGET_S, latencies
    print("on_job_event latencies (ms):", [round(x * 1000) for x in latencies])

    ws.finish_deployment(ep)
    assert call_timed(reconcile_function.reconcile, timer()) < HANDLER_BUDGET_S
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == ep
    assert ledger.get(L.ENDPOINT, ep).state == "succeeded"


@pytest.mark.storage
def test_cloudevents_schema_failed_job_is_recorded(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-f", FAILED, error="Execution failed: CUDA out of memory")
    envelope = ours(load_sample(fixtures_dir, "run_status_changed.cloudevents.json"), settings, "job-f")
    # CloudEvents 1.0 names the attribute "specversion"; the published sample spells it "specVersion",
    # which the worker's converter does not recognise (see the next test).
    envelope["specversion"] = envelope.pop("specVersion")
    event = grid_event(envelope)
    assert isinstance(event, func.CloudEvent)

    assert call_timed(on_job_event.on_job_event, event) < HANDLER_BUDGET_S

    job = ledger.get(L.JOB, "job-f")
    assert job.state == FAILED and job.get("error") == "Execution failed: CUDA out of memory"
    assert ws.calls["register_model"] == 0 and ws.calls["begin_deploy"] == 0
    assert ledger.list(L.ENDPOINT) == []


@pytest.mark.storage
def test_cloudevents_sample_spelled_as_published_is_not_trusted(env, fixtures_dir, caplog):
    # With "specVersion" the worker builds an EventGridEvent without a topic: the source is lost,
    # so the event cannot be proven to be ours and is ignored (never acted on).
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-cv", FAILED)
    event = grid_event(ours(load_sample(fixtures_dir, "run_status_changed.cloudevents.json"), settings, "job-cv"))
    with caplog.at_level(logging.INFO):
        on_job_event.on_job_event(event)
    assert "is not the trusted workspace" in caplog.text
    assert ledger.get(L.JOB, "job-cv").state == "submitted"


def _ignored_cases(fixtures_dir, settings):
    sample = load_sample(fixtures_dir, "run_completed.eventgrid.json")
    other_topic = ours(sample, settings, "job-x")
    other_topic["topic"] = "/subscriptions/1/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/theirs"
    child = ours(sample, settings, "job-x")
    child["data"]["runProperties"]["azureml.pipelinerunid"] = "pipeline-root"
    no_run = ours(sample, settings, "job-x")
    del no_run["data"]["runId"]
    no_run["subject"] = "experiments/1"
    bad_data = ours(sample, settings, "job-x")
    bad_data["data"] = "not an object"
    foreign = ours(sample, settings, "job-x", runTags={MANAGED_BY_TAG: "someone-else"})
    return [
        ("as published", sample, "is not the trusted workspace"),
        ("other topic", other_topic, "is not the trusted workspace"),
        ("unknown job", ours(sample, settings, "job-unknown"), "not a job this app submitted"),
        ("child step", child, "is a step of pipeline run pipeline-root"),
        ("foreign tags", foreign, "does not carry tag"),
        ("no run id", no_run, "malformed payload"),
        ("data not an object", bad_data, "malformed payload"),
    ]


@pytest.mark.storage
def test_events_not_ours_answer_normally_with_a_clear_log_line(env, fixtures_dir, caplog):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-x", COMPLETED)
    for case, envelope, expected in _ignored_cases(fixtures_dir, settings):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            elapsed = call_timed(on_job_event.on_job_event, grid_event(envelope))  # returns: 2xx, no retry
        assert expected in caplog.text, (case, caplog.text)
        assert elapsed < HANDLER_BUDGET_S, (case, elapsed)
    assert ledger.get(L.JOB, "job-x").state == "submitted"
    assert ledger.list(L.MODEL) == [] and ledger.list(L.ENDPOINT) == []
    assert sum(ws.calls.values()) == 0


@pytest.mark.storage
def test_transient_backend_error_propagates_so_event_grid_retries(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-t", COMPLETED)
    event = grid_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, "job-t"))
    ws.fail_next["register_model"] = TransientBackendError("429 Too Many Requests")
    with pytest.raises(TransientBackendError):
        on_job_event.on_job_event(event)
    on_job_event.on_job_event(event)  # Event Grid's retry
    assert ws.versions[settings.model_name] == ["1"]
    assert ledger.get(L.ENDPOINT, endpoint_name(settings.model_name, "1")).state == "provisioning"


@pytest.mark.storage
def test_lost_event_reconcile_timer_deploys(env):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-l", RUNNING)
    reconcile_function.reconcile(timer())
    assert ws.calls["register_model"] == 0
    ws.set_job("job-l", COMPLETED, ended_at=datetime(2024, 5, 1))
    reconcile_function.reconcile(timer())
    ep = endpoint_name(settings.model_name, "1")
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning"
    assert ledger.get(L.JOB, "job-l").get("ended_at") == "2024-05-01T00:00:00Z"
    ws.finish_deployment(ep)
    reconcile_function.reconcile(TimerRequest(past_due=True))
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == ep
