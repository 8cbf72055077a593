"""The post-deploy step (scripts/azure_postdeploy.py) against intercepted ARM.

The real management SDKs (azure-mgmt-web, azure-mgmt-eventgrid) send their real requests; a
stateful fake answers them in the published shapes (tests/fixtures/azure-arm/README.md): the
Function App, its functions list and host keys, and Event Grid system-topic subscriptions (what a
PUT stores, a later GET returns, without the key; getFullUrl returns the full URL). Every PUT
body is also checked against the Bicep type definitions of the subscription resource.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from scripts import azure_postdeploy as postdeploy
from tests.azureml_fakes import FakeCredential
from tests.bicep_checks import check_rest_body
from tests.support import FIXTURES

ARM_FIXTURES = FIXTURES / "azure-arm"
SUB = "34adfa4f-cedf-4dc0-ba29-b6d1a69ab345"
RG = "rg-autopilot"
APP = "func-abc123"
STORAGE_TOPIC = "evgt-st-abc123"
WORKSPACE_TOPIC = "evgt-mlw-abc123"
HOST = "func-abc123-d4e5f6.eastus-01.azurewebsites.net"  # Flex apps get a unique default host name
SUBSCRIPTION_TYPE = "Microsoft.EventGrid/systemTopics/eventSubscriptions"
EVENTGRID_API = "2025-02-15"

ENV = {
    "AZURE_SUBSCRIPTION_ID": SUB,
    "AZURE_RESOURCE_GROUP": RG,
    "AZURE_FUNCTION_APP_NAME": APP,
    "STORAGE_SYSTEM_TOPIC_NAME": STORAGE_TOPIC,
    "WORKSPACE_SYSTEM_TOPIC_NAME": WORKSPACE_TOPIC,
    "CHAT_DATA_CONTAINER": "chat-data",
}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((ARM_FIXTURES / name).read_text(encoding="utf-8"))


class FakeArm:
    """Web (site, functions, host keys) and Event Grid (system-topic subscriptions) under one RG."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.functions_after = 0  # the functions list is empty for this many calls
        self.key_after = 0  # listkeys lacks the extension keys for this many calls
        self.function_calls = 0
        self.key_calls = 0
        self.system_keys = {"blobs_extension": "blob-key-1", "eventgrid_extension": "eg-key-1"}
        self.subscriptions: dict[tuple[str, str], dict[str, Any]] = {}
        self.full_urls: dict[tuple[str, str], str] = {}
        self.failures: list[list[Any]] = []  # [method, path regex, status, code, times left]
        for method in ("GET", "PUT", "POST", "DELETE", "PATCH"):
            rsps.add_callback(method, re.compile(r"https://management\.azure\.com/.*"), callback=self.handle, content_type=None)

    def fail(self, method: str, pattern: str, status: int, code: str, *, times: int = 1) -> None:
        """Answer matching requests with ARM's error shape ``{"error": {"code", "message"}}``."""
        self.failures.append([method, re.compile(pattern), status, code, times])

    def writes(self) -> list[tuple[str, str, Any]]:
        reads = re.compile(r"/listkeys$|/getFullUrl$", re.I)
        return [r for r in self.requests if r[0] in {"PUT", "PATCH", "DELETE"} or (r[0] == "POST" and not reads.search(r[1]))]

    def puts(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] == "PUT"]

    def handle(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        body = json.loads(request.body) if request.body else None
        self.requests.append((request.method, parts.path, body))
        query = parse_qs(parts.query)
        for failure in self.failures:
            method, pattern, status, code, times = failure
            if method == request.method and pattern.search(parts.path) and times:
                failure[4] -= 1
                error = {"error": {"code": code, "message": f"{code} for {request.method} {parts.path.rsplit('/', 1)[-1]}"}}
                return status, {"content-type": "application/json"}, json.dumps(error)
        site = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Web/sites/{APP}"
        topics = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.EventGrid/systemTopics/"
        path = parts.path
        if path == site and request.method == "GET":
            body = fixture("site_flex.json")
            body["id"], body["name"] = site, APP
            body["properties"]["defaultHostName"] = HOST
            body["properties"]["hostNames"] = [HOST]
            return self.ok(body)
        if path == site + "/functions" and request.method == "GET":
            self.function_calls += 1
            names = [] if self.function_calls <= self.functions_after else ["prepare_chat_data", "on_job_event", "reconcile", "score"]
            return self.ok({"value": [self.function_envelope(site, n) for n in names], "nextLink": None})
        if path == site + "/host/default/listkeys" and request.method == "POST":
            self.key_calls += 1
            keys = {} if self.key_calls <= self.key_after else dict(self.system_keys)
            return self.ok({"masterKey": "master-key", "functionKeys": {"default": "default-key"}, "systemKeys": keys})
        m = re.fullmatch(re.escape(topics) + r"(?P<topic>[^/]+)/eventSubscriptions/(?P<name>[^/]+)(?P<action>/getFullUrl)?", path)
        if m:
            assert query.get("api-version") == [EVENTGRID_API], f"Event Grid api-version {query.get('api-version')}"
            key = (m["topic"], m["name"])
            if m["action"] and request.method == "POST":
                if key not in self.full_urls:
                    return self.not_found(path)
                return self.ok({"endpointUrl": self.full_urls[key]})
            if request.method == "GET":
                return self.ok(self.subscriptions[key]) if key in self.subscriptions else self.not_found(path)
            if request.method == "PUT":
                stored = self.store(topics + m["topic"], path, m["name"], body)
                self.full_urls[key] = body["properties"]["destination"]["properties"]["endpointUrl"]
                self.subscriptions[key] = stored
                return 201, {"content-type": "application/json"}, json.dumps(stored)
        return 404, {"content-type": "application/json"}, json.dumps({"error": {"code": "NoRoute", "message": f"{request.method} {path}"}})

    @staticmethod
    def ok(body: Any) -> tuple[int, dict[str, str], str]:
        return 200, {"content-type": "application/json"}, json.dumps(body)

    @staticmethod
    def not_found(path: str) -> tuple[int, dict[str, str], str]:
        return 404, {"content-type": "application/json"}, json.dumps({"error": {"code": "ResourceNotFound", "message": f"{path} not found"}})

    @staticmethod
    def function_envelope(site: str, name: str) -> dict[str, Any]:
        return {
            "id": f"{site}/functions/{name}",
            "name": f"{APP}/{name}",
            "type": "Microsoft.Web/sites/functions",
            "properties": {"name": name, "function_app_id": site, "language": "python", "isDisabled": False},
        }

    @staticmethod
    def store(topic_id: str, path: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """What Event Grid keeps and returns: the published GET shape, the key never echoed."""
        stored = copy.deepcopy(fixture("system_topic_event_subscription_get.json"))
        props = copy.deepcopy(body["properties"])
        dest = props["destination"]
        url = dest["properties"].pop("endpointUrl")
        dest["properties"]["endpointBaseUrl"] = url.split("?", 1)[0]
        dest["properties"]["endpointUrl"] = None
        stored["properties"] = {"topic": topic_id, "provisioningState": "Succeeded", **props}
        stored["id"], stored["name"] = path, name
        return stored

    def preload(self, topic: str, name: str, body: dict[str, Any]) -> None:
        self.subscriptions[(topic, name)] = body


@pytest.fixture
def arm() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeArm(rsps)


def run(**kwargs: Any) -> postdeploy.Outcome:
    sleeps: list[float] = kwargs.pop("sleeps", [])
    target = postdeploy.DeployTarget.from_env(ENV)
    return postdeploy.run(target, FakeCredential(), sleep=sleeps.append, delay_s=kwargs.pop("delay_s", 5.0), **kwargs)


def test_first_run_waits_for_the_key_then_creates_the_three_subscriptions(arm: FakeArm) -> None:
    arm.functions_after = 1  # not indexed on the first check
    arm.key_after = 2  # keys missing on the first two key reads
    sleeps: list[float] = []
    outcome = run(sleeps=sleeps)
    assert sleeps == [5.0, 5.0, 5.0], "expected three waits: functions missing once, keys missing twice"
    assert sorted(outcome.created) == sorted(
        [f"{STORAGE_TOPIC}/chat-data-blob-created", f"{WORKSPACE_TOPIC}/job-run-completed", f"{WORKSPACE_TOPIC}/job-run-failed"]
    )
    assert outcome.updated == [] and outcome.unchanged == []
    # no subscription is written before the key exists
    first_put = next(i for i, r in enumerate(arm.requests) if r[0] == "PUT")
    key_reads = [i for i, r in enumerate(arm.requests) if r[1].endswith("/listkeys")]
    assert key_reads[-1] < first_put and len(key_reads) == 3

    bodies = {r[1].rsplit("/", 1)[1]: r[2] for r in arm.puts()}
    blob = bodies["chat-data-blob-created"]["properties"]
    assert blob["destination"] == {
        "endpointType": "WebHook",
        "properties": {
            "endpointUrl": f"https://{HOST}/runtime/webhooks/blobs?functionName=Host.Functions.prepare_chat_data&code=blob-key-1",
            "maxEventsPerBatch": 1,
            "preferredBatchSizeInKilobytes": 64,
        },
    }
    assert blob["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert blob["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/chat-data/blobs/"
    assert blob["filter"]["advancedFilters"] == [
        {"operatorType": "StringIn", "key": "data.api", "values": ["PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"]}
    ]
    done = bodies["job-run-completed"]["properties"]
    assert done["destination"]["properties"]["endpointUrl"] == f"https://{HOST}/runtime/webhooks/eventgrid?functionName=on_job_event&code=eg-key-1"
    assert done["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunCompleted"]
    assert "advancedFilters" not in done["filter"]
    failed = bodies["job-run-failed"]["properties"]
    assert failed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
    assert failed["filter"]["advancedFilters"] == [{"operatorType": "StringIn", "key": "data.runStatus", "values": ["Failed", "Canceled"]}]
    for name, body in bodies.items():
        assert body["properties"]["eventDeliverySchema"] == "EventGridSchema"
        problems = check_rest_body(SUBSCRIPTION_TYPE, EVENTGRID_API, body, where=f"PUT {name}")
        assert not problems, "\n".join(problems)


def test_second_run_makes_no_write(arm: FakeArm) -> None:
    run()
    writes_after_first = len(arm.writes())
    assert writes_after_first == 3
    outcome = run()
    assert arm.writes()[writes_after_first:] == [], "the second run wrote something"
    assert outcome.created == [] and outcome.updated == [] and len(outcome.unchanged) == 3


def test_a_rotated_key_updates_the_subscriptions_that_use_it(arm: FakeArm) -> None:
    run()
    arm.system_keys["blobs_extension"] = "blob-key-2"
    outcome = run()
    assert outcome.updated == [f"{STORAGE_TOPIC}/chat-data-blob-created"]
    assert len(outcome.unchanged) == 2
    (put,) = arm.puts()[3:]
    assert put[2]["properties"]["destination"]["properties"]["endpointUrl"].endswith("code=blob-key-2")


def test_a_subscription_with_other_settings_is_replaced(arm: FakeArm) -> None:
    # the published example (a StorageQueue destination, other filters) under our subscription's name
    arm.preload(STORAGE_TOPIC, "chat-data-blob-created", fixture("system_topic_event_subscription_get.json"))
    outcome = run()
    assert f"{STORAGE_TOPIC}/chat-data-blob-created" in outcome.updated
    stored = arm.subscriptions[(STORAGE_TOPIC, "chat-data-blob-created")]["properties"]
    assert stored["destination"]["endpointType"] == "WebHook"
    assert stored["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/chat-data/blobs/"


def test_a_changed_filter_is_put_back(arm: FakeArm) -> None:
    run()
    # someone "simplified" the failure subscription to one for both event types
    stored = arm.subscriptions[(WORKSPACE_TOPIC, "job-run-failed")]
    stored["properties"]["filter"]["includedEventTypes"].append("Microsoft.MachineLearningServices.RunCompleted")
    outcome = run()
    assert outcome.updated == [f"{WORKSPACE_TOPIC}/job-run-failed"]
    assert arm.subscriptions[(WORKSPACE_TOPIC, "job-run-failed")]["properties"]["filter"]["includedEventTypes"] == [
        "Microsoft.MachineLearningServices.RunStatusChanged"
    ]


def test_a_key_that_never_appears_ends_with_a_clear_error_within_its_bound(arm: FakeArm) -> None:
    arm.key_after = 10**6
    sleeps: list[float] = []
    with pytest.raises(postdeploy.PostDeployError) as err:
        run(sleeps=sleeps, attempts=4, delay_s=7.0)
    message = str(err.value)
    assert "after 4 attempts (21 s)" in message
    assert "blobs_extension" in message and "eventgrid_extension" in message
    assert "azd hooks run postdeploy" in message
    assert sleeps == [7.0, 7.0, 7.0], "one wait between attempts, none after the last"
    assert arm.key_calls == 4
    assert arm.puts() == []


def test_functions_never_indexed_are_named(arm: FakeArm) -> None:
    arm.functions_after = 10**6
    with pytest.raises(postdeploy.PostDeployError, match=r"function\(s\) on_job_event, prepare_chat_data not indexed"):
        run(attempts=2)
    assert arm.key_calls == 0 and arm.puts() == []


def test_missing_environment_is_named() -> None:
    env = dict(ENV)
    del env["STORAGE_SYSTEM_TOPIC_NAME"], env["CHAT_DATA_CONTAINER"]
    with pytest.raises(postdeploy.PostDeployError, match="STORAGE_SYSTEM_TOPIC_NAME, CHAT_DATA_CONTAINER"):
        postdeploy.DeployTarget.from_env(env)


def test_main_reports_the_error_and_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert postdeploy.main([], environ={}) == 1
    assert "missing environment variable(s) AZURE_SUBSCRIPTION_ID" in capsys.readouterr().err


def test_errors_while_the_host_starts_count_as_not_ready(arm: FakeArm) -> None:
    arm.fail("POST", r"/host/default/listkeys$", 400, "BadRequest", times=2)
    sleeps: list[float] = []
    outcome = run(sleeps=sleeps)
    assert len(sleeps) == 2 and len(outcome.created) == 3


def test_an_error_that_lasts_is_in_the_final_message(arm: FakeArm) -> None:
    arm.fail("GET", r"/functions$", 400, "BadRequest", times=100)
    with pytest.raises(postdeploy.PostDeployError, match=r"last error: BadRequest: BadRequest for GET functions"):
        run(attempts=3)


def test_no_login_fails_at_once_with_what_to_do(arm: FakeArm) -> None:
    arm.fail("GET", rf"/sites/{APP}$", 401, "AuthenticationFailed")
    with pytest.raises(postdeploy.PostDeployError, match=r"not authorized .* run `azd auth login`"):
        run()
    assert arm.function_calls == 0


def test_a_rejected_subscription_names_itself_and_how_to_retry(arm: FakeArm) -> None:
    arm.fail("PUT", r"/eventSubscriptions/job-run-completed$", 400, "InvalidRequest")
    with pytest.raises(postdeploy.PostDeployError) as err:
        run()
    assert f"{WORKSPACE_TOPIC}/job-run-completed -> on_job_event failed: InvalidRequest" in str(err.value)
    assert "azd hooks run postdeploy" in str(err.value)
    # what was created before the failure stays; a rerun finishes the rest without rewriting it
    outcome = run()
    assert outcome.created == [f"{WORKSPACE_TOPIC}/job-run-completed", f"{WORKSPACE_TOPIC}/job-run-failed"]
    assert outcome.unchanged == [f"{STORAGE_TOPIC}/chat-data-blob-created"]
