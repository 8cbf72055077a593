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
from typing import Any

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum

VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


class EventDeliveryError(ValueError):
    """The delivery body is not an Event Grid / CloudEvents payload (answered with 400)."""


def parse_delivery(body: bytes) -> list[dict[str, Any]]:
    """The events of one delivery: a JSON array of event objects, or a single event object."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventDeliveryError(f"body is not JSON: {exc}") from None
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


def decode_event(event: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """Decode one event with the worker's converter (see the module docstring)."""
    if "specversion" not in event and "specVersion" in event:
        # Some published samples spell the CloudEvents attribute specVersion; Event Grid sends the
        # lower-case name the CloudEvents spec requires, so normalise the sample's spelling.
        event = {("specversion" if k == "specVersion" else k): v for k, v in event.items()}
    return EventGridEventInConverter.decode(Datum(json.dumps(event), "json"), trigger_metadata={})
