"""MAX_LIVE_ENDPOINTS where deployments start (shared.endpoints.capacity), against Azurite and an in-memory workspace."""

from __future__ import annotations

import pytest

from shared import ledger as L
from shared.backends.base import ModelRef
from shared.context import context
from shared.deployment.job_outcome import deploy_registered_model
from shared.endpoints import capacity
from shared.endpoints.lifecycle import deploy_model
from shared.endpoints.naming import endpoint_name
from shared.ledger import Ledger, iso, utcnow
from shared.reconcile.run import reconcile
from tests.fakes.workspace import install_workspace

pytestmark = pytest.mark.storage


@pytest.fixture
def env(storage_settings):
    return install_workspace(storage_settings.replace(max_live_endpoints=2))


def live_endpoint(ledger: Ledger, name: str, version: str = "1", **fields) -> str:
    ep = endpoint_name(name, version)
    ledger.create(L.MODEL, f"{name}:{version}", "deployed", endpoint=ep, job_name=f"job-{name}", base_model="b")
    ledger.create(L.ENDPOINT, ep, "succeeded", model=f"{name}:{version}", model_name=name, model_version=version,
                  active_since=iso(utcnow()), **fields)
    return ep


def registered(ledger: Ledger, name: str, version: str = "1") -> ModelRef:
    ledger.create(L.MODEL, f"{name}:{version}", "registered", job_name=f"job-{name}-{version}", base_model="b")
    return ModelRef(name, version, f"job-{name}-{version}", "b")


def test_live_deployments_count_candidates_beside_their_champion(env) -> None:
    settings, ledger, _ = env
    live_endpoint(ledger, "bot-a", deployment="version-1", deployments=["version-2"])
    gone = live_endpoint(ledger, "bot-b")
    ledger.merge(L.ENDPOINT, gone, "deleting")
    assert capacity.live_deployments(ledger) == [endpoint_name("bot-a", "1"), f"{endpoint_name('bot-a', '1')}/version-2"]


def test_a_deployment_past_the_cap_is_not_started_and_says_why(env) -> None:
    settings, ledger, ws = env
    first = live_endpoint(ledger, "bot-a")
    deploy_model(registered(ledger, "bot-b"), ctx=context(settings=settings, ledger=ledger, backend=ws), reason="test")
    assert len(ws.deploys) == 1

    model = registered(ledger, "bot-c")
    with pytest.raises(capacity.CapacityError, match="MAX_LIVE_ENDPOINTS=2"):
        deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=ws), reason="test")
    assert len(ws.deploys) == 1 and ledger.get(L.ENDPOINT, endpoint_name("bot-c", "1")) is None
    record = ledger.get(L.MODEL, model.ref)
    assert record.state == "registered" and first in record.get("deploy_refused_reason")
    from shared.observability.status import collect_status
    from shared.observability.status_text import render_status

    shown = render_status(collect_status(settings, ledger, ws))
    assert "would pass MAX_LIVE_ENDPOINTS=2" in shown  # status says why it is not deployed

    # The live endpoint of bot-b redeployed again (idempotent) is no new one: never refused.
    deploy_model(ModelRef("bot-b", "1", "job-bot-b-1", "b"), ctx=context(settings=settings, ledger=ledger, backend=ws), reason="again")

    # Room is freed (the janitor deletes bot-a): the next caller starts it, and the refusal is cleared.
    ledger.merge(L.ENDPOINT, first, "deleting")
    deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=ws), reason="test")
    assert [e for _, e, _ in ws.deploys][-1] == endpoint_name("bot-c", "1")
    assert ledger.get(L.MODEL, model.ref).get("deploy_refused_reason") is None


def test_a_new_model_refused_at_the_cap_is_deployed_by_reconcile_once_there_is_room(env) -> None:
    settings, ledger, ws = env
    live = []
    for name in ("bot-a", "bot-b"):  # two endpoints really live in the workspace
        live.append(deploy_model(registered(ledger, name), ctx=context(settings=settings, ledger=ledger, backend=ws), reason="test").id)
        ws.finish_deployment(live[-1])
    reconcile(ctx=context())
    assert {r.id for r in ledger.list(L.ENDPOINT, states={"succeeded"})} == set(live)
    model = registered(ledger, "bot-c")
    outcome = deploy_registered_model(model, ws_context(settings, ledger, ws), reason="job completed")
    assert outcome.action == "refused" and "MAX_LIVE_ENDPOINTS=2" in outcome.reason
    assert ledger.get(L.MODEL, model.ref).state == "deploying" and len(ws.deploys) == 2

    reconcile(ctx=context())  # still no room: nothing starts
    assert len(ws.deploys) == 2
    ledger.merge(L.ENDPOINT, live[0], "deleting")  # the janitor deletes bot-a
    ws.begin_delete_endpoint(live[0])
    reconcile(ctx=context())
    assert [e for _, e, _ in ws.deploys][2:] == [endpoint_name("bot-c", "1")]


def ws_context(settings, ledger, ws):
    from shared.context import Context

    return Context(settings, ledger, ws)
