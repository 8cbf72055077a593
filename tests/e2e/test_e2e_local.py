"""The whole mission end to end, the way `make demo` runs it, with the tiny model.

Real Azurite, the real local Functions host (blob polling, Event Grid webhook, timers, HTTP)
and the real local workspace (a LoRA fine-tune in a subprocess, MLflow registry, an endpoint
server process). Each stage's outcome is asserted, not just that nothing crashed:

upload -> prepared + report (bad lines by number) -> job submitted -> job completed -> its
event handled -> model registered -> endpoint active -> scoring through both routes ->
janitor deletes the idle endpoint (port closed) -> a scoring call brings it back (503 +
Retry-After, then 200).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from scripts.make_sample_data import MALFORMED_LINES, write
from shared.backends import get_backend
from shared.backends.base import JOB_FINAL_STATES
from shared.ledger import DATASET, ENDPOINT, JANITOR, JOB, MODEL, ROUTE, Ledger
from shared.settings import use_settings
from shared.storage import blob_service
from tests.support import free_port, port_open, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.storage]

KEY = "e2e-function-key"


def test_upload_to_scored_reply_to_idle_deletion_and_back(storage_settings, tmp_path: Path) -> None:
    from devhost.host import run_host

    port = free_port()
    settings = storage_settings.replace(
        training_mode="upload",  # one upload, one job, as before collections (corpus mode: tests/integration/test_corpus_e2e.py)
        function_key=KEY,
        eventgrid_webhook_url=f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event",
        finetune_params={"max_steps": 4},
        # reconcile never runs on its own here: activation comes from the queue follow-ups alone
        reconcile_schedule="0 0 0 1 1 *",
        janitor_schedule="0 0 0 1 1 *",  # triggered on demand below
        scoring_retry_after_s=5,
    )
    use_settings(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    sample = tmp_path / "sample.jsonl"
    valid = write(sample, count=60, seed=3, malformed=3)
    headers = {"x-functions-key": KEY}
    t0 = time.monotonic()
    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=0.5) as host, \
                httpx.Client(base_url=host.base_url, timeout=120) as client:
            # 1. upload -> blob trigger -> prepared, reported, submitted
            with sample.open("rb") as f:
                blob_service(settings).get_blob_client(settings.chat_data_container, "team/sample.jsonl").upload_blob(f)
            dataset = wait_until(lambda: next((r for r in ledger.list(DATASET) if r.state in {"submitted", "rejected"}), None),
                           120, "the dataset to be prepared and submitted")
            assert dataset.state == "submitted", dataset
            report = json.loads(blob_service(settings).get_blob_client(settings.prepared_container, dataset.get("report_blob"))
                                .download_blob().readall())
            assert report["counts"]["valid"] == valid
            assert report["counts"]["train"] + report["counts"]["test"] == valid
            bad_lines = sorted(e["line"] for e in report["errors"])
            assert len(bad_lines) == 3
            raw_lines = sample.read_text().splitlines()
            assert [raw_lines[n - 1] for n in bad_lines] == MALFORMED_LINES[:3]  # exact 1-based line numbers

            # 2. the fine-tune runs and ends; its RunCompleted event reaches on_job_event
            job_name = dataset.get("job_name")
            assert ledger.get(JOB, job_name).get("dataset_id") == dataset.id
            wait_until(lambda: backend.get_job(job_name).state in JOB_FINAL_STATES, 240, "the job to end", 1.0)
            job = backend.get_job(job_name)
            assert job.state == "completed", job.error
            assert job.metrics.get("test_loss") is not None and job.metrics.get("base_test_loss") is not None
            from localworkspace.workspace import Workspace, read_json

            progress = read_json(Workspace(settings.local_workspace_dir).job_state_path(job_name))["progress"]
            assert (progress["step"], progress["total_steps"]) == (4, 4) and progress["loss"] > 0  # what status showed
            wait_until(lambda: ledger.get(JOB, job_name).state == "completed", 60, "the job-completed event to be handled")

            # 3. registered, deployed, made active by reconcile
            model = wait_until(lambda: next(iter(ledger.list(MODEL)), None), 30, "the model record")
            assert model.get("job_name") == job_name
            active = wait_until(lambda: ledger.get(ROUTE, settings.model_name), 180, "the endpoint to become active")
            endpoint_name = active.get("endpoint")
            assert ledger.get(ENDPOINT, endpoint_name).state == "succeeded"

            # 4. client apps score through both routes
            cookbook = {"input_data": {"input_string": [{"role": "user", "content": "What is the capital of Sweden?"}],
                                       "parameters": {"temperature": 0.7, "top_p": 0.9, "do_sample": True,
                                                      "max_new_tokens": 8}}, "params": {}}
            assert client.post("/api/score", json=cookbook).status_code == 401  # FUNCTION auth level
            reply = client.post("/api/score", json=cookbook, headers=headers)
            assert reply.status_code == 200, reply.text
            assert isinstance(reply.json()["output"], str)
            chat = client.post("/api/v1/chat/completions", headers=headers, json={
                "model": settings.model_name, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})
            assert chat.status_code == 200, chat.text
            body = chat.json()
            assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
            models = client.get("/api/v1/models", headers=headers).json()
            assert settings.model_name in [m["id"] for m in models["data"]]
            version = model.id.rpartition(":")[2]
            pinned = client.post("/api/v1/chat/completions", headers=headers, json={
                "model": f"{settings.model_name}:{version}", "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8})
            assert pinned.status_code == 200 and pinned.json()["model"] == f"{settings.model_name}:{version}", pinned.text
            assert client.post("/api/score", headers=headers, json={**cookbook, "model": f"{settings.model_name}:{version}"}
                               ).status_code == 200
            assert client.post("/api/score", headers=headers, json={**cookbook, "model": f"{settings.model_name}:99"}
                               ).status_code == 404

            # 4b. the official openai client streams a completion token by token from the local endpoint
            import openai

            oai = openai.OpenAI(base_url=f"{host.base_url}/api/v1", api_key="unused", default_headers=headers, max_retries=0)
            chunks = list(oai.chat.completions.create(model=settings.model_name, max_tokens=8, stream=True,
                                                      messages=[{"role": "user", "content": "Hello"}],
                                                      stream_options={"include_usage": True}))
            texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
            assert texts and chunks[0].choices[0].delta.role == "assistant"
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"stop", "length"}
            assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 8
            # the endpoint itself streamed: one server-sent event per decoded piece, then the end
            target = backend.get_scoring_target(endpoint_name)
            with httpx.stream("POST", target.url, headers={"Authorization": f"Bearer {target.key}",
                                                           "Accept": "text/event-stream"}, timeout=120,
                              json={"input_data": {"input_string": [{"role": "user", "content": "Hello"}],
                                                   "parameters": {"max_new_tokens": 8}}, "params": {}}) as raw:
                assert raw.headers["content-type"].startswith("text/event-stream")
                events = [line for line in raw.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) >= 3  # text piece(s), the final piece, [DONE]

            # 5. idle: with a short threshold the janitor deletes the endpoint and its server stops
            ep_port = int(backend.get_scoring_target(endpoint_name).url.split(":")[2].split("/")[0])
            assert port_open(ep_port)
            use_settings(settings.replace(idle_endpoint_minutes=0.02, idle_grace_minutes=0.0))
            time.sleep(2)
            assert client.post("/admin/functions/delete_idle_endpoints", headers=headers, json={}).status_code == 202
            deleted = wait_until(lambda: (r := ledger.get(ENDPOINT, endpoint_name)).state == "deleted" and r, 60,
                           "the janitor to delete the idle endpoint")
            assert "idle" in deleted.get("delete_reason")
            assert endpoint_name in (ledger.get(JANITOR, "last").get("deleted") or [])
            wait_until(lambda: not port_open(ep_port), 30, "the endpoint server's port to close")
            use_settings(settings)

            # 6. scale from zero: 503 + Retry-After and a redeploy, then the same request succeeds
            cold = client.post("/api/score", json=cookbook, headers=headers)
            cold_at = time.monotonic()
            assert cold.status_code == 503, cold.text
            retry_after = int(cold.headers["Retry-After"])  # estimated from the first deployment's time
            back = wait_until(lambda: (r := client.post("/api/score", json=cookbook, headers=headers)).status_code == 200 and r,
                        180, "the redeployed endpoint to answer", 1.0)
            served_after = time.monotonic() - cold_at
            print(f"scale from zero: Retry-After {retry_after} s, served again after {served_after:.1f} s")
            assert retry_after != 5  # not the configured fallback: there is a deployment to learn from
            assert served_after / 3 - 2 <= retry_after <= served_after * 3 + 5  # an honest estimate
            assert isinstance(back.json()["output"], str)
            assert ledger.get(ENDPOINT, endpoint_name).state == "succeeded"
    finally:
        use_settings(settings)
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
    print(f"end-to-end stages took {time.monotonic() - t0:.0f} s")
