"""The dashboard's view model, page and HTTP function against a real ledger in Azurite.

The uploads go through the real blob trigger (so the rejected lines come from a real report);
jobs, models and endpoints are written as their owners write them; the backend is a small fake
that reports job times and training curves.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from devhost.app_index import functions_of
from functions import dashboard as dashboard_functions
from shared.backends import use_backend
from shared.backends.base import COMPLETED, MetricsHistory
from shared.ledger import DATASET, ENDPOINT, JOB, MODEL, ROUTE, Ledger, iso, utcnow
from shared.observability import dashboard, lookup_cache
from shared.observability.status import collect_status
from shared.scoring.activity import ActivityRecorder
from shared.settings import Settings
from tests.fakes import workspace as fake_workspace
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.uploads import MOSTLY_BAD, upload
from tests.fakes.workspace import InMemoryWorkspace
from tests.support import call_http

pytestmark = pytest.mark.storage


def add_trained_job(ws: InMemoryWorkspace, name: str, losses: list[float], base: float = 3.3, test: float = 0.4,
                    state: str = COMPLETED) -> None:
    """A job the workspace ran (its run times) and the training curve its tracking reports."""
    now = utcnow()
    ws.add_job(name, state, started_at=now - timedelta(minutes=10), ended_at=now - timedelta(minutes=2))
    ws.curves[name] = MetricsHistory(name, series={"train_loss": [(i + 1, v) for i, v in enumerate(losses)]},
                                     final={"base_test_loss": base, "test_loss": test})


@pytest.fixture(autouse=True)
def fresh_cache():
    lookup_cache.CACHE.clear()
    yield
    lookup_cache.CACHE.clear()


@pytest.fixture
def backend(storage_settings: Settings) -> InMemoryWorkspace:
    b = InMemoryWorkspace()
    use_backend(b, storage_settings)
    return b


def trigger():
    app = func.FunctionApp()
    app.register_functions(dashboard_functions.bp)
    return {f.get_function_name(): f.get_user_function() for f in functions_of(app)}


def seed_chain(ledger: Ledger, backend: InMemoryWorkspace, i: int, *, deleted: bool = False, requests: dict[str, int] | None = None,
               model_name: str = "pirate-chat") -> str:
    """Dataset -> job -> model -> endpoint records as intake, job_outcome and lifecycle write them."""
    now = utcnow()
    ds, job, ref = f"ds-{i:04d}", f"ftjob-{i:04d}", f"{model_name}:{i + 1}"
    ep = f"ep-{i:04d}"
    ledger.create(DATASET, ds, "submitted", blob_name=f"team/chat-{i}.jsonl", counts={"lines": 61, "valid": 60, "invalid": 1},
                  report_blob=f"datasets/{ds}/report.json", job_name=job)
    ledger.create(JOB, job, "completed", dataset_id=ds, model_name=model_name, backend="local", submitted_at=iso(now - timedelta(minutes=12)),
                  ended_at=iso(now - timedelta(minutes=2)), metrics={"base_test_loss": 3.3, "test_loss": 0.4})
    ledger.create(MODEL, ref, "deployed", job_name=job, base_model="SmolLM2", endpoint=ep, registered_at=iso(now))
    fields: dict[str, Any] = dict(model=ref, model_name=model_name, model_version=str(i + 1), job_name=job, instance_type="local",
                                  active_since=iso(now - timedelta(hours=5)), last_activity=iso(now - timedelta(hours=1)),
                                  requests_by_hour=requests or {})
    if deleted:
        fields.update(deleted_at=iso(now - timedelta(minutes=30)), delete_reason="idle for 90 min", hours_saved=1.5, cost_saved=4.59)
    ledger.create(ENDPOINT, ep, "deleted" if deleted else "succeeded", **fields)
    add_trained_job(backend, job, [3.0, 2.0, 1.2, 0.6])
    return ep


def test_empty_workspace_says_so(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    page = dashboard.dashboard_page(settings=storage_settings)
    assert page.status == 200
    assert 'id="empty"' in page.body and "Nothing here yet" in page.body
    assert '<meta http-equiv="refresh"' in page.body


def test_storage_down_is_a_clear_page_not_a_stack_trace(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    from tests.support import free_port

    port = free_port()  # nothing listens there
    down = storage_settings.replace(storage_connection=(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"))
    page = dashboard.dashboard_page(settings=down, ledger=Ledger.from_settings(down))
    assert page.status == 503
    assert 'id="storage-down"' in page.body and "Storage is unreachable" in page.body
    assert "Traceback" not in page.body
    assert '<meta http-equiv="refresh"' in page.body  # it retries by itself


def test_page_shows_the_chain_rejected_lines_curve_and_savings(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    s = storage_settings
    prepare_trigger()(upload(s, "team/bad.jsonl", MOSTLY_BAD))  # 10 good lines, 30 broken ones: rejected
    ledger = Ledger.from_settings(s)
    ep = seed_chain(ledger, backend, 1, deleted=True, requests={iso(utcnow() - timedelta(hours=4))[:13]: 7})

    view = dashboard.collect_dashboard(s, ledger, backend, read_blob=dashboard.blob_reader(s))
    rejected = next(c["dataset"] for g in view["groups"] for c in g["chains"] if c["dataset"] and c["dataset"]["state"] == "rejected")
    assert rejected["blob_name"] == "team/bad.jsonl"
    assert [e["line"] for e in rejected["rejected"]["errors"]] == list(range(11, 16))  # the first 5 of lines 11..40
    assert rejected["rejected"]["omitted"] == 25

    page = call_http(trigger()["dashboard"], "GET", "/api/dashboard?code=k3y&refresh=3")
    html = page.body.decode()
    assert page.status == 200 and page.media_type.startswith("text/html")
    assert "line 11: <b>invalid_json</b>" in html or re.search(r"line 11: <b>[a-z_]+</b>", html)
    assert f'href="/api/dashboard/report?dataset={rejected["id"]}&amp;code=k3y"' in html
    assert 'content="3; url=/api/dashboard?refresh=3&amp;code=k3y"' in html
    # the completed job's loss curve, with the base and fine-tuned test losses as reference lines
    assert 'data-series="train_loss"' in html and 'data-marker="base test loss"' in html and 'data-marker="fine-tuned test loss"' in html
    # the deleted endpoint: when, why, what it saved; and on the usage timeline
    assert ep in html and "idle for 90 min" in html and "$4.59" in html
    assert 'class="deletion"' in html and 'class="requests"' in html and "7 requests" in html

    as_json = call_http(trigger()["dashboard"], "GET", "/api/dashboard?format=json")
    assert as_json.status == 200 and as_json.media_type.startswith("application/json")
    data = json.loads(as_json.body)
    (usage,) = [r for r in data["usage"]["rows"] if r["name"] == ep]
    assert sum(usage["hours"].values()) == 7 and usage["deleted"][0][0] == ledger.get(ENDPOINT, ep).get("deleted_at")

    report = call_http(trigger()["dashboard_report"], "GET", f"/api/dashboard/report?dataset={rejected['id']}")
    assert report.status == 200 and "line" in report.body.decode() and "rejected" in report.body.decode()
    missing = call_http(trigger()["dashboard_report"], "GET", "/api/dashboard/report?dataset=nope")
    assert missing.status == 404


def test_untrusted_text_is_escaped(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    ledger.create(DATASET, "ds-x", "rejected", blob_name="<script>alert(1)</script>.jsonl", error="<img src=x onerror=alert(1)>")
    html = dashboard.dashboard_page(settings=storage_settings, ledger=ledger, backend=backend).body
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


class CountingTable:
    """The ledger's TableClient, counting the calls that reach Table Storage."""

    def __init__(self, table: Any):
        self._table = table
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._table, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_ledger_is_read_in_a_bounded_number_of_queries(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    counted = []
    for n in (2, 12):
        for i in range(len(counted) and 2, n):
            seed_chain(ledger, backend, i, deleted=i % 2 == 0)
        table = CountingTable(ledger._table)
        view = dashboard.collect_dashboard(storage_settings, Ledger(table), backend, budget_s=5.0)
        assert view["counts"]["jobs"] == n
        counted.append(table.calls)
    assert counted[0] == counted[1] == 7, counted  # six kinds (rollouts too) listed once each, plus the janitor's record


def test_slow_lookups_stay_within_the_budget_and_fill_in_from_the_cache(storage_settings: Settings,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Each look-up takes 0.03 s of a clock the test owns, so neither the ledger reads nor the
    # machine's load (which once spent a real 0.1 s budget before the first look-up) decide it.
    clock = [0.0]
    monkeypatch.setattr(lookup_cache, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(fake_workspace, "time", SimpleNamespace(sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
    backend = InMemoryWorkspace(call_delay_s=0.03)
    use_backend(backend, storage_settings)
    ledger = Ledger.from_settings(storage_settings)
    for i in range(8):
        seed_chain(ledger, backend, i)
    first = dashboard.collect_dashboard(storage_settings, ledger, backend, budget_s=0.1)
    assert first["pending_lookups"] > 0
    statuses = [c["job"]["curve_status"] for g in first["groups"] for c in g["chains"]]
    assert "pending" in statuses and "ok" in statuses
    for _ in range(20):
        view = dashboard.collect_dashboard(storage_settings, ledger, backend, budget_s=0.1)
        if not view["pending_lookups"]:
            break
    assert not view["pending_lookups"]
    assert all(c["job"]["curve"]["series"]["train_loss"][0] == [1, 3.0] for g in view["groups"] for c in g["chains"])
    # completed jobs never change: each was read from the backend once
    assert len(backend.calls_on) == 16 and all(n == 1 for n in backend.calls_on.values()), backend.calls_on


def test_janitor_eta_follows_the_idle_policy(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    s = storage_settings.replace(idle_endpoint_minutes=60.0, idle_grace_minutes=15.0)
    ledger = Ledger.from_settings(s)
    seed_chain(ledger, backend, 3)  # last activity 1 h ago: the janitor may delete it now
    ledger.merge(ROUTE, "pirate-chat", "active", endpoint="ep-0003", model_version="4")
    view = dashboard.collect_dashboard(s, ledger, backend, budget_s=1.0)
    (endpoint,) = view["groups"][0]["chains"][0]["models"][0]["endpoints"]
    assert endpoint["serving"] is True
    assert endpoint["janitor"]["overdue"] is True
    last = ledger.get(ENDPOINT, "ep-0003").get("last_activity")
    assert endpoint["janitor"]["at"] == iso(dashboard.parse_iso(last) + timedelta(minutes=60))
    kept = dashboard.collect_dashboard(s.replace(janitor_keep_latest=True), ledger, backend, budget_s=1.0)
    assert kept["groups"][0]["chains"][0]["models"][0]["endpoints"][0]["janitor"]["at"] is None


def test_scoring_counts_requests_per_hour_and_the_dashboard_shows_idle_periods(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    ep = seed_chain(ledger, backend, 5)
    clock = [0.0]
    recorder = ActivityRecorder(lambda: ledger, flush_s=30, clock=lambda: clock[0])
    for _ in range(5):
        recorder.touch(ep)  # the first is written at once, the other four wait for the next window
    recorder.drain()
    assert sum(ledger.get(ENDPOINT, ep).get("requests_by_hour").values()) == 1
    clock[0] += 31
    recorder.touch(ep)
    recorder.close()
    counts = ledger.get(ENDPOINT, ep).get("requests_by_hour")
    assert sum(counts.values()) == 6 and list(counts) == [iso(utcnow())[:13]]

    view = dashboard.collect_dashboard(storage_settings, ledger, backend, budget_s=1.0)
    (row,) = [r for r in view["usage"]["rows"] if r["name"] == ep]
    assert row["requests"] == 6
    # up for 5 hours, requests only in the current hour: the 4+ quiet hours before it are one idle period
    assert len(row["idle"]) == 1 and row["idle"][0][2] >= 4.0


def test_status_json_carries_the_training_curves(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    seed_chain(ledger, backend, 7)
    status = collect_status(storage_settings, ledger, backend)
    (job,) = status["jobs"]
    assert job["train_loss"] == [[1, 3.0], [2, 2.0], [3, 1.2], [4, 0.6]]
    assert job["base_test_loss"] == 3.3 and job["test_loss"] == 0.4 and job["curve_error"] is None
    json.dumps(status)  # still plain JSON


def test_refresh_parameter_is_clamped() -> None:
    from fastapi import Request

    def req(query: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/api/dashboard", "query_string": query.encode(), "headers": []})

    assert dashboard_functions._refresh(req("refresh=0")) is None
    assert dashboard_functions._refresh(req("refresh=1")) == 2
    assert dashboard_functions._refresh(req("refresh=x")) == dashboard.DEFAULT_REFRESH_S


def test_collections_and_endpoint_health_are_shown_when_records_carry_them(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    ep = seed_chain(ledger, backend, 8, model_name="support-bot")
    ledger.annotate(DATASET, "ds-0008", collection="support")
    ledger.annotate(ENDPOINT, ep, health="degraded", heal_attempts=2)
    seed_chain(ledger, backend, 9, model_name="sales-bot")
    view = dashboard.collect_dashboard(storage_settings, ledger, backend, budget_s=1.0)
    assert [(g["model_name"], g["collection"]) for g in view["groups"]] == [("sales-bot", None), ("support-bot", "support")]
    html = dashboard.render_dashboard(view, link=dashboard.link_builder(None))
    assert '<h2>support-bot <span class="muted">collection support</span></h2>' in html
    assert "degraded (2 heal attempts)" in html


def test_flushing_the_counts_at_shutdown_is_no_new_activity(storage_settings: Settings, backend: InMemoryWorkspace) -> None:
    ledger = Ledger.from_settings(storage_settings)
    ep = seed_chain(ledger, backend, 9)
    recorder = ActivityRecorder(lambda: ledger, flush_s=30, clock=lambda: 0.0)
    recorder.touch(ep)  # written at once
    before = utcnow()
    recorder.touch(ep)  # counted; waits for the next window
    after = utcnow()
    recorder.drain()
    time.sleep(1.2)  # the worker shuts down a while after its last call
    recorder.close()
    record = ledger.get(ENDPOINT, ep)
    assert sum(record.get("requests_by_hour").values()) == 2
    assert before <= dashboard.parse_iso(record.get("last_activity")) <= after  # the last call's time, not the shutdown's
