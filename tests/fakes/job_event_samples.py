"""Azure ML job events for the tests: the official samples re-addressed to our workspace and jobs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.timer import TimerRequest

from shared import ledger as L
from shared.backends.base import RUNNING
from shared.deployment.event_payloads import parse_job_event
from shared.ledger import Ledger
from shared.settings import Settings
from tests.fakes.workspace import OUR_TAGS, InMemoryWorkspace


def load_sample(fixtures_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / "eventgrid" / name).read_text(encoding="utf-8"))


def ours(sample: dict[str, Any], settings: Settings, run_id: str, **data_changes: Any) -> dict[str, Any]:
    """A copy of an official sample re-addressed to our workspace and one of our jobs."""
    event = copy.deepcopy(sample)
    topic_key = "source" if "source" in event else "topic"
    event[topic_key] = settings.workspace_resource_id
    experiment = event["data"]["experimentId"]
    event["subject"] = f"experiments/{experiment}/runs/{run_id}"
    event["data"]["runId"] = run_id
    event["data"].update(data_changes)
    return event


def submit_job(
    ledger: Ledger, settings: Settings, workspace: InMemoryWorkspace, name: str, state: str = RUNNING, **job_kw: Any
) -> None:
    """What the preparation module leaves behind: a submitted job in the ledger and the workspace."""
    ledger.create(
        L.JOB,
        name,
        "submitted",
        dataset_id=f"ds-{name}",
        model_name=settings.model_name,
        base_model=settings.base_model_name,
        backend=workspace.name,
        tags=dict(OUR_TAGS),
    )
    workspace.add_job(name, state, **job_kw)


def completed_event(fixtures_dir, settings, run_id, **data):
    return parse_job_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), settings, run_id, **data))


def grid_event(envelope: dict) -> func.EventGridEvent | func.CloudEvent:
    """Decode an envelope the way the Python worker does (its own converter, real event classes)."""
    return EventGridEventInConverter.decode(meta.Datum(json.dumps(envelope), "json"), trigger_metadata={})


def timer() -> TimerRequest:
    return TimerRequest(past_due=False, schedule_status={}, schedule={"AdjustForDST": True})
