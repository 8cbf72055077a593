"""Start and stop Azurite (pinned in package.json) for the local stack and the storage test tier.

``python -m devhost.azurite start|stop|status [--ports B Q T] [--location DIR]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from localworkspace.ports import free_port as free_port  # the one copy; callers starting Azurite take it from here
from localworkspace.ports import port_open
from localworkspace.workspace import live_pid, write_pid_file
from shared.settings import PROJECT_ROOT

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
RUN_DIR = PROJECT_ROOT / ".local" / "run"


@dataclasses.dataclass(frozen=True)
class Azurite:
    blob_port: int = 10000
    queue_port: int = 10001
    table_port: int = 10002
    host: str = "127.0.0.1"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://{self.host}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://{self.host}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://{self.host}:{self.table_port}/{ACCOUNT};"
        )

    def ports(self) -> tuple[int, int, int]:
        return self.blob_port, self.queue_port, self.table_port

    def is_up(self) -> bool:
        return all(port_open(p, self.host) for p in self.ports())


def azurite_binary() -> str:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("Azurite is not installed: run `npm ci` in the project folder (make does it for you)")


def start(az: Azurite, location: Path, log_file: Path | None = None, timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
    """Start Azurite in the background and wait until its three services listen."""
    location.mkdir(parents=True, exist_ok=True)
    log_file = log_file or location / "azurite.log"
    cmd = [
        azurite_binary(), "--silent", "--location", str(location),
        "--skipApiVersionCheck", "--loose", "--disableTelemetry",
        "--blobHost", az.host, "--blobPort", str(az.blob_port),
        "--queueHost", az.host, "--queuePort", str(az.queue_port),
        "--tableHost", az.host, "--tablePort", str(az.table_port),
    ]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with code {proc.returncode}; see {log_file}")
        if az.is_up():
            return proc
        time.sleep(0.2)
    stop_process(proc.pid)
    raise RuntimeError(f"Azurite did not start within {timeout_s:.0f}s; see {log_file}")


def stop_process(pid: int, timeout_s: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # reap if it is our child
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devhost.azurite")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--location", default=str(PROJECT_ROOT / ".local" / "azurite"))
    args = p.parse_args(argv)
    az = Azurite()
    pid_file = RUN_DIR / "azurite.pid"
    if args.action == "status":
        print("up" if az.is_up() else "down")
        return 0 if az.is_up() else 1
    if args.action == "stop":
        pid = live_pid(pid_file)
        if pid:
            stop_process(pid)
            print("Azurite stopped")
        pid_file.unlink(missing_ok=True)
        return 0
    if az.is_up():
        print(f"Azurite already listening on {az.host}:{az.blob_port}-{az.table_port}")
        return 0
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    proc = start(az, Path(args.location))
    write_pid_file(pid_file, proc.pid)
    print(f"Azurite started (pid {proc.pid}) blob http://{az.host}:{az.blob_port} table http://{az.host}:{az.table_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
