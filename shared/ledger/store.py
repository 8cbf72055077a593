"""The ledger store: records with their states in Table Storage, written ETag-conditionally.

Every trigger delivers at least once and out of order, so every action the app takes is
claimed here first with an ETag-conditional write: of two concurrent or repeated deliveries
exactly one wins the transition and acts; the other sees the new state and does nothing.

Layout: PartitionKey is the record kind, RowKey its id. ``state``, ``created_at`` and
``updated_at`` are columns; the record's other fields are one JSON column (``fields``) so
records can carry nested values (counts, tags, metrics). The record kinds, their states and
the transitions allowed between them are in :mod:`shared.ledger.records`; :meth:`Ledger.update`
refuses any other state change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.clock import iso, utcnow  # the one time format (shared.ledger re-exports them)
from shared.clock import parse_iso as parse_iso  # the one reader, re-exported
from shared.ledger import records as R
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

_BAD_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


T = TypeVar("T")

# How often a read-modify-write is retried after losing a race before giving up.
CONFLICT_RETRIES = 10


class ConflictError(RuntimeError):
    """The record changed since it was read (ETag mismatch)."""


class InvalidTransitionError(ValueError):
    """A state change the state machine in :mod:`shared.ledger.records` does not allow (a bug)."""


def retry_on_conflict(attempt: Callable[[], T], what: str, attempts: int = CONFLICT_RETRIES) -> T:
    """Run ``attempt`` (which re-reads what it writes) again each time it loses a race.

    ``attempt`` raises :class:`ConflictError` to be retried (an ETag mismatch from
    :meth:`Ledger.update`, or its own "someone created it first"); after ``attempts`` losses the
    last ConflictError propagates, naming ``what``.
    """
    for _ in range(attempts):
        try:
            return attempt()
        except ConflictError:
            continue
    raise ConflictError(f"{what}: too much contention")


def check_key(value: str) -> str:
    """Table keys may not contain / \\ # ? or control characters."""
    if not value or _BAD_KEY_CHARS.search(value) or len(value) > 512:
        raise ValueError(f"invalid ledger key {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Record:
    kind: str
    id: str
    state: str
    fields: dict[str, Any]
    created_at: str
    updated_at: str
    etag: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "state": self.state, "created_at": self.created_at,
                "updated_at": self.updated_at, **self.fields}


def _to_entity(kind: str, id_: str, state: str, fields: dict[str, Any], created_at: str) -> dict[str, Any]:
    return {
        "PartitionKey": check_key(kind),
        "RowKey": check_key(id_),
        "state": state,
        "created_at": created_at,
        "updated_at": iso(utcnow()),
        "fields": json.dumps(fields, sort_keys=True, default=str),
    }


def _from_entity(entity: Any) -> Record:
    meta = getattr(entity, "metadata", {}) or {}
    return Record(
        kind=entity["PartitionKey"],
        id=entity["RowKey"],
        state=entity.get("state", ""),
        fields=json.loads(entity.get("fields") or "{}"),
        created_at=entity.get("created_at", ""),
        updated_at=entity.get("updated_at", ""),
        etag=meta.get("etag"),
    )


class Ledger:
    def __init__(self, table: TableClient):
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Ledger:
        from shared.storage import table_service

        s = settings or get_settings()
        return cls(table_service(s).get_table_client(s.ledger_table))

    def create(self, kind: str, id_: str, state: str, **fields: Any) -> Record | None:
        """Create a record; None when it already exists (someone else created it first)."""
        from azure.core.exceptions import ResourceExistsError

        entity = _to_entity(kind, id_, state, fields, iso(utcnow()) or "")
        try:
            meta = self._table.create_entity(entity)
        except ResourceExistsError:
            return None
        return Record(kind, id_, state, fields, entity["created_at"], entity["updated_at"], meta.get("etag"))

    def get(self, kind: str, id_: str) -> Record | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _from_entity(self._table.get_entity(check_key(kind), check_key(id_)))
        except ResourceNotFoundError:
            return None

    def list(self, kind: str, states: Iterable[str] | None = None) -> list[Record]:
        records = [_from_entity(e) for e in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": kind})]
        if states is not None:
            wanted = set(states)
            records = [r for r in records if r.state in wanted]
        return records

    def update(self, record: Record, state: str | None = None, **fields: Any) -> Record:
        """Write ``record`` with changes only if nobody changed it since it was read."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        merged = {**record.fields, **fields}
        new_state = state if state is not None else record.state
        if new_state != record.state and not R.allowed(record.kind, record.state, new_state):
            raise InvalidTransitionError(f"{record.kind}/{record.id}: {record.state!r} -> {new_state!r} is not an allowed transition")
        entity = _to_entity(record.kind, record.id, new_state, merged, record.created_at)
        try:
            meta = self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=record.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceModifiedError:
            raise ConflictError(f"{record.kind}/{record.id} changed concurrently") from None
        return Record(record.kind, record.id, new_state, merged, record.created_at, entity["updated_at"], meta.get("etag"))

    def transition(self, kind: str, id_: str, from_states: Iterable[str], to_state: str, **fields: Any) -> Record | None:
        """Move a record from one of ``from_states`` to ``to_state``, exactly once.

        Returns the updated record when this caller won the transition, None when the record
        is missing or is (by now) in another state. Lost races are retried against the fresh
        record, so a caller never acts on a transition somebody else made.
        """
        allowed = set(from_states)

        def attempt() -> Record | None:
            record = self.get(kind, id_)
            if record is None or record.state not in allowed:
                return None
            return self.update(record, to_state, **fields)

        return retry_on_conflict(attempt, f"{kind}/{id_} -> {to_state}")

    def merge(self, kind: str, id_: str, state: str | None = None, **fields: Any) -> Record:
        """Read-modify-write with retry on conflict (creates the record when missing)."""

        def attempt() -> Record:
            record = self.get(kind, id_)
            if record is None:
                created = self.create(kind, id_, state or "", **fields)
                if created is None:
                    raise ConflictError(f"{kind}/{id_} created concurrently")
                return created
            return self.update(record, state, **fields)

        return retry_on_conflict(attempt, f"{kind}/{id_}")

    def annotate(self, kind: str, id_: str, **fields: Any) -> Record | None:
        """Add fields to an existing record without changing its state; None when it is missing."""

        def attempt() -> Record | None:
            current = self.get(kind, id_)
            return None if current is None else self.update(current, **fields)

        return retry_on_conflict(attempt, f"{kind}/{id_}")

    def delete(self, kind: str, id_: str) -> None:
        self._table.delete_entity(check_key(kind), check_key(id_))
