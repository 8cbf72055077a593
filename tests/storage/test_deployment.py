"""The register-and-deploy flow and reconciliation against real Azurite and an in-memory workspace."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest

from shared import ledger as L
from shared.backends.base import (
    CANCELED,
    COMPLETED,
    FAILED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    RUNNING,
    BackendError,
    ModelRef,
    TransientBackendError,
)
from shared.context import context
from shared.deployment.event_payloads import MalformedEventError, parse_job_event
from shared.deployment.job_outcome import handle_job_event
from shared.endpoints import deletion, lifecycle
from shared.endpoints.lifecycle import deploy_model
from shared.endpoints.naming import endpoint_name
from shared.ledger import Ledger
from shared.reconcile.run import reconcile
from tests.fakes.job_event_samples import completed_event, load_sample, ours, submit_job
from tests.fakes.workspace import install_workspace

pytestmark = pytest.mark.storage


@pytest.fixture
def env(storage_settings):
    return install_workspace(storage_settings)


def status_event(fixtures_dir, settings, run_id, status, schema="eventgrid"):
    name = "run_status_changed.cloudevents.json" if schema == "cloudevents" else "run_status_changed.eventgrid.json"
    return parse_job_event(ours(load_sample(fixtures_dir, name), settings, run_id, runStatus=status))


def snapshot(ledger):
    return {kind: sorted((r.id, r.state) for r in ledger.list(kind)) for kind in (L.JOB, L.MODEL, L.ENDPOINT, L.ROUTE)}


# --------------------------------------------------------------------------- happy path


def test_completed_job_is_registered_deployed_and_after_reconcile_active(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-1", COMPLETED, metrics={"test_loss": 1.0, "base_test_loss": 2.0})

    outcome = handle_job_event(completed_event(fixtures_dir, settings, "job-1"), ctx=context())

    model_ref = f"{settings.model_name}:1"
    ep = endpoint_name(settings.model_name, "1")
    assert (outcome.action, outcome.model, outcome.endpoint) == ("deploying", model_ref, ep)
    job = ledger.get(L.JOB, "job-1")
    assert job.state == COMPLETED and job.get("model") == model_ref and job.get("metrics")["test_loss"] == 1.0
    assert ledger.get(L.MODEL, model_ref).state == "deploying"
    ep_record = ledger.get(L.ENDPOINT, ep)
    assert ep_record.state == "provisioning"
    assert (ep_record.get("model_name"), ep_record.get("model_version"), ep_record.get("job_name")) == (
        settings.model_name,
        "1",
        "job-1",
    )
    assert [(m.ref, e, t) for m, e, t in ws.deploys] == [(model_ref, ep, {MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model_ref, "job_name": "job-1"})]
    assert ledger.get(L.ROUTE, settings.model_name) is None  # not serving before it succeeded

    # Still rolling out: reconcile waits.
    summary = reconcile(ctx=context())
    assert summary["endpoints_provisioning"] == 1 and summary["endpoints_activated"] == 0
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning"

    ws.finish_deployment(ep)
    summary = reconcile(ctx=context())
    assert summary["endpoints_activated"] == 1 and summary["errors"] == 0
    assert ws.endpoints[ep].traffic == {"default": 100}
    ep_record = ledger.get(L.ENDPOINT, ep)
    assert ep_record.state == "succeeded" and ep_record.get("active_since")
    active = ledger.get(L.ROUTE, settings.model_name)
    assert (active.state, active.get("endpoint"), active.get("model_version")) == ("active", ep, "1")
    assert ledger.get(L.MODEL, model_ref).state == "deployed"

    # Idempotent: another run changes nothing and calls nothing costly.
    before = snapshot(ledger)
    summary = reconcile(ctx=context())
    assert snapshot(ledger) == before
    assert summary["endpoints_activated"] == 0 and ws.calls["set_traffic"] == 1
    assert ws.calls["register_model"] == 1 and ws.calls["begin_deploy"] == 1


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_failed_job_is_recorded_and_nothing_deployed(env, fixtures_dir, schema):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-f", FAILED, error="UserError: out of memory")

    outcome = handle_job_event(status_event(fixtures_dir, settings, "job-f", "failed", schema), ctx=context())

    assert outcome.action == FAILED
    job = ledger.get(L.JOB, "job-f")
    assert job.state == FAILED and job.get("error") == "UserError: out of memory"
    assert ws.calls["register_model"] == 0 and ws.calls["begin_deploy"] == 0
    assert ledger.list(L.MODEL) == [] and ledger.list(L.ENDPOINT) == []
    # A completed event arriving late does not resurrect it.
    assert handle_job_event(completed_event(fixtures_dir, settings, "job-f"), ctx=context()).action == "done"
    assert ws.calls["register_model"] == 0


def test_canceled_job_is_recorded(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-c", CANCELED, error="canceled by user")
    assert handle_job_event(status_event(fixtures_dir, settings, "job-c", "Canceled"), ctx=context()).action == CANCELED
    assert ledger.get(L.JOB, "job-c").state == CANCELED
    assert ws.calls["begin_deploy"] == 0


def test_event_is_only_a_hint_the_workspace_state_decides(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-s", RUNNING)
    # A (stale or early) "completed" while the workspace still says running: nothing happens.
    assert handle_job_event(completed_event(fixtures_dir, settings, "job-s"), ctx=context()).action == "pending"
    assert ledger.get(L.JOB, "job-s").state == "submitted" and ws.calls["register_model"] == 0
    # A late "running" status after the job finished still deploys what the workspace reports.
    ws.set_job("job-s", COMPLETED)
    assert handle_job_event(status_event(fixtures_dir, settings, "job-s", "Running"), ctx=context()).action == "deploying"


# --------------------------------------------------------------------------- at-least-once delivery


def test_repeated_and_out_of_order_deliveries_give_one_version_and_one_endpoint(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-r", RUNNING)
    deliveries = [
        status_event(fixtures_dir, settings, "job-r", "Running"),
        completed_event(fixtures_dir, settings, "job-r"),
        status_event(fixtures_dir, settings, "job-r", "completed", "cloudevents"),
        completed_event(fixtures_dir, settings, "job-r"),
        status_event(fixtures_dir, settings, "job-r", "Running"),
    ]
    actions = [handle_job_event(deliveries[0], ctx=context()).action]
    ws.set_job("job-r", COMPLETED)
    actions += [handle_job_event(d, ctx=context()).action for d in deliveries[1:]]
    for _ in range(5):
        handle_job_event(deliveries[1], ctx=context())

    assert actions == ["pending", "deploying", "done", "done", "done"]
    assert ws.versions[settings.model_name] == ["1"]
    assert ws.calls["register_model"] == 1 and ws.calls["begin_deploy"] == 1
    assert [r.id for r in ledger.list(L.MODEL)] == [f"{settings.model_name}:1"]
    assert [r.id for r in ledger.list(L.ENDPOINT)] == [endpoint_name(settings.model_name, "1")]


def test_five_concurrent_deliveries_give_one_version_and_one_endpoint(storage_settings, fixtures_dir):
    # The workspace answers slowly so the deliveries really overlap.
    settings, ledger, ws = install_workspace(storage_settings, call_delay_s=0.05)
    submit_job(ledger, settings, ws, "job-p", COMPLETED)
    event = completed_event(fixtures_dir, settings, "job-p")
    barrier = threading.Barrier(5)
    outcomes, errors = [], []

    def deliver():
        barrier.wait()
        try:
            outcomes.append(handle_job_event(event, context(settings=settings, ledger=Ledger.from_settings(settings), backend=ws)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Reconcile may run at the same time as deliveries; it must not double anything either.
    reconcile(ctx=context())

    assert errors == []
    assert len(outcomes) == 5
    assert [o.action for o in outcomes].count("deploying") == 1
    assert ws.versions[settings.model_name] == ["1"], "the model was registered more than once"
    assert ws.calls["register_model"] == 1 and ws.calls["begin_deploy"] == 1
    assert len(ledger.list(L.MODEL)) == 1 and len(ledger.list(L.ENDPOINT)) == 1


def test_concurrent_reconciles_activate_once(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-q", COMPLETED)
    handle_job_event(completed_event(fixtures_dir, settings, "job-q"), ctx=context())
    ws.finish_deployment(endpoint_name(settings.model_name, "1"))
    summaries = []
    threads = [
        threading.Thread(target=lambda: summaries.append(reconcile(context(settings=settings, ledger=Ledger.from_settings(settings), backend=ws))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(s["endpoints_activated"] for s in summaries) == 1
    assert sum(s["errors"] for s in summaries) == 0
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == endpoint_name(settings.model_name, "1")


# --------------------------------------------------------------------------- not ours


def _raw_completed(fixtures_dir, settings, run_id, **data):
    return ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, run_id, **data)


def _not_ours_cases(fixtures_dir, settings):
    completed_event = _raw_completed  # envelopes as delivered; the test parses them as the trigger does
    other_topic = completed_event(fixtures_dir, settings, "job-x")
    other_topic["topic"] = settings.workspace_resource_id.replace("/workspaces/local", "/workspaces/someone-else")
    child = completed_event(fixtures_dir, settings, "job-x")
    child["data"]["runProperties"]["azureml.pipelinerunid"] = "job-x-parent"
    foreign_tags = completed_event(fixtures_dir, settings, "job-x", runTags={MANAGED_BY_TAG: "another-app"})
    return {
        "official sample as published (other topic)": (
            load_sample(fixtures_dir, "run_completed.eventgrid.json"),
            "is not the trusted workspace",
        ),
        "other topic": (other_topic, "is not the trusted workspace"),
        "unknown job": (completed_event(fixtures_dir, settings, "job-nobody-submitted"), "not a job this app submitted"),
        "child step": (child, "is a step of pipeline run job-x-parent"),
        "foreign tags": (foreign_tags, "does not carry tag"),
        "malformed data": ({"topic": settings.workspace_resource_id, "eventType": "x", "data": "[1]"}, "malformed"),
        "no run id": ({"topic": settings.workspace_resource_id, "eventType": "x", "data": {}}, "malformed"),
        "not a run event": (
            dict(completed_event(fixtures_dir, settings, "job-x"), eventType="Microsoft.MachineLearningServices.ModelRegistered"),
            "not a run event",
        ),
    }


def test_events_that_are_not_ours_do_nothing_and_say_why(env, fixtures_dir, caplog):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-x", COMPLETED)
    before = snapshot(ledger)
    for case, (envelope, expected_log) in _not_ours_cases(fixtures_dir, settings).items():
        caplog.clear()
        try:
            event = parse_job_event(envelope)
        except MalformedEventError:
            assert expected_log == "malformed", case  # the trigger logs and drops it (tests/storage/test_job_event_and_reconcile_functions.py)
            continue
        with caplog.at_level(logging.INFO, logger="shared.deployment.job_outcome"):
            outcome = handle_job_event(event, ctx=context())
        assert outcome.action == "ignored", case
        assert expected_log in caplog.text, (case, caplog.text)
    assert snapshot(ledger) == before
    assert sum(ws.calls.values()) == 0, "nothing may be spent on events that are not ours"


def test_workspace_tags_and_parent_are_checked_too(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-t", COMPLETED, tags={"owner": "someone"})
    submit_job(ledger, settings, ws, "job-u", COMPLETED, parent="pipeline-9")
    assert handle_job_event(completed_event(fixtures_dir, settings, "job-t"), ctx=context()).reason == "not managed by this app"
    assert handle_job_event(completed_event(fixtures_dir, settings, "job-u"), ctx=context()).reason == "pipeline child step"
    assert ws.calls["register_model"] == 0


# --------------------------------------------------------------------------- lost events, errors, gate


def test_lost_event_the_next_reconcile_deploys(env):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-l", RUNNING)
    summary = reconcile(ctx=context())
    assert summary["jobs_polled"] == 1 and summary["jobs_pending"] == 1 and ws.calls["register_model"] == 0

    ws.set_job("job-l", COMPLETED)  # ... and its event never arrives
    summary = reconcile(ctx=context())
    assert summary["jobs_polled"] == 1 and summary["models_deploying"] == 1
    ep = endpoint_name(settings.model_name, "1")
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning"

    ws.finish_deployment(ep)
    summary = reconcile(ctx=context())
    assert summary["jobs_polled"] == 0 and summary["endpoints_activated"] == 1
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == ep


def test_reconcile_records_a_failed_job_whose_event_was_lost(env):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-lf", FAILED, error="boom")
    assert reconcile(ctx=context())["jobs_failed"] == 1
    assert ledger.get(L.JOB, "job-lf").state == FAILED


def test_transient_errors_raise_and_the_retry_finishes_the_work(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-e", COMPLETED)
    event = completed_event(fixtures_dir, settings, "job-e")
    for op in ("get_job", "register_model", "begin_deploy"):
        ws.fail_next[op] = TransientBackendError(f"{op}: 503 service unavailable")
        with pytest.raises(TransientBackendError):
            handle_job_event(event, ctx=context())
    assert handle_job_event(event, ctx=context()).action == "deploying"
    assert ws.versions[settings.model_name] == ["1"]
    ep = endpoint_name(settings.model_name, "1")
    assert ledger.get(L.ENDPOINT, ep).state == "provisioning" and ws.calls["begin_deploy"] == 2
    assert ws.endpoints[ep].model == f"{settings.model_name}:1"


def test_permanent_registration_error_is_recorded_not_retried(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-pe", COMPLETED)
    ws.fail_next["register_model"] = BackendError("no trained_model output")
    outcome = handle_job_event(completed_event(fixtures_dir, settings, "job-pe"), ctx=context())
    assert outcome.action == "error" and "no trained_model output" in outcome.reason
    assert ledger.get(L.JOB, "job-pe").get("register_error") == "no trained_model output"
    reconcile(ctx=context())
    assert ws.calls["register_model"] == 1 and ws.calls["begin_deploy"] == 0


@pytest.mark.parametrize(
    "metrics,deployed",
    [
        ({"test_loss": 1.5, "base_test_loss": 1.5}, False),
        ({"test_loss": 2.0, "base_test_loss": 1.5}, False),
        ({"test_loss": 1.2, "base_test_loss": 1.5}, True),
        ({}, True),  # the backend reports no losses: the gate cannot apply
    ],
)
def test_quality_gate(storage_settings, fixtures_dir, metrics, deployed):
    settings, ledger, ws = install_workspace(storage_settings.replace(quality_gate=True))
    submit_job(ledger, settings, ws, "job-g", COMPLETED, metrics=metrics)
    outcome = handle_job_event(completed_event(fixtures_dir, settings, "job-g"), ctx=context())
    assert (outcome.action == "deploying") is deployed
    assert (ws.calls["begin_deploy"] == 1) is deployed
    job = ledger.get(L.JOB, "job-g")
    if not deployed:
        assert outcome.action == "gated" and job.get("gated") is True and "did not beat" in job.get("gate_reason")
        assert ws.calls["register_model"] == 0
        reconcile(ctx=context())  # a gated job stays gated
        assert (
            ws.calls["register_model"] == 0
            and handle_job_event(completed_event(fixtures_dir, settings, "job-g"), ctx=context()).action == "gated"
        )


def test_gate_off_deploys_a_worse_model(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-w", COMPLETED, metrics={"test_loss": 9.0, "base_test_loss": 1.0})
    assert handle_job_event(completed_event(fixtures_dir, settings, "job-w"), ctx=context()).action == "deploying"


# --------------------------------------------------------------------------- endpoints


def _deploy_and_activate(fixtures_dir, settings, ledger, ws, job):
    submit_job(ledger, settings, ws, job, COMPLETED)
    outcome = handle_job_event(completed_event(fixtures_dir, settings, job), ctx=context())
    ws.finish_deployment(outcome.endpoint)
    reconcile(ctx=context())
    return outcome.endpoint


def test_newer_model_replaces_the_active_endpoint_old_one_left_for_the_janitor(storage_settings, fixtures_dir):
    # ROLLOUT_CANDIDATES=false: each version its own endpoint (tests/storage/test_rollout.py: beside the champion)
    settings, ledger, ws = install_workspace(storage_settings.replace(rollout_candidates=False))
    ep1 = _deploy_and_activate(fixtures_dir, settings, ledger, ws, "job-v1")
    ep2 = _deploy_and_activate(fixtures_dir, settings, ledger, ws, "job-v2")
    assert ep1 != ep2
    active = ledger.get(L.ROUTE, settings.model_name)
    assert (active.get("endpoint"), active.get("model_version"), active.get("previous_endpoint")) == (ep2, "2", ep1)
    old = ledger.get(L.ENDPOINT, ep1)
    assert old.state == "succeeded" and old.get("replaced_by") == ep2
    assert ws.calls["begin_delete_endpoint"] == 0 and ep1 in ws.endpoints


def test_replaced_endpoint_deleted_at_once_when_configured(storage_settings, fixtures_dir):
    settings, ledger, ws = install_workspace(storage_settings.replace(delete_replaced_endpoints=True,
                                                                      rollout_candidates=False))
    ep1 = _deploy_and_activate(fixtures_dir, settings, ledger, ws, "job-v1")
    ep2 = _deploy_and_activate(fixtures_dir, settings, ledger, ws, "job-v2")
    old = ledger.get(L.ENDPOINT, ep1)
    assert old.state == "deleting" and old.get("delete_reason") == "replaced" and old.get("replaced_by") == ep2
    assert ws.calls["begin_delete_endpoint"] == 1
    assert reconcile(ctx=context())["endpoints_deleted"] == 0  # still being deleted
    ws.finish_deletion(ep1)
    assert reconcile(ctx=context())["endpoints_deleted"] == 1
    assert ledger.get(L.ENDPOINT, ep1).state == "deleted" and ledger.get(L.ENDPOINT, ep1).get("deleted_at")
    assert ledger.get(L.ENDPOINT, ep2).state == "succeeded"


def test_an_older_version_finishing_late_does_not_take_over(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-o1", COMPLETED)
    submit_job(ledger, settings, ws, "job-o2", COMPLETED)
    ep1 = handle_job_event(completed_event(fixtures_dir, settings, "job-o1"), ctx=context()).endpoint
    ep2 = handle_job_event(completed_event(fixtures_dir, settings, "job-o2"), ctx=context()).endpoint
    ws.finish_deployment(ep2)
    reconcile(ctx=context())
    ws.finish_deployment(ep1)
    reconcile(ctx=context())
    assert ledger.get(L.ROUTE, settings.model_name).get("endpoint") == ep2
    assert ledger.get(L.ENDPOINT, ep1).state == "succeeded"


def test_failed_deployment_is_recorded_with_its_error(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-d", COMPLETED)
    ep = handle_job_event(completed_event(fixtures_dir, settings, "job-d"), ctx=context()).endpoint
    ws.finish_deployment(ep, ok=False, error="ResourceNotReady: liveness probe failed")
    summary = reconcile(ctx=context())
    assert summary["endpoints_failed"] == 1
    record = ledger.get(L.ENDPOINT, ep)
    assert record.state == "failed" and record.get("error") == "ResourceNotReady: liveness probe failed"
    assert ledger.get(L.MODEL, f"{settings.model_name}:1").get("deploy_error") == record.get("error")
    assert ledger.get(L.ROUTE, settings.model_name) is None
    assert reconcile(ctx=context())["endpoints_failed"] == 0 and ws.calls["begin_deploy"] == 1  # not retried in a loop


def test_deploy_model_revives_a_deleted_endpoint_once(env):
    settings, ledger, ws = env
    model = ModelRef(settings.model_name, "3", "job-z", settings.base_model_name)
    ep = endpoint_name(model.name, model.version)
    ledger.create(
        L.ENDPOINT,
        ep,
        "deleted",
        model=model.ref,
        model_name=model.name,
        model_version="3",
        deleted_at="2024-01-01T00:00:00Z",
        delete_reason="idle",
    )
    records = []
    threads = [
        threading.Thread(
            target=lambda: records.append(
                deploy_model(model, ctx=context(settings=settings, ledger=Ledger.from_settings(settings), backend=ws), reason="scale from zero")
            )
        )
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert ws.calls["begin_deploy"] == 1
    assert {r.state for r in records} == {"provisioning"}
    record = ledger.get(L.ENDPOINT, ep)
    assert record.get("deploy_reason") == "scale from zero" and record.get("deleted_at") is None
    # Live or provisioning endpoints are returned as they are.
    assert deploy_model(model, ctx=context(backend=ws), reason="again").state == "provisioning" and ws.calls["begin_deploy"] == 1


def test_reconcile_restarts_a_deployment_whose_start_was_lost(env, monkeypatch):
    settings, ledger, ws = env
    model = ModelRef(settings.model_name, "1", "job-k", settings.base_model_name)
    ep = endpoint_name(model.name, model.version)
    ledger.create(L.MODEL, model.ref, "deploying", job_name="job-k", endpoint=ep)
    ledger.create(
        L.ENDPOINT,
        ep,
        "provisioning",
        model=model.ref,
        model_name=model.name,
        model_version="1",
        job_name="job-k",
        base_model=model.base_model,
    )
    assert reconcile(ctx=context())["endpoints_restarted"] == 0  # within the grace period: begin_deploy may be under way
    monkeypatch.setattr(lifecycle, "DEPLOY_RESTART_GRACE", timedelta(0))
    assert reconcile(ctx=context())["endpoints_restarted"] == 1
    assert ws.deploys[0][:2] == (model, ep)


def test_reconcile_deploys_a_model_whose_registrar_stopped(env):
    settings, ledger, ws = env
    ledger.create(L.MODEL, f"{settings.model_name}:4", "registered", job_name="job-m", base_model="b")
    assert reconcile(ctx=context())["models_deploying"] == 1
    assert ledger.get(L.ENDPOINT, endpoint_name(settings.model_name, "4")).state == "provisioning"
    assert ws.calls["begin_deploy"] == 1


def test_one_broken_record_does_not_stop_reconcile(env):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-b1", COMPLETED)
    submit_job(ledger, settings, ws, "job-b2", COMPLETED)
    ws.fail_next["get_job"] = TransientBackendError("429")
    summary = reconcile(ctx=context())
    assert summary["errors"] == 1 and summary["models_deploying"] == 1
    assert reconcile(ctx=context())["models_deploying"] == 1
    assert len(ledger.list(L.ENDPOINT)) == 2


def test_reconcile_records_a_janitor_deletion_once_it_is_done_so_scoring_can_revive_it(env, fixtures_dir):
    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-j", COMPLETED)
    handle_job_event(completed_event(fixtures_dir, settings, "job-j"), ctx=context())
    ep = endpoint_name(settings.model_name, "1")
    ws.finish_deployment(ep)
    reconcile(ctx=context())
    # The janitor started an (asynchronous, Azure-like) deletion and recorded "deleting".
    record = ledger.get(L.ENDPOINT, ep)
    ledger.update(record, "deleting", delete_reason="idle: test")
    ws.begin_delete_endpoint(ep)

    reconcile(ctx=context())
    assert ledger.get(L.ENDPOINT, ep).state == "deleting"  # still going: nothing recorded, nothing restarted
    assert ws.calls["begin_delete_endpoint"] == 1

    ws.finish_deletion(ep)
    summary = reconcile(ctx=context())
    assert summary["endpoints_deleted"] == 1
    deleted = ledger.get(L.ENDPOINT, ep)
    assert deleted.state == "deleted" and deleted.get("deleted_at")
    assert ws.calls["begin_delete_endpoint"] == 1  # a deletion still running is never restarted


def test_a_lost_deletion_is_restarted_once_whoever_notices_it(env, fixtures_dir, monkeypatch):
    """One rule for "deleting -> deleted" and for a lost delete call, shared by reconcile and the janitor."""
    from shared.janitor.run import delete_idle_endpoints

    settings, ledger, ws = env
    submit_job(ledger, settings, ws, "job-l", COMPLETED)
    handle_job_event(completed_event(fixtures_dir, settings, "job-l"), ctx=context())
    ep = endpoint_name(settings.model_name, "1")
    ws.finish_deployment(ep)
    reconcile(ctx=context())
    # The janitor claimed the deletion, then crashed before calling the backend.
    ledger.update(ledger.get(L.ENDPOINT, ep), "deleting", delete_reason="idle: test")
    assert reconcile(ctx=context())["endpoints_deleting"] == 0 and ws.calls["begin_delete_endpoint"] == 0  # too recent to call lost
    monkeypatch.setattr(deletion, "LOST_DELETE_AFTER", timedelta(0))
    assert reconcile(ctx=context())["endpoints_deleting"] == 1
    delete_idle_endpoints(context(settings=settings, ledger=ledger, backend=ws))
    reconcile(ctx=context())
    assert ws.calls["begin_delete_endpoint"] == 1  # restarted once, not once per caller
    ws.finish_deletion(ep)
    report = delete_idle_endpoints(context(settings=settings, ledger=ledger, backend=ws))
    assert report.finalized == [ep] and ledger.get(L.ENDPOINT, ep).state == "deleted"
