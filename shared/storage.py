"""Storage clients (blob, queue, table), created once per worker.

Locally (Azurite) the ``AzureWebJobsStorage`` connection string is used. In Azure the app
connects by identity with the same settings the Functions host and the SDK-type blob binding
(``azurefunctions-extensions-bindings-blob``) read: ``AzureWebJobsStorage__blobServiceUri`` /
``__queueServiceUri`` / ``__tableServiceUri`` (or ``__accountName`` standing for all three),
``__credential=managedidentity`` and ``__clientId`` (the user-assigned identity; the extension
then uses ``ManagedIdentityCredential(client_id=...)``, and so does the app).
``shared.settings`` refuses an incomplete or contradictory combination at start-up, naming it.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from pathlib import Path

    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient, ContainerClient
    from azure.storage.queue import QueueClient, QueueServiceClient

log = logging.getLogger(__name__)

WEBJOBS_HOSTS_CONTAINER = "azure-webjobs-hosts"
UPLOAD_BLOCK_BYTES = 4 << 20
MAX_QUEUE_DELAY_S = 7 * 24 * 3600 - 1  # a queue message's visibility timeout must be under 7 days


@functools.lru_cache(maxsize=1)
def credential(client_id: str = ""):  # noqa: ANN201 - azure.identity type imported lazily
    """One credential per worker (managed identity in Azure, developer login locally)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id or None)


@functools.lru_cache(maxsize=4)
def _managed_identity(client_id: str):  # noqa: ANN202
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id or None)


def _identity(settings: Settings) -> tuple[str, str]:
    return settings.storage_credential.lower(), settings.storage_client_id or settings.azure_client_id


def _credential_for(kind: str, client_id: str):  # noqa: ANN202
    return _managed_identity(client_id) if kind == "managedidentity" else credential(client_id)


def storage_credential(settings: Settings):  # noqa: ANN201
    """The identity storage is reached with: as the binding extension does when ``__credential`` is set."""
    return _credential_for(*_identity(settings))


def service_url(settings: Settings, service: str) -> str:
    """``https://...`` endpoint of ``service`` (blob, queue or table) for identity-based connections.

    The one rule of every storage client here (and of the local host's blob poller): the service's
    own ``AzureWebJobsStorage__<service>ServiceUri`` when set, else the account name's public
    endpoint; the credential is always :func:`storage_credential` (``__credential`` / ``__clientId``).
    """
    uri = {"blob": settings.storage_blob_service_uri, "queue": settings.storage_queue_service_uri,
           "table": settings.storage_table_service_uri}[service]
    if uri:
        return uri.rstrip("/")
    return f"https://{settings.storage_account_name}.{service}.core.windows.net"


def storage_account(settings: Settings) -> str:
    """The storage account's name ('' when only a connection string without AccountName is known)."""
    if settings.storage_account_name:
        return settings.storage_account_name
    if settings.storage_blob_service_uri:
        host = settings.storage_blob_service_uri.split("://", 1)[-1].split("/", 1)[0]
        return host.split(".", 1)[0]
    for part in settings.storage_connection.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "accountname":
            return value.strip()
    return ""


@functools.lru_cache(maxsize=8)
def _blob_service(connection: str, url: str, kind: str, client_id: str) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    if connection:
        return BlobServiceClient.from_connection_string(connection)
    return BlobServiceClient(url, credential=_credential_for(kind, client_id))


@functools.lru_cache(maxsize=8)
def _table_service(connection: str, url: str, kind: str, client_id: str) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    if connection:
        return TableServiceClient.from_connection_string(connection)
    return TableServiceClient(url, credential=_credential_for(kind, client_id))


@functools.lru_cache(maxsize=8)
def _queue_service(connection: str, url: str, kind: str, client_id: str) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    # One quick retry: an enqueue that fails costs only time (reconcile settles what it missed).
    policies = {"retry_total": 1, "retry_backoff_factor": 0.2}
    if connection:
        return QueueServiceClient.from_connection_string(connection, **policies)
    return QueueServiceClient(url, credential=_credential_for(kind, client_id), **policies)


def queue_service(settings: Settings | None = None) -> QueueServiceClient:
    s = settings or get_settings()
    return _queue_service(s.storage_connection, "" if s.storage_connection else service_url(s, "queue"), *_identity(s))


def queue_client(name: str, settings: Settings | None = None) -> QueueClient:
    """One queue of the host storage; messages (bytes) base64-encoded both ways, the Functions
    queue trigger's default ``messageEncoding``."""
    from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy

    return queue_service(settings).get_queue_client(
        name, message_encode_policy=BinaryBase64EncodePolicy(), message_decode_policy=BinaryBase64DecodePolicy()
    )


def send_queue_message(name: str, body: bytes, settings: Settings | None = None, delay_s: int = 0) -> None:
    """Send ``body`` to queue ``name`` of the host storage, visible after ``delay_s`` seconds (at
    most 7 days, the service's limit); the queue is created when missing (locally: in Azure the
    infrastructure creates it). Raises ``AzureError`` when the message could not be sent."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    queue = queue_client(name, settings)
    delay = max(0, min(int(delay_s), MAX_QUEUE_DELAY_S))
    try:
        queue.send_message(body, visibility_timeout=delay)
    except ResourceNotFoundError:
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        queue.send_message(body, visibility_timeout=delay)


def blob_service(settings: Settings | None = None) -> BlobServiceClient:
    s = settings or get_settings()
    return _blob_service(s.storage_connection, "" if s.storage_connection else service_url(s, "blob"), *_identity(s))


def table_service(settings: Settings | None = None) -> TableServiceClient:
    s = settings or get_settings()
    return _table_service(s.storage_connection, "" if s.storage_connection else service_url(s, "table"), *_identity(s))


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


@functools.lru_cache(maxsize=8)
def _bounded_table_service(connection: str, url: str, kind: str, client_id: str, connect_s: float, read_s: float) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    bounds = {"retry_total": 0, "connection_timeout": connect_s, "read_timeout": read_s}
    if connection:
        return TableServiceClient.from_connection_string(connection, **bounds)
    return TableServiceClient(url, credential=_credential_for(kind, client_id), **bounds)


def bounded_table_service(settings: Settings | None = None, *, connect_s: float = 0.5, read_s: float = 2.0) -> TableServiceClient:
    """A table client for paths that must answer fast when storage is down (scoring): no retries,
    short connect and read timeouts (the default client retries for ~5 s before failing)."""
    s = settings or get_settings()
    url = "" if s.storage_connection else service_url(s, "table")
    return _bounded_table_service(s.storage_connection, url, *_identity(s), connect_s, read_s)


def upload_file(container: ContainerClient, name: str, path: Path) -> None:
    """Upload a spool file block by block (memory stays at one block whatever the file size)."""
    from azure.storage.blob import BlobBlock, ContentSettings

    content = ContentSettings(content_type="application/jsonl")
    blob = container.get_blob_client(name)
    if path.stat().st_size <= UPLOAD_BLOCK_BYTES:
        blob.upload_blob(path.read_bytes(), overwrite=True, content_settings=content)
        return
    blocks = []
    with open(path, "rb") as f:
        while chunk := f.read(UPLOAD_BLOCK_BYTES):
            block_id = f"{len(blocks):08d}"
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id=block_id))
    blob.commit_block_list(blocks, content_settings=content)
