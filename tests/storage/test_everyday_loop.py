"""Issue 20, items 1, 2 and 7 at the level a user meets them: settings, `make up`, the CLI.

- a malformed schedule, an unknown FINETUNE_PARAMS key, a bad port fail when the settings are
  read, naming the setting, in one line (never a traceback);
- `make up` reports ready only when the host's own status route says Running;
- the job-event webhook follows LOCAL_HOST_PORT;
- `make status | head` ends quietly; `make upload` with the stack down says so in one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devhost import stack
from shared.settings import PROJECT_ROOT, SettingsError, load_settings, schedule_error
from tests.support import free_port, wait_until

# The make targets as a user runs them, minus the install step: its stamps count as up to date
# (a test must not reinstall the environment it runs in).
MAKE = ["make", "-s", "-o", ".venv/.installed", "-o", "node_modules/.installed"]


def _env(**extra: str) -> dict[str, str]:
    env = stack.offline_env()
    for name in ("RECONCILE_SCHEDULE", "JANITOR_SCHEDULE", "FINETUNE_PARAMS", "LOCAL_HOST_PORT", "EVENTGRID_WEBHOOK_URL"):
        env.pop(name, None)
    env.update(extra)
    return env


# --- settings


@pytest.mark.parametrize("expression", ["*/5 * * * *", "0 */5 * * * * *", "every 5 minutes", "0 */5 * * * xyz", "00:00:00"])
def test_a_malformed_schedule_fails_when_settings_are_read(expression: str) -> None:
    with pytest.raises(SettingsError, match="RECONCILE_SCHEDULE") as err:
        load_settings(environ={"RECONCILE_SCHEDULE": expression})
    assert expression in str(err.value)
    with pytest.raises(SettingsError, match="JANITOR_SCHEDULE"):
        load_settings(environ={"JANITOR_SCHEDULE": expression})


def test_five_field_cron_gets_a_hint() -> None:
    assert "put 0 first" in (schedule_error("*/5 * * * *") or "")


@pytest.mark.parametrize("expression", ["0 */5 * * * *", "*/2 * * * * *", "0 0 0 1 1 *", "0 30 9 * * Mon-Fri", "00:05:00"])
def test_valid_schedules_load(expression: str) -> None:
    assert load_settings(environ={"RECONCILE_SCHEDULE": expression}).reconcile_schedule == expression


def test_unknown_finetune_params_fail_on_the_local_backend() -> None:
    with pytest.raises(SettingsError, match="FINETUNE_PARAMS.*'lora_rank'"):
        load_settings(environ={"FINETUNE_PARAMS": '{"lora_rank": 8}'})
    with pytest.raises(SettingsError, match="FINETUNE_PARAMS.*'apply_deepspeed' is an Azure ML component input"):
        load_settings(environ={"FINETUNE_PARAMS": '{"apply_deepspeed": "true"}'})
    with pytest.raises(SettingsError, match="FINETUNE_PARAMS.*learning_rate"):
        load_settings(environ={"FINETUNE_PARAMS": '{"learning_rate": "fast"}'})
    assert load_settings(environ={"FINETUNE_PARAMS": '{"max_steps": 4}'}).finetune_params == {"max_steps": 4}


def test_the_webhook_follows_the_host_port_unless_set() -> None:
    assert load_settings(environ={}).eventgrid_webhook_url == (
        "http://127.0.0.1:7071/runtime/webhooks/eventgrid?functionName=on_job_event")
    moved = load_settings(environ={"LOCAL_HOST_PORT": "7188"})
    assert moved.local_host_port == 7188
    assert moved.eventgrid_webhook_url == "http://127.0.0.1:7188/runtime/webhooks/eventgrid?functionName=on_job_event"
    pinned = load_settings(environ={"LOCAL_HOST_PORT": "7188", "EVENTGRID_WEBHOOK_URL": "http://example.test/hook"})
    assert pinned.eventgrid_webhook_url == "http://example.test/hook"
    with pytest.raises(SettingsError, match="LOCAL_HOST_PORT"):
        load_settings(environ={"LOCAL_HOST_PORT": "70000"})


# --- make up / the host


def test_make_up_with_a_malformed_schedule_fails_in_one_line() -> None:
    """The setting is named, no traceback, nothing is started (it fails before Azurite)."""
    result = subprocess.run(
        [*MAKE, "up"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env=_env(RECONCILE_SCHEDULE="*/5 * * * *"),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("configuration error")]
    assert len(lines) == 1 and "RECONCILE_SCHEDULE='*/5 * * * *'" in lines[0], result.stderr
    assert "Local host: started" not in result.stdout and "Azurite: started" not in result.stdout


@pytest.mark.storage
def test_host_builds_its_triggers_before_the_port_opens(storage_settings) -> None:
    """A schedule the timers cannot parse stops start() before the port is bound (no 'ready' port)."""
    from devhost.host import Host

    bound: list[int] = []
    host = Host("function_app:app", settings=storage_settings.replace(janitor_schedule="*/5 * * * *"), port=0,
                on_start=lambda h: bound.append(h.port))
    with pytest.raises(ValueError, match="six fields"):
        host.start()
    assert bound == [] and not host.running


@pytest.mark.storage
def test_start_host_is_ready_only_when_the_status_route_says_running(storage_settings, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "HOST_PID", tmp_path / "host.pid")
    monkeypatch.setattr(stack, "LOG_DIR", tmp_path / "logs")
    env = {
        "AzureWebJobsStorage": storage_settings.storage_connection,
        "LEDGER_TABLE": storage_settings.ledger_table,
        "CHAT_DATA_CONTAINER": storage_settings.chat_data_container,
        "PREPARED_CONTAINER": storage_settings.prepared_container,
        "LOCAL_WORKSPACE_DIR": storage_settings.local_workspace_dir,
        "LOCAL_BASE_MODEL": "tiny-random",
    }
    for name in ("RECONCILE_SCHEDULE", "JANITOR_SCHEDULE", "FINETUNE_PARAMS"):
        monkeypatch.delenv(name, raising=False)

    # A host that cannot start: the error is its one configuration line, not "started".
    with pytest.raises(RuntimeError, match=r"did not start: configuration error: JANITOR_SCHEDULE='\*/5 \* \* \* \*'"):
        stack.start_host(free_port(), env={**env, "JANITOR_SCHEDULE": "*/5 * * * *"}, timeout_s=60)

    # Something else on the port is not our host.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        with pytest.raises(RuntimeError, match="taken by another process"):
            stack.start_host(squatter.getsockname()[1], env=env, timeout_s=10)

    port = free_port()
    pid = stack.start_host(port, env=env, timeout_s=90)
    try:
        assert stack.host_state(port) == "Running"
    finally:
        stack.stop_process(pid, timeout_s=20)


# --- CLI


@pytest.mark.storage
def test_status_piped_into_head_ends_quietly(storage_settings) -> None:
    env = _env(AzureWebJobsStorage=storage_settings.storage_connection, LEDGER_TABLE=storage_settings.ledger_table,
               PYTHONWARNINGS="ignore")
    # A reader that closes at once: the CLI must not die with BrokenPipeError.
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "status"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"BrokenPipeError" not in err and b"Traceback" not in err, err.decode()
    assert proc.returncode == 0


def test_make_upload_with_the_stack_down_says_so_in_one_line(tmp_path: Path) -> None:
    sample = tmp_path / "x.jsonl"
    sample.write_text("{}\n")
    dead = free_port()
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            f"BlobEndpoint=http://127.0.0.1:{dead}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{dead}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{dead}/devstoreaccount1;")
    result = subprocess.run([*MAKE, "upload", f"FILE={sample}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, env=_env(AzureWebJobsStorage=conn))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "the local stack is not running" in result.stderr and "make up" in result.stderr
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1, result.stderr




# --- progress you can see from the terminal


@pytest.mark.storage
def test_status_shows_step_loss_eta_of_a_running_job_and_dataset_splits(storage_settings) -> None:
    from datetime import timedelta

    from localworkspace.workspace import Workspace, write_json, write_pid_file
    from shared.backends import use_backend
    from shared.backends.local import LocalBackend
    from shared.ledger import DATASET, JOB, Ledger, iso, utcnow
    from shared.observability.status import collect_status
    from shared.observability.status_text import render_status

    ledger = Ledger.from_settings(storage_settings)
    ledger.create(DATASET, "ds-1", "submitted", counts={"valid": 120, "train": 108, "test": 12, "invalid": 3},
                  job_name="ftjob-running")
    ledger.create(JOB, "ftjob-running", "submitted", dataset_id="ds-1")
    ws = Workspace(storage_settings.local_workspace_dir)
    ws.ensure()
    job_dir = ws.job_dir("ftjob-running")
    job_dir.mkdir(parents=True)
    started = utcnow() - timedelta(seconds=30)  # 3 of 10 steps in 30 s: 70 s to go
    write_json(ws.job_state_path("ftjob-running"), {"state": "running", "progress": {
        "step": 3, "total_steps": 10, "loss": 1.2345, "training_started_at": iso(started), "at": iso(utcnow())}})
    write_pid_file(job_dir / "runner.pid", os.getpid())  # a live process: the job is running
    use_backend(LocalBackend(storage_settings), storage_settings)

    status = collect_status(storage_settings, ledger)
    progress = status["jobs"][0]["progress"]
    assert (progress["step"], progress["total_steps"], progress["loss"]) == (3, 10, 1.2345)
    assert 65 <= progress["eta_s"] <= 80
    text = render_status(status)
    assert "step 3/10 loss 1.234 ETA 1m1" in text or "step 3/10 loss 1.234 ETA 1m0" in text, text
    assert "120/108/12" in text


@pytest.mark.storage
def test_watch_redraws_until_interrupted(storage_settings, tmp_path: Path) -> None:
    import signal
    import time

    env = _env(AzureWebJobsStorage=storage_settings.storage_connection, LEDGER_TABLE=storage_settings.ledger_table)
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    # Files, not pipes: an unread pipe fills up and blocks the redraws (on a busy machine the
    # fixed wait that used to precede the interrupt let it fill, and the child hung in a write).
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        # Ctrl+C as a terminal user gives it: a test run started in the background (CI, `make test &`)
        # inherits SIGINT ignored, and a Python started so keeps ignoring it.
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "status", "--watch", "0.2"], cwd=PROJECT_ROOT,
                                env=env, stdout=out_file, stderr=err_file,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            wait_until(lambda: out_path.read_bytes().count(b"Datasets (") >= 2, 60, "two redraws of the status")
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            proc.kill()
    out, err = out_path.read_bytes(), err_path.read_bytes()
    assert proc.returncode == 0, err.decode()
    assert out.count(b"\x1b[H\x1b[2J") >= 2 and out.count(b"Datasets (") >= 2  # redrawn, not printed once
    assert b"Traceback" not in err


@pytest.mark.storage
def test_report_prints_a_datasets_report_from_storage(storage_settings, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from shared.cli.commands import main as cli
    from shared.datasets.preparation import prepare_file
    from shared.ledger import DATASET, Ledger
    from shared.storage import blob_service

    source = PROJECT_ROOT / "data" / "sample_chat.jsonl"
    prepared = prepare_file(source, Path(storage_settings.local_workspace_dir) / "prep", storage_settings)
    blob = "datasets/ds-r/report.json"
    blob_service(storage_settings).get_blob_client(storage_settings.prepared_container, blob).upload_blob(
        json.dumps(prepared.report), overwrite=True)
    Ledger.from_settings(storage_settings).create(DATASET, "ds-r", "submitted", report_blob=blob, blob_name="sample_chat.jsonl")

    assert cli(["report", "ds-r"]) == 0
    out = capsys.readouterr().out
    counts = prepared.report["counts"]
    assert f"{counts['valid']} valid" in out and f"train {counts['train']}, test {counts['test']}" in out
    assert "ACCEPTED" in out and "line " in out  # the rejected lines by number
    assert cli(["report", "ds-r", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == prepared.report
    assert cli(["report", "nope"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err


def test_make_mlflow_opens_the_local_workspaces_store(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    result = subprocess.run(
        [sys.executable, "-m", "localworkspace.mlflow_ui", "--dry-run", "--port", "5999"], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=60, env=_env(LOCAL_WORKSPACE_DIR=str(workspace)))
    assert result.returncode == 0, result.stderr
    assert f"--backend-store-uri sqlite:///{workspace / 'mlflow.db'}" in result.stdout
    assert "http://127.0.0.1:5999" in result.stdout
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "mlflow: install\n\t$(PY) -m localworkspace.mlflow_ui" in makefile
