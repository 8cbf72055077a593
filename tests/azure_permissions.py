"""Which assigned role allows each request the app and the post-deploy step send (issue 25.2).

For every management and data-plane request the fakes record (``FakeAzureML`` for the app,
``tests.fakes.arm.FakeArm`` for the post-deploy step), the Azure RBAC operation it needs and its
scope are derived the way Azure does:

- ARM (``management.azure.com``): ``<provider>/<type>[/<child type>...]/<read|write|delete>`` for
  GET/PUT/DELETE, ``.../<name>/action`` for a POST to ``<resource>/<name>``, checked at the
  resource's id (a list at its parent);
- Azure ML run history (``/history/v1.0/...``, ``/metric/v2.0/...`` on the workspace's regional
  host): ``Microsoft.MachineLearningServices/workspaces/experiments/runs/read`` at the workspace
  (azure-docs how-to-assign-roles, MLflow operations table);
- Azure Monitor metrics (``metrics:getBatch``): ``Microsoft.Insights/metrics/read`` on every
  resource id of the body;
- the ``azureml`` system registry: public to any signed-in identity (no assignment needed; a
  private registry would need AzureML Registry User).

Then the roles the Bicep template assigns to that identity at a scope containing the request's
(``infra/modules/role-assignments.bicep``, read by ``tests.infra_template``) are matched with the
published role definitions (``tests/fixtures/azure/role-permissions.json``): an operation is
allowed when a role's ``actions`` (``dataActions``) match it and its ``notActions``
(``notDataActions``) do not, with Azure's wildcard rule: ``*`` matches any characters, and
``a/*/b`` also matches ``a/b`` (the published AzureML Data Scientist lists
``workspaces/write`` among its notActions, which only makes sense if ``workspaces/*/write``
covers it); case-insensitive. The post-deploy step runs as the ``azd`` user, whom the template
does not assign anything: it is checked against the role docs/deploying.md requires of that user
(Contributor on the resource group).

``.venv/bin/python -m tests.azure_permissions`` prints every operation with the role that allows it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from tests import infra_template as tpl
from tests.support import FIXTURES

ROLE_FILE = FIXTURES / "azure" / "role-permissions.json"
RUN_HISTORY_READ = "Microsoft.MachineLearningServices/workspaces/experiments/runs/read"
METRICS_READ = "Microsoft.Insights/metrics/read"
PUBLIC_REGISTRY = "public: the azureml system registry"
AZD_USER_ROLE = "Contributor"  # what docs/deploying.md asks of the user who runs azd up, on the resource group


def roles() -> dict[str, dict[str, Any]]:
    return json.loads(ROLE_FILE.read_text(encoding="utf-8"))["roles"]


def _wildcard(pattern: str) -> re.Pattern[str]:
    text = re.escape(pattern).replace(r"\*", ".*")
    text = text.replace("/.*/", "(?:/.*)?/")  # a/*/b matches a/x/b and a/b
    return re.compile(f"^{text}$", re.I)


def matches(patterns: Iterable[str], operation: str) -> bool:
    return any(_wildcard(p).match(operation) for p in patterns)


def role_allows(role: Mapping[str, Any], operation: str, data: bool) -> bool:
    allow, deny = ("dataActions", "notDataActions") if data else ("actions", "notActions")
    return matches(role.get(allow, []), operation) and not matches(role.get(deny, []), operation)


@dataclasses.dataclass(frozen=True)
class Operation:
    request: str  # "METHOD host/path" as sent (query left out)
    action: str  # the RBAC operation it needs, or PUBLIC_REGISTRY
    data: bool  # a data action
    scope: str  # resource id it is checked at ("" for the public registry)


@dataclasses.dataclass(frozen=True)
class Assignment:
    role: str
    scope: str  # resource id


def arm_operation(method: str, path: str) -> tuple[str, str]:
    """(operation, scope) of an ARM request path."""
    parts = [p for p in path.strip("/").split("/") if p]
    low = [p.lower() for p in parts]
    if "providers" not in low:  # /subscriptions/{s}[/resourceGroups/{rg}]
        raise ValueError(f"not a provider path: {path}")
    i = len(low) - 1 - low[::-1].index("providers")
    prefix, namespace, rest = parts[:i], parts[i + 1], parts[i + 2:]
    types, names = rest[0::2], rest[1::2]
    verb = {"GET": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method.upper())
    if method.upper() == "POST":  # <resource>/<action name>
        action_name = types[-1] if len(types) > len(names) else names[-1]
        res_types = types[:-1] if len(types) > len(names) else types[:-1]
        scope_parts = rest[: 2 * len(res_types)]
        return f"{namespace}/{'/'.join(res_types + [action_name])}/action", "/" + "/".join(prefix + ["providers", namespace] + scope_parts)
    if verb is None:
        raise ValueError(f"method {method} of {path}")
    scope_parts = rest if len(types) == len(names) else rest[:-1]  # a list is checked at its parent
    return f"{namespace}/{'/'.join(types)}/{verb}", "/" + "/".join(prefix + ["providers", namespace] + scope_parts)


_WS_DATA = re.compile(r"^/(?:history/v1\.0|metric/v2\.0)(?P<ws>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                      r"Microsoft\.MachineLearningServices/workspaces/[^/]+)/", re.I)


def operations_of(records: Iterable[Any]) -> list[Operation]:
    """The RBAC operations of recorded requests (objects with ``method``, ``url`` and ``body``)."""
    found: list[Operation] = []
    for rec in records:
        url = urlsplit(rec.url)
        request = f"{rec.method} {url.netloc}{url.path}"
        path = url.path
        if url.netloc == "management.azure.com":
            if re.search(r"/mfeOperation(?:s)?(?:Status|Results)/", path, re.I):
                continue  # polling an operation the app started: never sent (no pollers), listed would be wrong
            action, scope = arm_operation(rec.method, path)
            found.append(Operation(request, action, False, scope))
        elif path.endswith("metrics:getBatch"):
            for resource in (rec.body or {}).get("resourceids", []):
                found.append(Operation(request, METRICS_READ, False, resource))
        elif "/registries/" in path.lower() and ("/registrymanagement/" in path or "/mferp/" in path):
            found.append(Operation(request, PUBLIC_REGISTRY, False, ""))
        elif m := _WS_DATA.match(path):
            found.append(Operation(request, RUN_HISTORY_READ, False, m["ws"]))
        elif path == "/discovery":
            continue  # the workspace's discovery document: anonymous
        else:
            raise ValueError(f"no RBAC rule for {request}: add one here")
    return found


def allowing_role(op: Operation, assignments: Iterable[Assignment], definitions: Mapping[str, Any]) -> str | None:
    if op.action == PUBLIC_REGISTRY:
        return PUBLIC_REGISTRY
    for a in assignments:
        inside = op.scope.lower() == a.scope.lower() or op.scope.lower().startswith(a.scope.lower().rstrip("/") + "/")
        if inside and role_allows(definitions[a.role], op.action, op.data):
            return f"{a.role} at {a.scope}"
    return None


def check(ops: Iterable[Operation], assignments: Iterable[Assignment]) -> list[tuple[Operation, str | None]]:
    definitions = roles()
    listed = list(assignments)
    seen: dict[tuple[str, str, str], tuple[Operation, str | None]] = {}
    for op in ops:
        key = (op.request.split(" ", 1)[0], op.action, op.scope)
        seen.setdefault(key, (op, allowing_role(op, listed, definitions)))
    return list(seen.values())


# --------------------------------------------------------------------------- what the template assigns

def template_assignments(principal: str, scopes: Mapping[str, str]) -> list[Assignment]:
    """The roles role-assignments.bicep gives ``principal``, at the concrete ids ``scopes`` names by scope symbol."""
    by_id = {v["id"]: k for k, v in roles().items()}
    ids = tpl.role_table()
    name_of = {v: k for k, v in ids.items()}
    found = []
    for ra in tpl.role_assignments():
        if ra.principal != principal or ra.scope not in scopes:
            continue
        role = by_id.get(ra.role_id or "") or name_of.get(ra.role_id or "")
        if role in roles():
            found.append(Assignment(role, scopes[ra.scope]))
    return found


# --------------------------------------------------------------------------- the two identities' requests

def app_requests() -> tuple[list[Any], dict[str, str]]:
    """Every Azure ML / Monitor request of a full cycle on the fakes, and the fake's scope ids."""
    import responses

    from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
    from shared.backends.base import ModelRef
    from tests.azureml_fakes import WS_ID, FakeAzureML, azure_settings, make_backend, request_for

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        azure = FakeAzureML(rsps, str(INTERFACE_PATH))
        backend = make_backend(azure_settings(QUALITY_GATE="true"))
        job = backend.submit_finetune(request_for())
        azure.finish_job(job, metrics={"train_loss": [(0, 2.0), (1, 1.5)]})
        backend.get_job(job)
        ref = backend.register_model(job, "phi-4-chat-ft")
        ep = "phi-ep-perm"
        backend.begin_deploy(ref, ep, {})
        azure.set_endpoint_state(ep, "Succeeded")
        backend.get_endpoint(ep)
        azure.set_deployment_state(ep, "Succeeded")
        backend.get_endpoint(ep)
        backend.set_traffic(ep)
        backend.get_scoring_target(ep)
        backend.list_endpoints()
        backend.begin_deploy_deployment(ModelRef(ref.name, ref.version, job), ep, "candidate")
        backend.get_deployment(ep, "candidate")
        backend.begin_delete_deployment(ep, "candidate")
        backend.begin_delete_endpoint(ep)
    storage = "/subscriptions/x/resourceGroups/x/providers/Microsoft.Storage/storageAccounts/x"
    return list(azure.requests), {"workspace": WS_ID, "storage": storage}


