"""Upload -> first answer, and deployment finished -> active, on the local stack: reconcile only
(before: ``ENDPOINT_FOLLOWUPS=false``) vs the queue follow-ups (after).

Each mode runs the whole loop on a private Azurite, the local Functions host (in this process,
as the tests run it) and the local workspace with the tiny random model (4 training steps):
upload a chat file, wait for the first 200 from ``/api/v1/chat/completions``. "Deployment
finished" is the moment the endpoint's server first answers its health check (polled directly on
its port, so the measurement does not settle anything itself); "active" is the moment the ledger's
route names the endpoint. Then it deletes the endpoint and measures a scale from zero the same
way (503 -> first 200). Both modes use the same ``RECONCILE_SCHEDULE`` (default: the app's,
every 5 minutes), so "before" is what a user waited before the follow-ups.

Run: ``.venv/bin/python bench/activation.py [--reconcile-schedule "0 */5 * * * *"]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(name, value)

from devhost.azurite import Azurite, free_port, start, stop_process  # noqa: E402
from localworkspace.polling import wait_until  # noqa: E402
from scripts.make_sample_data import write  # noqa: E402
from shared.backends import get_backend, use_backend  # noqa: E402
from shared.ledger import ENDPOINT, ROUTE, Ledger, retry_on_conflict  # noqa: E402
from shared.settings import load_settings, use_settings  # noqa: E402
from shared.storage import blob_service, ensure_storage  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def _wait(predicate, timeout_s: float, every_s: float = 0.1):  # noqa: ANN001, ANN202
    return wait_until(predicate, timeout_s, every_s=every_s)


def _healthy_at(workspace: Path, endpoint: str) -> bool:
    record = workspace / "endpoints" / endpoint / "record.json"
    try:
        port = json.loads(record.read_text())["port"]
        return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=0.5).status_code == 200
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return False


def run_mode(azurite: Azurite, workdir: Path, followups: bool, reconcile_schedule: str) -> dict[str, float]:
    from devhost.host import run_host

    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    workspace = workdir / f"ws-{suffix}"
    settings = load_settings(environ={
        "AzureWebJobsStorage": azurite.connection_string, "CHAT_DATA_CONTAINER": f"chat-{suffix}",
        "PREPARED_CONTAINER": f"prep-{suffix}", "LEDGER_TABLE": f"ledger{suffix}", "LOCAL_WORKSPACE_DIR": str(workspace),
        "LOCAL_BASE_MODEL": "tiny-random", "LOCAL_HOST_PORT": str(port), "FINETUNE_PARAMS": '{"max_steps": 4}',
        "RECONCILE_SCHEDULE": reconcile_schedule, "JANITOR_SCHEDULE": "0 0 0 1 1 *",
        "ENDPOINT_FOLLOWUPS": "true" if followups else "false", "SCORING_RETRY_AFTER_S": "5",
    })
    use_settings(settings)
    ensure_storage(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    sample = workdir / f"sample-{suffix}.jsonl"
    write(sample, count=40, seed=5, malformed=0)
    figures: dict[str, float] = {}
    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=0.5) as host, \
                httpx.Client(base_url=host.base_url, timeout=120) as client:
            t0 = time.monotonic()
            with sample.open("rb") as f:
                blob_service(settings).get_blob_client(settings.chat_data_container, "bench.jsonl").upload_blob(f)
            endpoint = _wait(lambda: next((r.id for r in ledger.list(ENDPOINT)), None), 600, 0.2)
            healthy = _wait(lambda: _healthy_at(workspace, endpoint) and time.monotonic(), 900, 0.1)
            active = _wait(lambda: (r := ledger.get(ROUTE, settings.model_name)) and r.get("endpoint") == endpoint
                           and time.monotonic(), 900, 0.1)
            first = _wait(lambda: client.post("/api/v1/chat/completions", json=CHAT).status_code == 200
                          and time.monotonic(), 900, 0.2)
            figures.update(upload_to_first_answer_s=first - t0, finished_to_active_s=active - healthy)

            # scale from zero: delete the endpoint as the janitor would, then one client retrying
            from shared.endpoints import deletion
            from shared.ledger import utcnow

            # (scoring records the endpoint's activity meanwhile: re-read on a conflict, as the janitor would)
            retry_on_conflict(lambda: deletion.claim_deletion(ledger, ledger.get(ENDPOINT, endpoint), reason="bench",
                                                               at=utcnow()), "bench deletion")
            backend.begin_delete_endpoint(endpoint)
            deletion.finish_deletion(ledger, endpoint, utcnow())
            cold = client.post("/api/v1/chat/completions", json=CHAT)
            t1 = time.monotonic()
            assert cold.status_code == 503, cold.text
            retry_after = int(cold.headers.get("retry-after", "0"))
            healthy = _wait(lambda: _healthy_at(workspace, endpoint) and time.monotonic(), 900, 0.1)
            served = _wait(lambda: client.post("/api/v1/chat/completions", json=CHAT).status_code == 200
                           and time.monotonic(), 900, 0.2)
            figures.update(cold_503_to_served_s=served - t1, cold_finished_to_served_s=served - healthy,
                           cold_retry_after_s=float(retry_after))
    finally:
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
        use_settings(None)
        use_backend(None)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reconcile-schedule", default="0 */5 * * * *")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-activation-") as tmp:
        workdir = Path(tmp)
        az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
        proc = start(az, workdir / "azurite")
        try:
            results = {}
            for label, followups in (("before: reconcile only", False), ("after: queue follow-ups", True)):
                print(f"running {label} (RECONCILE_SCHEDULE {args.reconcile_schedule!r}) ...", flush=True)
                results[label] = run_mode(az, workdir, followups, args.reconcile_schedule)
        finally:
            stop_process(proc.pid)
    keys = ["upload_to_first_answer_s", "finished_to_active_s", "cold_503_to_served_s", "cold_finished_to_served_s",
            "cold_retry_after_s"]
    before, after = results["before: reconcile only"], results["after: queue follow-ups"]
    print(f"\n{'':28} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in keys:
        ratio = after[key] / before[key] if before[key] else float("nan")
        print(f"{key:28} {before[key]:9.1f} {after[key]:9.1f} {ratio:13.2f}")
    print(f"\nreproduce: .venv/bin/python bench/activation.py --reconcile-schedule {args.reconcile_schedule!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
