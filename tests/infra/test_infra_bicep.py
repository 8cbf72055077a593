"""infra/*.bicep parse with pycep-parser and match the published Bicep type definitions.

Also the azd layout (subscription scope, resource token, azd-env-name tag, parameters file) and
the resources the app needs, with the properties that make them work (Flex Consumption, identity
deployment storage, shared-key off, local auth off, public workspace).
"""

from __future__ import annotations

import copy
import json

import pytest

from tests import infra_template as tpl
from tests.bicep_checks import INFRA, bicep_files, body_of, check_file, parse, parse_text, resource_type

FILES = bicep_files()
EXPECTED_FILES = {
    "main.bicep",
    "modules/identity.bicep",
    "modules/storage.bicep",
    "modules/monitoring.bicep",
    "modules/ml-workspace.bicep",
    "modules/ml-datastore.bicep",
    "modules/role-assignments.bicep",
    "modules/event-grid.bicep",
    "modules/function-app.bicep",
}


def test_one_file_per_concern() -> None:
    assert {str(f.relative_to(INFRA)) for f in FILES} == EXPECTED_FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_parses_with_pycep(path) -> None:
    doc = parse(path)
    assert doc.get("resources") or doc.get("modules"), f"{path.name}: nothing parsed"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_matches_published_types(path) -> None:
    problems = check_file(path)
    assert not problems, "\n".join(problems)


# ---- the checker itself: each kind of mistake is caught (on a copy of the real parsed file)


def _broken(path_name: str, edit) -> list[str]:
    path = INFRA / path_name
    doc = copy.deepcopy(parse(path))
    edit(doc)
    return check_file(path, doc)


def test_checker_catches_a_wrong_api_version() -> None:
    problems = _broken("modules/storage.bicep", lambda d: d["resources"]["storage"].update(api_version="2023-05-02"))
    assert any("unknown resource type or API version" in p and "2023-05-01" in p for p in problems), problems


def test_checker_catches_an_unknown_property() -> None:
    def edit(d):
        d["resources"]["storage"]["config"]["properties"]["allowSharedKeyAcess"] = False

    problems = _broken("modules/storage.bicep", edit)
    assert any("'allowSharedKeyAcess' does not exist" in p for p in problems), problems


def test_checker_catches_a_wrong_literal() -> None:
    def edit(d):
        d["resources"]["site"]["config"]["properties"]["functionAppConfig"]["runtime"]["name"] = "pyton"
        d["resources"]["plan"]["config"]["properties"]["reserved"] = "true"

    problems = _broken("modules/function-app.bicep", edit)
    assert any("'pyton' is not one of the published values" in p for p in problems), problems
    assert any("reserved: expected a boolean" in p for p in problems), problems


def test_checker_catches_a_missing_required_property_and_read_only_writes() -> None:
    def edit(d):
        del d["resources"]["storage"]["config"]["sku"]["name"]
        d["resources"]["storage"]["config"]["properties"]["primaryEndpoints"] = {}

    problems = _broken("modules/storage.bicep", edit)
    assert any("required property 'name' is missing" in p for p in problems), problems
    assert any("'primaryEndpoints' is read-only" in p for p in problems), problems


def test_checker_catches_wrong_module_params_and_outputs() -> None:
    def edit(d):
        d["modules"]["storage"]["config"]["params"]["nam"] = d["modules"]["storage"]["config"]["params"].pop("name")
        d["outputs"]["AZURE_FUNCTION_APP_NAME"]["value"]["operator"]["operands"]["operand_2"]["operator"]["operands"]["operand_2"] = "nme"

    problems = _broken("main.bicep", edit)
    assert any("storage.bicep has no parameter 'nam'" in p for p in problems), problems
    assert any("required parameter 'name' of storage.bicep is not passed" in p for p in problems), problems
    assert any("has no output 'nme'" in p for p in problems), problems


def test_checker_catches_a_wrong_property_read() -> None:
    def edit(d):
        d["outputs"]["connectionString"]["value"]["operator"]["operands"]["operand_2"]["operator"]["operands"]["operand_2"] = "ConnString"

    problems = _broken("modules/monitoring.bicep", edit)
    assert any("has no property 'ConnString'" in p for p in problems), problems


def test_checker_catches_a_wrong_discriminator() -> None:
    def edit(d):
        d["resources"]["datastore"]["config"]["properties"]["credentials"]["credentialsType"] = "Nope"
        d["resources"]["datastore"]["config"]["properties"]["datastoreType"] = "AzureBlobs"

    problems = _broken("modules/ml-datastore.bicep", edit)
    assert any("datastoreType='AzureBlobs' is not one of" in p for p in problems), problems


