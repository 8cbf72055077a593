"""Storage clients (blob, queue, table), created once per worker.

Locally (Azurite) the connection string is used; in Azure the app connects by managed
identity (``AzureWebJobsStorage__accountName`` + ``DefaultAzureCredential``).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient, QueueServiceClient

log = logging.getLogger(__name__)

WEBJOBS_HOSTS_CONTAINER = "azure-webjobs-hosts"


@functools.lru_cache(maxsize=1)
def credential(client_id: str = ""):  # noqa: ANN201 - azure.identity type imported lazily
    """One credential per worker (managed identity in Azure, developer login locally)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id or None)


@functools.lru_cache(maxsize=8)
def _blob_service(connection: str, account: str, client_id: str) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    if connection:
        return BlobServiceClient.from_connection_string(connection)
    return BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=credential(client_id))


@functools.lru_cache(maxsize=8)
def _table_service(connection: str, account: str, client_id: str) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    if connection:
        return TableServiceClient.from_connection_string(connection)
    return TableServiceClient(f"https://{account}.table.core.windows.net", credential=credential(client_id))


@functools.lru_cache(maxsize=8)
def _queue_service(connection: str, account: str, client_id: str) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    # One quick retry: an enqueue that fails costs only time (reconcile settles what it missed).
    policies = {"retry_total": 1, "retry_backoff_factor": 0.2}
    if connection:
        return QueueServiceClient.from_connection_string(connection, **policies)
    return QueueServiceClient(f"https://{account}.queue.core.windows.net", credential=credential(client_id), **policies)


def queue_service(settings: Settings | None = None) -> QueueServiceClient:
    s = settings or get_settings()
    return _queue_service(s.storage_connection, s.storage_account_name, s.azure_client_id)


def queue_client(name: str, settings: Settings | None = None) -> QueueClient:
    """One queue of the host storage; messages (bytes) base64-encoded both ways, the Functions
    queue trigger's default ``messageEncoding``."""
    from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy

    return queue_service(settings).get_queue_client(
        name, message_encode_policy=BinaryBase64EncodePolicy(), message_decode_policy=BinaryBase64DecodePolicy()
    )


def blob_service(settings: Settings | None = None) -> BlobServiceClient:
    s = settings or get_settings()
    return _blob_service(s.storage_connection, s.storage_account_name, s.azure_client_id)


def table_service(settings: Settings | None = None) -> TableServiceClient:
    s = settings or get_settings()
    return _table_service(s.storage_connection, s.storage_account_name, s.azure_client_id)


def ensure_storage(settings: Settings | None = None) -> None:
    """Create the app's containers and ledger table if missing (idempotent)."""
    from azure.core.exceptions import ResourceExistsError

    s = settings or get_settings()
    blobs = blob_service(s)
    for name in (s.chat_data_container, s.prepared_container, WEBJOBS_HOSTS_CONTAINER):
        try:
            blobs.create_container(name)
            log.info("created container %s", name)
        except ResourceExistsError:
            pass
    table_service(s).create_table_if_not_exists(s.ledger_table)
