"""How the local backend starts and watches the workspace's processes (job runners, routers, model servers).

A process is started detached (its own session, re-parented to init) so that it outlives an app restart;
its pid file records pid and create time (``localworkspace.workspace``), so a reused pid is never taken for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from localworkspace import PROCESS_ENV
from localworkspace.workspace import process_alive, read_pid_file, write_pid_file
from shared.settings import PROJECT_ROOT

# Forks the workspace process, prints its pid and exits: the process is re-parented to init.
_LAUNCHER = """
import os, sys
log_path, args = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
os.setsid()
fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 1)
os.dup2(fd, 2)
os.close(fd)
os.execv(sys.executable, [sys.executable, *args])
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a workspace process: ours, with the project importable and quiet progress output."""
    env = dict(os.environ)
    env.update(PROCESS_ENV)
    env.setdefault("HF_HOME", str(PROJECT_ROOT / ".local" / "hf"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_DISABLE"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "warning"
    env.update(extra or {})
    return env


def spawn(args: list[str], log_path: Path, pid_path: Path, extra_env: dict[str, str] | None = None) -> int:
    """Start ``python args...`` detached (own session, not our child), logging to ``log_path``.

    A launcher forks the real process and exits at once, so the app never holds child
    handles (no zombies, no Popen objects outliving it) and the process survives an app restart.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log_path), *args], cwd=str(PROJECT_ROOT), env=child_env(extra_env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True, timeout=60,
    )
    pid = int(launched.stdout.decode().strip())
    write_pid_file(pid_path, pid)
    return pid


def is_running(pid_path: Path) -> bool:
    """Whether the process a pid file names (pid and create time) is still running."""
    proc = read_pid_file(pid_path)
    return proc is not None and process_alive(proc)
