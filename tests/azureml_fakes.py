"""A fake Azure ML control plane for contract tests: the real azure-ai-ml SDK, intercepted HTTP.

``FakeCredential`` hands out an unsigned JWT with audience https://ml.azure.com (the SDK decodes
the token before submitting a pipeline job). ``FakeAzureML`` answers the HTTP requests the SDK
sends (ARM under the workspace, the registry's discovery and data-plane endpoints, Azure Monitor
metrics) with replies shaped like the real services', keeps what was PUT so later GETs see it,
records every request, and can be told to fail chosen calls (409, 429, 5xx ...).

Built from what Azure publishes (``tests/fixtures``, each file with its source):

- the registry model is a published asset spec: by default Phi-4 version 8, the app's default
  (``model_specific_defaults`` tag; allow lists and fine-tuning tasks under ``system_metadata``,
  served as the azureml-assets publisher stores it: ``properties.system_metadata``, every value a
  string); ``spec=`` picks another (the cookbook's Phi-3-mini-4k-instruct v15, as first published
  with tags only, or as the registry holds it now: archived, lifecycle under ``system_metadata``);
- online endpoint, deployment and datastore bodies are the official azure-rest-api-specs examples
  of the api-versions azure-ai-ml 1.35.2 sends, with the request's values filled in; every endpoint
  and deployment PUT body is checked against the example request body (an unknown key is answered
  400, as ARM does) and recorded in ``violations``;
- long-running operations send the headers the REST spec declares (``Azure-AsyncOperation`` and
  ``x-ms-async-operation-timeout`` on PUT 201, ``Location`` and ``Retry-After`` on DELETE 202) and
  the operation status stays ``InProgress`` without a long ``Retry-After``: an SDK poller left
  running shows up in the request log at once.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses
import yaml

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
from tests.support import make_settings

SUB = "6f1c2b3a-1111-4222-8333-444455556666"
RG = "rg-finetune"
WS = "ws-finetune"
LOCATION = "eastus"
ARM = "https://management.azure.com"
WS_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
REGISTRY = "azureml"
REGISTRY_SUB = "5c5f2a1d-0000-4000-8000-000000000001"
REGISTRY_RG = "registry-builtin-prod-eastus-01"
REGISTRY_HOST = "https://eastus.api.azureml.ms/"
REGISTRY_PATH = (
    f"/mferp/managementfrontend/subscriptions/{REGISTRY_SUB}/resourceGroups/{REGISTRY_RG}"
    f"/providers/Microsoft.MachineLearningServices/registries/{REGISTRY}"
)
METRICS_HOST = f"https://{LOCATION}.metrics.monitor.azure.com"
FOUNDATION_NAME = "Phi-4"
FOUNDATION_VERSION = "8"
COMPONENT_VERSION = "0.0.82"

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SPEC_EXAMPLES = FIXTURES / "rest-api-specs" / "specification" / "machinelearningservices" / "resource-manager" / "Microsoft.MachineLearningServices" / "preview"
FOUNDATION_SPEC = FIXTURES / "azureml" / "phi-4.spec.yaml"  # the app's default base model
PHI3_TAG_SPEC = FIXTURES / "azureml" / "phi-3-mini-4k-instruct.spec.yaml"  # as first published: tags only
PHI3_CURRENT_SPEC = FIXTURES / "azureml" / "phi-3-mini-4k-instruct.system-metadata.spec.yaml"  # archived, system_metadata
PREPARED_DATASTORE = "autopilot_prepared"
STORAGE_ACCOUNT = "stautopilotapp"

# The day the cookbook's Phi-3 was current (before its FinetuneDeprecationDate 2025-06-30): happy
# paths run on it (Phi-4 publishes no dates); the lifecycle tests use the real dates.
MODEL_WAS_CURRENT = datetime(2025, 5, 1, tzinfo=UTC).date()


ENDPOINT_PUT_EXAMPLE = "2022-02-01-preview/examples/OnlineEndpoint/createOrUpdate.json"
DEPLOYMENT_PUT_EXAMPLE = "2023-04-01-preview/examples/OnlineDeployment/ManagedOnlineDeployment/createOrUpdate.json"


def example(path: str) -> dict[str, Any]:
    """A published azure-rest-api-specs example (``<api-version>/examples/...``)."""
    return json.loads((SPEC_EXAMPLES / path).read_text(encoding="utf-8"))


def registry_tags(spec_path: Path = FOUNDATION_SPEC) -> tuple[dict[str, str], dict[str, str]]:
    """(tags, properties) of the published model asset spec, as the registry serves them: strings,
    lists and mappings as Python literals (the notebook reads them with ``ast.literal_eval``)."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))

    def text(value: Any) -> str:
        return repr(value) if isinstance(value, (list, dict)) else str(value)

    tags = {str(k): text(v) for k, v in (spec.get("tags") or {}).items()}
    properties = {str(k): text(v) for k, v in (spec.get("properties") or {}).items()}
    return tags, properties


def registry_system_metadata(spec_path: Path = FOUNDATION_SPEC) -> dict[str, str]:
    """The spec's ``system_metadata`` as azureml-assets' publisher stores it on the registry model
    (``publish_utils.stringify_dictionary``: mappings as JSON, everything else ``str()``)."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    return {str(k): json.dumps(v) if isinstance(v, dict) else str(v) for k, v in (spec.get("system_metadata") or {}).items()}


def spec_identity(spec_path: Path) -> tuple[str, str, bool]:
    """(name, version, isArchived) of a published model asset spec."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    return str(spec["name"]), str(spec["version"]), bool(spec.get("isArchived", False))


PHI3_TAGS, PHI3_PROPERTIES = registry_tags(PHI3_TAG_SPEC)
USAGES_EXAMPLE = json.loads((SPEC_EXAMPLES.parent / "stable" / "2024-10-01" / "examples" / "Usage" / "list.json").read_text(encoding="utf-8"))

