"""The whole loop by stage, upload -> first answer, on the local stack with default settings:
reconcile-driven submission (before: ``COLLECTION_SUBMISSIONS=false``) vs the scheduled
submission on queue ``collection-submissions`` (after), in the same run.

Each run: a private Azurite, the local Functions host (in this process, as the tests run it)
and the local workspace; one upload of 40 conversations to ``bench/x.jsonl`` (collection
``bench``), then every stage is timed from the upload:

- prepared: the dataset accepted (ledger ``accepted_at``);
- due: its collection's window closes (``accepted_at`` + ``COALESCE_SECONDS``);
- submitted: the corpus job recorded (ledger ``submitted_at``);
- running / completed: the job's start and end (the local workspace's job state);
- registered: the model version recorded (ledger ``registered_at``);
- deployed: the endpoint's server first answers its health check (polled on its port);
- active: the endpoint made the model's active one (ledger ``active_since``);
- first answer: the first 200 from ``/api/v1/chat/completions`` for the collection's model.

Settings are the app's defaults (``COALESCE_SECONDS=60``, ``RECONCILE_SCHEDULE`` every 5 minutes,
the local trainer's 30 steps) except what a private stack needs (ports, containers, workspace),
``EVAL_FLOORS={}`` for the tiny random model (it meets no floor) and the options below. The targets of issue 28 are checked at the end: upload -> submitted
within ``COALESCE_SECONDS`` + 5 s, upload -> first answer within ``COALESCE_SECONDS`` + 60 s (tiny model).

Run: ``.venv/bin/python bench/stages.py [--models tiny-random,smollm2] [--modes before,after]
[--coalesce-seconds 60]``
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
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                    ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(name, value)

from bench.activation import _healthy_at  # noqa: E402 - the same health probe as the activation bench
from devhost.azurite import Azurite, free_port, start, stop_process  # noqa: E402
from scripts.make_sample_data import write  # noqa: E402
from shared.backends import get_backend, use_backend  # noqa: E402
from shared.datasets.collections import model_name_for  # noqa: E402
from shared.ledger import DATASET, ENDPOINT, JOB, MODEL, Ledger, parse_iso  # noqa: E402
from shared.settings import load_settings, use_settings  # noqa: E402
from shared.storage import blob_service, ensure_storage  # noqa: E402

STAGES = ("prepared", "due", "submitted", "running", "completed", "registered", "deployed", "active", "first answer")
COLLECTION = "bench"
KEY = "bench-stages-key"


def _ts(value: Any) -> float | None:
    parsed = parse_iso(value) if isinstance(value, str) else value
    return parsed.timestamp() if parsed is not None else None


def run_once(azurite: Azurite, workdir: Path, model: str, scheduled: bool, coalesce_s: int | None,
             timeout_s: float) -> dict[str, float]:
    """Seconds from the upload to each stage (a stage not reached within ``timeout_s`` is missing)."""
    from devhost.host import run_host

    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    workspace = workdir / f"ws-{suffix}"
    env = {
        "AzureWebJobsStorage": azurite.connection_string, "CHAT_DATA_CONTAINER": f"chat-{suffix}",
        "PREPARED_CONTAINER": f"prep-{suffix}", "LEDGER_TABLE": f"ledger{suffix}", "LOCAL_WORKSPACE_DIR": str(workspace),
        "LOCAL_BASE_MODEL": model, "LOCAL_HOST_PORT": str(port), "FUNCTION_KEY": KEY,
        "COLLECTION_SUBMISSIONS": "true" if scheduled else "false",
    }
    if coalesce_s is not None:
        env["COALESCE_SECONDS"] = str(coalesce_s)
    if model == "tiny-random":
        env["EVAL_FLOORS"] = "{}"  # the tiny random model answers noise and meets no floor (scripts/demo.py does the same)
    settings = load_settings(environ=env)
    use_settings(settings)
    ensure_storage(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    model_name = model_name_for(settings, COLLECTION)
    sample = workdir / f"sample-{suffix}.jsonl"
    write(sample, count=40, seed=5, malformed=0)
    seen: dict[str, float] = {}
    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=0.5) as host, \
                httpx.Client(base_url=host.base_url, timeout=120, headers={"x-functions-key": KEY}) as client:
            with sample.open("rb") as f:
                blob_service(settings).get_blob_client(settings.chat_data_container, f"{COLLECTION}/x.jsonl").upload_blob(f)
            t0 = time.time()
            deadline = time.monotonic() + timeout_s
            job = endpoint = None
            while "first answer" not in seen and time.monotonic() < deadline:
                if "prepared" not in seen:
                    dataset = next((d for d in ledger.list(DATASET) if d.get("accepted_at")), None)
                    if dataset is not None:
                        seen["prepared"] = _ts(dataset.get("accepted_at"))
                        seen["due"] = seen["prepared"] + settings.coalesce_s
                if job is None:
                    job = next((j for j in ledger.list(JOB) if j.get("collection") == COLLECTION), None)
                    if job is not None:
                        seen["submitted"] = _ts(job.get("submitted_at"))
                if job is not None and "completed" not in seen:
                    info = backend.get_job(job.id)
                    if info.started_at:
                        seen["running"] = info.started_at.timestamp()
                    if info.ended_at:
                        seen["completed"] = info.ended_at.timestamp()
                        if info.state != "completed":
                            raise RuntimeError(f"job {job.id} ended {info.state}: {info.error}")
                if "registered" not in seen:
                    version = next((m for m in ledger.list(MODEL) if m.id.startswith(f"{model_name}:")), None)
                    if version is not None:
                        seen["registered"] = _ts(version.get("registered_at"))
                if endpoint is None:
                    endpoint = next((e.id for e in ledger.list(ENDPOINT) if e.get("model_name") == model_name), None)
                if endpoint is not None and "deployed" not in seen and _healthy_at(workspace, endpoint):
                    seen["deployed"] = time.time()
                if endpoint is not None and "active" not in seen:
                    active = _ts(ledger.get(ENDPOINT, endpoint).get("active_since"))
                    if active:
                        seen["active"] = active
                if "active" in seen:
                    reply = client.post("/api/v1/chat/completions", json={
                        "model": model_name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
                    if reply.status_code == 200:
                        seen["first answer"] = time.time()
                time.sleep(0.1)
    finally:
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
        use_settings(None)
        use_backend(None)
    return {stage: at - t0 for stage, at in seen.items() if at is not None}


def table(results: dict[str, dict[str, float]]) -> str:
    labels = list(results)
    lines = ["| stage (s from upload) | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for stage in STAGES:
        cells = [f"{results[label][stage]:.1f}" if stage in results[label] else "-" for label in labels]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-random", help="comma-separated: tiny-random, smollm2")
    parser.add_argument("--modes", default="before,after", help="before (reconcile only), after (scheduled), or both")
    parser.add_argument("--coalesce-seconds", type=int, default=None, help="default: the app's COALESCE_SECONDS")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    args = parser.parse_args()
    coalesce = args.coalesce_seconds if args.coalesce_seconds is not None else load_settings(environ={}).coalesce_s
    reconcile = load_settings(environ={}).reconcile_schedule
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        workdir = Path(tmp)
        az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
        proc = start(az, workdir / "azurite")
        try:
            for model in args.models.split(","):
                for mode in args.modes.split(","):
                    label = f"{model} {mode}"
                    print(f"running {label} (COALESCE_SECONDS={coalesce}, RECONCILE_SCHEDULE {reconcile!r}, "
                          f"COLLECTION_SUBMISSIONS={'true' if mode == 'after' else 'false'}) ...", flush=True)
                    results[label] = run_once(az, workdir, model, mode == "after", args.coalesce_seconds, args.timeout)
                    print(json.dumps({k: round(v, 1) for k, v in results[label].items()}), flush=True)
        finally:
            stop_process(proc.pid)
    print()
    print(table(results))
    print()
    for label, r in results.items():
        submitted, answered = r.get("submitted"), r.get("first answer")
        verdicts = []
        if submitted is not None:
            verdicts.append(f"upload -> submitted {submitted:.1f} s (target <= {coalesce + 5}: "
                            f"{'met' if submitted <= coalesce + 5 else 'missed'})")
        if answered is not None and label.startswith("tiny-random"):
            verdicts.append(f"upload -> first answer {answered:.1f} s (target <= {coalesce + 60} on the tiny model: "
                            f"{'met' if answered <= coalesce + 60 else 'missed'})")
        elif answered is not None:
            verdicts.append(f"upload -> first answer {answered:.1f} s")
        print(f"{label}: " + "; ".join(verdicts or ["no answer within the timeout"]))
    for model in args.models.split(","):
        before, after = results.get(f"{model} before", {}), results.get(f"{model} after", {})
        if "first answer" in before and "first answer" in after:
            print(f"{model}: upload -> first answer after/before = {after['first answer'] / before['first answer']:.2f}")
    print(f"\nreproduce: .venv/bin/python bench/stages.py --models {args.models} --modes {args.modes}"
          + (f" --coalesce-seconds {args.coalesce_seconds}" if args.coalesce_seconds is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
