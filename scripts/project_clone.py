"""A copy of the project in a folder of its own, and its local stack driven the way a user drives it.

Used by the black-box runs that must touch nothing of the developer's (scripts/blackbox_trust.py,
tests/faults/test_faults_restart.py): the copy has its own ``.local/`` (key, pid files, workspace),
and ``python -m devhost.stack up`` / ``upload`` / ``down`` run in it as ``make up`` / ``make upload``
/ ``make down`` do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from localworkspace.workspace import read_pid_file
from shared.settings import PROJECT_ROOT


def make_clone(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored) copied to ``dest``; node_modules linked."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, check=True, timeout=60).stdout.splitlines()
    for name in listed:
        src = PROJECT_ROOT / name
        if src.is_symlink() or not src.is_file():
            continue  # .venv / node_modules links of a worktree; deleted files
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    (dest / "node_modules").symlink_to((PROJECT_ROOT / "node_modules").resolve())
    return dest


class CloneStack:
    """The local stack of a clone: its commands, its host's URL, function key and pid."""

    def __init__(self, clone: Path, env: dict[str, str], port: int):
        self.clone, self.env, self.port = clone, env, port
        self.url = f"http://127.0.0.1:{port}"

    def run(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """``python -m devhost.stack ARGS`` in the clone: what ``make up`` / ``make down`` / ``make upload`` run."""
        done = subprocess.run([sys.executable, "-m", "devhost.stack", *args], cwd=self.clone, env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"stack {args}: {done.stdout}\n{done.stderr}")
        return done

    @property
    def key(self) -> str:
        """The function key ``make up`` generated (when no FUNCTION_KEY is set) and kept in .local/."""
        return (self.clone / ".local" / "function_key").read_text(encoding="utf-8").strip()

    def host_pid(self) -> int:
        recorded = read_pid_file(self.clone / ".local" / "run" / "host.pid")
        if recorded is None:
            raise RuntimeError("make up wrote no host.pid")
        return int(recorded["pid"])

    def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return httpx.post(self.url + path, json=body if body is not None else {}, timeout=60,
                          headers={"x-functions-key": self.key, **headers})

    def reconcile(self) -> None:
        self.post("/admin/functions/reconcile")