# VM sizes of the workspace's region (``compute.list_sizes()``): today's GPU sizes of the model's
# allow lists; the NCv3 family retired on 2025-09-30 and no region lists it any more.
VM_SIZES = [
    {"name": "Standard_DS3_v2", "family": "standardDSv2Family", "vCPUs": 4, "gpus": 0, "memoryGB": 14.0},
    {"name": "Standard_NC24ads_A100_v4", "family": "StandardNCADSA100v4Family", "vCPUs": 24, "gpus": 1, "memoryGB": 220.0},
    {"name": "Standard_NC48ads_A100_v4", "family": "StandardNCADSA100v4Family", "vCPUs": 48, "gpus": 2, "memoryGB": 440.0},
    {"name": "Standard_NC96ads_A100_v4", "family": "StandardNCADSA100v4Family", "vCPUs": 96, "gpus": 4, "memoryGB": 880.0},
    {"name": "Standard_NC24", "family": "standardNCFamily", "vCPUs": 24, "gpus": 4, "memoryGB": 224.0},
]

# The pipeline's steps as the run history lists them: one per compute_* input of the component.
PIPELINE_STEPS = ("model_import", "preprocess", "finetune", "model_evaluation")


def _fill(template: Any, values: Any) -> Any:
    """The example body with the request's values where the request has them (placeholders elsewhere)."""
    if isinstance(template, dict) and isinstance(values, dict):
        if set(template) <= {"string"}:  # a free-form map in the example: the request's map as is
            return copy.deepcopy(values)
        out = {k: _fill(v, values[k]) if k in values else copy.deepcopy(v) for k, v in template.items()}
        out.update({k: copy.deepcopy(v) for k, v in values.items() if k not in template})
        return out
    return copy.deepcopy(values)


def unknown_keys(body: Any, template: Any, where: str = "", *, strict: bool = False) -> list[str]:
    """Keys of ``body`` the published example request body does not have (``string`` maps are free-form).

    Not ``strict``: a key the example lacks is let through when its value is empty (azure-ai-ml's
    shared client serializes later api-versions' fields empty). ``strict``: every key must be in the
    example, empty or not (the endpoint PUT, whose ``mirrorTraffic`` no published example carries).
    """
    found: list[str] = []
    if isinstance(body, dict) and isinstance(template, dict):
        if set(template) <= {"string"}:  # {"string": ...} or {}: a free-form map (tags, traffic ...)
            return found
        for key, value in body.items():
            if key not in template:
                if value in (None, {}, []) and not strict:
                    continue
                found.append(f"{where}{key}")
            elif value is not None:
                found.extend(unknown_keys(value, template[key], f"{where}{key}.", strict=strict))
    return found


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def fake_jwt(audience: str = "https://ml.azure.com", lifetime_s: int = 3600) -> str:
    """An unsigned JWT shaped like an Entra ID access token."""
    now = int(time.time())
    claims = {"aud": audience, "iss": "https://sts.windows.net/tenant/", "iat": now, "nbf": now,
              "exp": now + lifetime_s, "tid": "72f988bf-0000-0000-0000-000000000000", "oid": "app-identity"}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


