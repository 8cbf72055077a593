"""Parsing Azure ML run events: the official samples as published, both schemas, any casing."""

from __future__ import annotations

import json

import pytest

from shared.deployment.event_payloads import RUN_COMPLETED, MalformedEventError, is_trusted, parse_job_event
from tests.fakes.job_event_samples import load_sample

SAMPLE_RUN = "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5"
SAMPLE_TOPIC = (
    "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}"
    "/providers/Microsoft.MachineLearningServices/workspaces/{workspace-name}"
)


def test_run_completed_sample_as_published(fixtures_dir):
    event = parse_job_event(load_sample(fixtures_dir, "run_completed.eventgrid.json"))
    assert event.schema == "eventgrid"
    assert event.event_type == RUN_COMPLETED
    assert event.is_run_event and event.is_completed
    assert event.run_id == SAMPLE_RUN
    assert event.topic == SAMPLE_TOPIC
    assert event.run_type is None  # published as null
    assert event.run_status is None
    assert event.run_tags == {}
    assert event.run_properties["model_name"] == "AutoMLad912b2d65"
    assert event.parent_run_id is None  # an AutoML child, but not a pipeline step naming a parent
    assert event.experiment_name == "automl-local-regression"
    assert event.event_id == "831e1650-001e-001b-66ab-eeb76e069631"


@pytest.mark.parametrize(
    "name,schema", [("run_status_changed.eventgrid.json", "eventgrid"), ("run_status_changed.cloudevents.json", "cloudevents")]
)
def test_run_status_changed_samples_as_published(fixtures_dir, name, schema):
    event = parse_job_event(load_sample(fixtures_dir, name))
    assert event.schema == schema
    assert event.is_run_event
    assert event.run_status == "failed"  # published lower-case
    assert not event.is_completed
    assert event.run_id == SAMPLE_RUN
    assert event.topic == SAMPLE_TOPIC  # CloudEvents "source"
    assert event.event_time == "2017-06-26T18:41:00.9584103Z"


def test_json_text_and_bytes_parse_like_dicts(fixtures_dir):
    raw = (fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").read_text(encoding="utf-8")
    assert parse_job_event(raw) == parse_job_event(raw.encode()) == parse_job_event(json.loads(raw))


def test_keys_and_status_read_case_insensitively(fixtures_dir):
    sample = load_sample(fixtures_dir, "run_status_changed.eventgrid.json")
    shouty = {k.upper(): v for k, v in sample.items()}
    shouty["DATA"] = {k[0].upper() + k[1:]: v for k, v in sample["data"].items()}
    shouty["DATA"]["RunStatus"] = "Completed"
    shouty["EVENTTYPE"] = "microsoft.machinelearningservices.runstatuschanged"
    event = parse_job_event(shouty)
    assert event.run_id == SAMPLE_RUN
    assert event.run_status == "completed"
    assert event.is_run_event and event.is_completed
    assert event.topic == SAMPLE_TOPIC


def test_run_id_falls_back_to_the_subject(fixtures_dir):
    sample = load_sample(fixtures_dir, "run_completed.eventgrid.json")
    del sample["data"]["runId"]
    assert parse_job_event(sample).run_id == SAMPLE_RUN


def test_pipeline_step_names_its_parent(fixtures_dir):
    sample = load_sample(fixtures_dir, "run_completed.eventgrid.json")
    sample["data"]["runProperties"]["azureml.pipelinerunid"] = "pipeline-root-1"
    assert parse_job_event(sample).parent_run_id == "pipeline-root-1"
    # The pipeline root carries its own id there: not a step.
    sample["data"]["runProperties"]["azureml.pipelinerunid"] = SAMPLE_RUN
    assert parse_job_event(sample).parent_run_id is None


def test_other_event_types_parse_but_are_not_run_events(fixtures_dir):
    sample = load_sample(fixtures_dir, "run_completed.eventgrid.json")
    sample["eventType"] = "Microsoft.MachineLearningServices.ModelRegistered"
    assert not parse_job_event(sample).is_run_event


@pytest.mark.parametrize(
    "payload,message",
    [
        ("not json {", "not JSON"),
        ([1, 2], "JSON object"),
        ({"topic": "t", "eventType": RUN_COMPLETED, "data": "[]"}, "must be an object"),
        ({"topic": "t", "eventType": RUN_COMPLETED, "data": 7}, "must be an object"),
        ({"topic": "t", "eventType": RUN_COMPLETED, "subject": "x", "data": {"runId": None}}, "names no run"),
        ({"topic": "t", "eventType": RUN_COMPLETED, "data": {"runId": "r", "runTags": ["a"]}}, "runTags"),
    ],
)
def test_malformed_payloads_say_what_is_wrong(payload, message):
    with pytest.raises(MalformedEventError, match=message):
        parse_job_event(payload)


def test_trust_is_the_workspace_resource_id_case_insensitively(fixtures_dir):
    event = parse_job_event(load_sample(fixtures_dir, "run_completed.eventgrid.json"))
    assert is_trusted(event, SAMPLE_TOPIC)
    assert is_trusted(event, SAMPLE_TOPIC.upper() + "/")
    assert not is_trusted(event, SAMPLE_TOPIC.replace("{workspace-name}", "other"))
    assert not is_trusted(event, "")
    assert not is_trusted(event, SAMPLE_TOPIC + "/onlineEndpoints/x")
