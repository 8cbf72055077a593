"""One fine-tuning job of the local workspace, as its own process.

``python -m localworkspace.job_runner <job_dir>`` reads ``spec.json`` (written at submit),
downloads the prepared train/test blobs with the storage connection in the spec, fine-tunes
(see trainer.py), and records every transition in ``state.json``: queued -> running ->
completed | failed | canceled (SIGTERM), with timings, metrics and the MLflow model URI.
When the job has ended it posts the job event (event_publisher.py) to the app's webhook, retrying with
back-off; an undeliverable event is logged, it never fails the job. SIGTERM is recorded as
canceled at once (see watch_for_cancel). Its stdout/stderr is the
job's log file (job.log), opened by whoever started it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from localworkspace.job_queue import acquire_slot
from localworkspace.workspace import Workspace, now_iso, read_json

log = logging.getLogger("localworkspace.job_runner")


def watch_for_cancel(spec: dict[str, Any], ws: Workspace) -> None:
    """Record ``canceled`` as soon as SIGTERM arrives, even in the middle of a torch op.

    A Python signal handler only runs between bytecodes, and a training step on a busy CPU
    can stay inside C++ for a minute: longer than a stopper waits before SIGKILL. So SIGTERM
    is blocked in every thread (torch's threads inherit the mask) and this thread waits for it.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        signal.sigwait({signal.SIGTERM})
        job = spec["job_name"]
        record = ws.update_job_state(job, expect={"queued", "running"}, state="canceled", ended_at=now_iso(),
                                     error="canceled: the runner received SIGTERM")
        if record is not None:
            log.warning("job %s canceled", job)
            announce(spec, record, ws, retry_total_s=5)
        os._exit(143)

    threading.Thread(target=wait, name="cancel-watch", daemon=True).start()


def download_inputs(spec: dict[str, Any], data_dir: Path) -> tuple[Path, Path]:
    """Train and test files of the job, from the prepared container."""
    from azure.storage.blob import BlobServiceClient

    storage = spec["storage"]
    if storage.get("connection"):
        service = BlobServiceClient.from_connection_string(storage["connection"])
    else:
        from azure.identity import DefaultAzureCredential

        service = BlobServiceClient(
            f"https://{storage['account_name']}.blob.core.windows.net",
            credential=DefaultAzureCredential(managed_identity_client_id=storage.get("client_id") or None),
        )
    container = service.get_container_client(storage["container"])
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for role in ("train", "test"):
        blob = spec[f"{role}_blob"]
        target = data_dir / f"{role}.jsonl"
        with open(target, "wb") as fh:
            container.download_blob(blob).readinto(fh)
        log.info("downloaded %s blob %s (%d bytes)", role, blob, target.stat().st_size)
        paths.append(target)
    return paths[0], paths[1]


def _experiment_id(spec: dict[str, Any], ws: Workspace) -> str:
    import mlflow

    from localworkspace.trainer import ensure_experiment

    mlflow.set_tracking_uri(ws.tracking_uri)
    # The first use of a fresh SQLite store migrates its schema: one process at a time.
    with ws.lock("mlflow"):
        return ensure_experiment(spec["experiment_name"], ws.artifact_root)


def run(job_dir: Path, spec: dict[str, Any]) -> int:
    ws = Workspace(spec["workspace_dir"])
    job = spec["job_name"]
    started = time.monotonic()
    timings: dict[str, float] = {}
    # Queued until one of the workspace's job slots is free, in submission order (job_queue.py).
    slot = acquire_slot(ws, job, int(spec.get("max_parallel_jobs") or 1))
    timings["queued_s"] = time.monotonic() - started
    if ws.update_job_state(job, expect={"queued"}, state="running", started_at=now_iso(), pid=os.getpid(),
                           slot=slot.index) is None:
        return 1  # canceled while it waited: the cancel watcher recorded and announces it
    log.info("job %s running (pid %d)", job, os.getpid())
    experiment_id = "local"
    final: dict[str, Any]
    try:
        t = time.monotonic()
        experiment_id = _experiment_id(spec, ws)
        ws.update_job_state(job, experiment_id=experiment_id)
        timings["mlflow_s"] = time.monotonic() - t

        t = time.monotonic()
        train_path, test_path = download_inputs(spec, job_dir / "data")
        timings["download_s"] = time.monotonic() - t

        from localworkspace.base_model import ensure_base_model
        from localworkspace.trainer import run_finetune_job

        t = time.monotonic()
        base_dir = ensure_base_model(spec["base_model"], spec["model_cache"])
        timings["base_model_s"] = time.monotonic() - t

        total = int(spec["params"].get("max_steps") or 0) or None  # epochs mode: total unknown up front
        training_started = now_iso()

        def progress(step: int, loss: float) -> None:
            # What `status` shows for a running job (step / loss / ETA); best effort, never fatal.
            try:
                ws.update_job_state(job, expect={"running"}, progress={
                    "step": step, "total_steps": total, "loss": round(float(loss), 4),
                    "training_started_at": training_started, "at": now_iso()})
            except OSError:
                log.debug("could not record progress", exc_info=True)

        t = time.monotonic()
        result = run_finetune_job(
            job_name=job, tracking_uri=ws.tracking_uri, artifact_root=ws.artifact_root,
            experiment_name=spec["experiment_name"], base_dir=base_dir,
            base_model_name=spec["base_model_name"], train_path=train_path, test_path=test_path,
            params=spec["params"], tags=spec.get("tags"), on_progress=progress,
        )
        timings["finetune_s"] = time.monotonic() - t
        final = {
            "state": "completed", "run_id": result["run_id"], "model_uri": result["model_uri"],
            "metrics": result["metrics"], "steps": result["steps"], "seconds_per_step": result["seconds_per_step"],
        }
        log.info("job %s completed: %s", job, {k: round(v, 4) for k, v in result["metrics"].items()})
    except Exception as exc:  # the job fails; the runner still records it and announces it
        final = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        log.error("job %s failed: %s\n%s", job, final["error"], traceback.format_exc())
    timings["total_s"] = time.monotonic() - started
    record = ws.update_job_state(job, expect={"running"}, ended_at=now_iso(), timings=timings,
                                 experiment_id=experiment_id, **final)
    if record is None:  # canceled meanwhile: the cancel watcher recorded and announced it
        return 1
    slot.release()  # the next queued job may start training while this one announces its event
    announce(spec, record, ws)
    return 0 if final["state"] == "completed" else 1


def announce(spec: dict[str, Any], record: dict[str, Any], ws: Workspace, retry_total_s: float | None = None) -> None:
    """Post the job's Event Grid event and record the delivery outcome (never raises)."""
    from localworkspace.event_publisher import build_job_event, post_event

    url = spec.get("webhook_url")
    if not url:
        log.info("no webhook configured: job event not sent")
        return
    job = spec["job_name"]
    properties = {
        "azureml.runsource": "azureml.PipelineRun",
        "dataset_id": spec.get("dataset_id", ""),
        "model_name": spec.get("model_name", ""),
        "base_model": spec.get("base_model_name", ""),
        "mlflow_run_id": record.get("run_id", ""),
        "model_uri": record.get("model_uri", ""),
    }
    for name, value in (record.get("metrics") or {}).items():
        properties[name] = f"{value:.6g}"
    if record.get("error"):
        properties["error"] = record["error"]
    event = build_job_event(
        topic=spec["workspace_id"], state=record.get("state", "failed"),
        experiment_id=str(record.get("experiment_id") or "local"), experiment_name=spec["experiment_name"],
        job_name=job, tags=spec.get("tags") or {}, properties=properties, event_time=now_iso(),
    )
    budget = retry_total_s if retry_total_s is not None else float(spec.get("event_retry_total_s", 120))
    outcome = post_event(url, event, retry_total_s=budget)
    if outcome["delivered"]:
        log.info("job event %s delivered after %d attempt(s)", event["eventType"], outcome["attempts"])
    else:
        log.error("job event %s NOT delivered after %d attempt(s): %s", event["eventType"], outcome["attempts"], outcome["error"])
    ws.update_job_state(job, event={"type": event["eventType"], "id": event["id"], **outcome})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m localworkspace.job_runner <job_dir>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "azure", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    job_dir = Path(args[0]).resolve()
    spec = read_json(job_dir / "spec.json")
    if spec is None:
        print(f"no spec.json in {job_dir}", file=sys.stderr)
        return 2
    watch_for_cancel(spec, Workspace(spec["workspace_dir"]))
    return run(job_dir, spec)


if __name__ == "__main__":
    sys.exit(main())
