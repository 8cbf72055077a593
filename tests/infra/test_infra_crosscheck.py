"""Template and code agree: app settings, binding expressions, containers, tables, function names,
role assignments and the Event Grid subscriptions the post-deploy step creates.

Everything here is read at test time from its source of truth: the settings from
``shared/settings.py`` ``SPECS``, the bindings from ``function_app.app`` (indexed as the local host
does), the template from ``infra/*.bicep`` (pycep), the subscriptions from
``scripts/azure_postdeploy.py``. Break one side and a test here names what no longer matches.
"""

from __future__ import annotations

import json
import re

import pytest

from devhost.app_index import BLOB, EVENT_GRID, functions_of, load_app
from scripts import azure_postdeploy as postdeploy
from shared.settings import SPECS, SettingsError, load_settings
from tests import infra_template as tpl
from tests.bicep_checks import body_of, parse
from tests.infra_template import Expr

# ---------------------------------------------------------------------------------------------
# How each setting must appear in Azure. Every setting in shared/settings.py SPECS must be listed
# here (a new one fails test_every_setting_is_classified until it is):
#   SET      the template must set it: Azure needs a value other than the local default, or a
#            binding reads it as %NAME% (a binding's setting must exist as an app setting);
#   DEFAULT  fine at its default in Azure (the template may still set it);
#   LOCAL    local stack only: the template must not set it;
#   UNSET    must not be set in Azure (identity-based storage: no connection string).
SET, DEFAULT, LOCAL, UNSET = "set", "default", "local", "unset"
AZURE_POLICY = {
    "ML_BACKEND": SET,
    "AzureWebJobsStorage": UNSET,
    "AzureWebJobsStorage__accountName": SET,
    "AzureWebJobsStorage__credential": SET,
    "AzureWebJobsStorage__clientId": SET,
    "AzureWebJobsStorage__blobServiceUri": SET,
    "AzureWebJobsStorage__queueServiceUri": SET,
    "AzureWebJobsStorage__tableServiceUri": SET,
    "CHAT_DATA_CONTAINER": SET,
    "PREPARED_CONTAINER": SET,
    "LEDGER_TABLE": SET,
    "FUNCTION_KEY": LOCAL,
    "TEST_FRACTION": DEFAULT,
    # evaluation (shared.evaluation): defaults work in Azure; the judge model is optional
    "EVAL_FRACTION": DEFAULT,
    "EVAL_MAX_CONVERSATIONS": DEFAULT,
    "EVAL_PRIMARY_METRIC": DEFAULT,
    "EVAL_MARGIN": DEFAULT,
    "EVAL_FLOORS": DEFAULT,
    "EVAL_RULES": DEFAULT,
    "EVAL_PARALLELISM": DEFAULT,
    "EVAL_TIME_BUDGET_S": DEFAULT,
    "EVAL_MAX_NEW_TOKENS": DEFAULT,
    "EVAL_JUDGE_ENDPOINT": DEFAULT,
    "EVAL_JUDGE_MODEL": DEFAULT,
    "EVAL_JUDGE_API_KEY": DEFAULT,
    "ENDPOINT_FOLLOWUPS": DEFAULT,
    "ROLLOUT_CANDIDATES": DEFAULT,
    "CANARY_PERCENT": DEFAULT,
    "CANARY_MINUTES": DEFAULT,
    "CANARY_REQUESTS": DEFAULT,
    "CANARY_MIN_REQUESTS": DEFAULT,
    "CANARY_MAX_ERROR_RATE_INCREASE": DEFAULT,
    "CANARY_MAX_P95_RATIO": DEFAULT,
    "CANARY_MIN_P95_INCREASE_MS": DEFAULT,
    "CANARY_LATENCY_MIN_REQUESTS": DEFAULT,
    "MIN_VALID_EXAMPLES": DEFAULT,
    "MAX_INVALID_SHARE": DEFAULT,
    "REPORT_ERROR_CAP": DEFAULT,
    "MAX_ROW_BYTES": DEFAULT,
    "MAX_DECODED_BYTES": DEFAULT,
    "MAX_EXPANSION_RATIO": DEFAULT,
    "MAX_PARQUET_COLUMN_CHUNK_BYTES": DEFAULT,
    "DATA_POLICY": DEFAULT,
    "NEAR_DUPLICATE_THRESHOLD": DEFAULT,
    "TRAINING_TOKENS_PER_SECOND": DEFAULT,
    "EXPERIMENT_NAME": DEFAULT,
    "FINETUNED_MODEL_NAME": DEFAULT,
    "FINETUNE_PARAMS": DEFAULT,
    "EVENTGRID_WEBHOOK_URL": LOCAL,
    "LOCAL_WORKSPACE_DIR": LOCAL,
    "LOCAL_BASE_MODEL": LOCAL,
    "LOCAL_WORKSPACE_ID": LOCAL,
    "LOCAL_MODEL_CACHE": LOCAL,
    "AZURE_SUBSCRIPTION_ID": SET,
    "AZURE_RESOURCE_GROUP": SET,
    "AZURE_ML_WORKSPACE": SET,
    "AZURE_ML_CONFIG": LOCAL,
    "AZURE_CLIENT_ID": SET,
    "AZURE_ML_REGISTRY": DEFAULT,
    "FOUNDATION_MODEL_NAME": SET,
    "FOUNDATION_MODEL_VERSION": SET,
    "PIPELINE_COMPONENT_VERSION": DEFAULT,
    "AZURE_ML_DATASTORE": SET,
    "FINETUNE_COMPUTE": DEFAULT,
    "FINETUNE_INSTANCE_TYPE": SET,
    "INFERENCE_INSTANCE_TYPE": SET,
    "INFERENCE_INSTANCE_COUNT": DEFAULT,
    "ENDPOINT_AUTH_MODE": DEFAULT,
    "QUALITY_GATE": DEFAULT,
    "DELETE_REPLACED_ENDPOINTS": DEFAULT,
    "SUBMIT_CLAIM_LEASE_SECONDS": DEFAULT,  # on main since the shared/ packages layout
    "RECONCILE_SCHEDULE": SET,
    "SCORING_MAX_REQUEST_BYTES": DEFAULT,
    "SCORING_MAX_NEW_TOKENS": DEFAULT,
    "SCORING_REDEPLOY_ON_DEMAND": DEFAULT,
    "SCORING_RETRY_AFTER_S": DEFAULT,
    "ACTIVITY_FLUSH_S": DEFAULT,
    "JANITOR_SCHEDULE": SET,
    "IDLE_ENDPOINT_MINUTES": DEFAULT,
    "MAX_LIVE_ENDPOINTS": DEFAULT,
    "SCORING_MAX_STREAMS": DEFAULT,
    "SCORING_STREAM_IDLE_S": DEFAULT,
    "IDLE_GRACE_MINUTES": DEFAULT,
    "JANITOR_KEEP_LATEST": DEFAULT,
    "JANITOR_DRY_RUN": DEFAULT,
    "INSTANCE_HOURLY_PRICES": DEFAULT,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": SET,
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": SET,
    # settings other branches add (classified ahead so their merges need no edit here)
    "SCORING_ROUTE_MAX_STALE_S": DEFAULT,
    "ENDPOINT_HEAL_ATTEMPTS": DEFAULT,
    "ENDPOINT_HEAL_BACKOFF_S": DEFAULT,
    "TRAINING_MODE": DEFAULT,
    "COALESCE_SECONDS": DEFAULT,
    "COLLECTION_SUBMISSIONS": DEFAULT,
    "COLLECTION_MODEL_NAMES": DEFAULT,
    "MAX_RUNNING_JOBS": DEFAULT,
    "FINETUNE_BUDGET_USD": DEFAULT,
    "LOCAL_HOST_PORT": LOCAL,
    "LOCAL_MAX_PARALLEL_JOBS": LOCAL,
}
# Set by the template but read by the Functions host / SDKs, not (yet) by shared/settings.py.
HOST_SETTINGS = {
    "AzureWebJobsStorage__credential": "host + SDK-type blob binding: identity-based AzureWebJobsStorage",
    "AzureWebJobsStorage__clientId": "host + SDK-type blob binding: which identity",
    "AzureWebJobsStorage__blobServiceUri": "host: identity-based AzureWebJobsStorage (blob)",
    "AzureWebJobsStorage__queueServiceUri": "host: identity-based AzureWebJobsStorage (queue: blob trigger poison queue)",
    "AzureWebJobsStorage__tableServiceUri": "host: identity-based AzureWebJobsStorage (table)",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "host telemetry (and the app's, once it reads it)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Entra ID auth for telemetry (App Insights local auth is off)",
    "PYTHON_ENABLE_INIT_INDEXING": "Python worker: index the FastAPI-typed HTTP functions at start (HTTP streams)",
}
# Settings the Flex Consumption plan rejects or that describe other plans.
FLEX_REJECTED = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}
IDENTITY_STORAGE = {
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": "identity.outputs.clientId",
}

