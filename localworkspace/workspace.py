"""The local workspace's state folder and the processes it owns.

Layout of ``<dir>``::

    mlflow.db            MLflow tracking + model registry (SQLite)
    mlartifacts/         MLflow artifacts (run outputs, logged models)
    jobs/<job>/          spec.json (written once at submit), state.json (the runner's record),
                         runner.pid, job.log, data/ (downloaded train/test files)
    endpoints/<name>/    record.json, server.pid, server.log (the endpoint's router), activity (last
                         scoring request), deployments/<deployment>/ (server.pid, server.log: a model server)

Every process the workspace starts runs in its own session and is tracked by pid plus its
start time (so a recycled pid is never mistaken for ours); ``shutdown`` stops them all.
``python -m localworkspace.workspace shutdown --dir DIR`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from shared.clock import now_iso as now_iso  # the one time format (UTC, 'Z'), as the ledger writes it


@contextlib.contextmanager
def file_lock(folder: Path, name: str) -> Iterator[None]:
    """Exclusive lock across processes on ``folder/.name.lock`` (held until the block ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Workspace:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def endpoints_dir(self) -> Path:
        return self.root / "endpoints"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.root / "mlartifacts").as_uri()

    def job_dir(self, job_name: str) -> Path:
        return self.jobs_dir / job_name

    def endpoint_dir(self, endpoint_name: str) -> Path:
        return self.endpoints_dir / endpoint_name

    def ensure(self) -> None:
        for d in (self.jobs_dir, self.endpoints_dir, self.root / "mlartifacts"):
            d.mkdir(parents=True, exist_ok=True)

    def lock(self, name: str, folder: Path | None = None) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock across processes (registry writes, state updates)."""
        return file_lock(folder or self.root, name)

    def job_state_path(self, job_name: str) -> Path:
        return self.job_dir(job_name) / "state.json"

    def update_job_state(self, job_name: str, expect: set[str] | None = None, **fields: Any) -> dict[str, Any] | None:
        """Read-modify-write of a job's state record under the job's lock.

        With ``expect``, the update only happens while the record's state is one of them
        (None is returned otherwise): a runner that finished is never overwritten as dead.
        """
        path = self.job_state_path(job_name)
        with self.lock("state", self.job_dir(job_name)):
            record = read_json(path) or {}
            if expect is not None and record.get("state") not in expect:
                return None
            record.update(fields)
            write_json(path, record)
            return record

    def tracked_processes(self) -> list[tuple[str, Path]]:
        """(kind, pid file) of every process this workspace has started."""
        found = [("job", p) for p in sorted(self.jobs_dir.glob("*/runner.pid"))]
        found += [("endpoint", p) for p in sorted(self.endpoints_dir.glob("*/server.pid"))]
        found += [("deployment", p) for p in sorted(self.endpoints_dir.glob("*/deployments/*/server.pid"))]
        return found

    def shutdown(self, timeout_s: float = 10.0) -> list[str]:
        """Stop every live process this workspace started; returns what was stopped."""
        stopped = []
        for kind, pid_file in self.tracked_processes():
            proc = read_pid_file(pid_file)
            if proc is not None and process_alive(proc):
                stop_process_group(proc, timeout_s)
                stopped.append(f"{kind} {pid_file.parent.name} (pid {proc['pid']})")
        return stopped


# --- files --------------------------------------------------------------------------------

def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Atomic write: readers see the old or the new document, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


# --- processes ----------------------------------------------------------------------------

def process_identity(pid: int) -> dict[str, Any]:
    """pid plus start time: together they name one process even after pid reuse."""
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "create_time": None}


def write_pid_file(path: Path, pid: int) -> None:
    write_json(path, process_identity(pid))


def read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        recorded = read_json(path)
    except ValueError:  # torn or foreign content: nothing we started
        return None
    if isinstance(recorded, int):  # a bare pid, as pid files were written before they carried the create time
        return {"pid": recorded, "create_time": None}
    return recorded if isinstance(recorded, dict) else None


def live_pid(path: Path) -> int | None:
    """The pid recorded in ``path`` while that very process runs (pid and create time match: a pid
    the OS has since given to another process is not ours to signal)."""
    recorded = read_pid_file(path)
    return int(recorded["pid"]) if recorded is not None and process_alive(recorded) else None


def process_alive(proc: dict[str, Any]) -> bool:
    """True while the recorded process runs (a zombie or a recycled pid counts as dead)."""
    try:
        p = psutil.Process(int(proc["pid"]))
        if proc.get("create_time") is not None and abs(p.create_time() - float(proc["create_time"])) > 0.5:
            return False
        if p.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, os.WNOHANG)  # reap our own child so the pid is released
            return False
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def stop_process_group(proc: dict[str, Any], timeout_s: float = 10.0) -> None:
    """SIGTERM the process's session (it leads one: started with start_new_session), then SIGKILL."""
    pid = int(proc["pid"])
    if not process_alive(proc):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(proc):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process_alive(proc):
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localworkspace.workspace")
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("shutdown", help="stop every job runner and endpoint server of a workspace")
    down.add_argument("--dir", required=True, help="workspace folder (LOCAL_WORKSPACE_DIR)")
    args = parser.parse_args(argv)
    if args.command == "shutdown":
        for line in Workspace(args.dir).shutdown():
            print(f"stopped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