def postdeploy_requests() -> tuple[list[Any], str]:
    """Every ARM request of a first post-deploy run on the fake (keys appear on the second read), and the resource group id."""
    import responses

    from scripts import azure_postdeploy as postdeploy
    from tests.azureml_fakes import FakeCredential
    from tests.fakes.arm import ENV, RG, SUB, FakeArm

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        arm = FakeArm(rsps)
        arm.key_after = 1
        target = postdeploy.DeployTarget.from_env(ENV)
        postdeploy.run(target, FakeCredential(), sleep=lambda s: None, delay_s=0.0)
        postdeploy.run(target, FakeCredential(), sleep=lambda s: None, delay_s=0.0)  # second run: reads back, updates nothing
    records = [dataclasses.make_dataclass("Rec", ["method", "url", "body"])(m, f"https://management.azure.com{p}", b)
               for m, p, b in arm.requests]
    return records, f"/subscriptions/{SUB}/resourceGroups/{RG}"


def app_check() -> list[tuple[Operation, str | None]]:
    records, scopes = app_requests()
    return check(operations_of(records), template_assignments("appPrincipalId", scopes))


def postdeploy_check(role: str = AZD_USER_ROLE) -> list[tuple[Operation, str | None]]:
    records, rg = postdeploy_requests()
    return check(operations_of(records), [Assignment(role, rg)])


_SHORT = re.compile(r"/subscriptions/[^/]+(?:/resourceGroups/[^/]+)?(?:/providers/)?", re.I)


def _short(text: str) -> str:
    return _SHORT.sub(".../", text)


def main() -> int:
    bad = 0
    for title, rows in (("app identity: roles of infra/modules/role-assignments.bicep", app_check()),
                        (f"post-deploy step as the azd user: {AZD_USER_ROLE} on the resource group", postdeploy_check())):
        print(f"## {title}")
        for op, role in rows:
            bad += role is None
            print(f"{'ok    ' if role else 'DENIED'} {_short(op.request)}\n       {op.action}: {_short(role) if role else 'no assigned role allows it'}")
        print()
    return 1 if bad else 0


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    sys.exit(main())