# Writes after which a blob is complete (Event Grid: Blob Storage as an event source, BlobCreated).
BLOB_COMPLETING_WRITES = {"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"}

CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"
EXPECTED_ROLES = {
    # (role, principal parameter, scope resource type, scope symbol in role-assignments.bicep): blob roles on
    # the containers each identity needs, never the whole account (issue 25.6)
    ("Storage Blob Data Owner", "appPrincipalId", CONTAINER, "prepared"),
    ("Storage Blob Data Owner", "appPrincipalId", CONTAINER, "webjobsHosts"),
    ("Storage Blob Data Owner", "appPrincipalId", CONTAINER, "webjobsSecrets"),
    ("Storage Blob Data Owner", "appPrincipalId", CONTAINER, "deployment"),
    ("Storage Blob Data Reader", "appPrincipalId", CONTAINER, "chatData"),
    ("Storage Queue Data Contributor", "appPrincipalId", "Microsoft.Storage/storageAccounts", "storage"),
    ("Storage Table Data Contributor", "appPrincipalId", "Microsoft.Storage/storageAccounts", "storage"),
    ("AzureML Data Scientist", "appPrincipalId", "Microsoft.MachineLearningServices/workspaces", "workspace"),
    ("Monitoring Reader", "appPrincipalId", "Microsoft.MachineLearningServices/workspaces", "workspace"),
    ("Storage Blob Data Reader", "workspacePrincipalId", CONTAINER, "prepared"),
    ("Monitoring Metrics Publisher", "appPrincipalId", "Microsoft.Insights/components", "applicationInsights"),
    # the jobs the app submits write their outputs to the workspace's default datastore by identity (its
    # container is named after the workspace id, unknown before deployment: the account is the scope)
    ("Storage Blob Data Contributor", "appPrincipalId", "Microsoft.Storage/storageAccounts", "workspaceStorage"),
}


