"""``make mlflow``: MLflow's UI on the local workspace (runs, per-step losses, registered models).

``python -m localworkspace.mlflow_ui [--port 5000] [--dry-run]``; the workspace is
``LOCAL_WORKSPACE_DIR``. The UI reads the same SQLite store and artifact folder the jobs write.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from localworkspace.workspace import Workspace
from shared.settings import SettingsError, get_settings


def command(port: int) -> list[str]:
    ws = Workspace(get_settings().local_workspace_dir)
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.tracking_uri,
            "--default-artifact-root", ws.artifact_root, "--host", "127.0.0.1", "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localworkspace.mlflow_ui")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", "5000")))
    parser.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    args = parser.parse_args(argv)
    try:
        cmd = command(args.port)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"MLflow UI of the local workspace on http://127.0.0.1:{args.port} (Ctrl+C to stop)", flush=True)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
