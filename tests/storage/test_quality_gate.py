"""The data quality gate through the real blob trigger (Azurite): counts on the dataset record, in
``status`` and on the dashboard; ``DATA_POLICY`` per collection; leakage against the collection's
held-out set; the spend guard holding a corpus job whose forecast is over the budget."""

from __future__ import annotations

import json
import random

import pytest

from shared.backends import use_backend
from shared.context import Context
from shared.ledger import DATASET, Ledger
from shared.ledger import records as R
from shared.observability import dashboard
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.settings import Settings, use_settings
from shared.storage import blob_service
from tests.fakes.evaluation import prepare_trigger
from tests.fakes.planted import EMAIL, planted
from tests.fakes.uploads import upload
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage


def body(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def corpus(s: Settings, **changes) -> tuple[Settings, InMemoryWorkspace]:
    backend = InMemoryWorkspace()
    s = s.replace(training_mode="corpus", coalesce_s=0, max_running_jobs=0, **changes)
    use_settings(s)
    use_backend(backend, s)
    return s, backend


def test_counts_reach_the_record_status_and_dashboard_and_reject_is_per_collection(storage_settings: Settings) -> None:
    s, backend = corpus(storage_settings, data_policy={"*": "report", "support-bot": "reject"})
    rows, lines, _ = planted(random.Random(7))
    trigger = prepare_trigger()
    trigger(upload(s, "sales-bot/planted.jsonl", body(rows)))
    trigger(upload(s, "support-bot/planted.jsonl", body(rows)))
    ledger = Ledger.from_settings(s)
    by_collection = {r.get("collection"): r for r in ledger.list(DATASET)}
    sales, support = by_collection["sales-bot"], by_collection["support-bot"]
    expected = {"personal_data": 4, "secrets": 2, "special_tokens": 2, "near_duplicates": 1, "leaks": 0}
    assert sales.state in (R.DATASET_ACCEPTED, R.DATASET_SUBMITTED) and sales.get("quality") == {**expected, "policy": "report"}
    assert support.state == R.DATASET_REJECTED and support.get("quality") == {**expected, "policy": "reject"}
    assert "DATA_POLICY=reject for collection 'support-bot'" in support.get("error")
    assert f"lines {lines['email']}" in support.get("error") and EMAIL not in support.get("error")
    assert [r.tags.get("collection") for r in backend.requests] == ["sales-bot"]
    assert sales.get("forecast_usd") is not None and sales.get("forecast_tokens") > 0

    status = collect_status(s, ledger, backend=backend)
    items = {d["collection"]: d for d in status["datasets"]}
    assert items["support-bot"]["quality"]["secrets"] == 2
    assert "pii 4 secrets 2 tokens 2 near-dup 1 leaks 0" in render_status(status)
    view = dashboard.collect_dashboard(s, ledger, backend)
    html = dashboard.render_dashboard(view, link=lambda path, q: "/api/" + path)
    assert "4 personal data, 2 secrets, 2 special tokens, 1 near duplicates, 0 leaks" in html

    report = json.loads(blob_service(s).get_blob_client(s.prepared_container, support.get("report_blob")).download_blob().readall())
    assert report["quality"]["findings"]["email"]["lines"] == [lines["email"]]


def test_leakage_is_checked_against_the_collections_held_out_set(storage_settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.evaluation as evaluation

    rows, lines, extra = planted(random.Random(7))
    asked = []

    def held_out(ctx: Context, collection: str):  # noqa: ANN202
        asked.append(collection)
        return extra["held_out"] if collection == "support-bot" else []

    monkeypatch.setattr(evaluation, "held_out_conversations", held_out)
    s, _ = corpus(storage_settings, data_policy={"*": "reject"})
    prepare_trigger()(upload(s, "support-bot/planted.jsonl", body(rows)))
    (record,) = Ledger.from_settings(s).list(DATASET)
    assert asked == ["support-bot"]
    assert record.get("quality")["leaks"] == 1
    assert "equal or near-equal to the held-out evaluation set (lines 22)" in record.get("error")


def test_the_spend_guard_holds_a_corpus_job_whose_forecast_is_over_the_budget(storage_settings: Settings) -> None:
    rows, _, _ = planted(random.Random(7))
    s, backend = corpus(storage_settings, finetune_budget_usd=1.0, instance_hourly_prices={"local": 3600.0},
                        training_tokens_per_second={"local": 1})
    prepare_trigger()(upload(s, "sales-bot/planted.jsonl", body(rows)))
    (record,) = Ledger.from_settings(s).list(DATASET)
    assert record.state == R.DATASET_ACCEPTED and record.get("forecast_usd") > 1.0
    assert backend.requests == []
    status = collect_status(s, Ledger.from_settings(s), backend=backend)
    (collection,) = [c for c in status["collections"] if c["id"] == "sales-bot"]
    assert "forecast cost" in (collection["held_reason"] or collection.get("waiting_reason") or ""), collection
