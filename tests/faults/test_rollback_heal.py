"""Issue 30 on the real local stack: a version made active again by ``rollback`` is healed like any active one.

One tiny real fine-tune, registered twice under one name (versions 1 and 2, the same weights),
each version served by its own real endpoint (``ROLLOUT_CANDIDATES`` off, the default); the app
runs in the real local host (reconcile every 2 s) on an Azurite of this module. As an operator
would: version 2 takes over, ``python -m shared.cli rollback NAME:1`` makes version 1 active
again, then version 1's model server dies (SIGKILL). Scoring answers 503 + Retry-After until the
health loop has redeployed version 1's endpoint, then 200 again, all within the heal time.
"""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import httpx
import pytest

from localworkspace.workspace import process_alive, read_json, read_pid_file
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, ModelRef
from shared.deployment.job_outcome import start_deployment
from shared.ledger import ENDPOINT, MODEL, ROUTE
from tests.support import tiny_trained_stack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

NAME = "faults-rb"
HEAL_TIMEOUT_S = 180
CHAT = "/api/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from devhost.host import run_host

    with tiny_trained_stack(tmp_path_factory.mktemp("faults-rollback"), "faults-rb", NAME, seed=11,
                            RECONCILE_SCHEDULE="*/2 * * * * *", ENDPOINT_HEAL_BACKOFF_S="2", SCORING_RETRY_AFTER_S="10",
                            ROLLOUT_CANDIDATES="false") as base:
        settings, backend, ledger, job, stack_ = base.settings, base.backend, base.ledger, base.job, base.exits
        host = stack_.enter_context(run_host("function_app:app", settings=settings, port=0, poll_interval_s=1.0))
        client = stack_.enter_context(httpx.Client(base_url=host.base_url, timeout=60))
        yield SimpleNamespace(settings=settings, ledger=ledger, backend=backend, job=job, client=client)


def register_version(stack, tag: str) -> ModelRef:
    """A new version of NAME: the job's trained weights registered again (the backend registers
    once per job, so each version under its own job tag), recorded as the job-events step does."""
    state = read_json(stack.backend.ws.job_state_path(stack.job))
    registered = stack.backend._mlflow().register_model(
        state["model_uri"], NAME, tags={"job": f"{stack.job}-{tag}", MANAGED_BY_TAG: MANAGED_BY_VALUE})
    model = ModelRef(NAME, str(registered.version), stack.job, stack.backend.base_model_name)
    stack.ledger.create(MODEL, model.ref, "registered", job_name=stack.job, base_model=model.base_model)
    return model


def deploy_version(stack, tag: str) -> tuple[str, str]:
    """(version, endpoint): deployed the way a registered model is (shared.deployment.job_outcome.start_deployment)."""
    model = register_version(stack, tag)
    started, ep = start_deployment(model, _ctx(stack), reason="faults")
    assert started
    return model.version, ep


def _ctx(stack):
    from shared.context import context

    return context(stack.settings, stack.ledger, stack.backend)


def chat(client):
    return client.post(CHAT, json={"model": NAME, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4})


def serving_pid(stack, ep: str) -> dict:
    """The model server of the endpoint's serving deployment (the endpoint's router stays up)."""
    record = read_json(stack.backend.ws.endpoint_dir(ep) / "record.json")
    return read_pid_file(stack.backend.ws.endpoint_dir(ep) / "deployments" / record["deployment"] / "server.pid")


def test_a_version_made_active_again_by_rollback_is_healed(stack, capsys):
    from shared.cli.commands import main as cli

    v1, ep1 = deploy_version(stack, "v1")
    wait_until(lambda: (r := stack.ledger.get(ROUTE, NAME)) and r.get("endpoint") == ep1, HEAL_TIMEOUT_S,
               "version 1 to serve")
    v2, ep2 = deploy_version(stack, "v2")
    assert ep2 != ep1  # its own endpoint: rollout candidates are off
    wait_until(lambda: stack.ledger.get(ROUTE, NAME).get("endpoint") == ep2, HEAL_TIMEOUT_S, "version 2 to take over")
    assert stack.ledger.get(ENDPOINT, ep1).get("replaced_by") == ep2

    assert cli(["rollback", f"{NAME}:{v1}"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"version {v1} is active again" in out, out  # at once: its endpoint still serves
    route = stack.ledger.get(ROUTE, NAME)
    assert (route.get("endpoint"), route.get("model_version"), route.get("rolled_back_from")) == (ep1, v1, v2)
    # Longer than the host scorer's route TTL (10 s): version 1 answers, as the operator saw.
    served, until = [], time.monotonic() + 11
    while time.monotonic() < until:
        served.append(chat(stack.client).status_code)
    assert set(served) == {200}, served

    killed_pid = serving_pid(stack, ep1)
    os.kill(killed_pid["pid"], signal.SIGKILL)  # our own model server, by pid
    killed = time.monotonic()
    seen, healed_after = [], None
    while time.monotonic() - killed < HEAL_TIMEOUT_S:
        reply = chat(stack.client)
        if reply.status_code == 200:
            healed_after = time.monotonic() - killed
            break
        seen.append((reply.status_code, reply.headers.get("retry-after"), reply.text[:160]))
        time.sleep(0.5)
    print(f"rolled-back version {v1} healed {healed_after} s after SIGKILL; {len(seen)} answers meanwhile: "
          f"{sorted({s for s, _, _ in seen})}")
    assert healed_after is not None, f"version {v1} never answered 200 again: {seen[-3:]}"
    assert all(status == 503 and ra and int(ra) >= 1 for status, ra, _ in seen), seen
    record = wait_until(lambda: (r := stack.ledger.get(ENDPOINT, ep1)).get("healed_at") and r, 30, "the heal recorded")
    assert record.state == "succeeded" and record.get("heal_attempts") >= 1 and not record.get("replaced_by"), record.fields
    assert process_alive(serving_pid(stack, ep1)) and serving_pid(stack, ep1)["pid"] != killed_pid["pid"]
    route = stack.ledger.get(ROUTE, NAME)
    assert (route.get("endpoint"), route.get("model_version")) == (ep1, v1)  # still the version rolled back to
    print(f"ledger heal_seconds={record.get('heal_seconds')}")
