"""Event Grid webhook deliveries: parse the body, answer validation, decode events like the worker.

Event Grid POSTs a JSON array of events (Event Grid schema) or CloudEvents (one event with
``application/cloudevents+json``, or an array with ``application/cloudevents-batch+json``). The
Functions host passes each event's JSON to the Python worker, which decodes it with
``azure.functions``' own ``EventGridEventInConverter``: an event carrying ``specversion`` becomes a
``func.CloudEvent`` (``source``, ``type``, ``time``), any other a ``func.EventGridEvent``
(``topic``, ``event_type``, ``event_time``). The local host uses that same converter, so a handler
sees exactly the object it would get in Azure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum

VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


class EventDeliveryError(ValueError):
    """The delivery body is not an Event Grid / CloudEvents payload (answered with 400)."""


def loads(body: bytes | str, what: str = "body") -> Any:
    """JSON text -> value; EventDeliveryError (400) when it is not JSON or nests too deeply to parse."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventDeliveryError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        # The parser recurses once per level of [ or {: an attacker's 100,000 levels would
        # otherwise escape as a 500, which Event Grid retries for 24 hours.
        raise EventDeliveryError(f"{what} nests JSON arrays/objects too deeply (more than {sys.getrecursionlimit()} levels)") from None


def parse_delivery(body: bytes) -> list[dict[str, Any]]:
    """The events of one delivery: a JSON array of event objects, or a single event object."""
    payload = loads(body)
    events = payload if isinstance(payload, list) else [payload]
    if not events:
        raise EventDeliveryError("body holds no events")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise EventDeliveryError(f"event {index} is not a JSON object")
        if not event.get("id"):
            raise EventDeliveryError(f"event {index} has no id")
        if not (event.get("eventType") or event.get("type")):
            raise EventDeliveryError(f"event {index} has neither eventType (Event Grid) nor type (CloudEvents)")
    return events


def validation_code(events: list[dict[str, Any]]) -> str:
    """The code a SubscriptionValidation delivery asks to echo back as ``validationResponse``."""
    for event in events:
        data = event.get("data")
        if isinstance(data, dict) and data.get("validationCode"):
            return str(data["validationCode"])
    raise EventDeliveryError("validation event carries no data.validationCode")


def decode_event(event: dict[str, Any], index: int = 0) -> func.EventGridEvent | func.CloudEvent:
    """Decode one event with the worker's converter (see the module docstring).

    The converter reads the event's timestamp (``eventTime``, or ``time`` for a CloudEvent) and
    fails on one it cannot read; that is the sender's error, so it is an EventDeliveryError
    (400) naming the event and the field, never a failed invocation (500, retried by Event Grid).
    """
    if "specversion" not in event and "specVersion" in event:
        # Some published samples spell the CloudEvents attribute specVersion; Event Grid sends the
        # lower-case name the CloudEvents spec requires, so normalise the sample's spelling.
        event = {("specversion" if k == "specVersion" else k): v for k, v in event.items()}
    try:
        text = json.dumps(event)
    except RecursionError:
        raise EventDeliveryError(f"event {index} nests JSON arrays/objects too deeply") from None
    try:
        return EventGridEventInConverter.decode(Datum(text, "json"), trigger_metadata={})
    except RecursionError:
        raise EventDeliveryError(f"event {index} nests JSON arrays/objects too deeply") from None
    except (ValueError, TypeError) as exc:
        field = "time" if "specversion" in event else "eventTime"
        value = event.get(field)
        raise EventDeliveryError(
            f"event {index} (id {str(event.get('id'))[:100]!r}): {field} {str(value)[:100]!r} is not a timestamp "
            f"the worker can read (ISO 8601 in UTC, e.g. 2024-05-01T12:00:00.1234567Z): {exc}"
        ) from None


def decode_events(events: list[dict[str, Any]]) -> list[func.EventGridEvent | func.CloudEvent]:
    """Every event of a delivery decoded, or EventDeliveryError naming the first unreadable one."""
    return [decode_event(event, index) for index, event in enumerate(events)]
