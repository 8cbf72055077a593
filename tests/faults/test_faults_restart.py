"""Restarts at the level a user meets them (marker ``faults``): `make up` / `make down` in a clone.

The stack runs exactly as ``make up`` runs it (``python -m devhost.stack up``: Azurite, the local
host in the background, the local workspace's processes), in a copy of the project in a
temporary folder (its own ``.local/``, free ports), so a developer's own stack is never touched.
The reconcile timer is set to once a year: what heals here is what the commands themselves do.

1. A chat data upload is prepared, trained (tiny model), deployed and served.
2. The host is killed (SIGKILL) in the middle of preparing a second, large upload, leaving its
   dataset ``received``; ``make up`` starts a new host and that preparation is finished by the
   blob trigger's redelivery: one dataset, one job (issue 17 item 5).
3. ``make down`` stops every process (the endpoint's port closes); ``make up`` brings the stack
   back and the endpoint serves again: scoring answers 503 + Retry-After while it is redeployed,
   then 200, with no new upload (issue 20 item 3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devhost.azurite import Azurite
from scripts.make_sample_data import write
from scripts.project_clone import CloneStack, make_clone
from shared.ledger import DATASET, ENDPOINT, JOB, ROUTE, Ledger
from tests.support import free_port, make_settings, port_open, wait_until

pytestmark = [pytest.mark.faults]

CHAT = "/api/v1/chat/completions"


def big_upload(path: Path, rows: int = 16000) -> Path:
    """~35 MB of distinct valid conversations: its outputs take seconds to upload, a window to kill the host in."""
    filler = "ahoy " * 400
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"question {i}: {filler}"},
                                             {"role": "assistant", "content": f"Ahoy matey! answer {i} arr!"}]}) + "\n")
    return path


def chat(stack: CloneStack, model: str) -> httpx.Response:
    return httpx.post(stack.url + CHAT, json={"model": model, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4},
                      headers={"x-functions-key": stack.key}, timeout=60)


def test_host_killed_mid_preparation_and_make_down_make_up_come_back(tmp_path):
    clone = make_clone(tmp_path / "clone")
    az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
    port = free_port()
    values = {
        "AzureWebJobsStorage": az.connection_string,
        "LOCAL_WORKSPACE_DIR": str(clone / ".local" / "workspace"),
        "LOCAL_MODEL_CACHE": make_settings().local_model_cache,  # the tiny model is built once per machine
        "LOCAL_BASE_MODEL": "tiny-random",
        "EVAL_FLOORS": "{}",  # the tiny random model meets no floor (tests/conftest.py storage_settings)
        "TRAINING_MODE": "upload",  # one upload, one job: the killed delivery's own submission is what heals
        "FINETUNE_PARAMS": '{"max_steps": 2}',
        "RECONCILE_SCHEDULE": "0 0 0 1 1 *",  # only the commands heal here
        "JANITOR_SCHEDULE": "0 0 0 1 1 *",
        "ENDPOINT_HEAL_BACKOFF_S": "2",
        "SCORING_RETRY_AFTER_S": "10",
        "EVENTGRID_WEBHOOK_URL": f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event",
    }
    env = {**os.environ, **values, "LOCAL_HOST_PORT": str(port), "FUNCTION_KEY": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    stack = CloneStack(clone, env, port)
    settings = make_settings(**values)
    ledger = Ledger.from_settings(settings)
    model = settings.model_name
    try:
        up = stack.run("up")
        assert "Reconcile: started" in up.stdout, up.stdout
        assert f"Function key: {stack.key}" in up.stdout, up.stdout  # generated: the stack is never open

        # 1. an upload is prepared, trained, deployed; reconcile on demand (docs/troubleshooting.md) settles it
        write(tmp_path / "small.jsonl", count=40, seed=2, malformed=0)
        stack.run("upload", str(tmp_path / "small.jsonl"))

        def serving():
            stack.reconcile()
            return ledger.get(ROUTE, model)

        route = wait_until(serving, 300, "the first upload's model to serve", every_s=3.0)
        assert chat(stack, model).status_code == 200
        ep = route.get("endpoint")

        # 2. the host killed in the middle of preparing a large upload
        stack.run("upload", str(big_upload(tmp_path / "big.jsonl")), "--name", "big.jsonl")

        def big_dataset():
            return next((r for r in ledger.list(DATASET) if r.get("blob_name") == "big.jsonl"), None)

        received = wait_until(lambda: (r := big_dataset()) and r, 120, "the large upload's preparation", every_s=0.02)
        assert received.state == "received", f"preparation finished before the host could be killed: {received.state}"
        os.kill(stack.host_pid(), signal.SIGKILL)  # the host this test started, by pid
        killed = time.monotonic()
        time.sleep(2)
        assert big_dataset().state == "received"  # stuck, as the killed delivery left it
        stack.run("up")
        done = wait_until(lambda: (r := big_dataset()) and r.state in {"submitted", "rejected"} and r, 180,
                          "the killed preparation to be finished")
        print(f"preparation killed mid-way: finished {time.monotonic() - killed:.1f} s after the kill ({done.state})")
        assert done.state == "submitted", done.fields
        assert [r.id for r in ledger.list(DATASET) if r.get("blob_name") == "big.jsonl"] == [done.id]
        assert [j.id for j in ledger.list(JOB) if j.get("dataset_id") == done.id] == [done.get("job_name")]

        # 3. make down / make up: the endpoint comes back without a new upload
        record = json.loads((clone / ".local" / "workspace" / "endpoints" / ep / "record.json").read_text())
        assert port_open(record["port"])
        stack.run("down")
        assert not port_open(record["port"]) and not port_open(port)
        up = stack.run("up")
        assert "Reconcile: started" in up.stdout, up.stdout
        assert f"Function key: {stack.key}" in up.stdout, up.stdout  # generated: the stack is never open
        started = time.monotonic()
        record_path = clone / ".local" / "workspace" / "endpoints" / ep / "record.json"

        def redeployed():  # nobody calls the model yet: `make up` alone brings its server back
            current = json.loads(record_path.read_text())
            return current["port"] != record["port"] and port_open(current["port"])

        wait_until(redeployed, 180, "`make up` to redeploy the endpoint", every_s=1.0)
        print(f"make down, make up: endpoint {ep} listening again {time.monotonic() - started:.1f} s after `up`")
        answers = []
        while time.monotonic() - started < 180:
            reply = chat(stack, model)
            answers.append((reply.status_code, reply.headers.get("retry-after")))
            if reply.status_code == 200:
                break
            time.sleep(1.0)
        statuses = [s for s, _ in answers]
        print(f"make down, make up: {model} served again {time.monotonic() - started:.1f} s after `up`; answers {statuses}")
        assert statuses[-1] == 200, answers[-5:]
        assert 502 not in statuses and all(ra and int(ra) >= 1 for s, ra in answers if s == 503), answers
        healed = ledger.get(ENDPOINT, ep)
        assert healed.state == "succeeded" and healed.get("heal_attempts") >= 1
    finally:
        subprocess.run([sys.executable, "-m", "devhost.stack", "down"], cwd=clone, env=env, capture_output=True, timeout=120)
