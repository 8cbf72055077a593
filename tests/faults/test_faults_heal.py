"""Fault injection against the real local stack (marker ``faults``; `make test-faults`, run by CI).

One tiny real fine-tune; its model is registered under three names and served by real endpoint
server processes; the app runs in the real local host (reconcile timer every 2 s) on an Azurite of
this module, which the storage case really stops and starts. Each case injects the fault by hand,
as a user would, and waits for the stack to heal on its own, printing the time it took:

- both endpoint servers killed with SIGKILL: scoring answers 503 + Retry-After (no 502 loop) and
  the health loop redeploys them (issue 17 item 1);
- storage stopped: a known route keeps serving, an unknown model gets 503 + Retry-After within a
  second, the activity seen meanwhile is written once storage is back (item 2);
- a job process killed mid-training: recorded failed with the reason (item 5);
- an endpoint server killed while it starts: recorded failed, then redeployed by the loop (item 5).
"""

from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import httpx
import pytest

from localworkspace.workspace import process_alive, read_json, read_pid_file
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
from shared.context import context
from shared.endpoints import lifecycle
from shared.ledger import ENDPOINT, JOB, MODEL, ROUTE, Ledger, parse_iso
from tests.support import tiny_trained_stack, upload_prepared_dataset, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

MODELS = ("faults-a", "faults-b")
HEAL_TIMEOUT_S = 180
CHAT = "/api/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from devhost.host import run_host

    with tiny_trained_stack(
            tmp_path_factory.mktemp("faults-heal"), "faults", MODELS[0], seed=7,
            EVAL_FLOORS="{}",  # the tiny random model meets no floor (tests/conftest.py storage_settings)
            RECONCILE_SCHEDULE="*/2 * * * * *", ENDPOINT_HEAL_BACKOFF_S="2", SCORING_RETRY_AFTER_S="10") as base:
        settings, backend, ledger, job, storage, stack_ = (base.settings, base.backend, base.ledger, base.job,
                                                           base.storage, base.exits)

        def deploy(name):
            model = backend.register_model(job, name)
            ledger.create(MODEL, model.ref, "registered", job_name=job, base_model=model.base_model)
            return lifecycle.deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=backend), reason="faults").id

        endpoints = {name: deploy(name) for name in MODELS}
        host = stack_.enter_context(run_host("function_app:app", settings=settings, port=0, poll_interval_s=1.0))
        client = stack_.enter_context(httpx.Client(base_url=host.base_url, timeout=60))
        wait_until(lambda: all(ledger.get(ROUTE, n) for n in MODELS), 300, "both endpoints to serve")
        yield SimpleNamespace(settings=settings, ledger=ledger, backend=backend, storage=storage, job=job,
                              endpoints=endpoints, client=client, deploy=deploy)


def chat(client, model):
    return client.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4})


def server_pid(stack, ep):
    return read_pid_file(stack.backend.ws.endpoint_dir(ep) / "server.pid")


def test_killed_endpoint_servers_are_healed_and_scoring_answers_503_meanwhile(stack):
    for model in MODELS:
        assert chat(stack.client, model).status_code == 200
    for ep in stack.endpoints.values():
        os.kill(server_pid(stack, ep)["pid"], signal.SIGKILL)  # our own endpoint servers, by pid
    killed = time.monotonic()

    seen = {m: [] for m in MODELS}
    healed_after = {}
    while len(healed_after) < len(MODELS) and time.monotonic() - killed < HEAL_TIMEOUT_S:
        for model in MODELS:
            if model in healed_after:
                continue
            reply = chat(stack.client, model)
            seen[model].append((reply.status_code, reply.headers.get("retry-after")))
            if reply.status_code == 200:
                healed_after[model] = time.monotonic() - killed
        time.sleep(0.5)
    for model in MODELS:
        statuses = [s for s, _ in seen[model]]
        print(f"{model}: healed {healed_after.get(model, float('nan')):.1f} s after SIGKILL; answers {statuses}")
        assert model in healed_after, f"{model} never answered 200 again: {seen[model][-5:]}"
        assert statuses.count(502) <= 1 and 502 not in statuses[1:], f"a 502 loop: {statuses}"
        assert set(statuses) <= {200, 502, 503}, statuses
        assert all(ra and int(ra) >= 1 for s, ra in seen[model] if s == 503), seen[model]
        record = stack.ledger.get(ENDPOINT, stack.endpoints[model])
        assert record.state == "succeeded" and record.get("heal_attempts") >= 1
        assert process_alive(server_pid(stack, stack.endpoints[model]))
    wait_until(lambda: all(stack.ledger.get(ENDPOINT, ep).get("healed_at") for ep in stack.endpoints.values()), 30,
               "the health loop to record the heal")
    for model, ep in stack.endpoints.items():
        print(f"{model}: ledger heal_seconds={stack.ledger.get(ENDPOINT, ep).get('heal_seconds')}")


