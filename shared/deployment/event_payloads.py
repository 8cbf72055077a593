"""Azure ML run events (Event Grid and CloudEvents schema) parsed into a typed ``JobEvent``.

Published samples disagree on casing (``eventType`` vs ``EventType``, ``"failed"`` vs
``"Failed"``, ``specVersion`` vs ``specversion``) and carry ``runType: null``, so every key
and status is read case-insensitively and nothing beyond the run id is required. Whether an
event is trusted (its topic is our workspace) is a separate check, :func:`is_trusted`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_EVENT_TYPES = frozenset({RUN_COMPLETED.lower(), RUN_STATUS_CHANGED.lower()})

# runProperties keys that name the pipeline run a step belongs to (Azure ML sets
# azureml.pipelinerunid on every step of a pipeline job; other runs carry a parent id).
_PARENT_KEYS = ("azureml.pipelinerunid", "azureml.parentrunid", "parentrunid", "parent_run_id", "parent")
_SUBJECT_RUN = re.compile(r"(?:^|/)runs/([^/]+)/?$", re.IGNORECASE)


class MalformedEventError(ValueError):
    """The payload is not a run event we can read; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """One Azure ML run event, schema-independent."""

    event_id: str
    event_type: str  # as published, e.g. Microsoft.MachineLearningServices.RunCompleted
    topic: str  # Event Grid ``topic`` or CloudEvents ``source``: the workspace resource id
    subject: str
    run_id: str
    schema: str  # "eventgrid" or "cloudevents"
    run_status: str | None = None  # lower-case (RunStatusChanged); None on RunCompleted
    run_type: str | None = None
    experiment_name: str | None = None
    run_tags: dict[str, str] = dataclasses.field(default_factory=dict)
    run_properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    event_time: str | None = None

    @property
    def is_run_event(self) -> bool:
        return self.event_type.lower() in RUN_EVENT_TYPES

    @property
    def is_completed(self) -> bool:
        return self.event_type.lower() == RUN_COMPLETED.lower() or self.run_status == "completed"

    @property
    def parent_run_id(self) -> str | None:
        """The pipeline (or parent) run this run is a step of; None for a top-level job."""
        props = _lower_keys(self.run_properties)
        for key in _PARENT_KEYS:
            value = props.get(key)
            if isinstance(value, str) and value and value.lower() != self.run_id.lower():
                return value
        return None

    def tag(self, name: str) -> str | None:
        value = _lower_keys(self.run_tags).get(name.lower())
        return None if value is None else str(value)


def _lower_keys(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in (mapping or {}).items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    return None


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):  # some publishers send nested objects as JSON strings
        try:
            value = json.loads(value) if value.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            raise MalformedEventError(f"{what} is a string that is not JSON (or nests too deeply)") from None
    if not isinstance(value, Mapping):
        raise MalformedEventError(f"{what} must be an object, got {type(value).__name__}")
    return dict(value)


def parse_job_event(envelope: Any) -> JobEvent:
    """Read one event envelope (a dict, or its JSON text) of either schema.

    Raises MalformedEventError when it is not an object, has no data object, or names no run.
    Unrelated event types parse too (``is_run_event`` is False) so callers can log them.
    """
    if isinstance(envelope, str | bytes | bytearray):
        try:
            envelope = json.loads(envelope)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedEventError(f"event is not JSON: {exc}") from None
        except RecursionError:
            raise MalformedEventError("event nests JSON arrays/objects too deeply") from None
    if not isinstance(envelope, Mapping):
        raise MalformedEventError(f"event must be a JSON object, got {type(envelope).__name__}")
    env = _lower_keys(envelope)
    schema = "cloudevents" if "specversion" in env or ("source" in env and "topic" not in env) else "eventgrid"
    event_type = _text(env.get("eventtype") if schema == "eventgrid" else env.get("type")) or _text(env.get("type")) or ""
    topic = _text(env.get("topic") if schema == "eventgrid" else env.get("source")) or ""
    subject = _text(env.get("subject")) or ""
    data = _lower_keys(_mapping(env.get("data"), "data"))

    run_id = _text(data.get("runid"))
    if not run_id:
        match = _SUBJECT_RUN.search(subject)
        run_id = match.group(1) if match else None
    if not run_id or not run_id.strip():
        raise MalformedEventError("event names no run (no data.runId and no runs/<id> subject)")
    status = _text(data.get("runstatus"))
    return JobEvent(
        event_id=_text(env.get("id")) or "",
        event_type=event_type,
        topic=topic,
        subject=subject,
        run_id=run_id.strip(),
        schema=schema,
        run_status=status.strip().lower() if status else None,
        run_type=_text(data.get("runtype")),
        experiment_name=_text(data.get("experimentname")),
        run_tags={str(k): str(v) for k, v in _mapping(data.get("runtags"), "data.runTags").items()},
        run_properties=_mapping(data.get("runproperties"), "data.runProperties"),
        event_time=_timestamp(env.get("eventtime") if schema == "eventgrid" else env.get("time"),
                              "eventTime" if schema == "eventgrid" else "time"),
    )


_FRACTION = re.compile(r"(\.\d{6})\d+")  # Event Grid sends 7 fractional digits; Python reads 6


def _timestamp(value: Any, field: str) -> str | None:
    """The event's time as published (checked to be ISO 8601); None when absent.

    MalformedEventError naming the field when it is not a readable timestamp."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if not isinstance(value, str):
        raise MalformedEventError(f"{field} must be an ISO 8601 string, got {type(value).__name__}")
    try:
        datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()))
    except ValueError:
        raise MalformedEventError(f"{field} {value[:100]!r} is not an ISO 8601 timestamp") from None
    return value.strip()


def _normalise_resource_id(value: str) -> str:
    return value.strip().rstrip("/").lower()


def is_trusted(event: JobEvent, workspace_resource_id: str) -> bool:
    """True when the event's topic/source is the workspace the app trusts (ARM ids are case-insensitive)."""
    if not event.topic or not workspace_resource_id:
        return False
    return _normalise_resource_id(event.topic) == _normalise_resource_id(workspace_resource_id)
