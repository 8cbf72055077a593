"""Scoring routes against a stub endpoint speaking Azure ML's contract, with the ledger in Azurite.

The decorated functions are called with real ASGI requests (FastAPI types); the backend is a small
stub whose scoring target is a real HTTP server (tests/stub_endpoint.py), so routing, retries,
credential refresh, timeouts and error mapping run over real sockets.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
import httpx
import orjson
import psutil
import pytest

from functions import scoring as scoring_functions
from shared.backends import use_backend
from shared.backends.base import ModelRef
from shared.endpoints.naming import endpoint_name
from shared.ledger import ENDPOINT, MODEL, ROUTE, Ledger, parse_iso
from shared.scoring.activity import record_last_activity
from shared.scoring.scorer import Scorer, reset_scorers, use_scorer
from shared.scoring.upstream import BUSY_RETRIES, stream_timeout
from shared.settings import Settings, use_settings
from tests.stub_endpoint import (
    RunningServer,
    Scripted,
    StubEndpoint,
    StubTargetBackend,
    bound_socket,
    running,
    seed_model,
    start_in_thread,
)
from tests.support import FakeClock, HttpReply, call_http, wait_until

pytestmark = pytest.mark.storage

SCORE = scoring_functions.score.build().get_user_function()
CHAT = scoring_functions.chat_completions.build().get_user_function()
MODELS = scoring_functions.list_models.build().get_user_function()

MODEL_NAME = "chat-ft"
PROMPT = "what is the secret word zebra-42?"


@dataclasses.dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclasses.dataclass
class World:
    """Settings, ledger, stub endpoint and an installed Scorer with recording redeploy/sleep."""

    settings: Settings
    ledger: Ledger
    stub: StubEndpoint
    server: RunningServer
    backend: StubTargetBackend
    scorer: Scorer
    clock: FakeClock
    redeploys: list[ModelRef]
    sleeps: list[float]

    def reconfigure(self, **changes: Any) -> None:
        """New settings (and so a new worker Scorer) with ``changes``."""
        reset_scorers()
        self.settings = self.settings.replace(**changes)
        use_settings(self.settings)
        use_backend(self.backend, self.settings)
        self.scorer = Scorer(self.settings, redeploy=self.redeploys.append, clock=self.clock, sleep=self.sleeps.append)
        use_scorer(self.scorer)

    def post(self, fn: Any, payload: dict[str, Any]) -> Reply:
        return self._reply(call_http(fn, "POST", "http://localhost/api/x", orjson.dumps(payload),
                                     {"content-type": "application/json"}))

    def get(self, fn: Any) -> Reply:
        return self._reply(call_http(fn, "GET", "http://localhost/api/v1/models"))

    @staticmethod
    def _reply(response: HttpReply) -> Reply:
        assert response.media_type == "application/json"
        return Reply(response.status, orjson.loads(response.body), {k.title(): v for k, v in response.headers.items()})

    def assert_clean_error(self, reply: Reply) -> None:
        """Errors are JSON with a message, and leak no endpoint URI, key or stack trace."""
        text = orjson.dumps(reply.body).decode()
        assert reply.body["error"]["message"]
        for secret in (self.server.url, f"127.0.0.1:{self.server.port}", self.stub.key, "Traceback", "/score"):
            assert secret not in text


@pytest.fixture
def world(storage_settings: Settings) -> Iterator[World]:
    stub = StubEndpoint()
    with running(stub.app()) as server:
        backend = StubTargetBackend(server.url, stub)
        w = World(
            storage_settings,
            Ledger.from_settings(storage_settings),
            stub,
            server,
            backend,
            scorer=None,
            clock=FakeClock(),
            redeploys=[],
            sleeps=[],
        )  # type: ignore[arg-type]
        w.reconfigure(finetuned_model_name=MODEL_NAME, scoring_retry_after_s=45, activity_flush_s=30)
        try:
            yield w
        finally:
            reset_scorers()


def cookbook(content: str = PROMPT, **parameters: Any) -> dict[str, Any]:
    return {
        "input_data": {
            "input_string": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
            "parameters": parameters,
        },
        "params": {},
    }


# ---- both routes, happy path


def test_score_forwards_the_cookbook_request_and_returns_azure_ml_shape(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    reply = world.post(SCORE, cookbook(temperature=0.6, top_p=0.9, do_sample=True, max_new_tokens=200))
    assert reply.status == 200
    assert reply.body == {"output": f"echo: {PROMPT}"}
    sent = world.stub.requests[-1]
    assert sent["json"] == {
        "input_data": {
            "input_string": cookbook()["input_data"]["input_string"],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200},
        },
        "params": {},
    }
    assert sent["headers"]["authorization"] == "Bearer key-1"
    assert sent["headers"]["azureml-model-deployment"] == f"{ep}-dep"


def test_score_accepts_plain_messages(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    reply = world.post(SCORE, {"messages": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 5}})
    assert (reply.status, reply.body) == (200, {"output": "echo: hi"})
    assert world.stub.requests[-1]["json"]["input_data"]["parameters"] == {"max_new_tokens": 5}


def test_chat_completions_answers_in_openai_shape(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    reply = world.post(
        CHAT, {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi there"}], "temperature": 0, "max_tokens": 20}
    )
    assert reply.status == 200
    body = reply.body
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == MODEL_NAME
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert world.stub.requests[-1]["json"]["input_data"]["parameters"] == {"do_sample": False, "max_new_tokens": 20}


def test_usage_is_left_out_when_the_endpoint_does_not_report_it(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.report_usage = False
    reply = world.post(CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200 and "usage" not in reply.body


def test_model_field_selects_the_model_and_default_is_the_apps(world: World) -> None:
    ep_default = seed_model(world.ledger, MODEL_NAME, "3")
    ep_other = seed_model(world.ledger, "other-ft", "1")
    assert world.post(CHAT, {"model": "other-ft", "messages": [{"role": "user", "content": "a"}]}).body["model"] == "other-ft"
    assert world.stub.requests[-1]["headers"]["azureml-model-deployment"] == f"{ep_other}-dep"
    assert world.post(CHAT, {"messages": [{"role": "user", "content": "b"}]}).body["model"] == MODEL_NAME
    assert world.post(SCORE, {**cookbook("c"), "model": MODEL_NAME}).status == 200
    assert world.stub.requests[-1]["headers"]["azureml-model-deployment"] == f"{ep_default}-dep"


def test_unknown_model_is_404(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    reply = world.post(CHAT, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 404
    assert (reply.body["error"]["param"], reply.body["error"]["code"]) == ("model", "model_not_found")
    assert world.stub.requests == []


def test_a_new_active_endpoint_is_picked_up_after_the_route_ttl(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    assert world.post(SCORE, cookbook()).status == 200
    ep2 = seed_model(world.ledger, MODEL_NAME, "2")  # job events made version 2 active
    assert world.post(SCORE, cookbook()).status == 200
    assert world.stub.requests[-1]["headers"]["azureml-model-deployment"] != f"{ep2}-dep"  # cached route
    world.clock.advance(11)
    assert world.post(SCORE, cookbook()).status == 200
    assert world.stub.requests[-1]["headers"]["azureml-model-deployment"] == f"{ep2}-dep"


def test_list_models_in_openai_list_shape(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    seed_model(world.ledger, MODEL_NAME, "2")
    seed_model(world.ledger, "old-ft", "1", endpoint_state="deleted")
    world.ledger.create(MODEL, "new-ft:1", "registered", job_name="j", base_model="b")
    reply = world.get(MODELS)
    assert reply.status == 200 and reply.body["object"] == "list"
    by_id = {m["id"]: m for m in reply.body["data"]}
    assert set(by_id) == {MODEL_NAME, "old-ft", "new-ft"}
    assert by_id[MODEL_NAME] | {"created": 0} == {
        "id": MODEL_NAME,
        "object": "model",
        "created": 0,
        "owned_by": "finetune-autopilot",
        "version": "2",
        "versions": ["1", "2"],
        "status": "ready",
        "default": True,
    }
    assert by_id[MODEL_NAME]["created"] > 1_600_000_000
    assert (by_id["old-ft"]["status"], by_id["new-ft"]["status"], by_id["new-ft"]["version"]) == (
        "scaled_to_zero",
        "scaled_to_zero",
        "1",
    )


# ---- upstream failures


def test_401_refreshes_the_key_and_retries_once(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    assert world.post(SCORE, cookbook()).status == 200
    world.stub.rotate_key("key-2")
    reply = world.post(SCORE, cookbook())
    assert reply.status == 200
    assert [h["authorization"] for h in (r["headers"] for r in world.stub.requests)] == [
        "Bearer key-1",
        "Bearer key-1",
        "Bearer key-2",
    ]
    assert world.backend.target_calls == [(ep, False), (ep, True)]
    assert world.post(SCORE, cookbook()).status == 200  # the refreshed key is cached
    assert len(world.backend.target_calls) == 2


def test_401_after_refresh_is_502(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(401).then(401)  # scripted statuses come after the key check: the key is fine
    reply = world.post(SCORE, cookbook())
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_auth"
    assert len(world.stub.requests) == 2
    world.assert_clean_error(reply)


@pytest.mark.parametrize("status", [429, 503])
def test_busy_endpoint_is_retried_with_backoff(world: World, status: int) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(status).then(status, retry_after="1")
    reply = world.post(SCORE, cookbook())
    assert (reply.status, reply.body) == (200, {"output": f"echo: {PROMPT}"})
    assert len(world.stub.requests) == 3
    assert len(world.sleeps) == 2 and 0.1 <= world.sleeps[0] <= 0.2 and world.sleeps[1] == 1.0


def test_endpoint_busy_beyond_the_retries_is_503(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    for _ in range(BUSY_RETRIES + 1):
        world.stub.then(429, retry_after="2")
    reply = world.post(CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 503 and reply.body["error"]["code"] == "upstream_busy"
    assert reply.headers["Retry-After"] == "2"
    assert len(world.stub.requests) == BUSY_RETRIES + 1
    world.assert_clean_error(reply)


def test_a_long_retry_after_is_passed_on_not_waited(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(503, retry_after="120")
    reply = world.post(SCORE, cookbook())
    assert (reply.status, reply.headers["Retry-After"]) == (503, "120")
    assert world.sleeps == [] and len(world.stub.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 400])
def test_endpoint_errors_are_502_without_retry(world: World, status: int) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(status, body=b'{"error": "CUDA out of memory at /score key-1"}')
    reply = world.post(SCORE, cookbook())
    assert reply.status == 502 and reply.body["error"]["type"] == "upstream_error"
    assert len(world.stub.requests) == 1
    world.assert_clean_error(reply)
    assert "CUDA" not in orjson.dumps(reply.body).decode()


def test_endpoint_gateway_timeout_is_504(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(504)
    reply = world.post(SCORE, cookbook())
    assert reply.status == 504 and reply.body["error"]["code"] == "upstream_timeout"


def test_slow_endpoint_is_504(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.backend.timeout_s = 0.2  # the deployment's request timeout
    world.stub.delay_s = 1.0
    reply = world.post(CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 504 and reply.body["error"]["type"] == "timeout"
    world.assert_clean_error(reply)


def test_unexpected_reply_shape_is_502(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.raw_reply = b'{"predictions": [1, 2]}'
    reply = world.post(SCORE, cookbook())
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_bad_response"
    world.stub.raw_reply = b"<html>oops</html>"
    assert world.post(SCORE, cookbook()).status == 502


def test_unreachable_endpoint_is_502(world: World) -> None:
    """Unreachable, but the backend reports it healthy (a network blip): a plain 502, nothing redeployed."""
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    with bound_socket() as closed:  # bound, never listening: connections are refused
        world.backend.urls[ep] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        reply = world.post(SCORE, cookbook())
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_unreachable"
    world.assert_clean_error(reply)
    assert "127.0.0.1" not in orjson.dumps(reply.body).decode()
    assert world.backend.deploys == [] and world.ledger.get(ENDPOINT, ep).state == "succeeded"


def test_unreachable_endpoint_reported_dead_answers_503_and_is_healed(world: World) -> None:
    """The endpoint died (kill -9): no 502 loop; it is recorded unhealthy, redeployed once, 503 + Retry-After."""
    from shared.backends.base import HEALTH_UNHEALTHY, EndpointHealth

    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.backend.health[ep] = EndpointHealth(HEALTH_UNHEALTHY, "server process died")
    with bound_socket() as closed:
        world.backend.urls[ep] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        replies = [world.post(SCORE, cookbook()) for _ in range(3)]
    assert [r.status for r in replies] == [503, 503, 503]
    assert replies[0].body["error"]["code"] == "endpoint_healing"
    assert all(int(r.headers["Retry-After"]) >= 1 for r in replies)
    world.assert_clean_error(replies[0])
    record = world.ledger.get(ENDPOINT, ep)
    assert record.state == "provisioning" and record.get("heal_attempts") == 1
    assert record.get("unhealthy_since") and "server process died" in record.get("unhealthy_reason")
    assert [d[1] for d in world.backend.deploys] == [ep]  # redeployed once, not per call
    assert world.redeploys == []  # not the scale-from-zero path

    # the redeploy served (reconcile settles it): the same request answers 200 again
    del world.backend.urls[ep], world.backend.health[ep]
    world.ledger.merge(ENDPOINT, ep, "succeeded")
    assert world.post(SCORE, cookbook()).status == 200


def test_a_gateway_502_from_a_dead_deployment_answers_503_and_is_healed(world: World) -> None:
    """The endpoint's gateway answers 502 because the model server behind it died (the local router,
    Azure's front end): like a refused connection, the backend is asked, and a dead endpoint gets
    503 + Retry-After and one redeploy instead of a 502 passed on (issue 30)."""
    from shared.backends.base import HEALTH_UNHEALTHY, EndpointHealth

    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.backend.health[ep] = EndpointHealth(HEALTH_UNHEALTHY, "deployment default: server process died")
    world.stub.then(502, body=b'{"error": "deployment default is unreachable"}')
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503 and reply.body["error"]["code"] == "endpoint_healing", reply.body
    assert int(reply.headers["Retry-After"]) >= 1
    world.assert_clean_error(reply)
    record = world.ledger.get(ENDPOINT, ep)
    assert record.state == "provisioning" and record.get("heal_attempts") == 1
    assert [d[1] for d in world.backend.deploys] == [ep]


def test_unexpected_failure_is_a_clean_500(world: World, caplog: pytest.LogCaptureFixture) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")

    def broken(endpoint_name: str, refresh: bool = False) -> Any:
        raise RuntimeError(f"boom with key-1 at {world.server.url}")

    world.backend.get_scoring_target = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        reply = world.post(SCORE, cookbook())
    assert reply.status == 500 and reply.body["error"]["type"] == "internal_error"
    world.assert_clean_error(reply)
    assert "boom" in caplog.text  # the detail is in the logs, not the response


# ---- no live endpoint: 503 + Retry-After, scale from zero


def test_deleted_endpoint_answers_503_and_redeploys_the_model(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "4", endpoint_state="deleted")
    reply = world.post(CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 503 and reply.headers["Retry-After"] == "45"
    assert reply.body["error"]["code"] == "scaled_to_zero"
    world.assert_clean_error(reply)
    assert world.redeploys == [ModelRef(name=MODEL_NAME, version="4", job_name=f"job-{MODEL_NAME}-4", base_model="base-model")]
    assert world.stub.requests == []

    # more requests while it comes back: 503, no second redeploy from this worker
    assert world.post(SCORE, cookbook()).status == 503
    assert len(world.redeploys) == 1

    # the redeploy finished (job events / reconcile mark the endpoint succeeded): the same request succeeds
    world.ledger.merge(ENDPOINT, ep, "provisioning")  # revived by the redeploy ...
    world.ledger.merge(ENDPOINT, ep, "succeeded")  # ... and settled by reconcile
    assert world.post(CHAT, {"messages": [{"role": "user", "content": "hi"}]}).status == 200


def test_failed_endpoint_is_healed_with_backoff_not_on_every_call(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "2", endpoint_state="failed")  # its deployment just failed
    reply = world.post(SCORE, cookbook())
    # 503: the next heal attempt is ENDPOINT_HEAL_BACKOFF_S (30) away, then a deployment (45 s here)
    assert (reply.status, reply.body["error"]["code"]) == (503, "endpoint_healing")
    assert 70 <= int(reply.headers["Retry-After"]) <= 75
    assert world.backend.deploys == [] and world.redeploys == []

    # once the back-off is over, the next call starts the attempt (claimed: once)
    world.ledger.merge(ENDPOINT, ep, failed_at="2000-01-01T00:00:00Z")
    assert world.post(SCORE, cookbook()).status == 503
    assert world.post(SCORE, cookbook()).status == 503
    assert [d[1] for d in world.backend.deploys] == [ep]
    assert world.ledger.get(ENDPOINT, ep).get("heal_attempts") == 1


def test_endpoint_whose_healing_stopped_answers_503_without_redeploying(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "2", endpoint_state="failed")
    world.ledger.merge(ENDPOINT, ep, heal_attempts=3, heal_stopped_at="2000-01-01T00:00:00Z",
                       heal_stopped_reason="gave up after 3 redeploy(s); last error: quota exceeded")
    reply = world.post(SCORE, cookbook())
    assert (reply.status, reply.body["error"]["code"]) == (503, "endpoint_failed")
    assert "quota exceeded" in reply.body["error"]["message"] and "Retry-After" not in reply.headers
    assert world.backend.deploys == [] and world.redeploys == []


@pytest.mark.parametrize("state", ["deleting", "missing"])
def test_deleting_or_missing_endpoint_scales_from_zero(world: World, state: str) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "2", endpoint_state="failed" if state == "missing" else state)
    if state == "missing":
        world.ledger.delete(ENDPOINT, ep)
    reply = world.post(SCORE, cookbook())
    assert (reply.status, reply.headers.get("Retry-After")) == (503, "45")
    assert [m.ref for m in world.redeploys] == [f"{MODEL_NAME}:2"]


def test_registered_model_without_active_endpoint_redeploys_its_last_version(world: World) -> None:
    for version in ("2", "10", "9"):
        world.ledger.create(MODEL, f"{MODEL_NAME}:{version}", "registered", job_name=f"job-{version}", base_model="b")
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503
    assert world.redeploys == [ModelRef(MODEL_NAME, "10", "job-10", "b")]


def test_provisioning_endpoint_answers_503_without_redeploying(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1", endpoint_state="provisioning")
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503 and reply.headers["Retry-After"] == "45" and reply.body["error"]["code"] == "provisioning"
    assert world.redeploys == []


def test_redeploy_on_demand_off_answers_503_only(world: World) -> None:
    world.reconfigure(scoring_redeploy_on_demand=False, scoring_retry_after_s=7)
    seed_model(world.ledger, MODEL_NAME, "1", endpoint_state="deleted")
    reply = world.post(SCORE, cookbook())
    assert (reply.status, reply.headers["Retry-After"], reply.body["error"]["code"]) == (503, "7", "no_endpoint")
    assert world.redeploys == []


def test_endpoint_deleted_while_cached_is_noticed_on_the_failed_call(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    doomed = start_in_thread(StubEndpoint().app())  # this endpoint's own server
    try:
        world.backend.urls[ep] = doomed.url
        assert world.post(SCORE, cookbook()).status == 200  # route and connection cached
    finally:
        # the janitor deletes the endpoint: its server goes away and the ledger says so
        doomed.stop()
    world.ledger.merge(ENDPOINT, ep, "deleting")
    world.ledger.merge(ENDPOINT, ep, "deleted")
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503 and reply.body["error"]["code"] == "scaled_to_zero"
    assert [m.ref for m in world.redeploys] == [f"{MODEL_NAME}:1"]


def test_endpoint_missing_in_workspace_scales_from_zero(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.backend.missing.add(ep)
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503 and reply.headers["Retry-After"] == "45"
    assert [m.ref for m in world.redeploys] == [f"{MODEL_NAME}:1"]


def test_scale_from_zero_uses_the_endpoint_lifecycle(world: World) -> None:
    """The default redeploy is shared.endpoints.lifecycle.deploy_model (the owner of endpoint records)."""
    reset_scorers()  # the worker's own Scorer, with the real redeploy
    use_scorer(Scorer(world.settings, clock=world.clock, sleep=world.sleeps.append))
    ep = seed_model(world.ledger, MODEL_NAME, "3", endpoint_state="deleted")
    reply = world.post(SCORE, cookbook())
    assert reply.status == 503 and reply.headers["Retry-After"] == "45"
    record = world.ledger.get(ENDPOINT, ep)
    assert record is not None and record.state == "provisioning"
    assert [(m.ref, name) for m, name, _ in world.backend.deploys] == [(f"{MODEL_NAME}:3", endpoint_name(MODEL_NAME, "3"))]
    # while it provisions: 503 again, and no second deploy
    assert world.post(SCORE, cookbook()).status == 503
    assert len(world.backend.deploys) == 1


# ---- activity for the idle janitor


def test_activity_is_recorded_and_throttled(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")

    def last_activity() -> Any:
        record = world.ledger.get(ENDPOINT, ep)
        assert record is not None
        return parse_iso(record.get("last_activity"))

    assert last_activity() is None
    assert world.post(SCORE, cookbook()).status == 200
    world.scorer.activity.drain()
    first = last_activity()
    assert first is not None

    for _ in range(5):  # same window: no further writes
        assert world.post(SCORE, cookbook()).status == 200
    world.scorer.activity.drain()
    assert last_activity() == first
    assert world.scorer.activity.touch(ep) is False

    world.clock.advance(31)  # next window: written again
    assert world.post(SCORE, cookbook()).status == 200
    world.scorer.activity.drain()
    assert last_activity() > first


def test_activity_is_not_recorded_for_failed_calls(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(500)
    assert world.post(SCORE, cookbook()).status == 502
    world.scorer.activity.drain()
    record = world.ledger.get(ENDPOINT, ep)
    assert record is not None and record.get("last_activity") is None


def test_activity_never_revives_a_deleted_endpoint_or_goes_backwards(world: World) -> None:
    from datetime import timedelta

    from shared.ledger import utcnow

    ep = seed_model(world.ledger, MODEL_NAME, "1")
    now = utcnow()
    assert record_last_activity(world.ledger, ep, now) is True
    assert record_last_activity(world.ledger, ep, now - timedelta(seconds=5)) is False
    world.ledger.merge(ENDPOINT, ep, "deleting")
    world.ledger.merge(ENDPOINT, ep, "deleted")
    assert record_last_activity(world.ledger, ep, now + timedelta(seconds=5)) is False
    record = world.ledger.get(ENDPOINT, ep)
    assert record is not None and record.state == "deleted" and parse_iso(record.get("last_activity")) == now
    assert record_last_activity(world.ledger, "no-such-endpoint", now) is False
    assert world.ledger.get(ENDPOINT, "no-such-endpoint") is None
    assert world.ledger.get(ROUTE, MODEL_NAME) is not None


def test_prompt_text_is_never_logged_at_info(world: World, caplog: pytest.LogCaptureFixture) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.then(429)
    with caplog.at_level(logging.INFO):
        assert world.post(SCORE, cookbook()).status == 200
        world.stub.then(500)
        assert world.post(CHAT, {"messages": [{"role": "user", "content": PROMPT}]}).status == 502
        assert world.post(CHAT, {"messages": [{"role": "robot", "content": PROMPT}]}).status == 400
    assert caplog.records  # the retry and the failure were logged
    assert "zebra-42" not in caplog.text
    assert world.stub.key not in caplog.text


# ---- over HTTP through the local host: the official openai client, unchanged


@pytest.fixture
def host(world: World) -> Iterator[Any]:
    """The local host (devhost) serving the scoring functions on a free port, with a function key."""
    from devhost.host import run_host

    world.reconfigure(function_key="fk-test")
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(scoring_functions.bp)
    with run_host(app, settings=world.settings, port=0, poll_interval_s=60) as running_host:
        yield running_host


def openai_client(host: Any, key: str | None = "fk-test") -> Any:
    import openai

    # The openai client sends its api_key as `Authorization: Bearer`; Functions checks the function
    # key in `x-functions-key` (or `?code=`), so the key goes in a default header.
    return openai.OpenAI(
        base_url=f"{host.base_url}/api/v1",
        api_key="not-used",
        default_headers={"x-functions-key": key} if key else {},
        max_retries=0,
    )


def test_openai_client_chat_completion(world: World, host: Any) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    completion = openai_client(host).chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "system", "content": "brief"}, {"role": "user", "content": "ahoy there"}],
        temperature=0.7,
        max_tokens=16,
    )
    assert completion.choices[0].message.content == "echo: ahoy there"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL_NAME and completion.id.startswith("chatcmpl-")
    assert completion.usage is not None and completion.usage.total_tokens == 6
    assert world.stub.requests[-1]["json"]["input_data"]["parameters"] == {
        "temperature": 0.7,
        "do_sample": True,
        "max_new_tokens": 16,
    }


def test_openai_client_lists_models(world: World, host: Any) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    seed_model(world.ledger, "other-ft", "2", endpoint_state="deleted")
    models = openai_client(host).models.list()
    assert sorted(m.id for m in models.data) == sorted([MODEL_NAME, "other-ft"])


def test_openai_client_sees_errors_as_its_own_exceptions(world: World, host: Any) -> None:
    import openai

    seed_model(world.ledger, MODEL_NAME, "1", endpoint_state="deleted")
    client = openai_client(host)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], n=2)
    assert bad.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}])
    assert unavailable.value.status_code == 503 and unavailable.value.response.headers["retry-after"] == "45"
    with pytest.raises(openai.AuthenticationError):
        openai_client(host, key=None).models.list()


def test_score_over_http_needs_the_function_key(world: World, host: Any) -> None:
    import httpx

    seed_model(world.ledger, MODEL_NAME, "1")
    url = f"{host.base_url}/api/score"
    assert httpx.post(url, json=cookbook()).status_code == 401
    reply = httpx.post(url, json=cookbook(max_new_tokens=8), headers={"x-functions-key": "fk-test"})
    assert (reply.status_code, reply.json()) == (200, {"output": f"echo: {PROMPT}"})
    assert httpx.post(f"{url}?code=fk-test", content=b"{", headers={"content-type": "application/json"}).status_code == 400


# ---- streaming (stream: true): server-sent events the official client parses


def test_openai_client_streams_token_by_token(world: World, host: Any) -> None:
    import threading

    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.streams = True
    world.stub.gate = threading.Event()
    stream = openai_client(host).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "ahoy there matey"}], max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL_NAME
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            world.stub.gate.set()  # the first words arrived while the endpoint still holds back the last
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == "echo: ahoy there matey"
    assert len(pieces) == 4  # one chunk per streamed word, not one buffered answer
    assert world.stub.gate_opened is True  # relayed as it came: the client saw words before the end
    assert finish == "stop" and usage is not None and usage.total_tokens == 7
    assert "text/event-stream" in world.stub.requests[-1]["headers"]["accept"]


def test_streaming_from_a_deployment_that_does_not_stream_is_one_chunk(world: World, host: Any) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    chunks = list(openai_client(host).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hello"}], stream=True))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["echo: hello"]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_errors_reach_the_client_as_its_exceptions(world: World, host: Any) -> None:
    import openai

    seed_model(world.ledger, MODEL_NAME, "1")
    client = openai_client(host)
    with pytest.raises(openai.NotFoundError):  # before the stream: a plain HTTP error
        list(client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], stream=True))
    world.stub.streams = True
    world.stub.stream_raw_events = [b'data: {"output": "fine"}\n\n', b'data: {"weird": 1}\n\n']
    received = []
    with pytest.raises(openai.APIError, match="streamed an unexpected event"):  # during the stream: an error event
        for chunk in client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["fine"]


def test_stream_through_the_function_is_server_sent_events(world: World) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.streams = True
    reply = call_http(CHAT, "POST", "http://localhost/api/v1/chat/completions",
                      orjson.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "a b"}], "stream": True}),
                      {"content-type": "application/json"})
    assert reply.status == 200 and reply.media_type == "text/event-stream"
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == "echo: a b"
    assert len(reply.chunks) >= len(events)  # sent event by event, not as one body


# ---- pinned versions: name:version and the stable / latest aliases on both routes


def test_pinned_versions_on_both_routes(world: World) -> None:
    ep1 = seed_model(world.ledger, MODEL_NAME, "1", active=False)
    ep2 = seed_model(world.ledger, MODEL_NAME, "2")  # version 2 is the active one
    listed = world.get(MODELS).body["data"]
    assert [(m["id"], m["version"], m["versions"]) for m in listed] == [(MODEL_NAME, "2", ["1", "2"])]
    for fn, body in ((CHAT, {"messages": [{"role": "user", "content": PROMPT}]}), (SCORE, cookbook())):
        for ref, endpoint in ((f"{MODEL_NAME}:1", ep1), (f"{MODEL_NAME}:2", ep2), (f"{MODEL_NAME}:stable", ep2),
                              (f"{MODEL_NAME}:latest", ep2), (MODEL_NAME, ep2)):
            reply = world.post(fn, {**body, "model": ref})
            assert reply.status == 200, (ref, reply.body)
            assert world.scorer._routes[ref].endpoint == endpoint, ref  # the endpoint that answered
            if fn is CHAT:
                assert reply.body["model"] == ref
        unknown = world.post(fn, {**body, "model": f"{MODEL_NAME}:7"})
        assert unknown.status == 404 and unknown.body["error"]["code"] == "model_version_not_found"
        assert "registered versions: 1, 2" in unknown.body["error"]["message"]


def test_a_pinned_old_version_whose_endpoint_is_gone_starts_nothing(world: World) -> None:
    """Only the version that serves scales from zero: a pin of another version is 404 unless it is deployed."""
    seed_model(world.ledger, MODEL_NAME, "1", endpoint_state="deleted", active=False)
    seed_model(world.ledger, MODEL_NAME, "2")
    reply = world.post(CHAT, {"model": f"{MODEL_NAME}:1", "messages": [{"role": "user", "content": PROMPT}]})
    assert reply.status == 404 and reply.body["error"]["code"] == "version_not_deployed", reply.body
    assert "version 1" in reply.body["error"]["message"] and "serves, 2" in reply.body["error"]["message"]
    assert world.redeploys == []
    assert world.post(CHAT, {"model": MODEL_NAME, "messages": [{"role": "user", "content": PROMPT}]}).status == 200


def test_eight_pinned_old_versions_start_no_endpoint(world: World) -> None:
    """Issue 26.4: clients pinning ``:1``..``:8`` of a model whose old endpoints are gone start no
    deployment (through the real deploy path: shared.endpoints.lifecycle.deploy_model)."""
    reset_scorers()
    world.scorer = Scorer(world.settings, clock=world.clock, sleep=world.sleeps.append)  # the real redeploy
    use_scorer(world.scorer)
    for version in range(1, 9):
        seed_model(world.ledger, MODEL_NAME, str(version), endpoint_state="deleted", active=False)
    seed_model(world.ledger, MODEL_NAME, "9")  # the one that serves
    codes = []
    for version in range(1, 9):
        reply = world.post(CHAT, {"model": f"{MODEL_NAME}:{version}", "messages": [{"role": "user", "content": PROMPT}]})
        codes.append((reply.status, reply.body["error"]["code"]))
    assert codes == [(404, "version_not_deployed")] * 8
    assert world.backend.deploys == []
    live = [r.id for r in world.ledger.list(ENDPOINT) if r.state in {"provisioning", "succeeded"}]
    assert live == [endpoint_name(MODEL_NAME, "9")]


def test_scale_from_zero_at_the_live_endpoint_cap_is_refused_with_its_reason(world: World) -> None:
    """MAX_LIVE_ENDPOINTS in the deploy path: the serving versions of three models scaled to zero,
    one endpoint already live, a cap of 2: one is redeployed, the others get 503 ``capacity`` and
    their model records say why."""
    world.reconfigure(max_live_endpoints=2)
    reset_scorers()
    world.scorer = Scorer(world.settings, clock=world.clock, sleep=world.sleeps.append)  # the real redeploy
    use_scorer(world.scorer)
    seed_model(world.ledger, MODEL_NAME, "1")
    for name in ("bot-a", "bot-b", "bot-c"):
        seed_model(world.ledger, name, "1", endpoint_state="deleted")
    replies = [world.post(CHAT, {"model": name, "messages": [{"role": "user", "content": PROMPT}]})
               for name in ("bot-a", "bot-b", "bot-c")]
    assert [(r.status, r.body["error"]["code"]) for r in replies] == [
        (503, "scaled_to_zero"), (503, "capacity"), (503, "capacity")]
    assert "MAX_LIVE_ENDPOINTS=2" in replies[1].body["error"]["message"]
    world.assert_clean_error(replies[1])
    assert [name for _, name, _ in world.backend.deploys] == [endpoint_name("bot-a", "1")]
    refused = world.ledger.get(MODEL, "bot-b:1")
    assert "MAX_LIVE_ENDPOINTS=2" in refused.get("deploy_refused_reason") and refused.get("deploy_refused_at")
    # asked again within Retry-After: still refused, and no ledger write or deploy call per request
    again = world.post(CHAT, {"model": "bot-b", "messages": [{"role": "user", "content": PROMPT}]})
    assert (again.status, again.body["error"]["code"]) == (503, "capacity")
    assert len(world.backend.deploys) == 1


# ---- a candidate beside the champion (shared.rollout): its failures never reach the client


def test_a_candidate_failing_in_its_canary_is_answered_by_the_champion(world: World) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.ledger.annotate(ENDPOINT, ep, deployment="default", deployments=["version-2"])
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": PROMPT}]}
    # The endpoint's split sent this request to the candidate, which failed (the header says who answered).
    world.stub.script.append(Scripted(500, {"azureml-model-deployment": "version-2"}, b'{"error": "boom"}'))
    reply = world.post(CHAT, chat)
    assert reply.status == 200, reply.body
    first, second = world.stub.requests[-2:]
    assert first["headers"].get("azureml-model-deployment") != "default"  # as the backend's target says
    assert second["headers"]["azureml-model-deployment"] == "default", "asked again, pinned to the champion"
    # The champion's own failure is the client's answer (502), not retried around.
    world.stub.script.append(Scripted(500, {"azureml-model-deployment": "default"}, b'{"error": "boom"}'))
    assert world.post(CHAT, chat).status == 502
    # Without a candidate beside it, a 5xx is answered as before (no second request).
    sent = len(world.stub.requests)
    world.ledger.annotate(ENDPOINT, ep, deployments=[])
    world.scorer.forget_route(MODEL_NAME)
    world.stub.script.append(Scripted(500, {"azureml-model-deployment": "version-2"}, b'{"error": "boom"}'))
    assert world.post(CHAT, chat).status == 502 and len(world.stub.requests) == sent + 1


# ---- clients that hang up or hold streams (issue 29): the host counts as the sockets of this
# process whose remote port is the stub's; the model server's side is tests/faults/test_faults_hangups.py

CHAT_PATH = "/api/v1/chat/completions"
KEY = {"x-functions-key": "fk-test"}


def upstream_connections(world: World) -> int:
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == world.server.port and c.status == psutil.CONN_ESTABLISHED)


@dataclasses.dataclass
class Held:
    endpoint: str
    gate: threading.Event


@pytest.fixture
def held_stream(world: World) -> Iterator[Held]:
    """The stub streams its first words, then holds the last one until the gate opens."""
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.stub.streams = True
    world.stub.gate = threading.Event()
    world.stub.gate_timeout_s = 60.0
    yield Held(ep, world.stub.gate)
    world.stub.gate.set()  # let the stub's waiting thread go


def open_stream(host: Any) -> socket.socket:
    """A streamed chat completion on a raw socket, read up to its first words."""
    parts = urlsplit(host.base_url)
    body = orjson.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "one two three"}],
                         "stream": True})
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall((f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nx-functions-key: fk-test\r\n\r\n").encode() + body)
    seen = b""
    while b"echo:" not in seen:
        chunk = sock.recv(4096)
        assert chunk, f"the stream ended before its first words: {seen!r}"
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def test_a_stream_whose_client_hangs_up_closes_its_upstream_at_once(world: World, host: Any, held_stream) -> None:
    baseline = upstream_connections(world)
    sock = open_stream(host)
    assert upstream_connections(world) == baseline + 1
    sock.close()
    # The stub holds its last word for a minute: only the relay closing its upstream ends it sooner.
    wait_until(lambda: upstream_connections(world) == baseline, 5, "the relay to close the abandoned stream's upstream",
               0.05)
    # Its slot is given back by the relay's reading thread once the closed upstream wakes it (just
    # after the upstream closes, not at the same instant: under load the gap is visible).
    wait_until(lambda: world.scorer.streams.open(held_stream.endpoint) == 0, 2, "the stream's slot to be given back", 0.02)


def test_streams_past_scoring_max_streams_get_429_with_retry_after(world: World, host: Any, held_stream) -> None:
    world.reconfigure(scoring_max_streams=1)
    first = open_stream(host)
    assert world.scorer.streams.open(held_stream.endpoint) == 1
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    refused = httpx.post(host.base_url + CHAT_PATH, json=body, headers=KEY, timeout=10)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "too_many_streams" and "SCORING_MAX_STREAMS" in error["message"]
    other_model = httpx.post(host.base_url + CHAT_PATH, json={**body, "stream": False}, headers=KEY, timeout=10)
    assert other_model.status_code == 200  # plain answers are not streams
    first.close()
    wait_until(lambda: world.scorer.streams.open(held_stream.endpoint) == 0, 5, "the slot to be given back", 0.05)
    held_stream.gate.set()
    assert httpx.post(host.base_url + CHAT_PATH, json=body, headers=KEY, timeout=10).status_code == 200


def test_an_upstream_that_stops_sending_ends_the_stream_with_an_error_event(world: World, host: Any,
                                                                             held_stream) -> None:
    world.reconfigure(scoring_stream_idle_s=1)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "one two three"}], "stream": True}
    reply = httpx.post(host.base_url + CHAT_PATH, json=body, headers=KEY, timeout=30)
    events = [e[6:] for e in reply.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_stream_idle", events
    route = world.scorer._routes[MODEL_NAME]
    assert stream_timeout(route, world.scorer.settings.scoring_stream_idle_s).read_timeout == 1.0  # the setting, not the endpoint's 5 s timeout
    assert wait_until(lambda: world.scorer.streams.open(held_stream.endpoint) == 0, 5, "the slot to be given back", 0.05)


def test_a_plain_request_whose_client_gives_up_frees_its_upstream(world: World, host: Any) -> None:
    seed_model(world.ledger, MODEL_NAME, "1")
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    world.stub.delay_s = 4.5  # below the stub target's 5 s timeout: only the client leaving ends it sooner
    assert upstream_connections(world) == 0  # a new worker Scorer: no pooled connection yet
    with pytest.raises(httpx.TimeoutException):
        httpx.post(host.base_url + CHAT_PATH, json=body, headers=KEY, timeout=0.3)
    # Not aborted, the call would end after 4.5 s and its connection stay in the pool (keep-alive).
    wait_until(lambda: upstream_connections(world) == 0, 3, "the host to abort the upstream call of the client that left",
               0.05)


def test_a_client_that_reads_nothing_of_its_stream_is_cut_off_with_its_upstream(world: World, host: Any) -> None:
    ep = seed_model(world.ledger, MODEL_NAME, "1")
    world.reconfigure(scoring_stream_idle_s=1)
    world.stub.streams = True
    # Far more than the socket buffers between the host and a client that reads nothing hold.
    world.stub.stream_raw_events = [b'data: {"output": "' + b"x" * 65536 + b'"}\n\n'] * 600
    parts = urlsplit(host.base_url)
    body = orjson.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall((f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nx-functions-key: fk-test\r\n\r\n").encode() + body)
        wait_until(lambda: world.scorer.streams.open(ep) == 1, 5, "the stream to start", 0.05)
        # Not cut off, the relay would wait on this client for ever, holding its upstream and its slot.
        wait_until(lambda: world.scorer.streams.open(ep) == 0 and upstream_connections(world) == 0, 15,
                   "the relay to give up on a client that reads nothing", 0.1)