class FakeCredential:
    """A TokenCredential whose tokens are unsigned JWTs for the requested resource."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        resource = scopes[0].removesuffix("/.default") if scopes else "https://management.azure.com"
        return AccessToken(fake_jwt(resource), int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        token = self.get_token(*scopes)
        return AccessTokenInfo(token.token, token.expires_on)


@dataclasses.dataclass
class Recorded:
    method: str
    url: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


@dataclasses.dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    message: str
    times: int | None  # None: every time
    headers: dict[str, str]


def _system_data(created: datetime | None = None) -> dict[str, Any]:
    at = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"createdAt": at, "createdBy": "app-identity", "createdByType": "Application",
            "lastModifiedAt": at, "lastModifiedBy": "app-identity", "lastModifiedByType": "Application"}


class FakeAzureML:
    """Stateful fake of the Azure ML services the backend talks to (see the module docstring)."""

    def __init__(self, rsps: responses.RequestsMock, interface_path: str, *, foundation_tags: dict[str, str] | None = None,
                 spec: Path = FOUNDATION_SPEC) -> None:
        self.rsps = rsps
        self.requests: list[Recorded] = []
        self.failures: list[_Failure] = []
        self.violations: list[str] = []  # request bodies that do not fit the published examples
        with open(interface_path, encoding="utf-8") as f:
            self.interface = yaml.safe_load(f)
        self.use_spec(spec)
        if foundation_tags is not None:
            self.foundation_tags = dict(foundation_tags)
        self.datastores: dict[str, dict[str, Any]] = {}
        self.add_datastore(PREPARED_DATASTORE, "prepared")
        self.steps: dict[str, list[dict[str, Any]]] = {}  # job name -> run history records of its steps
        self.workspace_tracking_uri = True  # False: the workspace body has no mlFlowTrackingUri
        self.step_metrics: dict[str, dict[str, list[tuple[int, float]]]] = {}  # step run id -> metric -> points
        self.computes: dict[str, dict[str, Any]] = {}
        self.vm_sizes = list(VM_SIZES)
        self.extra_usages: list[dict[str, Any]] = []  # usage entries a test adds to the published list
        self.usages_status = 200
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.metrics: dict[str, list[tuple[datetime, float]]] = {}  # endpoint name -> (minute, average)
        self.metrics_status = 200
        # endpoint name -> deployment -> (requests, 5xx, p95 ms) in the last minute: Azure Monitor split by deployment
        self.deployment_figures: dict[str, dict[str, tuple[int, int, float]]] = {}
        for method in ("GET", "PUT", "POST", "DELETE", "PATCH"):
            rsps.add_callback(method, re.compile(r"https://.*"), callback=self._handle)
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"^/registrymanagement/v1\.0/registries/(?P<reg>[^/]+)/discovery$"), self._discovery),
            ("GET", re.compile(re.escape(REGISTRY_PATH) + r"/models/(?P<name>[^/]+)/versions$"), self._registry_model_list),
            ("GET", re.compile(re.escape(REGISTRY_PATH) + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$"), self._registry_model),
            ("GET", re.compile(re.escape(REGISTRY_PATH) + r"/components/(?P<name>[^/]+)/versions$"), self._registry_component_list),
            ("GET", re.compile(re.escape(REGISTRY_PATH) + r"/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$"), self._registry_component),
            ("GET", re.compile(re.escape(WS_ID) + r"$", re.I), self._workspace),
            ("GET", re.compile(re.escape(WS_ID) + r"/computes/(?P<name>[^/]+)$", re.I), self._compute),
            ("GET", re.compile(re.escape(WS_ID) + r"/datastores/(?P<name>[^/]+)$", re.I), self._datastore),
            ("GET", re.compile(r"^/discovery$"), self._workspace_discovery),
            ("GET", re.compile(r"^/history/v1\.0" + re.escape(WS_ID) + r"/runs/(?P<run>[^/]+)/children$", re.I), self._run_children),
            ("POST", re.compile(r"^/metric/v2\.0" + re.escape(WS_ID) + r"/runs/(?P<run>[^/]+)/list$", re.I), self._metric_list),
            ("POST", re.compile(r"^/metric/v2\.0" + re.escape(WS_ID) + r"/runs/(?P<run>[^/]+)/full$", re.I), self._metric_full),
            ("GET", re.compile(rf"^/subscriptions/{SUB}/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)/vmSizes$", re.I), self._vm_size_list),
            ("GET", re.compile(rf"^/subscriptions/{SUB}/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)/usages$", re.I), self._usages),
            ("PUT", re.compile(re.escape(WS_ID) + r"/jobs/(?P<name>[^/]+)$", re.I), self._put_job),
            ("GET", re.compile(re.escape(WS_ID) + r"/jobs/(?P<name>[^/]+)$", re.I), self._get_job),
            ("GET", re.compile(re.escape(WS_ID) + r"/models/(?P<name>[^/]+)/versions$", re.I), self._list_models),
            ("PUT", re.compile(re.escape(WS_ID) + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.I), self._put_model),
            ("GET", re.compile(re.escape(WS_ID) + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.I), self._get_model),
            ("GET", re.compile(re.escape(WS_ID) + r"/onlineEndpoints$", re.I), self._list_endpoints),
            ("PUT", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<name>[^/]+)$", re.I), self._put_endpoint),
            ("GET", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<name>[^/]+)$", re.I), self._get_endpoint),
            ("DELETE", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<name>[^/]+)$", re.I), self._delete_endpoint),
            ("POST", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<name>[^/]+)/listKeys$", re.I), self._list_keys),
            ("POST", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<name>[^/]+)/token$", re.I), self._token),
            ("GET", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<ep>[^/]+)/deployments$", re.I), self._list_deployments),
            ("PUT", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<ep>[^/]+)/deployments/(?P<name>[^/]+)$", re.I), self._put_deployment),
            ("GET", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<ep>[^/]+)/deployments/(?P<name>[^/]+)$", re.I), self._get_deployment),
            ("DELETE", re.compile(re.escape(WS_ID) + r"/onlineEndpoints/(?P<ep>[^/]+)/deployments/(?P<name>[^/]+)$", re.I), self._delete_deployment),
            ("GET", re.compile(r"/mfeOperationsStatus/[^/]+$|/mfeOperationResults/[^/]+$", re.I), self._operation_status),
            ("POST", re.compile(rf"^/subscriptions/{SUB}/metrics:getBatch$", re.I), self._metrics_batch),
        ]

    # ------------------------------------------------------------------ knobs
    def use_spec(self, spec: Path) -> None:
        """Serve another published model asset spec as the registry's foundation model."""
        self.foundation_name, self.foundation_version, self.foundation_archived = spec_identity(spec)
        self.foundation_tags, self.foundation_properties = registry_tags(spec)
        self.foundation_system_metadata = registry_system_metadata(spec)

    def fail(self, method: str, pattern: str, status: int, code: str = "", message: str = "", *, times: int | None = 1,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` matching requests (None: all) with an ARM error."""
        self.failures.append(_Failure(method.upper(), re.compile(pattern, re.I), status,
                                      code or {409: "Conflict", 429: "TooManyRequests"}.get(status, "InternalServerError"),
                                      message or f"simulated HTTP {status}", times, headers or {}))

    def add_compute(self, name: str, size: str, state: str = "Succeeded") -> None:
        self.computes[name] = {
            "id": f"{WS_ID}/computes/{name}", "name": name, "location": LOCATION,
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "identity": None,
            "properties": {
                "computeType": "AmlCompute", "computeLocation": LOCATION, "provisioningState": state,
                "provisioningErrors": [{"error": {"code": "QuotaExceeded", "message": "quota"}}] if state == "Failed" else None,
                "isAttachedCompute": False, "disableLocalAuth": True, "description": None,
                "properties": {
                    "vmSize": size, "vmPriority": "Dedicated", "osType": "Linux",
                    "scaleSettings": {"maxNodeCount": 2, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT120S"},
                    "allocationState": "Steady", "currentNodeCount": 0, "targetNodeCount": 0,
                    "remoteLoginPortPublicAccess": "Disabled", "enableNodePublicIp": True,
                },
            },
            "systemData": _system_data(),
        }

    def set_endpoint_state(self, name: str, state: str) -> None:
        self.endpoints[name]["properties"]["provisioningState"] = state

    def set_deployment_state(self, endpoint: str, state: str, name: str = "demo") -> None:
        self.deployments[(endpoint, name)]["properties"]["provisioningState"] = state

    def add_job(self, name: str, status: str = "Completed", tags: dict[str, str] | None = None) -> dict[str, Any]:
        """A pipeline job as the service returns it (for tests that start after the submission)."""
        self.jobs[name] = {
            "id": f"{WS_ID}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": {
                "jobType": "Pipeline", "status": status, "displayName": f"{FOUNDATION_NAME}-chat-bs1-cosine-ds2-lora-save_limit-1-seqlen-1",
                "experimentName": "chat-finetune-autopilot", "isArchived": False,
                "tags": dict(tags or {}), "properties": {"azureml.runsource": "azureml.PipelineRun"},
                "inputs": {}, "jobs": {}, "settings": {"force_rerun": True, "continue_on_step_failure": False},
                "outputs": {"trained_model": {"mode": "ReadWriteMount", "jobOutputType": "mlflow_model"}},
                "services": {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_ID}", "jobServiceType": "Studio"}},
            },
            # Jobs a test adds are created a second apart, as real submissions are (versions are epoch seconds).
            "systemData": _system_data(datetime.now(UTC) - timedelta(seconds=3600 - len(self.jobs))),
        }
        return self.jobs[name]

    def set_job_status(self, name: str, status: str) -> None:
        self.jobs[name]["properties"]["status"] = status

    def add_datastore(self, name: str, container: str, account: str = STORAGE_ACCOUNT, kind: str = "AzureBlob") -> None:
        """A datastore as the published Datastore/get example (2024-10-01-preview) shows it, identity-based."""
        body = example("2024-10-01-preview/examples/Datastore/get.json")["responses"]["200"]["body"]
        body.update({"id": f"{WS_ID}/datastores/{name}", "name": name, "type": "Microsoft.MachineLearningServices/workspaces/datastores"})
        props = body["properties"]
        props.update({"description": f"container {container}", "tags": {}, "datastoreType": kind,
                      "accountName": account, "credentials": {"credentialsType": "None"}})
        if kind == "AzureBlob":
            props["containerName"] = container
        else:
            props.pop("containerName", None)
            props["filesystem"] = container
        self.datastores[name] = body

    def finish_job(self, name: str, status: str = "Completed", *, failed_step: str | None = None,
                   error: tuple[str, str] = ("UserError", "CUDA out of memory"),
                   metrics: dict[str, list[tuple[int, float]]] | None = None,
                   started: datetime | None = None, minutes: tuple[int, ...] = (6, 4, 50, 10)) -> None:
        """The job ends: its steps get run history records (times, the failed step's error) and metrics."""
        self.set_job_status(name, status)
        at = started or datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        records = []
        for step, duration in zip(PIPELINE_STEPS, minutes, strict=True):
            run_id = f"{name}_{step}"
            end = at + timedelta(minutes=duration)
            state = "Completed"
            record: dict[str, Any] = {
                "runId": run_id, "parentRunId": name, "rootRunId": name, "name": run_id, "displayName": step,
                "experimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1", "runType": "azureml.StepRun",
                "startTimeUtc": at.isoformat().replace("+00:00", "Z"), "endTimeUtc": end.isoformat().replace("+00:00", "Z"),
                "properties": {"azureml.pipelinerunid": name}, "tags": {},
            }
            if failed_step == step:
                state = "Failed"
                record["error"] = {"error": {"code": error[0], "message": error[1]}}
            record["status"] = state
            records.append(record)
            if failed_step == step:
                break
            at = end
        self.steps[name] = records
        if metrics:
            self.step_metrics[f"{name}_finetune"] = dict(metrics)

    def calls(self, method: str | None = None, pattern: str | None = None) -> list[Recorded]:
        rx = re.compile(pattern, re.I) if pattern else None
        return [r for r in self.requests if (method is None or r.method == method.upper()) and (rx is None or rx.search(r.path))]

    def writes(self) -> list[Recorded]:
        """Requests that change something (PUT, PATCH, DELETE and POSTs other than reads)."""
        reads = re.compile(r"/listKeys$|/token$|metrics:getBatch$", re.I)
        return [r for r in self.requests if r.method in {"PUT", "PATCH", "DELETE"} or (r.method == "POST" and not reads.search(r.path))]

    # ------------------------------------------------------------------ dispatch
    def _handle(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        body: Any = None
        if request.body:
            raw = request.body.decode() if isinstance(request.body, bytes) else request.body
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        rec = Recorded(request.method, request.url, parts.path, parse_qs(parts.query), body, dict(request.headers))
        self.requests.append(rec)
        for failure in self.failures:
            if failure.method == request.method and failure.pattern.search(parts.path) and failure.times != 0:
                if failure.times is not None:
                    failure.times -= 1
                error = {"error": {"code": failure.code, "message": failure.message}}
                return failure.status, {"content-type": "application/json", **failure.headers}, json.dumps(error)
        for method, pattern, handler in self._routes:
            if method == request.method:
                m = pattern.search(parts.path)
                if m:
                    status, payload, *extra = handler(rec, **m.groupdict())
                    headers = {"content-type": "application/json", **(extra[0] if extra else {})}
                    return status, headers, json.dumps(payload) if payload is not None else ""
        return 404, {"content-type": "application/json"}, json.dumps(
            {"error": {"code": "UnexpectedRequest", "message": f"the fake has no route for {request.method} {parts.path}"}})

    @staticmethod
    def _not_found(what: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": {"code": "UserError", "message": f"{what} not found",
                               "details": [], "innerError": {"code": "NotFoundError"}}}

    def _async_headers(self) -> dict[str, str]:
        """The headers the spec declares for a PUT 201 of a long-running operation."""
        op = uuid.uuid4().hex
        status_url = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/{LOCATION}/mfeOperationsStatus/{op}?api-version=2023-04-01-preview"
        return {"Azure-AsyncOperation": status_url, "x-ms-async-operation-timeout": "PT1H"}

    # ------------------------------------------------------------------ registry
    def _discovery(self, rec: Recorded, reg: str) -> tuple[int, Any]:
        if reg != REGISTRY:
            return self._not_found(f"registry {reg}")
        return 200, {"registryName": REGISTRY, "tenantId": "72f988bf-0000-0000-0000-000000000000", "primaryRegion": LOCATION,
                     "regions": [LOCATION, "westeurope"], "subscriptionId": REGISTRY_SUB, "resourceGroup": REGISTRY_RG,
                     "workspaceName": None, "primaryRegionResourceProviderUri": REGISTRY_HOST}

    def foundation_body(self, version: str | None = None) -> dict[str, Any]:
        version = version or self.foundation_version
        asset_id = f"azureml://registries/{REGISTRY}/models/{self.foundation_name}/versions/{version}"
        return {
            "id": asset_id, "name": version, "type": "Microsoft.MachineLearningServices/registries/models/versions",
            "properties": {
                "description": f"{self.foundation_name} from the azureml registry.",
                "tags": self.foundation_tags, "properties": self.foundation_properties,
                **({"system_metadata": self.foundation_system_metadata} if self.foundation_system_metadata else {}),
                "isArchived": self.foundation_archived, "isAnonymous": False,
                "flavors": {"transformers": {"data": {"task": "text-generation"}}, "python_function": {"data": {"loader_module": "mlflow.transformers"}}},
                "modelType": "mlflow_model", "modelUri": asset_id, "jobName": None, "stage": None,
            },
            "systemData": _system_data(datetime(2024, 5, 1, tzinfo=UTC)),
        }

    def _registry_model_list(self, rec: Recorded, name: str) -> tuple[int, Any]:
        if name != self.foundation_name:
            return 200, {"value": []}
        return 200, {"value": [self.foundation_body()]}

    def _registry_model(self, rec: Recorded, name: str, version: str) -> tuple[int, Any]:
        if name != self.foundation_name:
            return self._not_found(f"model {name}")
        return 200, self.foundation_body(version)

    def component_body(self, version: str = COMPONENT_VERSION) -> dict[str, Any]:
        spec = {
            "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json",
            "name": self.interface["name"], "version": version, "display_name": "Chat Completion Pipeline",
            "type": "pipeline", "is_deterministic": True,
            "inputs": copy.deepcopy(self.interface["inputs"]), "outputs": copy.deepcopy(self.interface["outputs"]),
        }
        return {
            "id": f"azureml://registries/{REGISTRY}/components/{spec['name']}/versions/{version}",
            "name": version, "type": "Microsoft.MachineLearningServices/registries/components/versions",
            "properties": {"description": "Pipeline component for chat completion", "tags": {}, "properties": {},
                           "isArchived": False, "isAnonymous": False, "componentSpec": spec},
            "systemData": _system_data(datetime(2024, 6, 1, tzinfo=UTC)),
        }

    def _registry_component_list(self, rec: Recorded, name: str) -> tuple[int, Any]:
        return 200, {"value": [self.component_body()] if name == self.interface["name"] else []}

    def _registry_component(self, rec: Recorded, name: str, version: str) -> tuple[int, Any]:
        if name != self.interface["name"]:
            return self._not_found(f"component {name}")
        return 200, self.component_body(version)

    # ------------------------------------------------------------------ workspace
    def _workspace(self, rec: Recorded) -> tuple[int, Any]:
        body = self._workspace_body()
        if not self.workspace_tracking_uri:
            body["properties"].pop("mlFlowTrackingUri")
        return 200, body

    def _workspace_body(self) -> dict[str, Any]:
        return {
            "id": WS_ID, "name": WS, "type": "Microsoft.MachineLearningServices/workspaces", "location": LOCATION,
            "kind": "Default", "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": "t"},
            "properties": {
                "friendlyName": WS, "workspaceId": "0e8a2b14-7777-4888-9999-aaaabbbbcccc", "provisioningState": "Succeeded",
                "storageAccount": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/stfinetune",
                "keyVault": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/kv-finetune",
                "discoveryUrl": f"https://{LOCATION}.api.azureml.ms/discovery",
                "mlFlowTrackingUri": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WS_ID}",
                "publicNetworkAccess": "Enabled", "hbiWorkspace": False, "v1LegacyMode": False,
            },
            "systemData": _system_data(datetime(2024, 1, 1, tzinfo=UTC)),
        }

    def _compute(self, rec: Recorded, name: str) -> tuple[int, Any]:
        if name not in self.computes:
            return self._not_found(f"compute {name}")
        return 200, self.computes[name]

    def _datastore(self, rec: Recorded, name: str) -> tuple[int, Any]:
        if name not in self.datastores:
            return self._not_found(f"datastore {name}")
        return 200, self.datastores[name]

    def _workspace_discovery(self, rec: Recorded) -> tuple[int, Any]:
        # What the workspace's discoveryUrl answers: the regional service hosts (the SDK reads "api").
        host = f"https://{LOCATION}.api.azureml.ms"
        return 200, {"api": host, "catalog": host, "experimentation": host, "gallery": host, "history": host,
                     "hyperdrive": host, "labeling": host, "modelmanagement": host, "pipelines": host,
                     "studio": "https://ml.azure.com"}

    def _run_children(self, rec: Recorded, run: str) -> tuple[int, Any]:
        if run not in self.jobs:
            return self._not_found(f"run {run}")
        return 200, {"value": self.steps.get(run, []), "continuationToken": None, "nextLink": None}

    def _metric_list(self, rec: Recorded, run: str) -> tuple[int, Any]:
        names = self.step_metrics.get(run, {})
        return 200, {"value": [{"metricKey": {"namespace": None, "name": n, "labels": [], "columnNames": [n]},
                                "columns": {n: "Double"}, "properties": {"uxMetricType": "azureml.v1.scalar"}} for n in names],
                     "continuationToken": None, "nextLink": None}

    def _metric_full(self, rec: Recorded, run: str) -> tuple[int, Any]:
        name = (rec.body or {}).get("metricName")
        points = self.step_metrics.get(run, {}).get(name)
        if points is None:
            return self._not_found(f"metric {name} of run {run}")
        return 200, {"dataContainerId": f"dcid.{run}", "name": name, "columns": {name: "Double"},
                     "properties": {"uxMetricType": "azureml.v1.scalar"}, "namespace": None, "standardSchemaId": None,
                     "value": [{"metricId": uuid.uuid4().hex, "createdUtc": "2026-11-30T10:00:00Z", "step": step, "data": {name: value}}
                               for step, value in points],
                     "continuationToken": None, "nextLink": None}

    def _usages(self, rec: Recorded, loc: str) -> tuple[int, Any]:
        """The published Usage/list example (an excerpt, tests/fixtures/rest-api-specs), plus what a test adds."""
        if self.usages_status != 200:
            return self.usages_status, {"error": {"code": "AuthorizationFailed", "message": "no locations/usages/read"}}
        body = copy.deepcopy(USAGES_EXAMPLE["responses"]["200"]["body"])
        body["value"].extend(copy.deepcopy(self.extra_usages))
        return 200, body

    def _vm_size_list(self, rec: Recorded, loc: str) -> tuple[int, Any]:
        return 200, {"value": [{"osVhdSizeMB": 1047552, "maxResourceVolumeMB": 65536, "lowPriorityCapable": True,
                                "premiumIO": True, "supportedComputeTypes": ["ComputeInstance", "AmlCompute"], **s}
                               for s in self.vm_sizes]}

    # ------------------------------------------------------------------ jobs
    def _put_job(self, rec: Recorded, name: str) -> tuple[int, Any]:
        published = example("2024-01-01-preview/examples/Job/PipelineJob/createOrUpdate.json")
        template = copy.deepcopy(published["parameters"]["body"])
        # Declared in the spec's definitions but not in the example: JobBase.isArchived and
        # PipelineJob.jobs (a free-form map of the pipeline's nodes, checked against the component
        # interface by the tests).
        template["properties"].update(isArchived=False, jobs={})
        bad = self._check_body(rec, template, "pipeline job")
        if bad:
            return bad
        body = copy.deepcopy(rec.body)
        body.update({"id": f"{WS_ID}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                     "systemData": _system_data()})
        body["properties"]["status"] = "NotStarted"
        body["properties"]["services"] = {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_ID}", "jobServiceType": "Studio"}}
        self.jobs[name] = body
        return 201, body

    def _get_job(self, rec: Recorded, name: str) -> tuple[int, Any]:
        if name not in self.jobs:
            return self._not_found(f"job {name}")
        return 200, self.jobs[name]

    # ------------------------------------------------------------------ models
    def _put_model(self, rec: Recorded, name: str, version: str) -> tuple[int, Any]:
        published = example("2023-08-01-preview/examples/Workspace/ModelVersion/createOrUpdate.json")
        template = copy.deepcopy(published["parameters"]["body"])
        template["properties"]["isArchived"] = False  # AssetBase.isArchived: in the spec's definitions, not in the example
        bad = self._check_body(rec, template, "model version")
        if bad:
            return bad
        body = _fill(published["responses"]["201"]["body"], rec.body)
        body.update({"id": f"{WS_ID}/models/{name}/versions/{version}", "name": version,
                     "type": "Microsoft.MachineLearningServices/workspaces/models/versions", "systemData": _system_data()})
        if "flavors" not in (rec.body.get("properties") or {}):
            body["properties"]["flavors"] = {"python_function": {"data": {"loader_module": "mlflow.transformers"}}}
        self.models[(name, version)] = body
        return 201, body

    def _list_models(self, rec: Recorded, name: str) -> tuple[int, Any]:
        return 200, {"value": [m for (n, _), m in self.models.items() if n == name]}

    def _get_model(self, rec: Recorded, name: str, version: str) -> tuple[int, Any]:
        if (name, version) not in self.models:
            return self._not_found(f"model {name}:{version}")
        return 200, self.models[(name, version)]

    # ------------------------------------------------------------------ endpoints
    def _check_api_version(self, rec: Recorded, published: dict[str, Any], what: str) -> tuple[int, Any] | None:
        """The request's api-version is the published example's (ARM answers another one by its own rules)."""
        sent = (rec.query.get("api-version") or [""])[0]
        wanted = published["parameters"]["api-version"]
        if sent == wanted:
            return None
        self.violations.append(f"{rec.method} {rec.path}: api-version {sent}, the example's is {wanted}")
        return 400, {"error": {"code": "BadRequest", "message": f"{what}: api-version {sent} is not the example's {wanted}"}}

    def _check_body(self, rec: Recorded, template: dict[str, Any], what: str, *, strict: bool = False) -> tuple[int, Any] | None:
        problems = unknown_keys(rec.body, template, strict=strict)
        if not problems:
            return None
        self.violations.append(f"{rec.method} {rec.path}: {', '.join(problems)}")
        return 400, {"error": {"code": "BadRequest", "message": f"{what}: unknown properties {', '.join(problems)}"}}

    def _put_endpoint(self, rec: Recorded, name: str) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        published = example(ENDPOINT_PUT_EXAMPLE)
        bad = (self._check_api_version(rec, published, "online endpoint")
               or self._check_body(rec, published["parameters"]["body"], "online endpoint", strict=True))
        if bad:
            return bad
        previous = self.endpoints.get(name)
        body = _fill(published["responses"]["201"]["body"], rec.body)
        body["properties"].pop("compute", None)  # managed endpoints have no compute
        body["properties"].update({
            "provisioningState": "Updating" if previous else "Creating",
            "scoringUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
            "swaggerUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/swagger.json",
            "traffic": dict((rec.body.get("properties") or {}).get("traffic") or {}),
            "properties": dict((rec.body.get("properties") or {}).get("properties") or {}),
        })
        body.update({"id": f"{WS_ID}/onlineEndpoints/{name}", "name": name,
                     "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                     "kind": "Managed", "location": rec.body.get("location", LOCATION), "tags": dict(rec.body.get("tags") or {}),
                     "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": str(uuid.uuid4())},
                     "systemData": previous["systemData"] if previous else _system_data()})
        body.pop("sku", None)
        self.endpoints[name] = body
        return 201, body, self._async_headers()

    def _get_endpoint(self, rec: Recorded, name: str) -> tuple[int, Any]:
        bad = self._check_api_version(rec, example("2022-02-01-preview/examples/OnlineEndpoint/get.json"), "online endpoint")
        if bad:
            return bad
        if name not in self.endpoints:
            return self._not_found(f"endpoint {name}")
        return 200, self.endpoints[name]

    def _list_endpoints(self, rec: Recorded) -> tuple[int, Any]:
        return 200, {"value": list(self.endpoints.values())}

    def _delete_endpoint(self, rec: Recorded, name: str) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        bad = self._check_api_version(rec, example("2022-02-01-preview/examples/OnlineEndpoint/delete.json"), "online endpoint")
        if bad:
            return bad
        if name not in self.endpoints:
            return 204, None, {}
        self.endpoints[name]["properties"]["provisioningState"] = "Deleting"
        op = uuid.uuid4().hex
        # The headers the spec declares for the DELETE 202 (Retry-After between 10 and 600 s).
        return 202, None, {
            "Location": f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/{LOCATION}/mfeOperationResults/{op}?api-version=2022-02-01-preview",
            "Retry-After": "10", "x-ms-async-operation-timeout": "PT1H",
        }

    def _list_keys(self, rec: Recorded, name: str) -> tuple[int, Any]:
        if name not in self.endpoints:
            return self._not_found(f"endpoint {name}")
        return 200, {"primaryKey": f"pk-{name}", "secondaryKey": f"sk-{name}"}

    def _token(self, rec: Recorded, name: str) -> tuple[int, Any]:
        now = int(time.time())
        return 200, {"accessToken": f"aml-token-{name}", "expiryTimeUtc": now + 3600, "refreshAfterTimeUtc": now + 1800, "tokenType": "Bearer"}

    def _put_deployment(self, rec: Recorded, ep: str, name: str) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        published = example(DEPLOYMENT_PUT_EXAMPLE)
        bad = (self._check_api_version(rec, published, "online deployment")
               or self._check_body(rec, published["parameters"]["body"], "online deployment"))
        if bad:
            return bad
        if ep not in self.endpoints:
            return self._not_found(f"endpoint {ep}")
        body = _fill(published["responses"]["201"]["body"], rec.body)
        props = body["properties"]
        for key in ("codeConfiguration", "environmentId", "environmentVariables", "modelMountPath", "description"):
            if key not in (rec.body.get("properties") or {}):
                props.pop(key, None)  # example placeholders the request did not set
        props["provisioningState"] = "Creating"
        props["properties"] = dict((rec.body.get("properties") or {}).get("properties") or {})
        body.update({"id": f"{WS_ID}/onlineEndpoints/{ep}/deployments/{name}", "name": name,
                     "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                     "kind": "Managed", "location": rec.body.get("location", LOCATION), "tags": dict(rec.body.get("tags") or {}),
                     "systemData": _system_data()})
        body.pop("identity", None)
        body["sku"] = {"name": "Default", "tier": "Standard", "capacity": int((rec.body.get("sku") or {}).get("capacity", 1))}
        self.deployments[(ep, name)] = body
        return 201, body, self._async_headers()

    def _get_deployment(self, rec: Recorded, ep: str, name: str) -> tuple[int, Any]:
        # The deployment operations' api-version (the index holds no GET example of it; the PUT's is the same client's).
        bad = self._check_api_version(rec, example(DEPLOYMENT_PUT_EXAMPLE), "online deployment")
        if bad:
            return bad
        if (ep, name) not in self.deployments:
            return self._not_found(f"deployment {name} of endpoint {ep}")
        return 200, self.deployments[(ep, name)]

    def _delete_deployment(self, rec: Recorded, ep: str, name: str) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        example("2022-02-01-preview/examples/OnlineDeployment/delete.json")  # no body; 200, 202 or 204
        # Sent by the deployment operations' client (2023-04-01-preview), whose DELETE has no copied example
        # (tests/fixtures/rest-api-specs/SOURCES.md): the api-version is that client's, as for its PUT.
        bad = self._check_api_version(rec, example(DEPLOYMENT_PUT_EXAMPLE), "online deployment")
        if bad:
            return bad
        if (ep, name) not in self.deployments:
            return 204, None, {}
        self.deployments[(ep, name)]["properties"]["provisioningState"] = "Deleting"
        op = uuid.uuid4().hex
        return 202, None, {  # the headers the spec declares for a DELETE 202
            "Location": f"{ARM}/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/{LOCATION}/mfeOperationResults/{op}?api-version=2023-04-01-preview",
            "Retry-After": "10", "x-ms-async-operation-timeout": "PT1H",
        }

    def finish_deployment_deletion(self, endpoint: str, name: str) -> None:
        self.deployments.pop((endpoint, name), None)

    def _list_deployments(self, rec: Recorded, ep: str) -> tuple[int, Any]:
        if ep not in self.endpoints:
            return self._not_found(f"endpoint {ep}")
        return 200, {"value": [d for (e, _), d in self.deployments.items() if e == ep]}

    def _operation_status(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        return 200, {"status": "InProgress"}, {}

    # ------------------------------------------------------------------ metrics
    def _metrics_batch(self, rec: Recorded) -> tuple[int, Any]:
        if self.metrics_status != 200:
            return self.metrics_status, {"error": {"code": "AuthorizationFailed", "message": "no Monitoring Reader role"}}
        values = []
        wanted = (rec.query.get("metricnames") or [""])[0]
        refused = refuse_unpublished_query(rec.query)
        if refused:
            return 400, {"error": {"code": "BadRequest", "message": refused}}
        if wanted in ("RequestsPerMinute", "RequestLatency_P95") and "deployment" in (rec.query.get("filter") or [""])[0]:
            aggregation = (rec.query.get("aggregation") or ["Average"])[0].lower()
            return 200, {"values": [self._deployment_split(r, wanted, aggregation) for r in rec.body["resourceids"]]}
        for resource_id in rec.body["resourceids"]:
            name = resource_id.rsplit("/", 1)[-1]
            points = self.metrics.get(name, [])
            values.append({
                "starttime": (datetime.now(UTC) - timedelta(hours=2)).isoformat(), "endtime": datetime.now(UTC).isoformat(),
                "interval": "PT1M", "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "resourceregion": LOCATION, "resourceid": resource_id,
                "value": [{
                    "id": f"{resource_id}/providers/Microsoft.Insights/metrics/RequestsPerMinute",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": "RequestsPerMinute", "localizedValue": "Requests Per Minute"},
                    "displayDescription": "The number of requests sent to online endpoint within a minute",
                    "unit": "Count", "errorCode": "Success",
                    "timeseries": [{"metadatavalues": [], "data": [
                        {"timeStamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "average": v} for t, v in points]}],
                }],
            })
        return 200, {"values": values}


    def _deployment_split(self, resource_id: str, metric: str, aggregation: str) -> dict[str, Any]:
        """One resource's metric split by deployment (and status code class), as Azure Monitor's batch answers."""
        name = resource_id.rsplit("/", 1)[-1]
        minute = datetime.now(UTC).replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")

        def dims(**values: str) -> list[dict[str, Any]]:
            return [{"name": {"value": k, "localizedValue": k}, "value": v} for k, v in values.items()]

        series = []
        for deployment, (requests, errors, p95) in self.deployment_figures.get(name, {}).items():
            if metric == "RequestsPerMinute":
                for status_class, total in (("2xx", requests - errors), ("5xx", errors)):
                    if total:
                        series.append({"metadatavalues": dims(deployment=deployment, statusCodeClass=status_class),
                                       "data": [{"timeStamp": minute, aggregation: total}]})
            else:
                series.append({"metadatavalues": dims(deployment=deployment), "data": [{"timeStamp": minute, aggregation: p95}]})
        return {"starttime": minute, "endtime": minute, "interval": "PT1M",
                "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints", "resourceregion": LOCATION,
                "resourceid": resource_id,
                "value": [{"id": f"{resource_id}/providers/Microsoft.Insights/metrics/{metric}", "type": "Microsoft.Insights/metrics",
                           "name": {"value": metric, "localizedValue": metric}, "unit": "Count" if metric == "RequestsPerMinute"
                           else "Milliseconds", "errorCode": "Success", "timeseries": series}]}


def published_endpoint_metrics() -> dict[str, dict[str, Any]]:
    """Azure Monitor's table of the endpoint resource's metrics (tests/fixtures/azure-monitor):
    REST name -> {"aggregations": {...}, "dimensions": {...}} (lower case)."""
    text = (FIXTURES / "azure-monitor" / "microsoft-machinelearningservices-workspaces-onlineendpoints-metrics.md").read_text()
    table: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("`"):
            table[cells[1].strip("`")] = {
                "aggregations": {a.strip().lower() for a in cells[4].split(",")},
                "dimensions": set(re.findall(r"`([^`]+)`", cells[5].lower())),
            }
    return table


def refuse_unpublished_query(query: dict[str, list[str]]) -> str | None:
    """Why Azure Monitor would not answer a metrics query of an endpoint as the published table
    describes it (a metric, aggregation or dimension it does not list), or None."""
    table = published_endpoint_metrics()
    for name in (query.get("metricnames") or [""])[0].split(","):
        if name not in table:
            return f"metric {name!r} is not a metric of online endpoints"
        for aggregation in (query.get("aggregation") or [])[:1]:
            for one in aggregation.split(","):
                if one.lower() not in table[name]["aggregations"]:
                    return f"metric {name!r} does not support aggregation {one!r}"
        for dimension in re.findall(r"(\w+)\s+(?:eq|ne)\s", (query.get("filter") or [""])[0]):
            if dimension.lower() not in table[name]["dimensions"]:
                return f"metric {name!r} has no dimension {dimension!r}"
    return None


# --- a backend on this fake, and reading what it sent ------------------------------------------

MODEL_NAME = "phi-4-chat-ft"
FOUNDATION_ID = f"azureml://registries/azureml/models/{FOUNDATION_NAME}/versions/{FOUNDATION_VERSION}"
LITERAL_TYPES = {"string", "integer", "number", "boolean"}


def azure_settings(**env: str):
    env.setdefault("AzureWebJobsStorage__accountName", STORAGE_ACCOUNT)  # the account the fake's datastore is on
    return make_settings(ML_BACKEND="azureml", AZURE_SUBSCRIPTION_ID=SUB, AZURE_RESOURCE_GROUP=RG, AZURE_ML_WORKSPACE=WS, **env)


def make_backend(settings, today=MODEL_WAS_CURRENT) -> AzureMLBackend:
    # Two quick retries: the SDK's own retry policy is exercised without the production back-off.
    # ``today``: the published model (version 15) was current then; see test_azureml_fidelity for its retirement.
    return AzureMLBackend(settings, credential=FakeCredential(), client_kwargs={"retry_total": 2, "retry_backoff_factor": 0.01},
                          today=lambda: today)


def request_for(dataset_id: str = "ds-0123456789abcdef", **params: Any) -> FineTuneRequest:
    return FineTuneRequest(
        dataset_id=dataset_id,
        train_blob=f"datasets/{dataset_id}/train.jsonl",
        test_blob=f"datasets/{dataset_id}/test.jsonl",
        model_name=MODEL_NAME,
        tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "dataset_id": dataset_id},
        params=params,
    )


def job_put(azure: FakeAzureML) -> tuple[str, dict[str, Any]]:
    puts = azure.calls("PUT", r"/jobs/")
    assert len(puts) == 1, [c.path for c in puts]
    return puts[0].path.rsplit("/", 1)[-1], puts[0].body


def node_of(body: dict[str, Any]) -> dict[str, Any]:
    jobs = body["properties"]["jobs"]
    assert len(jobs) == 1
    return next(iter(jobs.values()))