def spec_envs() -> dict[str, object]:
    return {spec.env: spec for spec in SPECS.values()}


@pytest.fixture(scope="module")
def functions() -> dict[str, dict]:
    """name -> {"trigger": binding JSON, "bindings": [...]}, the way the local host indexes the app."""
    app = load_app("function_app")
    out = {}
    for fn in functions_of(app):
        bindings = json.loads(fn.get_function_json())["bindings"]
        (trigger,) = [b for b in bindings if b["type"].endswith("Trigger")]
        out[fn.get_function_name()] = {"trigger": trigger, "bindings": bindings}
    return out


def binding_expressions(functions: dict[str, dict]) -> dict[str, set[str]]:
    """%NAME% -> the functions whose bindings use it."""
    found: dict[str, set[str]] = {}
    for name, fn in functions.items():
        for binding in fn["bindings"]:
            for value in binding.values():
                for expr in re.findall(r"%([^%]+)%", value if isinstance(value, str) else ""):
                    found.setdefault(expr, set()).add(name)
    return found


# --------------------------------------------------------------------------- settings


def test_every_setting_is_classified() -> None:
    missing = [env for env in spec_envs() if env not in AZURE_POLICY]
    assert not missing, (
        f"setting(s) {', '.join(missing)} from shared/settings.py are not classified for Azure: add each to AZURE_POLICY "
        "in tests/test_infra_crosscheck.py (SET, and add it to appSettings in infra/main.bicep; or DEFAULT / LOCAL)"
    )


