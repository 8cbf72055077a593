"""Identity-based storage in Azure: one configuration the blob binding extension, the ledger and the
app's blob clients all read alike, tested through the extension's own parser
(``azurefunctions.extensions.bindings.blob.utils``, the code the SDK-type blob trigger runs).
"""

from __future__ import annotations

from typing import Any

import pytest
from azurefunctions.extensions.bindings.blob import utils as extension

from shared.ledger import Ledger
from shared.settings import LOCAL_DEV_STORAGE, SettingsError, load_settings, running_in_azure
from shared.storage import blob_service, storage_account, table_service

CLIENT_ID = "8d1e3b1c-5a7e-4c55-9f0e-2d6b0c0a1f11"
ACCOUNT = "stautopilotapp"

# The agreed Azure configuration (what the Bicep of `azd up` sets), plus the platform's own variable.
AZURE_ENV = {
    "WEBSITE_INSTANCE_ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "AzureWebJobsStorage__credential": "managedidentity",
    "AzureWebJobsStorage__clientId": CLIENT_ID,
    "AzureWebJobsStorage__blobServiceUri": f"https://{ACCOUNT}.blob.core.windows.net",
    "AzureWebJobsStorage__queueServiceUri": f"https://{ACCOUNT}.queue.core.windows.net",
    "AzureWebJobsStorage__tableServiceUri": f"https://{ACCOUNT}.table.core.windows.net",
    "AZURE_CLIENT_ID": CLIENT_ID,
}


def _client_id(credential: Any) -> str | None:
    """The client id a ManagedIdentityCredential was built with (wherever azure-identity keeps it)."""
    inner = getattr(credential, "_credential", credential)
    for holder in (getattr(inner, "_settings", None), getattr(inner, "_config", None)):
        if isinstance(holder, dict) and holder.get("client_id"):
            return holder["client_id"]
    return getattr(inner, "_client_id", None)


def _extension_client(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    for name in [k for k in __import__("os").environ if k.startswith("AzureWebJobsStorage")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return extension.service_client_factory("AzureWebJobsStorage")


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"AzureWebJobsStorage__accountName": ACCOUNT},  # the extension's other documented form (host storage)
    ],
    ids=["service-uris", "account-name"],
)
def test_the_extension_the_ledger_and_the_app_agree(monkeypatch, variant):
    from azure.identity import ManagedIdentityCredential

    env = dict(AZURE_ENV)
    if variant:
        for key in ("__blobServiceUri", "__queueServiceUri", "__tableServiceUri"):
            env.pop(f"AzureWebJobsStorage{key}")
        env.update(variant)
    settings = load_settings(environ=env)
    assert settings.storage_connection == ""  # no Azurite default in Azure

    bound = _extension_client(monkeypatch, env)
    ours = blob_service(settings)
    assert bound.url == ours.url == f"https://{ACCOUNT}.blob.core.windows.net/"
    assert isinstance(bound.credential, ManagedIdentityCredential) and isinstance(ours.credential, ManagedIdentityCredential)
    assert _client_id(bound.credential) == _client_id(ours.credential) == CLIENT_ID

    ledger_table = Ledger.from_settings(settings)._table
    assert ledger_table.url.startswith(f"https://{ACCOUNT}.table.core.windows.net")
    assert _client_id(table_service(settings).credential) == CLIENT_ID
    assert storage_account(settings) == ACCOUNT


def test_the_readmes_old_advice_breaks_the_trigger_and_is_now_refused(monkeypatch):
    # "Leave AzureWebJobsStorage empty and set __accountName": the extension reads the empty variable first.
    env = {**AZURE_ENV, "AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": ACCOUNT}
    with pytest.raises(ValueError, match="Invalid URL: https://"):
        _extension_client(monkeypatch, env)
    with pytest.raises(SettingsError, match="AzureWebJobsStorage is set but empty .*WEBSITE_INSTANCE_ID.*remove the setting"):
        load_settings(environ=env)


def test_in_azure_without_storage_settings_it_fails_fast_naming_them():
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"WEBSITE_INSTANCE_ID": "abc"})
    text = str(info.value)
    assert "running in Azure: WEBSITE_INSTANCE_ID is set" in text and "AzureWebJobsStorage__blobServiceUri" in text
    # Locally the same empty environment is Azurite.
    assert load_settings(environ={}).storage_connection == LOCAL_DEV_STORAGE


@pytest.mark.parametrize(
    ("drop", "named"),
    [("AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__queueServiceUri is not set"),
     ("AzureWebJobsStorage__tableServiceUri", "AzureWebJobsStorage__tableServiceUri is not set")],
)
def test_a_missing_service_uri_is_named(drop, named):
    env = {k: v for k, v in AZURE_ENV.items() if k != drop}
    with pytest.raises(SettingsError, match=named):
        load_settings(environ=env)


def test_azurite_in_azure_is_refused():
    with pytest.raises(SettingsError, match="points at local development storage"):
        load_settings(environ={**AZURE_ENV, "AzureWebJobsStorage": LOCAL_DEV_STORAGE})
    with pytest.raises(SettingsError, match="points at local development storage"):
        load_settings(environ={"WEBSITE_SITE_NAME": "func-autopilot", "AzureWebJobsStorage": "UseDevelopmentStorage=true"})


def test_unknown_credential_kind_is_refused():
    with pytest.raises(SettingsError, match="AzureWebJobsStorage__credential='clientsecret'"):
        load_settings(environ={**AZURE_ENV, "AzureWebJobsStorage__credential": "clientsecret"})


def test_detection_uses_the_platform_variables_only():
    assert running_in_azure({"WEBSITE_INSTANCE_ID": "x"}) == "WEBSITE_INSTANCE_ID"
    assert running_in_azure({"WEBSITE_SITE_NAME": "func"}) == "WEBSITE_SITE_NAME"
    assert running_in_azure({"CONTAINER_NAME": "devcontainer"}) is None  # set by Docker and dev containers too


def test_one_rule_for_blob_queue_and_table_clients(monkeypatch):
    """Every storage client, the local host's poison-queue reader included, takes its service's own
    ``__<service>ServiceUri`` and the ``__credential`` / ``__clientId`` identity, as the blob
    extension does (issue 25.5: the queue client built its URL from the account name with the
    default credential). A sovereign-cloud account shows it: no ``core.windows.net`` may appear."""
    from azure.identity import ManagedIdentityCredential

    from devhost.blob_poller import queue_service as poller_queue_service
    from shared.storage import bounded_table_service, queue_service

    suffix = "core.chinacloudapi.cn"
    env = {**AZURE_ENV, **{f"AzureWebJobsStorage__{s}ServiceUri": f"https://{ACCOUNT}.{s}.{suffix}" for s in ("blob", "queue", "table")}}
    settings = load_settings(environ=env)
    bound = _extension_client(monkeypatch, env)
    clients = {"blob": blob_service(settings), "queue": queue_service(settings), "table": table_service(settings),
               "bounded table": bounded_table_service(settings), "poller queue": poller_queue_service(settings)}
    assert bound.url == f"https://{ACCOUNT}.blob.{suffix}/"
    for name, client in clients.items():
        service = name.split()[-1]
        assert client.url.startswith(f"https://{ACCOUNT}.{service}.{suffix}"), (name, client.url)
        credential = getattr(client, "credential", None) or client._credential
        assert isinstance(credential, ManagedIdentityCredential), (name, type(credential))
        assert _client_id(credential) == CLIENT_ID, name
