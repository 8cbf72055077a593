"""The local stack in the background, like `func start`: Azurite + the local host (+ the local
workspace, whose jobs and endpoints are processes it tracks itself).

    python -m devhost.stack up        # start what is not running, print the URLs
    python -m devhost.stack down      # stop everything the stack and the workspace started
    python -m devhost.stack upload FILE [--name BLOB]
    python -m devhost.stack ps        # what is running

Settings come from the environment and local.settings.json, as for the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from devhost.access import KEY_FILE, stack_function_key
from devhost.azurite import RUN_DIR, Azurite, start, stop_process
from localworkspace.ports import port_open
from localworkspace.workspace import live_pid, process_alive, read_pid_file, stop_process_group, write_pid_file
from shared.settings import PROJECT_ROOT, SettingsError, get_settings

LOG_DIR = PROJECT_ROOT / ".local" / "logs"
HOST_PID = RUN_DIR / "host.pid"
AZURITE_PID = RUN_DIR / "azurite.pid"


def offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: fully offline Hugging Face, caches inside the project."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HOME", str(PROJECT_ROOT / ".local" / "hf"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def host_port() -> int:
    """The local host's port: ``LOCAL_HOST_PORT`` (default 7071)."""
    return get_settings().local_host_port


def host_state(port: int) -> str | None:
    """The host's own status route (``GET /admin/host/status``): ``Running`` once every trigger runs;
    None when nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/host/status", timeout=2) as reply:
            return str(json.loads(reply.read()).get("state") or "")
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def azurite_config() -> Azurite:
    """Azurite ports from the storage connection string (defaults 10000-10002)."""
    conn = get_settings().storage_connection
    ports = {"BlobEndpoint": 10000, "QueueEndpoint": 10001, "TableEndpoint": 10002}
    for part in conn.split(";"):
        key, _, value = part.partition("=")
        if key in ports and value:
            ports[key] = int(value.split(":")[-1].split("/")[0])
    return Azurite(ports["BlobEndpoint"], ports["QueueEndpoint"], ports["TableEndpoint"])


def start_azurite() -> None:
    az = azurite_config()
    if az.is_up():
        print(f"Azurite: already listening (blob {az.blob_port}, queue {az.queue_port}, table {az.table_port})")
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    proc = start(az, PROJECT_ROOT / ".local" / "azurite", LOG_DIR / "azurite.log")
    write_pid_file(AZURITE_PID, proc.pid)
    print(f"Azurite: started (pid {proc.pid}) blob http://127.0.0.1:{az.blob_port} log {LOG_DIR / 'azurite.log'}")


def start_host(port: int | None = None, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> int:
    """Start the local Functions host in the background; return its pid once its status route says
    ``Running`` (every trigger built and started, not just the port open)."""
    port = host_port() if port is None else port
    running = live_pid(HOST_PID)
    if running and host_state(port) == "Running":
        print(f"Local host: already running on http://127.0.0.1:{port}")
        return running
    if port_open(port):
        raise RuntimeError(f"port {port} is taken by another process (set LOCAL_HOST_PORT, or find it with `ss -ltnp`)")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / "host.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devhost.host", "--port", str(port)],
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=offline_env(env), start_new_session=True,
        )
    write_pid_file(HOST_PID, proc.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            HOST_PID.unlink(missing_ok=True)
            reason = _last_line(log_path) or f"exit code {proc.returncode}"
            raise RuntimeError(f"the local host did not start: {reason} (log {log_path})")
        if host_state(port) == "Running":
            print(f"Local host: started (pid {proc.pid}) http://127.0.0.1:{port} log {log_path}")
            return proc.pid
        time.sleep(0.2)
    stop_process(proc.pid)
    raise RuntimeError(f"the local host did not answer within {timeout_s:.0f}s; see {log_path}")


def stop_recorded(pid_file: Path, what: str, timeout_s: float = 10.0) -> None:
    """Stop the process ``pid_file`` names while that very process runs, then drop the file.

    The file holds pid and create time (``write_pid_file``): a pid the OS has since given to
    another process is never signalled, neither at the first SIGTERM nor while waiting for the
    process to end or at the SIGKILL after ``timeout_s`` (``stop_process_group`` checks both each time)."""
    recorded = read_pid_file(pid_file)
    if recorded is not None and process_alive(recorded):
        stop_process_group(recorded, timeout_s=timeout_s)
        print(f"{what}: stopped (pid {recorded['pid']})")
    pid_file.unlink(missing_ok=True)


def stop_host() -> None:
    stop_recorded(HOST_PID, "Local host", timeout_s=20)


def stop_workspace() -> None:
    s = get_settings()
    if s.ml_backend != "local":
        return
    from shared.backends.local import LocalBackend

    LocalBackend(s).shutdown()
    print(f"Local workspace: every job and endpoint process stopped ({s.local_workspace_dir})")


def stop_azurite() -> None:
    stop_recorded(AZURITE_PID, "Azurite")


def print_urls(port: int | None = None, key: str = "", key_source: str = "") -> None:
    s = get_settings()
    port = s.local_host_port if port is None else port
    code = quote(key)
    print(f"""