def test_settings_azure_needs_are_set_by_the_template() -> None:
    settings = tpl.app_settings()
    required = [env for env, policy in AZURE_POLICY.items() if policy == SET]
    missing = [env for env in required if env not in settings]
    assert not missing, f"app setting(s) {', '.join(missing)} must be set in Azure: add to appSettings in infra/main.bicep"


def test_local_only_and_connection_string_settings_are_not_set() -> None:
    settings = tpl.app_settings()
    wrong = [f"{env} ({AZURE_POLICY[env]})" for env in settings if AZURE_POLICY.get(env) in {LOCAL, UNSET}]
    assert not wrong, f"infra/main.bicep sets app setting(s) that must not be set in Azure: {', '.join(wrong)}"


def test_template_sets_only_settings_something_reads() -> None:
    known = set(spec_envs()) | set(HOST_SETTINGS)
    settings = tpl.app_settings()
    unknown = [env for env in settings if env not in known]
    assert not unknown, f"infra/main.bicep sets {', '.join(unknown)}, which neither shared/settings.py nor the host reads"
    rejected = sorted(set(settings) & FLEX_REJECTED)
    assert not rejected, f"the Flex Consumption plan rejects app setting(s) {', '.join(rejected)}"


def test_storage_connects_by_identity() -> None:
    raw = tpl.app_settings_raw()
    for env, expected in IDENTITY_STORAGE.items():
        assert tpl.render(raw.get(env)) == expected, f"{env} must be {expected!r}, the template gives {tpl.render(raw.get(env))!r}"
    settings = tpl.app_settings()
    for service in ("blob", "queue", "table"):
        value = settings[f"AzureWebJobsStorage__{service}ServiceUri"]
        assert isinstance(value, Expr) and value.text == f"https://${{storage.outputs.name}}.{service}.${{environment().suffixes.storage}}", (
            f"AzureWebJobsStorage__{service}ServiceUri must be the app storage's {service} endpoint, got {value}"
        )
    assert tpl.render(raw["AZURE_CLIENT_ID"]) == "identity.outputs.clientId"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == Expr("ClientId=${identity.outputs.clientId};Authorization=AAD")


def test_literal_settings_parse_and_validate_as_the_app_reads_them() -> None:
    """The template's values, fed to load_settings as Azure would, pass the app's own validation."""
    env = {}
    for name, value in tpl.app_settings().items():
        if isinstance(value, Expr):
            env[name] = f"from-template-{name.lower()}"
        else:
            assert isinstance(value, str), f"app setting {name} must be a string in Bicep, got {value!r}"
            env[name] = value
    specs = spec_envs()
    for name, value in env.items():
        if name in specs and not value.startswith("from-template-"):
            try:
                specs[name].parse(name, value)
            except SettingsError as exc:
                pytest.fail(f"infra/main.bicep app setting {name}={value!r} is not what the app accepts: {exc}")
    try:
        settings = load_settings(environ=env)
    except SettingsError as exc:
        pytest.fail(f"the template's app settings do not validate: {exc}")
    assert settings.ml_backend == "azureml"


def test_every_binding_expression_is_an_app_setting(functions: dict[str, dict]) -> None:
    settings = tpl.app_settings()
    used = binding_expressions(functions)
    assert used, "no %NAME% expression found in the app's bindings: the indexing is broken"
    missing = {expr: sorted(fns) for expr, fns in used.items() if expr not in settings}
    assert not missing, "binding expression(s) without an app setting in infra/main.bicep: " + ", ".join(
        f"%{expr}% (used by {', '.join(fns)})" for expr, fns in missing.items()
    )
    for expr in used:
        assert AZURE_POLICY.get(expr) == SET, f"%{expr}% is read by a binding: classify it SET in AZURE_POLICY"