def test_scoring_survives_a_storage_outage_and_records_activity_when_it_is_back(stack):
    model, ep = MODELS[0], stack.endpoints[MODELS[0]]
    assert chat(stack.client, model).status_code == 200
    before = wait_until(lambda: parse_iso(stack.ledger.get(ENDPOINT, ep).get("last_activity")), 30, "activity")

    stack.storage.stop()
    down = time.monotonic()
    try:
        time.sleep(11)  # longer than the route TTL (10 s): the ledger would be read again
        started = time.monotonic()
        known = chat(stack.client, model)
        known_s = time.monotonic() - started
        assert known.status_code == 200, known.text
        started = time.monotonic()
        unknown = chat(stack.client, "never-deployed")
        unknown_s = time.monotonic() - started
        assert unknown.status_code == 503 and int(unknown.headers["retry-after"]) >= 1, unknown.text
        assert unknown.json()["error"]["code"] == "storage_unavailable"
        assert unknown_s < 1.0, f"503 took {unknown_s:.2f} s"
        models = stack.client.get("/api/v1/models")
        assert models.status_code == 503, models.text  # never 500
        print(f"storage down {time.monotonic() - down:.0f} s: known model answered 200 in {known_s * 1000:.0f} ms, "
              f"unknown model 503 in {unknown_s * 1000:.0f} ms")
    finally:
        stack.storage.restart()
    back = time.monotonic()
    recorded = wait_until(lambda: (t := parse_iso(Ledger.from_settings(stack.settings).get(ENDPOINT, ep).get("last_activity")))
                          and t > before and t, 60, "the activity seen during the outage to be written")
    print(f"activity during the outage recorded {time.monotonic() - back:.1f} s after storage came back ({recorded})")
    assert chat(stack.client, model).status_code == 200


def test_a_job_process_killed_mid_training_is_recorded_failed(stack):
    s, backend, ledger = stack.settings, stack.backend, stack.ledger
    train, test = upload_prepared_dataset(s, "faults-kill", seed=9)
    job = backend.submit_finetune(FineTuneRequest("faults-kill", train, test, "faults-kill",
                                                  tags={MANAGED_BY_TAG: MANAGED_BY_VALUE}, params={"max_steps": 100000}))
    ledger.create(JOB, job, "submitted", dataset_id="faults-kill", model_name="faults-kill", base_model=s.base_model_name,
                  backend="local")
    log_path = backend.ws.job_dir(job) / "job.log"
    wait_until(lambda: log_path.exists() and " step " in log_path.read_text(), 120, "the job to be training")
    runner = read_pid_file(backend.ws.job_dir(job) / "runner.pid")
    os.kill(runner["pid"], signal.SIGKILL)  # our own job process, by pid
    killed = time.monotonic()
    record = wait_until(lambda: (r := ledger.get(JOB, job)).state != "submitted" and r, 60, "the job to be recorded")
    print(f"killed job recorded {record.state} {time.monotonic() - killed:.1f} s later: {record.get('error')}")
    assert record.state == "failed" and "process died" in record.get("error")


def test_an_endpoint_server_killed_while_it_starts_is_redeployed(stack):
    ep = stack.deploy("faults-c")
    pid_file = stack.backend.ws.endpoint_dir(ep) / "server.pid"
    first = wait_until(lambda: pid_file.exists() and read_pid_file(pid_file), 30, "the endpoint server to start")
    assert read_json(stack.backend.ws.endpoint_dir(ep) / "record.json")["state"] == "provisioning"
    os.kill(first["pid"], signal.SIGKILL)  # while it is loading the model
    killed = time.monotonic()
    wait_until(lambda: stack.ledger.get(ROUTE, "faults-c"), HEAL_TIMEOUT_S, "the endpoint to be redeployed and serve")
    record = stack.ledger.get(ENDPOINT, ep)
    print(f"endpoint killed while starting served {time.monotonic() - killed:.1f} s later "
          f"after {record.get('heal_attempts')} heal attempt(s)")
    assert record.state == "succeeded" and record.get("heal_attempts") == 1
    assert read_pid_file(pid_file)["pid"] != first["pid"]
    assert chat(stack.client, "faults-c").status_code == 200
    assert json.dumps(record.fields)  # the record is readable as the status command shows it
