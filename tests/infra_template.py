"""Read what infra/ gives Azure (app settings, role assignments, containers, outputs) from its Bicep.

Built on the pycep JSON of tests/bicep_checks.py. Values are resolved through variables and
parameter defaults where they are literals; anything computed at deployment time stays an
:class:`Expr` with its Bicep-like text (e.g. ``identity.outputs.clientId``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from tests.bicep_checks import INFRA, ROOT, access_chain, body_of, is_expression, parse

MAIN = INFRA / "main.bicep"
ROLE_ASSIGNMENTS = INFRA / "modules" / "role-assignments.bicep"
ROLE_TABLE = Path(__file__).resolve().parent / "fixtures" / "azure" / "role-definitions.json"
ROLE_ASSIGNMENT_TYPE = "Microsoft.Authorization/roleAssignments"


@dataclasses.dataclass(frozen=True)
class Expr:
    """A value known only at deployment time."""

    text: str


def render(value: Any) -> str:
    """Bicep-like text of a pycep value (for messages and the docs/deploying.md table)."""
    chain = access_chain(value)
    if chain:
        return ".".join(chain)
    if is_expression(value) and value.get("operator", {}).get("type") == "property_accessor":
        ops = value["operator"]["operands"]
        return f"{render(ops['operand_1'])}.{render(ops['operand_2'])}"
    if is_expression(value) and "function" in value:
        fn = value["function"]
        args = ", ".join(render(v) for v in fn.get("parameters", {}).values() if v is not None)
        return f"{fn['type']}({args})"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def resolve(value: Any, doc: dict[str, Any]) -> Any:
    """Literal value of ``value`` in ``doc`` when it is one (through variables / param defaults)."""
    seen = 0
    while isinstance(value, str) and seen < 20:
        seen += 1
        if value in doc.get("variables", {}):
            value = doc["variables"][value]["value"]
        elif value in doc.get("parameters", {}) and doc["parameters"][value].get("default") is not None:
            value = doc["parameters"][value]["default"]
        else:
            break
    if isinstance(value, str) and value in (set(doc.get("parameters", {})) | set(doc.get("resources", {})) | set(doc.get("modules", {}))):
        return Expr(value)
    if is_expression(value) or (isinstance(value, str) and "${" in value):
        return Expr(render(value))
    return value


@functools.lru_cache(maxsize=1)
def main_doc() -> dict[str, Any]:
    return parse(MAIN)


def app_settings_raw() -> dict[str, Any]:
    """The ``appSettings`` object of main.bicep (name -> pycep value)."""
    return {k.strip("'"): v for k, v in main_doc()["variables"]["appSettings"]["value"].items()}


def app_settings() -> dict[str, Any]:
    """App setting name -> literal value, or :class:`Expr` when computed at deployment."""
    return {name: resolve(value, main_doc()) for name, value in app_settings_raw().items()}


def module(name: str) -> dict[str, Any]:
    return main_doc()["modules"][name]


def module_params(name: str) -> dict[str, Any]:
    return body_of(module(name)).get("params", {})


def module_doc(name: str) -> dict[str, Any]:
    return parse((MAIN.parent / module(name)["detail"]["path"]).resolve())


def outputs() -> dict[str, Any]:
    return main_doc()["outputs"]


def role_table() -> dict[str, str]:
    """Role name -> role definition id (tests/fixtures/azure/role-definitions.json)."""
    return json.loads(ROLE_TABLE.read_text(encoding="utf-8"))["roles"]


@dataclasses.dataclass(frozen=True)
class RoleAssignment:
    symbol: str
    role_id: str | None  # the GUID literal the assignment names
    principal: str  # parameter of role-assignments.bicep holding the principal id
    scope: str  # symbol of the resource it is scoped to
    scope_type: str
    name_parts: tuple[str, ...]  # guid(...) arguments as text
    role_definition: str  # roleDefinitionId as text
    principal_type: Any


def role_assignments(doc: dict[str, Any] | None = None) -> list[RoleAssignment]:
    doc = parse(ROLE_ASSIGNMENTS) if doc is None else doc
    found = []
    for symbol, resource in doc.get("resources", {}).items():
        if resource["type"] != ROLE_ASSIGNMENT_TYPE:
            continue
        body = body_of(resource)
        props = body.get("properties", {})
        role_def = props.get("roleDefinitionId")
        role_var = None
        if is_expression(role_def) and role_def.get("function", {}).get("type") == "subscription_resource_id":
            params = role_def["function"]["parameters"]
            if params.get("resource_type") == "Microsoft.Authorization/roleDefinitions":
                role_var = params.get("resource_name_1")
        role_id = resolve(role_var, doc) if role_var else None
        name = body.get("name")
        parts: tuple[str, ...] = ()
        if is_expression(name) and name.get("function", {}).get("type") == "guid":
            parts = tuple(render(v) for v in name["function"]["parameters"].values() if v is not None)
        scope = body.get("scope", "")
        scope_resource = doc["resources"].get(scope, {})
        found.append(
            RoleAssignment(
                symbol=symbol,
                role_id=role_id if isinstance(role_id, str) else None,
                principal=props.get("principalId", ""),
                scope=scope,
                scope_type=scope_resource.get("type", ""),
                name_parts=parts,
                role_definition=render(role_def) if role_def is not None else "",
                principal_type=props.get("principalType"),
            )
        )
    return found


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- docs/deploying.md reference tables

ROLE_PRINCIPALS = {"appPrincipalId": "app identity", "workspacePrincipalId": "workspace identity"}
SCOPE_NAMES = {
    "Microsoft.Storage/storageAccounts": "app storage account",
    "Microsoft.MachineLearningServices/workspaces": "ML workspace",
    "Microsoft.Insights/components": "Application Insights",
}


def settings_table() -> list[str]:
    rows = ["| App setting | Value |", "|---|---|"]
    params = main_doc()["parameters"]
    raw = app_settings_raw()
    for name, value in app_settings().items():
        text = f"`{value.text}` (at deployment)" if isinstance(value, Expr) else f"`{value}`"
        if isinstance(raw[name], str) and raw[name] in params:
            text += f" (parameter `{raw[name]}`)"
        rows.append(f"| `{name}` | {text} |")
    return rows


CONTAINER_TYPE = "Microsoft.Storage/storageAccounts/blobServices/containers"


def roles_table() -> list[str]:
    by_id = {v: k for k, v in role_table().items()}
    rows = ["| Role | Principal | Scope |", "|---|---|---|"]
    for ra in role_assignments():
        role = by_id.get(ra.role_id or "", f"unknown role {ra.role_id}")
        scope = "ML workspace's storage account" if ra.scope == "workspaceStorage" else SCOPE_NAMES.get(ra.scope_type, ra.scope_type)
        if ra.scope_type == CONTAINER_TYPE:  # name the container: main.bicep's value of the module parameter
            param = body_of(parse(ROLE_ASSIGNMENTS)["resources"][ra.scope])["name"]
            name = resolve(module_params("roleAssignments")[param], main_doc())
            scope = f"container `{getattr(name, 'text', name)}` of the app storage account"
        rows.append(f"| {role} | {ROLE_PRINCIPALS.get(ra.principal, ra.principal)} | {scope} |")
    return rows


def subscriptions_table() -> list[str]:
    from scripts import azure_postdeploy as postdeploy

    target = postdeploy.DeployTarget("sub", "rg", "app", "storage topic", "workspace topic", app_settings()["CHAT_DATA_CONTAINER"])
    rows = ["| Subscription | System topic | Event types | Filters | Delivered to |", "|---|---|---|---|---|"]
    for s in postdeploy.subscription_specs(target):
        filters = [f"subject begins with `{s.subject_begins_with}`"] if s.subject_begins_with else []
        filters += [f"`{f.key}` {f.operator} {', '.join(f.values)}" for f in s.advanced_filters]
        url = s.endpoint_url("<app host>", f"<{s.system_key} key>")
        rows.append(
            f"| `{s.name}` | {s.topic} | {', '.join(t.rsplit('.', 1)[1] for t in s.included_event_types)} | "
            f"{'; '.join(filters) or 'none'} | `{s.function}`: `{url}` |"
        )
    return rows


if __name__ == "__main__":  # regenerate docs/deploying.md's reference tables: python -m tests.infra_template
    for table in (settings_table(), roles_table(), subscriptions_table()):
        print("\n".join(table), end="\n\n")