def test_instance_types_are_parameters_from_the_models_allow_lists() -> None:
    raw = tpl.app_settings_raw()
    params = tpl.main_doc()["parameters"]
    for env, param in (("FINETUNE_INSTANCE_TYPE", "finetuneInstanceType"), ("INFERENCE_INSTANCE_TYPE", "inferenceInstanceType")):
        assert raw[env] == param, f"{env} must come from the Bicep parameter {param}"
        assert params[param]["default"] == "Standard_NC24ads_A100_v4"
        assert "NC6s_v3" not in params[param]["default"], "NCv3 is retired"
    mapping = json.loads((tpl.MAIN.parent / "main.parameters.json").read_text())["parameters"]
    for param in ("finetuneInstanceType", "inferenceInstanceType"):
        assert params[param]["default"] in mapping[param]["value"], f"main.parameters.json default for {param} differs from main.bicep"


# --------------------------------------------------------------------------- containers, table, datastore


def test_containers_and_table_match_the_code() -> None:
    settings = tpl.app_settings()
    defaults = spec_envs()
    storage = tpl.module_params("storage")
    created = [tpl.resolve(c, tpl.main_doc()) for c in storage["containers"]]
    tables = [tpl.resolve(t, tpl.main_doc()) for t in storage["tables"]]
    for env in ("CHAT_DATA_CONTAINER", "PREPARED_CONTAINER"):
        assert settings[env] == defaults[env].default, f"{env}: template {settings[env]!r} != code default {defaults[env].default!r}"
        assert settings[env] in created, f"container {settings[env]!r} ({env}) is not created by the storage module"
    assert settings["LEDGER_TABLE"] == defaults["LEDGER_TABLE"].default
    assert settings["LEDGER_TABLE"] in tables, f"table {settings['LEDGER_TABLE']!r} is not created by the storage module"
    # the Flex deployment container is created too
    deploy = tpl.module_params("functionApp")["deploymentContainer"]
    assert deploy in storage["containers"], "the deployment container is not created by the storage module"


def test_every_queue_trigger_reads_a_queue_the_template_creates(functions: dict[str, dict]) -> None:
    queues = [tpl.resolve(q, tpl.main_doc()) for q in tpl.module_params("storage").get("queues", [])]
    triggers = {name: fn["trigger"] for name, fn in functions.items() if fn["trigger"]["type"] == "queueTrigger"}
    assert triggers, "no queue trigger found: the indexing is broken"
    for name, trigger in triggers.items():
        assert trigger["queueName"] in queues, f"{name} reads queue {trigger['queueName']!r}, which the storage module does not create"
        assert trigger["connection"] == "AzureWebJobsStorage", f"{name}: the queue connection must be the identity-based AzureWebJobsStorage"


def test_blob_trigger_watches_the_chat_data_container(functions: dict[str, dict]) -> None:
    trigger = functions[postdeploy.BLOB_FUNCTION]["trigger"]
    assert trigger["type"] == BLOB
    assert trigger["path"].split("/", 1)[0] == "%CHAT_DATA_CONTAINER%", trigger["path"]
    assert trigger.get("source") == "EventGrid", "Flex Consumption supports only the Event Grid-sourced blob trigger"
    assert trigger["connection"] == "AzureWebJobsStorage", "the trigger's connection must be the identity-based AzureWebJobsStorage"


def test_datastore_is_on_the_prepared_container_by_workspace_identity() -> None:
    settings = tpl.app_settings()
    params = tpl.module_params("datastore")
    doc = tpl.main_doc()
    assert settings["AZURE_ML_DATASTORE"] == "autopilot_prepared"
    assert tpl.resolve(params["name"], doc) == settings["AZURE_ML_DATASTORE"], "datastore name differs from AZURE_ML_DATASTORE"
    assert tpl.resolve(params["containerName"], doc) == settings["PREPARED_CONTAINER"], "datastore is not on the prepared container"
    assert tpl.render(params["storageAccountName"]) == "storage.outputs.name", "datastore must be on the app's storage account"
    assert "roleAssignments" in body_of(tpl.module("datastore")).get("dependsOn", []), "datastore must wait for its role assignment"
    ds = body_of(tpl.module_doc("datastore")["resources"]["datastore"])
    assert ds["properties"]["credentials"] == {"credentialsType": "None"}
    assert ds["properties"]["serviceDataAccessAuthIdentity"] == "WorkspaceSystemAssignedIdentity"


