"""Scoring through a storage outage: a private Azurite is really stopped and started again.

Known routes keep serving within SCORING_ROUTE_MAX_STALE_S, unknown ones get 503 + Retry-After
fast (never 500), and activity seen meanwhile is written once storage is back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.ledger import ENDPOINT, Ledger, parse_iso
from shared.scoring import routes
from shared.scoring.contract import ChatRequest, ScoringError
from shared.scoring.scorer import Scorer
from shared.settings import Settings
from shared.storage import ensure_storage
from tests.stub_endpoint import StubEndpoint, StubTargetBackend, running, seed_model
from tests.support import FakeClock, PrivateAzurite, make_settings, wait_until

pytestmark = pytest.mark.storage

MODEL = "outage-ft"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[PrivateAzurite]:
    s = PrivateAzurite(tmp_path / "azurite")
    try:
        yield s
    finally:
        s.stop()


def request(model: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "hi"}], parameters={"max_new_tokens": 4}, model=model)


def settings_for(storage: PrivateAzurite, tmp_path: Path) -> Settings:
    s = make_settings(AzureWebJobsStorage=storage.connection_string, LEDGER_TABLE=f"ledger{uuid.uuid4().hex[:8]}",
                      LOCAL_WORKSPACE_DIR=str(tmp_path / "ws"), SCORING_ROUTE_MAX_STALE_S="300", ACTIVITY_FLUSH_S="1")
    ensure_storage(s)
    return s


def test_known_routes_keep_serving_unknown_ones_get_a_fast_503_and_activity_is_kept(storage, tmp_path):
    settings = settings_for(storage, tmp_path)
    ledger = Ledger.from_settings(settings)
    stub = StubEndpoint()
    with running(stub.app()) as server:
        backend = StubTargetBackend(server.url, stub)
        ep = seed_model(ledger, MODEL, "1")
        seed_model(ledger, "other-ft", "1")
        clock = FakeClock()
        scorer = Scorer(settings, backend=backend, clock=clock)
        scorer.activity._retry_s = 0.5  # retry the kept activity quickly in this test
        try:
            scorer.complete(request(MODEL))  # route read from the ledger and cached
            scorer.activity.drain()
            first = parse_iso(ledger.get(ENDPOINT, ep).get("last_activity"))
            assert first is not None

            storage.stop()
            clock.advance(60)  # the route's TTL is long over: the ledger would be read again
            started = time.perf_counter()
            completion = scorer.complete(request(MODEL))
            stale_s = time.perf_counter() - started
            assert completion.text  # served from the route read 60 s ago
            scorer.activity.drain()
            assert ep in scorer.activity.unwritten  # storage down: activity kept, not lost

            started = time.perf_counter()
            with pytest.raises(ScoringError) as refused:
                scorer.complete(request("other-ft"))  # never read by this worker
            unknown_s = time.perf_counter() - started
            assert refused.value.status == 503 and refused.value.code == "storage_unavailable"
            assert refused.value.retry_after == routes.OUTAGE_RETRY_AFTER_S
            assert unknown_s < 1.0, f"503 took {unknown_s:.2f} s"
            print(f"storage down: known route served in {stale_s * 1000:.0f} ms, unknown model refused in "
                  f"{unknown_s * 1000:.0f} ms")

            clock.advance(300)  # past the staleness limit: no longer served
            with pytest.raises(ScoringError) as too_old:
                scorer.complete(request(MODEL))
            assert too_old.value.status == 503 and too_old.value.code == "storage_unavailable"

            storage.restart()
            wait_until(lambda: not scorer.activity.unwritten, 20, "the activity seen during the outage to be written", every_s=0.2)
            assert scorer.activity.unwritten == {}
            written = parse_iso(Ledger.from_settings(settings).get(ENDPOINT, ep).get("last_activity"))
            assert written is not None and written > first  # the activity seen during the outage
            assert scorer.complete(request(MODEL)).text  # and the ledger is read again
        finally:
            scorer.close()
