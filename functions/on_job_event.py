"""Event Grid trigger: Azure ML job events -> register and deploy the fine-tuned model.

The function name ``on_job_event`` is part of the Event Grid subscription's webhook URL
(``...?functionName=on_job_event``): keep it stable.
"""

from __future__ import annotations

import logging
from typing import Any

import azure.functions as func

from shared.context import context
from shared.deployment.event_payloads import JobEvent, MalformedEventError, parse_job_event
from shared.deployment.job_outcome import handle_job_event
from shared.observability import telemetry

log = logging.getLogger(__name__)

bp = func.Blueprint()


def job_event(event: Any) -> JobEvent:
    """The trigger's event (either schema) as the one typed :class:`JobEvent` the domain takes.

    MalformedEventError for anything that cannot be read (the trigger's contract: logged and
    dropped with a 2xx, never a failure Event Grid would retry for a day).
    """
    try:
        envelope = _envelope(event)
    except (AttributeError, TypeError, ValueError, RecursionError) as exc:
        raise MalformedEventError(f"event cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None
    return parse_job_event(envelope)


def _time(value: Any) -> Any:
    """The event's time as the worker gives it (a datetime, or None); text is passed on as sent."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def _envelope(event: Any) -> dict[str, Any]:
    """The trigger's event object back as the envelope it was published as (either schema)."""
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": _time(event.time),
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": _time(event.event_time),
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


@bp.function_name("on_job_event")
@bp.event_grid_trigger(arg_name="event")
def on_job_event(event: func.EventGridEvent) -> None:
    # Returning normally answers 200: events that are not ours or cannot be read are logged and
    # dropped by handle_job_event. Transient backend/storage errors propagate so Event Grid retries.
    try:
        parsed = job_event(event)
    except MalformedEventError as exc:
        log.warning("on_job_event %s ignored: malformed payload (%s)", event.id, exc)
        return
    with telemetry.job_span("on_job_event", parsed.run_id, event_id=event.id) as span:
        outcome = handle_job_event(parsed, ctx=context())
        span.outcome(outcome)
    log.info(
        "on_job_event %s: %s (%s) job=%s model=%s endpoint=%s",
        event.id,
        outcome.action,
        outcome.reason,
        outcome.job_name,
        outcome.model,
        outcome.endpoint,
    )