# --------------------------------------------------------------------------- functions and Event Grid


def test_postdeploy_targets_existing_functions_with_the_right_triggers(functions: dict[str, dict]) -> None:
    target = postdeploy.DeployTarget("s", "rg", "app", "st-topic", "ml-topic", "chat-data")
    specs = postdeploy.subscription_specs(target)
    kinds = {"blobs": BLOB, "eventgrid": EVENT_GRID}
    for spec in specs:
        assert spec.function in functions, f"subscription {spec.name} delivers to {spec.function!r}, which the app does not define"
        trigger = functions[spec.function]["trigger"]["type"]
        assert trigger == kinds[spec.webhook], f"{spec.name}: {spec.function} is a {trigger}, the webhook is the {spec.webhook} extension's"
        url = spec.endpoint_url("host.example", "KEY")
        expected_name = f"Host.Functions.{spec.function}" if spec.webhook == "blobs" else spec.function
        assert f"functionName={expected_name}&" in url and url.endswith("code=KEY"), url


def test_blob_created_subscription_filters() -> None:
    container = tpl.app_settings()["CHAT_DATA_CONTAINER"]
    target = postdeploy.DeployTarget("s", "rg", "app", "st-topic", "ml-topic", container)
    (blob,) = [s for s in postdeploy.subscription_specs(target) if s.topic == "st-topic"]
    assert blob.included_event_types == ("Microsoft.Storage.BlobCreated",)
    assert blob.subject_begins_with == "/blobServices/default/containers/chat-data/blobs/"
    (api,) = blob.advanced_filters
    assert (api.operator, api.key) == ("StringIn", "data.api")
    assert set(api.values) == BLOB_COMPLETING_WRITES, f"data.api filter {api.values} != the writes that complete a blob"


def test_job_event_subscriptions_keep_every_completion() -> None:
    target = postdeploy.DeployTarget("s", "rg", "app", "st-topic", "ml-topic", "chat-data")
    ml = [s for s in postdeploy.subscription_specs(target) if s.topic == "ml-topic"]
    by_type = {s.included_event_types: s for s in ml}
    completed = by_type[("Microsoft.MachineLearningServices.RunCompleted",)]
    assert completed.advanced_filters == (), "RunCompleted carries no runStatus: any filter on it drops completions"
    changed = by_type[("Microsoft.MachineLearningServices.RunStatusChanged",)]
    (status,) = changed.advanced_filters
    assert (status.operator, status.key, set(status.values)) == ("StringIn", "data.runStatus", {"Failed", "Canceled"})
    for s in ml:
        if "Microsoft.MachineLearningServices.RunCompleted" in s.included_event_types:
            assert not any(f.key.lower() == "data.runstatus" for f in s.advanced_filters), f"{s.name} filters RunCompleted on runStatus"