def test_checker_catches_an_undeclared_name_and_a_wrong_parent() -> None:
    def edit(d):
        d["resources"]["storage"]["config"]["location"] = "locaton"  # pycep reads a typo'd name as a string
        d["resources"]["blobContainers"]["config"]["config"]["parent"] = "storage"

    problems = _broken("modules/storage.bicep", edit)
    assert any("'locaton' is neither declared in this file nor a string literal" in p for p in problems), problems
    assert any("containers cannot be a child of storage" in p for p in problems), problems


def test_checker_catches_a_resource_at_a_scope_its_type_does_not_allow() -> None:
    problems = _broken("modules/identity.bicep", lambda d: d.update(globals={"scope": {"value": "subscription"}}))
    assert any("cannot be deployed at subscription scope" in p for p in problems), problems


def test_pycep_rejects_what_bicep_rejects() -> None:
    from lark.exceptions import LarkError

    with pytest.raises(LarkError):
        parse_text("resource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'a'\n")


# ---- azd layout


def test_main_is_subscription_scoped_with_resource_token_and_env_tag() -> None:
    doc = tpl.main_doc()
    assert doc["globals"]["scope"]["value"] == "subscription"
    token = doc["variables"]["resourceToken"]["value"]
    assert tpl.render(token) == "to_lower(unique_string(subscription().id, environmentName, location))", tpl.render(token)
    assert doc["variables"]["tags"]["value"] == {"'azd-env-name'": "environmentName"}
    rg = body_of(doc["resources"]["rg"])
    assert rg["tags"] == "tags"
    for name, m in doc["modules"].items():
        assert body_of(m).get("scope") == "rg", f"module {name} must deploy into the resource group"
        if "tags" in tpl.module_params(name):
            assert tpl.module_params(name)["tags"] == "tags", f"module {name} must pass the azd tags"


def test_every_resource_with_tags_gets_the_azd_tags() -> None:
    for path in FILES:
        doc = parse(path)
        for sym, r in doc.get("resources", {}).items():
            if r.get("existing") or r["type"] == "Microsoft.Authorization/roleAssignments":
                continue
            t = resource_type(r["type"], r["api_version"])
            if t is not None and "tags" in t.node.get("properties", {}):
                assert "tags" in body_of(r), f"{path.name}: resource {sym} has no tags"


def test_parameters_file_matches_main() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = tpl.main_doc()["parameters"]
    assert set(params) <= set(declared), f"main.parameters.json names unknown parameters {set(params) - set(declared)}"
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= set(params), f"parameters without default not in main.parameters.json: {required - set(params)}"
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"


# ---- the resources and the properties that make them work


def _resource(module: str, symbol: str) -> dict:
    return body_of(tpl.module_doc(module)["resources"][symbol])


def test_function_app_is_flex_consumption_python_311_with_identity_deployment() -> None:
    plan = _resource("functionApp", "plan")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"} and plan["properties"]["reserved"] is True
    site = _resource("functionApp", "site")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    cfg = site["properties"]["functionAppConfig"]
    assert cfg["runtime"] == {"name": "python", "version": "3.11"}
    storage = cfg["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    assert tpl.render(tpl.module_params("functionApp")["identityId"]) == "identity.outputs.id"
    assert _resource("functionApp", "settings")["properties"] == "appSettings"
    assert tpl.module_params("functionApp")["appSettings"] == "appSettings"
    tags = site["tags"]["function"]
    assert tags["type"] == "union" and tags["parameters"]["arg_2"] == {"'azd-service-name'": "api"}


def test_storage_has_shared_key_off_and_no_public_blobs() -> None:
    props = _resource("storage", "storage")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"


def test_monitoring_has_local_auth_off() -> None:
    props = _resource("monitoring", "applicationInsights")["properties"]
    assert props["DisableLocalAuth"] is True
    assert _resource("monitoring", "logAnalytics")["properties"]["features"]["disableLocalAuth"] is True
    assert tpl.render(props["WorkspaceResourceId"]) == "logAnalytics.id"


def test_workspace_is_public_with_key_vault_and_its_own_storage() -> None:
    ws = _resource("workspace", "workspace")
    assert ws["properties"]["publicNetworkAccess"] == "Enabled"
    assert ws["identity"]["type"] == "SystemAssigned"
    assert tpl.render(ws["properties"]["keyVault"]) == "keyVault.id"
    assert tpl.render(ws["properties"]["storageAccount"]) == "workspaceStorage.id"
    kv = _resource("workspace", "keyVault")["properties"]
    assert kv["enableRbacAuthorization"] is True