Function key: {key}  ({key_source}; send it as the x-functions-key header or ?code=)
Dashboard: http://127.0.0.1:{port}/api/dashboard?code={code}

Functions (local host http://127.0.0.1:{port}):
  prepare_chat_data      blob trigger on {s.chat_data_container}/{{name}}  (make upload FILE=...)
  on_job_event           POST http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event&code=<key>
  dashboard              GET  http://127.0.0.1:{port}/api/dashboard?code=<key>  (a dataset's report: /api/dashboard/report?dataset=ID)
  reconcile              timer {s.reconcile_schedule!r}; on demand: POST http://127.0.0.1:{port}/admin/functions/reconcile
  delete_idle_endpoints  timer {s.janitor_schedule!r}; on demand: POST http://127.0.0.1:{port}/admin/functions/delete_idle_endpoints
  follow_up_endpoint     queue trigger on endpoint-followups (deployments and deletions in flight, checked within seconds)
  submit_due_collection  queue trigger on collection-submissions (a collection's job submitted when its window closes)
  score                  POST http://127.0.0.1:{port}/api/score
  chat_completions       POST http://127.0.0.1:{port}/api/v1/chat/completions
  list_models            GET  http://127.0.0.1:{port}/api/v1/models
Local workspace: {s.local_workspace_dir} (backend {s.ml_backend})
Logs: {LOG_DIR}""")


def upload(path: Path, name: str | None = None) -> str:
    from devhost.blob_names import name_problem
    from shared.storage import blob_service, ensure_storage

    s = get_settings()
    blob_name = name or path.name
    problem = name_problem(blob_name)
    if problem is not None:
        raise ValueError(f"refusing to upload as {blob_name!r}: {problem}; choose another name with --name")
    ensure_storage(s)
    with path.open("rb") as f:
        blob_service(s).get_blob_client(s.chat_data_container, blob_name).upload_blob(f, overwrite=True)
    print(f"uploaded {path} -> {s.chat_data_container}/{blob_name}")
    return blob_name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devhost.stack")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("ps")
    up = sub.add_parser("upload")
    up.add_argument("file")
    up.add_argument("--name")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "up":
        start_azurite()
        from shared.storage import ensure_storage

        settings = get_settings()  # a bad setting fails here, naming it, before anything starts
        ensure_storage(settings)
        key, key_source = stack_function_key(settings.function_key, KEY_FILE)  # never an open host (devhost.access)
        start_host(env={"FUNCTION_KEY": key})
        try:  # one reconcile now: endpoints whose processes stopped with `make down` are redeployed (health loop)
            import httpx

            reply = httpx.post(f"http://127.0.0.1:{host_port()}/admin/functions/reconcile", timeout=10,
                               headers={"x-functions-key": key})
            print(f"Reconcile: {'started' if reply.status_code == 202 else f'not started (HTTP {reply.status_code})'}")
        except httpx.HTTPError as exc:
            print(f"Reconcile: not started ({exc}); it runs on its timer", file=sys.stderr)
        print_urls(key=key, key_source=key_source)
        print("\nStop everything with: make down")
    elif args.cmd == "down":
        stop_host()
        try:
            stop_workspace()
        except Exception as exc:  # noqa: BLE001 - down must go on and stop Azurite
            print(f"Local workspace: could not stop its processes: {exc}", file=sys.stderr)
        stop_azurite()
    elif args.cmd == "ps":
        print(f"Azurite: {'up' if azurite_config().is_up() else 'down'}")
        print(f"Local host: {'up' if live_pid(HOST_PID) else 'down'}")
    elif args.cmd == "upload":
        if not azurite_config().is_up():
            print("the local stack is not running (Azurite does not answer): start it with `make up`", file=sys.stderr)
            return 1
        try:
            upload(Path(args.file), args.name)
        except ValueError as exc:
            print(f"upload: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