def test_system_topics_and_postdeploy_environment_come_from_the_template() -> None:
    outputs = tpl.outputs()
    for env in postdeploy.REQUIRED_ENV:
        if env in postdeploy.AZD_PROVIDED_ENV:
            continue
        assert env in outputs, f"the post-deploy step reads {env}, which infra/main.bicep does not output"
    eg = tpl.module_params("eventGrid")
    assert outputs["STORAGE_SYSTEM_TOPIC_NAME"]["value"] == eg["storageTopicName"], "storage topic output != topic created"
    assert outputs["WORKSPACE_SYSTEM_TOPIC_NAME"]["value"] == eg["workspaceTopicName"], "workspace topic output != topic created"
    assert outputs["CHAT_DATA_CONTAINER"]["value"] == "chatDataContainer"
    assert tpl.render(outputs["AZURE_FUNCTION_APP_NAME"]["value"]) == "functionApp.outputs.name"
    topics = {body_of(r)["properties"]["topicType"]: body_of(r)["properties"]["source"] for r in tpl.module_doc("eventGrid")["resources"].values() if r["type"] == "Microsoft.EventGrid/systemTopics"}
    assert tpl.render(topics["Microsoft.Storage.StorageAccounts"]) == "storage.id"
    assert tpl.render(topics["Microsoft.MachineLearningServices.Workspaces"]) == "workspace.id"
    assert tpl.render(eg["storageAccountName"]) == "storage.outputs.name", "BlobCreated must come from the app's storage account"


# --------------------------------------------------------------------------- roles


def test_role_assignments_match_the_role_table_and_the_issue() -> None:
    table = role_ids = tpl.role_table()
    by_id = {v: k for k, v in role_ids.items()}
    found = set()
    for ra in tpl.role_assignments():
        assert ra.role_id in by_id, f"{ra.symbol}: role definition id {ra.role_id!r} is not in tests/fixtures/azure/role-definitions.json"
        role = by_id[ra.role_id]
        assert ra.role_definition.startswith("subscription_resource_id(Microsoft.Authorization/roleDefinitions"), ra.role_definition
        assert ra.name_parts[:1] == (f"{ra.scope}.id",) and ra.name_parts[1] == ra.principal and len(ra.name_parts) == 3, (
            f"{ra.symbol}: name must be guid({ra.scope}.id, {ra.principal}, <role>), got guid({', '.join(ra.name_parts)})"
        )
        assert ra.principal_type == "ServicePrincipal", f"{ra.symbol}: principalType must be ServicePrincipal (managed identity)"
        found.add((role, ra.principal, ra.scope_type, ra.scope))
    assert found == EXPECTED_ROLES, f"missing: {sorted(EXPECTED_ROLES - found)}; unexpected: {sorted(found - EXPECTED_ROLES)}"
    assert len(tpl.role_assignments()) == len(EXPECTED_ROLES), "a role is assigned twice"
    assert table  # the table itself is non-empty


def test_role_scopes_and_principals_are_the_right_resources() -> None:
    params = tpl.module_params("roleAssignments")
    assert tpl.render(params["storageAccountName"]) == "storage.outputs.name", "storage roles must be on the app's storage account"
    assert tpl.render(params["workspaceName"]) == "workspace.outputs.name"
    assert tpl.render(params["applicationInsightsName"]) == "monitoring.outputs.applicationInsightsName"
    assert tpl.render(params["appPrincipalId"]) == "identity.outputs.principalId"
    assert tpl.render(params["workspacePrincipalId"]) == "workspace.outputs.principalId"
    doc = parse(tpl.ROLE_ASSIGNMENTS)
    scopes = {sym: body_of(r)["name"] for sym, r in doc["resources"].items() if r.get("existing")}
    assert scopes == {"storage": "storageAccountName", "blobService": "default", "chatData": "chatDataContainer",
                      "prepared": "preparedContainer", "deployment": "deploymentContainer",
                      "webjobsHosts": "webjobsHostsContainer", "webjobsSecrets": "webjobsSecretsContainer",
                      "workspace": "workspaceName", "applicationInsights": "applicationInsightsName",
                      "workspaceStorage": "workspaceStorageName"}
    assert tpl.render(params["workspaceStorageName"]) == "workspace.outputs.storageName"
    for param in ("chatDataContainer", "preparedContainer", "deploymentContainer", "webjobsHostsContainer", "webjobsSecretsContainer"):
        assert tpl.render(params[param]) == param, f"{param} must be main.bicep's own variable"
    created = {tpl.resolve(c, tpl.main_doc()) for c in tpl.module_params("storage")["containers"]}
    assert {"azure-webjobs-hosts", "azure-webjobs-secrets"} <= created, "the host's containers must exist: its blob roles are per container"
