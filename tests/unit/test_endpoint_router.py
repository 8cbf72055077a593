"""The local endpoint's router: named deployments, traffic split, pins, mirror, per-deployment counters.

Drives the real ``python -m localworkspace.router`` process in front of small deployment servers
(one thread each) that answer with their own name, as Azure ML's endpoint front door would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from localworkspace.router import Counters, choose_deployment, percentile, primary_deployment
from localworkspace.workspace import write_json
from tests.support import WaitTimeout, free_port, wait_until

KEY = "router-test-key"
CLIENT = httpx.Client()  # keep-alive to the router: the test measures the router, not connection setup


class Deployment:
    """A deployment server: /ping, POST /score answering ``{"output": <name>}`` (or streamed)."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name, self.status, self.hits, self.dead = name, status, 0, False
        self.hold = threading.Event()  # cleared: POST /score waits for it (a request in flight)
        self.hold.set()
        dep = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if dep.dead:  # a crashed process: the connection drops without an answer
                    self.close_connection = True
                    return
                self.send_response(200 if self.path == "/ping" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if dep.dead:
                    self.close_connection = True
                    return
                dep.hits += 1
                dep.hold.wait(30)
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if "text/event-stream" in (self.headers.get("Accept") or ""):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in (dep.name, "!"):
                        self.wfile.write(b"data: " + json.dumps({"output": piece}).encode() + b"\n\n")
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.close_connection = True
                    return
                body = json.dumps({"output": dep.name}).encode()
                self.send_response(dep.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.dead = True
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(tmp_path: Path):  # noqa: ANN201
    blue, green = Deployment("blue"), Deployment("green")
    record = tmp_path / "ws" / "endpoints" / "ep" / "record.json"  # where a LocalBackend on tmp_path/ws finds it
    record.parent.mkdir(parents=True)
    port = free_port()
    write_json(record, {"name": "ep", "state": "succeeded", "port": port, "key": KEY, "deployment": "blue",
                        "traffic": {"blue": 100}, "deployments": {
                            "blue": {"name": "blue", "state": "succeeded", "port": blue.port},
                            "green": {"name": "green", "state": "succeeded", "port": green.port}}})
    env = {**os.environ, "LOCAL_ENDPOINT_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "localworkspace.router", "--record", str(record), "--port", str(port),
                             "--activity-file", str(tmp_path / "activity")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers_ping(url), 30, "the router to answer", every_s=0.1)
    except WaitTimeout:
        proc.kill()
        pytest.fail(f"router did not come up: {proc.stderr.read().decode() if proc.stderr else ''}")
    try:
        yield url, record, {"blue": blue, "green": green}, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        blue.stop()
        green.stop()


def answers_ping(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def score(url: str, pin: str | None = None, stream: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    if pin:
        headers["azureml-model-deployment"] = pin
    if stream:
        headers["Accept"] = "text/event-stream"
    return CLIENT.post(f"{url}/score", json={"input_data": {"input_string": [{"role": "user", "content": "hi"}]}},
                      headers=headers, timeout=10)


def set_record(record: Path, **fields: object) -> None:
    data = json.loads(record.read_text())
    data.update(fields)
    time.sleep(0.01)  # a new modification time even on coarse clocks
    write_json(record, data)


def test_split_pin_and_the_deployment_header(endpoint) -> None:  # noqa: ANN001
    url, record, deps, tmp = endpoint
    assert score(url).json() == {"output": "blue"}
    assert score(url).headers["azureml-model-deployment"] == "blue"
    # A pinned request reaches a deployment at 0% traffic, as Azure ML's header does.
    pinned = score(url, pin="green")
    assert pinned.json() == {"output": "green"} and pinned.headers["azureml-model-deployment"] == "green"
    missing = score(url, pin="red")
    assert missing.status_code == 404 and "red" in missing.json()["error"]
    assert (tmp / "activity").exists(), "a scoring request is the endpoint's activity"

    set_record(record, traffic={"blue": 70, "green": 30})
    served = Counter(score(url).json()["output"] for _ in range(100))
    assert set(served) == {"blue", "green"}
    assert 12 <= served["green"] <= 50, served  # 30 expected; binomial sd ~4.6

    set_record(record, traffic={"green": 100})
    assert {score(url).json()["output"] for _ in range(10)} == {"green"}
    assert httpx.post(f"{url}/score", json={}, timeout=5).status_code == 401  # the key is checked here too


def test_streamed_answers_pass_through(endpoint) -> None:  # noqa: ANN001
    url, *_ = endpoint
    reply = score(url, stream=True)
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert [line for line in reply.text.splitlines() if line] == [
        'data: {"output": "blue"}', 'data: {"output": "!"}', "data: [DONE]"]


def test_counters_split_by_deployment_see_a_failing_deployment(endpoint) -> None:  # noqa: ANN001
    url, record, deps, _ = endpoint
    start = time.time()
    set_record(record, traffic={"blue": 50, "green": 50})
    for _ in range(20):
        score(url)
    deps["green"].status = 500  # the deployment starts failing
    for _ in range(40):
        score(url)
    deps["green"].stop()  # then stops answering at all: the router answers 502 for it
    statuses = Counter(score(url).status_code for _ in range(20))
    assert statuses[502] > 0 and statuses[200] > 0 and set(statuses) == {200, 502}
    figures = httpx.get(f"{url}/metrics", params={"since": start}, headers={"Authorization": f"Bearer {KEY}"}).json()
    blue, green = figures["deployments"]["blue"], figures["deployments"]["green"]
    assert blue["errors"] == 0 and blue["requests"] > 20
    assert green["errors"] >= statuses[502] + 1 and green["error_rate"] > 0.3
    assert blue["p95_ms"] is not None and blue["p95_ms"] > 0
    assert httpx.get(f"{url}/metrics").status_code == 401
    # A window after everything saw nothing.
    later = httpx.get(f"{url}/metrics", params={"since": time.time() + 1}, headers={"Authorization": f"Bearer {KEY}"}).json()
    assert all(d["requests"] == 0 for d in later["deployments"].values())


def test_mirrored_traffic_reaches_the_mirror_and_the_client_gets_the_live_answer(endpoint) -> None:  # noqa: ANN001
    url, record, deps, _ = endpoint
    set_record(record, traffic={"blue": 100}, mirror_traffic={"green": 50})
    answers = {score(url).json()["output"] for _ in range(40)}
    time.sleep(0.3)
    assert answers == {"blue"}
    assert 5 <= deps["green"].hits <= 35, deps["green"].hits


def test_health_follows_the_champion_not_the_candidate(endpoint) -> None:  # noqa: ANN001
    url, record, deps, _ = endpoint
    deps["green"].stop()
    assert httpx.get(f"{url}/health").status_code == 200  # a failing candidate is the rollout's business
    deps["blue"].stop()
    assert httpx.get(f"{url}/health").status_code == 503


def test_choice_and_percentile_rules() -> None:
    rec = {"traffic": {"a": 90, "b": 10, "c": 0}, "deployments": {
        "a": {"state": "succeeded", "port": 1}, "b": {"state": "succeeded", "port": 2},
        "c": {"state": "succeeded", "port": 3}, "d": {"state": "failed", "port": 4}}}
    assert choose_deployment(rec, None, 0.0)[0] == "a"
    assert choose_deployment(rec, None, 0.899)[0] == "a"
    assert choose_deployment(rec, None, 0.95)[0] == "b"
    assert choose_deployment(rec, "c", 0.5)[0] == "c"
    assert choose_deployment(rec, "d", 0.5)[0] is None  # failed: not addressable
    assert choose_deployment({**rec, "traffic": {}}, None, 0.5) == (None, "no deployment of this endpoint takes traffic")
    # A failed deployment's share goes to the live ones.
    assert choose_deployment({**rec, "traffic": {"a": 50, "d": 50}}, None, 0.99)[0] == "a"
    assert percentile([], 95) is None
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([5.0], 95) == 5.0
    counters = Counters()
    counters.record("a", 10, True, at=100)
    counters.record("a", 20, False, at=200)
    assert counters.summary(since=150)["a"] == {"requests": 1, "errors": 1, "error_rate": 1.0, "p95_ms": 20.0,
                                                "in_flight": 0}
    # The endpoint's health is its champion's while the champion takes traffic, even in a 50/50 canary
    # whose candidate sorts first ("version-10" < "version-9").
    canary = {"deployment": "version-9", "traffic": {"version-10": 50, "version-9": 50}}
    assert primary_deployment(canary) == "version-9"
    assert primary_deployment({"deployment": "version-9", "traffic": {"version-10": 100}}) == "version-10"
    assert primary_deployment({"deployment": "blue", "traffic": {}}) == "blue"


def in_flight(url: str, name: str) -> int:
    figures = httpx.get(f"{url}/metrics", params={"since": time.time()}, headers={"Authorization": f"Bearer {KEY}"}).json()
    return int((figures["deployments"].get(name) or {}).get("in_flight") or 0)


def test_a_deployment_being_deleted_answers_its_requests_in_flight_first(endpoint) -> None:  # noqa: ANN001
    """The old champion at a promotion: traffic moved away while it was answering; its deletion
    (LocalBackend.begin_delete_deployment) waits for that answer instead of cutting it off."""
    from shared.backends.local import LocalBackend
    from tests.support import make_settings

    url, record, deps, tmp = endpoint
    backend = LocalBackend(make_settings(LOCAL_WORKSPACE_DIR=str(tmp / "ws")))
    set_record(record, traffic={"blue": 50, "green": 50})
    deps["green"].hold.clear()
    answers: list[httpx.Response] = []
    clients = [threading.Thread(target=lambda: answers.append(score(url, pin="green"))) for _ in range(2)]
    for c in clients:
        c.start()
    wait_until(lambda: in_flight(url, "green") >= 2, 10, "both requests in flight", every_s=0.05)
    assert in_flight(url, "green") == 2, "the router counts the requests in flight"
    set_record(record, traffic={"blue": 100})  # the promotion's traffic move
    deleting = threading.Thread(target=backend.begin_delete_deployment, args=("ep", "green"))
    deleting.start()
    while json.loads(record.read_text())["deployments"]["green"]["state"] != "deleting" and deleting.is_alive():
        time.sleep(0.05)
    deleting.join(1.0)
    assert deleting.is_alive() and "green" in json.loads(record.read_text())["deployments"], \
        "not deleted while its requests are in flight"
    assert score(url, pin="green").status_code == 404, "a deployment being deleted takes no new request"
    deps["green"].hold.set()
    for c in clients:
        c.join(10)
    deleting.join(30)
    assert [a.status_code for a in answers] == [200, 200] and not deleting.is_alive()
    data = json.loads(record.read_text())
    assert "green" not in data["deployments"] and data["traffic"] == {"blue": 100}
    assert in_flight(url, "green") == 0
