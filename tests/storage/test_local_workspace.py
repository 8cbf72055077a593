"""Local workspace: the whole lifecycle for real (tiny model), failures, events, hygiene."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from localworkspace.event_publisher import RUN_STATUS_CHANGED, backoff_delays, build_job_event, post_event
from localworkspace.serve import ScoreRequestError, azure_response, chat_request_from_azure
from localworkspace.workspace import Workspace, write_json, write_pid_file
from scripts.make_sample_data import pirate_conversations
from shared.backends.base import (
    EP_FAILED,
    EP_SUCCEEDED,
    FAILED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    FineTuneRequest,
    NotFoundError,
)
from shared.backends.local import LocalBackend
from shared.settings import Settings
from tests.fakes.local import FAST_PARAMS, EventSink, jsonl, upload_dataset, wait_job
from tests.support import ROOT, free_port, wait_until


@pytest.mark.usefixtures("migrated_mlflow_store")
@pytest.mark.storage
def test_corrupt_training_file_fails_with_log_and_failed_event(
    backend_with_sink: tuple[LocalBackend, Settings], event_sink: EventSink,
) -> None:
    backend, s = backend_with_sink
    rows = jsonl(pirate_conversations(12, seed=5))
    train_blob, test_blob = upload_dataset(s, "ds-bad", rows[:5] + ['{"messages": [ this is not json'] + rows[5:10], rows[10:])
    job = backend.submit_finetune(FineTuneRequest(dataset_id="ds-bad", train_blob=train_blob, test_blob=test_blob,
                                                  model_name="tiny-chat-ft", params=FAST_PARAMS))
    info = wait_job(backend, job)
    assert info.state == FAILED
    assert "line 6" in (info.error or "")
    assert "line 6" in Path(info.log_path or "").read_text()
    event = event_sink.wait_for(job)
    assert event["eventType"] == RUN_STATUS_CHANGED
    assert event["data"]["runStatus"] == "Failed"
    with pytest.raises(BackendError):
        backend.register_model(job, "tiny-chat-ft")


@pytest.mark.usefixtures("migrated_mlflow_store")
@pytest.mark.storage
def test_canceled_job_is_recorded_and_announced(backend_with_sink: tuple[LocalBackend, Settings], event_sink: EventSink) -> None:
    backend, s = backend_with_sink
    rows = jsonl(pirate_conversations(12, seed=9))
    train_blob, test_blob = upload_dataset(s, "ds-cancel", rows[:10], rows[10:])
    job = backend.submit_finetune(FineTuneRequest(dataset_id="ds-cancel", train_blob=train_blob, test_blob=test_blob,
                                                  model_name="tiny-chat-ft", params={"max_steps": 100000}))
    wait_until(lambda: backend.get_job(job).state == "running", 60, "the job to start running", every_s=0.2)
    backend.cancel_job(job)
    info = backend.get_job(job)
    assert info.state == "canceled" and info.ended_at is not None
    event = event_sink.wait_for(job)
    assert event["eventType"] == RUN_STATUS_CHANGED and event["data"]["runStatus"] == "Canceled"


# --- failure paths without storage -------------------------------------------------------------

def test_unknown_param_is_rejected_at_submit(unit_settings: Settings) -> None:
    backend = LocalBackend(unit_settings)
    request = FineTuneRequest(dataset_id="d", train_blob="t", test_blob="u", model_name="m", params={"lora_rank": 4})
    with pytest.raises(BackendError, match="lora_rank"):
        backend.submit_finetune(request)
    with pytest.raises(BackendError, match="learning_rate"):
        backend.submit_finetune(FineTuneRequest(dataset_id="d", train_blob="t", test_blob="u", model_name="m",
                                                params={"learning_rate": "fast"}))
    assert not (Path(unit_settings.local_workspace_dir) / "jobs").exists() or not any((Path(unit_settings.local_workspace_dir) / "jobs").iterdir())


def test_azure_only_params_are_an_error_on_the_local_backend() -> None:
    from localworkspace.trainer import ParamError, resolve_params

    params = resolve_params({"num_train_epochs": "2"}, {"lora_r": 4})
    assert params["num_train_epochs"] == 2 and params["lora_r"] == 4
    with pytest.raises(ParamError, match="'apply_deepspeed' is an Azure ML component input"):
        resolve_params({"apply_deepspeed": "true"})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runner_that_died_is_reported_failed_not_running(unit_settings: Settings) -> None:
    backend = LocalBackend(unit_settings)
    ws = Workspace(unit_settings.local_workspace_dir)
    job_dir = ws.job_dir("ftjob-dead")
    write_json(ws.job_state_path("ftjob-dead"), {"state": "running", "tags": {"a": "b"}})
    write_pid_file(job_dir / "runner.pid", _dead_pid())
    info = backend.get_job("ftjob-dead")
    assert info.state == FAILED and "process died" in (info.error or "")
    assert json.loads(ws.job_state_path("ftjob-dead").read_text())["state"] == FAILED
    with pytest.raises(NotFoundError):
        backend.get_job("ftjob-missing")


def test_endpoint_whose_server_died_is_reported_failed(unit_settings: Settings) -> None:
    backend = LocalBackend(unit_settings)
    ws = Workspace(unit_settings.local_workspace_dir)
    ep_dir = ws.endpoint_dir("ep-dead")
    write_json(ep_dir / "record.json", {"name": "ep-dead", "state": EP_SUCCEEDED, "port": free_port(), "key": "k",
                                        "model": "m:1", "tags": {MANAGED_BY_TAG: MANAGED_BY_VALUE}, "deployment": "default"})
    write_pid_file(ep_dir / "server.pid", _dead_pid())
    # A new backend instance (an app restart) reads the same records.
    info = LocalBackend(unit_settings).get_endpoint("ep-dead")
    assert info is not None and info.state == EP_FAILED and "died" in (info.error or "")
    assert [e.state for e in backend.list_endpoints()] == [EP_FAILED]


def test_shutdown_stops_every_tracked_process(unit_settings: Settings) -> None:
    ws = Workspace(unit_settings.local_workspace_dir)
    procs = []
    for folder, name in ((ws.job_dir("ftjob-x"), "runner.pid"), (ws.endpoint_dir("ep-x"), "server.pid")):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        folder.mkdir(parents=True)
        write_pid_file(folder / name, proc.pid)
        procs.append(proc)
    try:
        out = subprocess.run([sys.executable, "-m", "localworkspace.workspace", "shutdown", "--dir", str(ws.root)],
                             capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.count("stopped") == 2
        for proc in procs:
            assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- events and the scoring contract ---------------------------------------------------------

def test_job_events_have_the_published_shape(fixtures_dir: Path) -> None:
    sample_completed = json.loads((fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").read_text())
    sample_failed = json.loads((fixtures_dir / "eventgrid" / "run_status_changed.eventgrid.json").read_text())
    common = {"topic": "/subscriptions/x/ws", "experiment_id": "7", "experiment_name": "exp", "job_name": "ftjob-1",
              "tags": {"k": "v"}, "properties": {"test_loss": 0.5}, "event_time": "2026-01-01T00:00:00+00:00"}
    completed = build_job_event(state="completed", **common)
    failed = build_job_event(state="failed", **common)
    assert completed.keys() == sample_completed.keys() and completed["data"].keys() == sample_completed["data"].keys()
    assert failed["data"].keys() == sample_failed["data"].keys()
    assert completed["eventType"] == sample_completed["eventType"] and failed["eventType"] == sample_failed["eventType"]
    assert failed["data"]["runStatus"] == "Failed"
    assert completed["subject"] == "experiments/7/runs/ftjob-1"
    assert completed["data"]["runProperties"] == {"test_loss": "0.5"}


def test_event_is_retried_until_the_webhook_comes_up() -> None:
    sink = EventSink()
    timer = threading.Timer(1.5, sink.start)  # the host is down for the first attempts
    timer.start()
    try:
        event = build_job_event(topic="t", state="completed", experiment_id="1", experiment_name="e", job_name="ftjob-r",
                                tags={}, properties={}, event_time="2026-01-01T00:00:00+00:00")
        outcome = post_event(sink.url, event, retry_total_s=8, timeout_s=2)
        assert outcome["delivered"] and outcome["attempts"] >= 2
        assert sink.events[0]["id"] == event["id"]
    finally:
        timer.join()
        sink.stop()


def test_undeliverable_event_gives_up_within_its_budget() -> None:
    slept: list[float] = []
    event = build_job_event(topic="t", state="failed", experiment_id="1", experiment_name="e", job_name="ftjob-u",
                            tags={}, properties={}, event_time="2026-01-01T00:00:00+00:00")
    outcome = post_event(f"http://127.0.0.1:{free_port()}/x", event, retry_total_s=120, timeout_s=1, sleep=slept.append)
    assert not outcome["delivered"] and outcome["attempts"] == len(slept) + 1
    assert sum(slept) <= 120 and slept == backoff_delays(120)


def test_score_contract_translation() -> None:
    body = {"input_data": {"input_string": [{"role": "user", "content": "hi"}],
                           "parameters": {"temperature": 0.0, "do_sample": False, "max_new_tokens": 20}}, "params": {}}
    chat = chat_request_from_azure(body)
    assert chat["data"] == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    assert chat["generation"] == {"do_sample": False}
    body["input_data"]["parameters"] = {"temperature": 0.7, "top_p": 0.9, "do_sample": True, "max_new_tokens": 5}
    assert chat_request_from_azure(body)["generation"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    for bad in ({}, {"input_data": {"input_string": []}}, {"input_data": {"input_string": [{"role": "x", "content": "y"}]}},
                {"input_data": {"input_string": [{"role": "user", "content": "y"}], "parameters": {"max_new_tokens": 10**6}}}):
        with pytest.raises(ScoreRequestError):
            chat_request_from_azure(bad)
    completion = {"choices": [{"message": {"role": "assistant", "content": "Ahoy"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    assert azure_response(completion) == {"output": "Ahoy", "finish_reason": "stop", "usage": completion["usage"]}


def test_backend_module_does_not_import_torch() -> None:
    code = ("import sys; import shared.backends.local as m; "
            "bad = [x for x in ('torch', 'transformers', 'mlflow') if x in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=str(ROOT),
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
