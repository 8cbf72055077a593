"""Stalled and degraded local blob triggers: what blocks them, recorded by the local host for ``status`` to show.

The local host (devhost.blob_poller) writes one JSON blob per watched container in the host
storage's ``azure-webjobs-hosts`` container, at ``devhost-health/<host id>/<container>.json``:

    {"host_id", "function", "container", "state": "ok" | "degraded" | "stalled", "reason", "fix",
     "unlistable": [names], "since", "updated_at"}

``stalled``: blobs after some point of the container are not triggered; ``degraded``: every blob
is triggered, but some names cannot be listed by the storage emulator and cost extra requests on
every poll. A stalled record is refreshed while the stall lasts, so ``updated_at`` says whether a
host is still reporting it. In Azure no such record exists and status shows nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.ledger import iso, utcnow
from shared.settings import Settings
from shared.storage import WEBJOBS_HOSTS_CONTAINER, blob_service

log = logging.getLogger(__name__)

PREFIX = "devhost-health/"
OK, DEGRADED, STALLED = "ok", "degraded", "stalled"


def record_path(host_id: str, container: str) -> str:
    return f"{PREFIX}{host_id}/{container}.json"


def write(settings: Settings, host_id: str, record: dict[str, Any]) -> None:
    """Store ``record`` (see the module docstring) for its container; never raises."""
    body = {"host_id": host_id, **record, "updated_at": iso(utcnow())}
    try:
        blob_service(settings).get_blob_client(WEBJOBS_HOSTS_CONTAINER, record_path(host_id, record["container"])).upload_blob(
            json.dumps(body, default=str).encode(), overwrite=True
        )
    except Exception as exc:  # noqa: BLE001 - reporting must never stop the trigger
        log.warning("could not record blob trigger health for %s: %s", record.get("container"), type(exc).__name__)


def read(settings: Settings, containers: list[str] | None = None) -> list[dict[str, Any]]:
    """Every recorded trigger whose state is not ``ok`` (for ``containers`` when given); [] when none."""
    wanted = set(containers) if containers is not None else None
    found = []
    try:
        client = blob_service(settings).get_container_client(WEBJOBS_HOSTS_CONTAINER)
        for item in client.list_blobs(name_starts_with=PREFIX):
            container = item.name.rsplit("/", 1)[-1].removesuffix(".json")
            if wanted is not None and container not in wanted:
                continue
            record = json.loads(client.download_blob(item.name).readall())
            if record.get("state") != OK:
                found.append(record)
    except Exception as exc:  # noqa: BLE001 - status shows what it can
        log.debug("trigger health unreadable: %s", exc)
    return sorted(found, key=lambda r: (r.get("container", ""), r.get("host_id", "")))
