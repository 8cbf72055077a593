"""`python -m shared.cli rollback MODEL [VERSION]`: an earlier version active again, recorded in the ledger.

Real ledger in Azurite; the backend is the in-memory workspace, told which endpoints are live, so
both paths run: the old endpoint still serves (the route switches at once) and it
is gone (redeployed; the route switches when it is ready, through the same activation reconcile uses).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared.backends import use_backend
from shared.cli.commands import main as cli
from shared.context import context
from shared.endpoints import lifecycle
from shared.endpoints.naming import endpoint_name
from shared.ledger import ENDPOINT, ROUTE, Ledger
from shared.settings import Settings
from tests.fakes.workspace import InMemoryWorkspace
from tests.stub_endpoint import seed_model

pytestmark = pytest.mark.storage

MODEL = "chat-ft"


@pytest.fixture
def world(storage_settings: Settings) -> tuple[Ledger, InMemoryWorkspace]:
    backend = InMemoryWorkspace()
    use_backend(backend, storage_settings)
    ledger = Ledger.from_settings(storage_settings)
    return ledger, backend


def test_rollback_to_a_live_endpoint_switches_the_route_at_once(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ledger, backend = world
    ep1 = seed_model(ledger, MODEL, "1", active=False)
    ep2 = seed_model(ledger, MODEL, "2")
    backend.add_ready_endpoint(ep1)
    backend.add_ready_endpoint(ep2)
    assert cli(["rollback", MODEL]) == 0
    assert "version 1 is active again (was 2)" in capsys.readouterr().out
    route = ledger.get(ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version"), route.get("rolled_back_from")) == (ep1, "1", "2")
    assert [(e["from_version"], e["to_version"], e["redeployed"]) for e in route.get("rollbacks")] == [("2", "1", False)]
    assert backend.deploys == []

    # version 2 being activated again later (say, redeployed after an idle deletion) does not take
    # the route back: the rollback holds
    lifecycle.activate(ledger.get(ENDPOINT, ep2), context(ledger=ledger, backend=backend), Counter())
    assert ledger.get(ROUTE, MODEL).get("endpoint") == ep1
    # ... a newer fine-tune does
    ep3 = endpoint_name(MODEL, "3")
    seed_model(ledger, MODEL, "3", endpoint_state="provisioning", active=False)
    backend.add_ready_endpoint(ep3)
    lifecycle.settle_provisioning(ledger.get(ENDPOINT, ep3), context(ledger=ledger, backend=backend), Counter())
    route = ledger.get(ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version"), route.get("rolled_back_from")) == (ep3, "3", None)


def test_rollback_to_a_deleted_endpoint_redeploys_it_and_switches_when_ready(world: Any,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ledger, backend = world
    ep1 = seed_model(ledger, MODEL, "1", endpoint_state="deleted", active=False)
    ep2 = seed_model(ledger, MODEL, "2")
    backend.add_ready_endpoint(ep2)
    assert cli(["rollback", MODEL, "1"]) == 0
    assert "redeploying version 1" in capsys.readouterr().out
    assert [(model.ref, ep) for model, ep, _ in backend.deploys] == [(f"{MODEL}:1", ep1)]
    route = ledger.get(ROUTE, MODEL)
    assert route.get("endpoint") == ep2 and route.get("rollback_to") == "1"  # version 2 serves meanwhile
    assert ledger.get(ENDPOINT, ep1).state == "provisioning"

    backend.finish_deployment(ep1)  # the redeployment finished; reconcile (or the follow-up check) settles it
    lifecycle.settle_provisioning(ledger.get(ENDPOINT, ep1), context(ledger=ledger, backend=backend), Counter())
    route = ledger.get(ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version"), route.get("rollback_to")) == (ep1, "1", None)
    assert route.get("rolled_back_from") == "2"


@pytest.mark.parametrize(("argv", "message"), [
    (["rollback", "nope"], "no registered model named 'nope'"),
    (["rollback", MODEL, "9"], "has no version '9' (registered: 1, 2)"),
    (["rollback", MODEL, "2"], "already the active one"),
])
def test_rollback_refusals_say_why(world: Any, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    ledger, _ = world
    seed_model(ledger, MODEL, "1", active=False)
    seed_model(ledger, MODEL, "2")
    assert cli(argv) == 2
    assert message in capsys.readouterr().err
    assert ledger.get(ROUTE, MODEL).get("model_version") == "2"


def test_nothing_older_to_roll_back_to(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ledger, _ = world
    seed_model(ledger, MODEL, "1")
    assert cli(["rollback", MODEL]) == 2
    assert "no version older than 1" in capsys.readouterr().err
