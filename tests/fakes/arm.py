"""A stateful fake of the ARM endpoints the post-deploy step calls (scripts/azure_postdeploy.py).

The Function App, its functions list and host keys, and Event Grid system-topic subscriptions,
answered in the published shapes (tests/fixtures/azure-arm/README.md): what a PUT stores, a later
GET returns, without the key; getFullUrl returns the full URL. Every request is recorded
(``requests``: method, path, body). Used by tests/infra/test_azure_postdeploy.py and by the
permission cross-check (tests/azure_permissions.py).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

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
