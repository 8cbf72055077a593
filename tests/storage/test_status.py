"""`python -m shared.cli status [--json]` over a real ledger (Azurite), with and without a backend."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.backends import use_backend
from shared.backends.base import EP_SUCCEEDED, BackendError
from shared.cli import commands as cli
from shared.context import context
from shared.janitor import run as janitor
from shared.ledger import DATASET, JOB, ROUTE, Ledger, iso, utcnow
from shared.observability.status import collect_status
from shared.observability.status_text import format_table, render_status
from shared.settings import use_settings
from tests.fakes.endpoints import FakeEndpointsBackend, endpoint, record
from tests.support import make_settings

pytestmark = pytest.mark.storage


@pytest.fixture
def ledger(storage_settings) -> Ledger:
    return Ledger.from_settings(storage_settings)


@pytest.fixture
def populated(storage_settings, ledger):
    """A dataset that became a job, a model, a live endpoint, a deleted one, and a janitor run."""
    now = utcnow()
    ledger.create(DATASET, "ds-1", "submitted", blob_name="chat.jsonl", counts={"valid": 120, "invalid": 3}, job_name="job-1")
    ledger.create(DATASET, "ds-2", "rejected", blob_name="bad.jsonl", error="too few valid conversations")
    ledger.create(JOB, "job-1", "completed", dataset_id="ds-1", model_name="chat-ft", model="chat-ft:1")
    backend = FakeEndpointsBackend([endpoint("ep-live", metric_minutes_ago=12, now=now, model="chat-ft:2"),
                                    endpoint("ep-idle", metric_minutes_ago=400, now=now)], removes_at_once=True)
    record(ledger, "ep-live", last_activity_minutes_ago=7, model_version="2", now=now)
    record(ledger, "ep-idle", last_activity_minutes_ago=400, model_version="1", now=now)
    ledger.create(ROUTE, "chat-ft", "active", endpoint="ep-live", model_version="2")
    report = janitor.delete_idle_endpoints(context(settings=storage_settings, ledger=ledger, backend=backend), now=now)
    assert report.deleted == ["ep-idle"]
    return backend, now


def test_json_contract(storage_settings, ledger, populated):
    backend, now = populated
    status = collect_status(storage_settings, ledger, backend)

    for key in ("datasets", "jobs", "models", "endpoints"):
        assert isinstance(status[key], list) and status[key]
        for item in status[key]:
            assert item["id"] and isinstance(item["state"], str)
    assert {d["id"]: d["state"] for d in status["datasets"]} == {"ds-1": "submitted", "ds-2": "rejected"}
    assert [(j["id"], j["state"]) for j in status["jobs"]] == [("job-1", "completed")]
    models = {m["id"]: m for m in status["models"]}
    assert models["chat-ft:2"]["serving"] is True and models["chat-ft:1"]["serving"] is False

    eps = {e["name"]: e for e in status["endpoints"]}
    live, idle = eps["ep-live"], eps["ep-idle"]
    assert live["state"] == EP_SUCCEEDED and live["backend_state"] == EP_SUCCEEDED and live["active"] is True
    assert live["model"] == "chat-ft:2"
    assert live["last_activity"] == iso(now - timedelta(minutes=7))  # the later of ledger (7) and metric (12)
    assert 6.5 <= live["idle_minutes"] <= 30
    assert live["janitor_verdict"]["action"] == "keep"
    assert idle["state"] == "deleted" and idle["backend_state"] is None
    assert idle["last_activity"] == iso(now - timedelta(minutes=400)) and idle["idle_minutes"] is None
    assert "idle" in idle["delete_reason"] and idle["cost_saved"] == pytest.approx(400 / 60 * 3.67, abs=0.05)

    last = status["janitor"]["last"]
    assert last["state"] == "done" and last["deleted"] == ["ep-idle"] and last["ran_at"] == iso(now)
    assert status["janitor"]["policy"]["idle_minutes"] == storage_settings.idle_endpoint_minutes
    assert status["backend"] == {"name": "local", "reachable": True, "error": None}
    json.dumps(status)  # serialisable as is


def test_backend_unreachable_still_shows_the_ledger(storage_settings, ledger, populated):
    backend, _ = populated
    backend.list_error = BackendError("connection refused")
    status = collect_status(storage_settings, ledger, backend)
    assert status["backend"]["reachable"] is False and "connection refused" in status["backend"]["error"]
    eps = {e["name"]: e for e in status["endpoints"]}
    assert eps["ep-live"]["state"] == EP_SUCCEEDED and eps["ep-live"]["backend_state"] is None
    assert eps["ep-live"]["last_activity"] is not None  # from the ledger alone
    assert eps["ep-live"]["janitor_verdict"] is None
    text = render_status(status)
    assert "unreachable" in text and "ep-live" in text


def test_human_form_is_aligned_tables(storage_settings, ledger, populated):
    backend, _ = populated
    text = render_status(collect_status(storage_settings, ledger, backend))
    for title in ("Datasets (2)", "Jobs (1)", "Models (2)", "Endpoints (2)", "Janitor:"):
        assert title in text
    assert "deleted ep-idle" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("NAME "))
    rows = [line for line in lines if line.startswith("ep-")]
    # Every column starts at the same offset in the header and in every row.
    col = header.index("STATE")
    assert all(row[col - 2:col] == "  " and row[col] != " " for row in rows)


def test_format_table_pads_columns():
    table = format_table(["id", "state"], [["a", "done"], ["longer-id", None]]).splitlines()
    assert table == ["ID         STATE", "a          done", "longer-id  -"]


def test_cli_status_json_and_text(storage_settings, populated, capsys):
    backend, _ = populated
    use_backend(backend, storage_settings)
    assert cli.main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {e["name"] for e in out["endpoints"]} == {"ep-live", "ep-idle"}
    assert cli.main(["status"]) == 0
    assert "Endpoints (2)" in capsys.readouterr().out


def test_cli_status_without_storage_says_so(unit_settings, capsys):
    from tests.support import free_port

    port = free_port()  # nothing listens there
    use_settings(make_settings(AzureWebJobsStorage=(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")))
    assert cli.main(["status", "--json"]) == 1
    assert "cannot read the ledger" in capsys.readouterr().err
