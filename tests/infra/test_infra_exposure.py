"""Flex Consumption's rejected properties and least privilege (issue 25, items 3 and 6).

The rejection list is published data (tests/fixtures/azure/flex-consumption-site-config.json:
Azure's official Terraform module for web sites asserts each of them must be omitted for FC1);
the other checks read the template as deployed and the app's own function index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devhost.app_index import functions_of, load_app
from tests import infra_template as tpl
from tests.bicep_checks import body_of

FLEX = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "azure" / "flex-consumption-site-config.json").read_text())


def _resource(module: str, symbol: str) -> dict[str, Any]:
    return body_of(tpl.module_doc(module)["resources"][symbol])


def _site_resources() -> dict[str, dict[str, Any]]:
    return tpl.module_doc("functionApp")["resources"]


def test_the_flex_site_sets_no_property_flex_consumption_rejects():
    site = _resource("functionApp", "site")
    site_config = site["properties"].get("siteConfig") or {}
    rejected = sorted(set(site_config) & set(FLEX["rejected_site_config"]))
    assert rejected == [], f"siteConfig sets {rejected}: on Flex Consumption's rejection list (ARM error 51021)"
    for symbol, resource in _site_resources().items():  # nor through a sites/config 'web' resource
        if resource["type"] == "Microsoft.Web/sites/config" and body_of(resource).get("name") == "web":
            assert not set(body_of(resource).get("properties") or {}) & set(FLEX["rejected_site_config"]), symbol


def test_the_template_sends_no_deprecated_flex_app_setting():
    assert not set(tpl.app_settings_raw()) & set(FLEX["deprecated_app_settings"])


@pytest.mark.parametrize("endpoint", ["ftp", "scm"])
def test_basic_publishing_credentials_are_off(endpoint):
    found = [body_of(r) for r in _site_resources().values()
             if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies" and body_of(r).get("name") == endpoint]
    assert len(found) == 1, f"no basicPublishingCredentialsPolicies '{endpoint}' on the site"
    assert found[0]["properties"] == {"allow": False}
    assert found[0]["parent"] == "site"


def test_the_workspace_storage_has_shared_keys_off_and_the_workspace_uses_identity():
    props = _resource("workspace", "workspaceStorage")["properties"]
    assert props["allowSharedKeyAccess"] is False
    workspace = _resource("workspace", "workspace")
    # Without it the workspace would reach its own storage with the (disabled) account key.
    assert workspace["properties"]["systemDatastoresAuthMode"] == "Identity"


def test_no_blob_role_covers_the_whole_app_storage_account():
    blob_roles = {"Storage Blob Data Owner", "Storage Blob Data Reader", "Storage Blob Data Contributor"}
    by_id = {v: k for k, v in tpl.role_table().items()}
    for ra in tpl.role_assignments():
        if by_id.get(ra.role_id or "") in blob_roles and ra.scope != "workspaceStorage":
            assert ra.scope_type == "Microsoft.Storage/storageAccounts/blobServices/containers", (
                f"{ra.symbol}: {by_id[ra.role_id]} on {ra.scope_type}: scope it to the container it needs")


def test_the_workspace_identity_reads_the_prepared_container_only():
    found = [ra for ra in tpl.role_assignments() if ra.principal == "workspacePrincipalId"]
    assert [(ra.scope, ra.role_id) for ra in found] == [("prepared", tpl.role_table()["Storage Blob Data Reader"])]


def test_the_dashboard_is_on_the_admin_key_and_client_routes_on_function_keys():
    levels = {}
    for fn in functions_of(load_app("function_app")):
        for binding in json.loads(fn.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                levels[binding.get("route")] = str(binding.get("authLevel", "")).upper()
    assert levels["dashboard"] == "ADMIN" and levels["dashboard/report"] == "ADMIN", levels
    for route in ("score", "v1/chat/completions", "v1/models"):
        assert levels[route] == "FUNCTION", (route, levels[route])


def test_the_workspace_has_the_container_registry_a_no_code_mlflow_deployment_builds_into():
    # azure-docs concept-workspace.md: the registry is "lazy-loaded until deployment images are created";
    # a no-code MLflow deployment creates one (its environment image). Declared, admin user off.
    workspace = _resource("workspace", "workspace")
    assert tpl.render(workspace["properties"]["containerRegistry"]) == "containerRegistry.id"
    registry = _resource("workspace", "containerRegistry")
    assert registry["properties"]["adminUserEnabled"] is False and registry["properties"]["anonymousPullEnabled"] is False
    assert tpl.resolve(tpl.module_params("workspace")["containerRegistryName"], tpl.main_doc()) is not None
