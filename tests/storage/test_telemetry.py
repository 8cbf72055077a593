"""One trace per upload: the functions' spans, linked from the blob trigger to the first answer.

The linked-spans test drives the real handlers (blob trigger with a real BlobClient to Azurite,
the Event Grid function with a decoded official sample, the reconcile timer, the scoring
route against a real stub endpoint) with an in-memory OpenTelemetry exporter installed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from functions import on_job_event, prepare_chat_data, scoring
from functions import reconcile as reconcile_function
from shared.backends import use_backend
from shared.backends.base import COMPLETED
from shared.endpoints.naming import endpoint_name
from shared.ledger import DATASET, ROUTE, Ledger
from shared.observability import telemetry
from shared.scoring.scorer import reset_scorers
from tests.fakes.job_event_samples import grid_event, load_sample, ours, timer
from tests.fakes.uploads import GOOD, upload
from tests.fakes.workspace import InMemoryWorkspace
from tests.stub_endpoint import StubEndpoint, running
from tests.support import ROOT, call_http, user_function


@pytest.fixture
def exporter():
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.use_tracer_provider(provider)
    try:
        yield spans
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.mark.storage
def test_one_upload_is_one_operation_from_blob_to_first_answer(storage_settings, exporter, fixtures_dir) -> None:
    s = storage_settings.replace(activity_flush_s=3600, training_mode="upload")  # one upload, one job, one model name
    from shared.settings import use_settings

    use_settings(s)
    stub = StubEndpoint()
    with running(stub.app()) as server:
        ws = InMemoryWorkspace(s.workspace_resource_id, base_model=s.base_model_name, target_url=server.url, key=stub)
        use_backend(ws, s)
        ledger = Ledger.from_settings(s)
        try:
            # 1. the blob trigger: prepared, accepted, submitted
            user_function(prepare_chat_data, "prepare_chat_data")(upload(s, "team/chat.jsonl", GOOD))
            (dataset,) = ledger.list(DATASET)
            job = dataset.get("job_name")
            assert dataset.state == "submitted" and dataset.get("traceparent")
            # 2. the job event: registered and deploying
            ws.set_job(job, COMPLETED)
            on_job_event.on_job_event(grid_event(ours(load_sample(fixtures_dir, "run_completed.eventgrid.json"), s, job)))
            ep = endpoint_name(s.model_name, "1")
            # 3. the reconcile timer: deployment finished -> activated
            ws.finish_deployment(ep)
            user_function(reconcile_function, "reconcile")(timer())
            assert ledger.get(ROUTE, s.model_name).get("endpoint") == ep
            # 4. the first answer, then a second call
            score = user_function(scoring, "score")
            body = json.dumps({"input_data": {"input_string": [{"role": "user", "content": "Ahoy?"}], "parameters": {}}}).encode()
            for _ in range(2):
                reply = call_http(score, "POST", "/api/score", body)
                assert reply.status == 200, reply.body
        finally:
            reset_scorers()

    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for sp in spans:
        by_name.setdefault(sp.name, []).append(sp)
    (upload_span,) = by_name["prepare_chat_data"]
    operation = upload_span.context.trace_id
    assert upload_span.parent is None
    assert upload_span.attributes["dataset_id"] == dataset.id and upload_span.attributes["job"] == job
    assert dataset.get("traceparent") == f"00-{operation:032x}-{upload_span.context.span_id:016x}-{int(upload_span.context.trace_flags):02x}"

    (event_span,) = by_name["on_job_event"]
    assert event_span.context.trace_id == operation and event_span.parent.span_id == upload_span.context.span_id
    assert event_span.attributes["job"] == job and event_span.attributes["model"] == f"{s.model_name}:1"
    assert event_span.attributes["endpoint"] == ep

    runs = [sp for sp in by_name["reconcile"] if sp.context.trace_id != operation]
    in_upload = [sp for sp in by_name["reconcile"] if sp.context.trace_id == operation]
    assert len(runs) == 1 and len(in_upload) == 1, "reconcile: one run span, one span in the upload's trace"
    assert in_upload[0].attributes["dataset_id"] == dataset.id
    assert [link.context.trace_id for link in runs[0].links] == [operation]

    first, second = sorted(by_name["score"], key=lambda sp: sp.start_time)
    assert first.context.trace_id == operation and first.attributes["first_answer"] is True
    assert first.attributes["endpoint"] == ep and first.attributes["model"] == s.model_name
    assert second.context.trace_id != operation and [link.context.trace_id for link in second.links] == [operation]

    in_operation = {sp.name for sp in spans if sp.context.trace_id == operation}
    assert in_operation == {"prepare_chat_data", "on_job_event", "reconcile", "score"}


def test_without_the_connection_string_nothing_is_exported_and_the_fields_are_logged(caplog) -> None:
    telemetry.use_tracer_provider(None)
    from shared.settings import use_settings
    from tests.support import make_settings

    use_settings(make_settings())
    try:
        assert telemetry.enabled() is False
        with caplog.at_level(logging.INFO, logger="shared.observability.telemetry"):
            with telemetry.span("on_job_event", job="ftjob-1", dataset_id="ds-1") as sp:
                sp.set(model="m:1", endpoint="ep-1")
        assert sp.traceparent is None
        (record,) = [r for r in caplog.records if getattr(r, "span", None) == "on_job_event"]
        assert record.span_fields["job"] == "ftjob-1" and record.span_fields["endpoint"] == "ep-1"
        assert record.span_fields["outcome"] == "ok" and "duration_ms" in record.span_fields
    finally:
        use_settings(None)
        telemetry.use_tracer_provider(None)


def _run(code: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("APPLICATIONINSIGHTS_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json, sys
import azure.monitor.opentelemetry as distro
calls = []
distro.configure_azure_monitor = lambda **kw: calls.append(sorted(kw)) or None
import function_app
from shared.observability import telemetry
with telemetry.span("prepare_chat_data", dataset_id="ds-1") as sp:
    pass
from opentelemetry import trace
print(json.dumps({"enabled": telemetry.enabled(), "configure_calls": calls, "traceparent": sp.traceparent,
                  "credential": type(telemetry._aad_credential(__import__("os").environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", ""), "")).__name__}))
"""


def test_the_distro_is_configured_only_when_the_connection_string_is_set() -> None:
    off = _run(PROBE)
    assert off["enabled"] is False and off["configure_calls"] == [] and off["traceparent"] is None
    on = _run(PROBE, APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
              "IngestionEndpoint=http://127.0.0.1:9/")
    assert on["enabled"] is True and on["configure_calls"] == [["connection_string"]]
    aad = _run(PROBE, APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000;"
               "IngestionEndpoint=http://127.0.0.1:9/", APPLICATIONINSIGHTS_AUTHENTICATION_STRING="Authorization=AAD;ClientId=abc")
    assert aad["configure_calls"] == [["connection_string", "credential"]] and aad["credential"] == "ManagedIdentityCredential"
