"""Job events of the local workspace, in Azure ML's Event Grid schema.

Same shape as the published samples (``Microsoft.MachineLearningServices.RunCompleted`` and
``.RunStatusChanged``): subject ``experiments/{experimentId}/runs/{runId}``, data with
experimentId, experimentName, runId, runType, runTags, runProperties (+ runStatus on
RunStatusChanged). Delivered like Event Grid delivers to a webhook: POST of a JSON array with
header ``aeg-event-type: Notification``; only 200-204 count as delivered.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared.clock import backoff_s

log = logging.getLogger(__name__)

RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_TYPE = "azureml.PipelineRun"
# Azure ML's run status names for the workspace's final job states.
RUN_STATUS = {"completed": "Completed", "failed": "Failed", "canceled": "Canceled"}
# Event Grid does not retry these: the request itself is wrong, retrying cannot help.
_NOT_RETRIED = {400, 401, 403, 413}


def build_job_event(
    *,
    topic: str,
    state: str,
    experiment_id: str,
    experiment_name: str,
    job_name: str,
    tags: dict[str, str],
    properties: dict[str, Any],
    event_time: str,
) -> dict[str, Any]:
    """One Event Grid event for a job that reached ``state`` (completed, failed or canceled)."""
    data: dict[str, Any] = {
        "experimentId": experiment_id,
        "experimentName": experiment_name,
        "runId": job_name,
        "runType": RUN_TYPE,
        "runTags": dict(tags),
        # Azure ML run properties are strings.
        "runProperties": {k: v if isinstance(v, str) else str(v) for k, v in properties.items()},
    }
    if state == "completed":
        event_type = RUN_COMPLETED
    else:
        event_type = RUN_STATUS_CHANGED
        data["runStatus"] = RUN_STATUS[state]
    return {
        "topic": topic,
        "subject": f"experiments/{experiment_id}/runs/{job_name}",
        "eventType": event_type,
        "eventTime": event_time,
        "id": str(uuid.uuid4()),
        "data": data,
        "dataVersion": "",
        "metadataVersion": "1",
    }


def backoff_delays(total_s: float, first_s: float = 1.0, cap_s: float = 30.0) -> list[float]:
    """Waits between attempts: doubling from ``first_s`` up to ``cap_s``, summing to ~``total_s``."""
    delays: list[float] = []
    spent = 0.0
    while spent + (delay := backoff_s(first_s, len(delays), cap_s)) <= total_s:
        delays.append(delay)
        spent += delay
    return delays


def post_event(
    url: str,
    event: dict[str, Any],
    *,
    retry_total_s: float = 120.0,
    timeout_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST ``[event]`` to the webhook, retrying with back-off; never raises.

    Returns the outcome: delivered (bool), attempts, status (last HTTP status or None), error.
    """
    import httpx

    delays = backoff_delays(retry_total_s)
    attempts, status, error = 0, None, None
    headers = {"aeg-event-type": "Notification", "Content-Type": "application/json"}
    for attempt in range(len(delays) + 1):
        attempts += 1
        try:
            resp = httpx.post(url, json=[event], headers=headers, timeout=timeout_s)
            status, error = resp.status_code, None
            if 200 <= resp.status_code <= 204:
                return {"delivered": True, "attempts": attempts, "status": status, "error": None}
            error = f"HTTP {resp.status_code}"
            if resp.status_code in _NOT_RETRIED:
                break
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        if attempt < len(delays):
            log.info("event %s not delivered (%s); retrying in %.0f s", event["eventType"], error, delays[attempt])
            sleep(delays[attempt])
    return {"delivered": False, "attempts": attempts, "status": status, "error": error}
