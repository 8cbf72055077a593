"""Rollout of a new version beside the serving one: judged, canaried, promoted or rolled back.

Real ledger (Azurite), the in-memory workspace (its deployments and their live figures set by the
test) and a stand-in for the evaluation's ``judge_candidate`` (the real one is tested by its own
tier); every state is checked in the ledger and in the workspace's traffic.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from shared.backends.base import EP_SUCCEEDED, DeploymentMetrics, EndpointInfo, ModelRef
from shared.context import Context, context
from shared.deployment.job_outcome import start_deployment
from shared.endpoints import lifecycle
from shared.endpoints.rollback import rollback
from shared.endpoints.serving import placement
from shared.evaluation.judge import Verdict
from shared.ledger import Ledger
from shared.ledger import records as R
from shared.reconcile.run import reconcile
from shared.rollout import advance, advance_all, deployment_name_for
from shared.settings import Settings
from tests.fakes.workspace import OUR_TAGS, install_workspace

MODEL = "chat-ft-support"
EP = "chat-ft-support-1-abc123"


class StandInJudge:
    """judge_candidate's signature; records each call and calls both answerers once."""

    def __init__(self, promote: bool = True, decided: bool = True) -> None:
        self.promote, self.decided, self.calls = promote, decided, []

    def __call__(self, ctx: Context, *, collection: str, candidate_version: str, answer_candidate: Any,
                 answer_champion: Any, champion_version: str | None = None) -> Verdict:
        self.calls.append({"collection": collection, "version": candidate_version, "champion": champion_version,
                           "answerers": (answer_candidate, answer_champion)})
        return Verdict(self.promote, "rouge_l 0.41 vs 0.40" if self.promote else "rouge_l 0.02 vs 0.40 (margin 0.02)",
                       {"candidate": {"rouge_l": 0.41 if self.promote else 0.02}, "champion": {"rouge_l": 0.40}},
                       report_blob=None, decided=self.decided)


def seed_champion(ledger: Ledger, ws: Any) -> None:
    ledger.create(R.MODEL, f"{MODEL}:1", R.MODEL_DEPLOYED, endpoint=EP, deployment="default", job_name="job-1")
    ledger.create(R.ENDPOINT, EP, EP_SUCCEEDED, model=f"{MODEL}:1", model_name=MODEL, model_version="1",
                  job_name="job-1", deployment="default")
    ledger.create(R.ROUTE, MODEL, R.ROUTE_SET, endpoint=EP, model_version="1")
    ledger.create(R.JOB, "job-2", R.JOB_COMPLETED, collection="support")
    ledger.create(R.MODEL, f"{MODEL}:2", R.MODEL_REGISTERED, job_name="job-2")
    ws.add_endpoint(EndpointInfo(name=EP, state=EP_SUCCEEDED, tags=dict(OUR_TAGS), model=f"{MODEL}:1",
                                 deployment="default", traffic={"default": 100}))


@pytest.fixture
def world(storage_settings: Settings):  # noqa: ANN201
    settings = dataclasses.replace(storage_settings, rollout_candidates=True, endpoint_followups=False, canary_minutes=10.0, canary_percent=10)
    settings, ledger, ws = install_workspace(settings)
    seed_champion(ledger, ws)
    return Context(settings, ledger, ws), ws


V2 = ModelRef(MODEL, "2", "job-2", "base-model")
DEP = deployment_name_for("2")


def start(ctx: Context) -> None:
    started, endpoint = start_deployment(V2, ctx, reason="job job-2 completed")
    assert started and endpoint == EP


def into_canary(ctx: Context, ws: Any, judge: StandInJudge) -> Any:
    """Version 2 started, its candidate deployment ready and judged to promote: its canary window begins."""
    start(ctx)
    ws.finish_candidate(EP, DEP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=judge)
    assert record.state == R.ROLLOUT_CANARY
    return record


def test_a_new_version_deploys_beside_the_champion_never_as_a_second_endpoint(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    start_deployment(V2, ctx, reason="redelivered")  # a second delivery acts once
    assert ws.calls["begin_deploy"] == 0, "no second endpoint"
    assert ws.calls["begin_deploy_deployment"] == 1 and (EP, DEP) in ws.deployments
    record = ctx.ledger.get(R.ROLLOUT, V2.ref)
    assert record.state == R.ROLLOUT_DEPLOYING
    assert (record.get("endpoint"), record.get("deployment"), record.get("champion_version")) == (EP, DEP, "1")
    assert ctx.ledger.get(R.ENDPOINT, EP).get("deployments") == [DEP]
    # The candidate's pin reaches its deployment; the model name still reaches the champion.
    assert placement(ctx.ledger, MODEL, "2", ctx.ledger.get(R.ROUTE, MODEL)) == (EP, DEP)
    assert placement(ctx.ledger, MODEL, "1", ctx.ledger.get(R.ROUTE, MODEL)) is None
    assert ws.endpoints[EP].traffic == {"default": 100}


def test_rejected_by_evaluation_never_takes_traffic_and_its_deployment_is_deleted(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    judge = StandInJudge(promote=False)
    assert advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=judge).state == R.ROLLOUT_DEPLOYING  # not ready yet
    assert judge.calls == []
    ws.finish_candidate(EP, DEP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=judge)
    assert record.state == R.ROLLOUT_REJECTED and "rouge_l 0.02" in record.get("reason")
    assert judge.calls[0]["collection"] == "support" and judge.calls[0]["champion"] == "1"
    assert record.get("verdict")["metrics"]["candidate"]["rouge_l"] == 0.02
    assert (EP, DEP) not in ws.deployments and record.get("cleanup_done")
    assert ws.traffic_calls == [], "a rejected candidate never gets traffic"
    model = ctx.ledger.get(R.MODEL, V2.ref)
    assert model.state == R.MODEL_REJECTED and "rejected by evaluation" in model.get("rejected_reason")
    assert ctx.ledger.get(R.ROUTE, MODEL).get("model_version") == "1"
    assert ctx.ledger.get(R.ENDPOINT, EP).get("deployments") == []
    advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=judge)  # again: nothing more happens
    assert ws.calls["begin_delete_deployment"] == 1 and len(judge.calls) == 1


def test_promoted_through_the_canary(world) -> None:  # noqa: ANN001
    ctx, ws = world
    judge = StandInJudge(promote=True)
    record = into_canary(ctx, ws, judge)
    assert ws.endpoints[EP].traffic == {"default": 90, DEP: 10}
    ws.metrics[EP] = {"default": DeploymentMetrics(90, 0, 120.0), DEP: DeploymentMetrics(10, 0, 130.0)}
    record = advance(record, ctx, judge=judge)
    assert record.state == R.ROLLOUT_CANARY, "the window is not over"
    assert record.get("canary")["figures"]["candidate"]["requests"] == 10
    # The window ends (reconcile's run after CANARY_MINUTES): 100% to the candidate, old deployment deleted.
    canary = dict(record.get("canary"))
    canary["until"] = canary["started_at"]
    ctx.ledger.update(record, canary=canary)
    summary: Counter[str] = Counter()
    assert advance_all(ctx, summary, judge=judge) == 0
    record = ctx.ledger.get(R.ROLLOUT, V2.ref)
    assert record.state == R.ROLLOUT_PROMOTED and summary["rollouts_promoted"] == 1, record.fields
    assert ws.endpoints[EP].traffic == {DEP: 100} and ws.endpoints[EP].model == V2.ref
    assert (EP, "default") not in ws.deployments and record.get("deleted_deployment") == "default"
    route = ctx.ledger.get(R.ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version")) == (EP, "2")
    endpoint = ctx.ledger.get(R.ENDPOINT, EP)
    assert (endpoint.get("model"), endpoint.get("deployment"), endpoint.get("deployments")) == (V2.ref, DEP, [])
    assert ctx.ledger.get(R.MODEL, V2.ref).state == R.MODEL_DEPLOYED
    # Pins: version 2 is the route's (served unpinned), version 1's deployment is gone.
    assert placement(ctx.ledger, MODEL, "2", route) is None
    assert placement(ctx.ledger, MODEL, "1", route) == (EP, "default")
    # Scale from zero and heals redeploy the champion, into its own endpoint.
    assert lifecycle.home_endpoint(V2, ctx.ledger) == EP


def test_a_failing_candidate_is_rolled_back_by_itself_with_the_figures(world) -> None:  # noqa: ANN001
    ctx, ws = world
    judge = StandInJudge(promote=True)
    record = into_canary(ctx, ws, judge)
    ws.metrics[EP] = {"default": DeploymentMetrics(50, 0, 100.0), DEP: DeploymentMetrics(6, 4, 80.0)}
    summary = reconcile(context(settings=ctx.settings, ledger=ctx.ledger, backend=ws))
    record = ctx.ledger.get(R.ROLLOUT, V2.ref)
    assert record.state == R.ROLLOUT_ROLLED_BACK and summary["rollouts_rolled_back"] == 1
    assert "error rate 66.7% over 6 requests" in record.get("reason")
    assert record.get("canary")["figures"]["candidate"] == {"requests": 6, "errors": 4, "error_rate": 4 / 6, "p95_ms": 80.0}
    assert ws.endpoints[EP].traffic == {"default": 100} and (EP, DEP) not in ws.deployments
    assert ctx.ledger.get(R.ROUTE, MODEL).get("model_version") == "1"
    assert ctx.ledger.get(R.MODEL, V2.ref).state == R.MODEL_REJECTED


def test_a_candidate_deployment_that_dies_in_its_canary_rolls_back_at_once(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    ws.finish_candidate(EP, DEP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge())
    ws.finish_candidate(EP, DEP, ok=False, error="server process died")
    record = advance(record, ctx)
    assert record.state == R.ROLLOUT_ROLLED_BACK and "server process died" in record.get("reason")
    assert ws.endpoints[EP].traffic == {"default": 100}


def test_an_undecided_evaluation_waits_and_a_crash_after_the_split_is_finished(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    ws.finish_candidate(EP, DEP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge(decided=False))
    assert record.state == R.ROLLOUT_EVALUATING and ws.traffic_calls == []
    # A crash right after the split was set, before the record said so: the next call sets the
    # same split again and records the canary.
    ws.set_traffic(EP, {"default": 90, DEP: 10})
    record = advance(record, ctx, judge=StandInJudge())
    assert record.state == R.ROLLOUT_CANARY and ws.endpoints[EP].traffic == {"default": 90, DEP: 10}


def test_the_champion_endpoint_deleted_by_the_janitor_supersedes_the_candidate(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    ctx.ledger.transition(R.ENDPOINT, EP, {EP_SUCCEEDED}, R.ENDPOINT_DELETING)
    ws.endpoints.pop(EP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge())
    assert record.state == R.ROLLOUT_SUPERSEDED and record.get("cleanup_done")


def test_without_a_serving_endpoint_the_first_version_gets_its_own(world) -> None:  # noqa: ANN001
    ctx, ws = world
    ctx.ledger.transition(R.ENDPOINT, EP, {EP_SUCCEEDED}, R.ENDPOINT_DELETING)
    start_result = start_deployment(V2, ctx, reason="job job-2 completed")
    assert start_result[0] and ws.calls["begin_deploy"] == 1 and ctx.ledger.get(R.ROLLOUT, V2.ref) is None


def test_status_and_dashboard_show_champion_against_candidate_the_canary_and_the_decision(world) -> None:  # noqa: ANN001
    from shared.observability.dashboard import collect_dashboard, link_builder, render_dashboard
    from shared.observability.status import collect_status
    from shared.observability.status_text import render_status

    ctx, ws = world
    start(ctx)
    ws.finish_candidate(EP, DEP)
    advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge())
    ws.metrics[EP] = {"default": DeploymentMetrics(50, 0, 100.0), DEP: DeploymentMetrics(6, 4, 80.0)}
    advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx)
    status = collect_status(ctx.settings, ctx.ledger, ws)
    [item] = status["rollouts"]
    assert (item["id"], item["state"], item["champion_version"]) == (V2.ref, R.ROLLOUT_ROLLED_BACK, "1")
    assert item["evaluation"]["candidate"] == {"rouge_l": 0.41} and item["evaluation"]["champion"] == {"rouge_l": 0.40}
    assert item["canary"]["percent"] == 10 and item["canary"]["figures"]["candidate"]["errors"] == 4
    text = render_status(status)
    assert "Rollouts" in text and "rolled back: error rate 66.7%" in text and "6 req, 4 err (67%)" in text
    window = f"10%, {item['canary']['started_at'][11:19]}Z-{item['decided_at'][11:19]}Z"  # the canary's share and window
    assert window in text
    html = render_dashboard(collect_dashboard(ctx.settings, ctx.ledger, ws), link=link_builder(None))
    assert f'id="rollout-{V2.ref}"' in html and "rolled back: error rate 66.7%" in html and "rouge_l 0.410" in html
    assert window in html


def test_cli_rollback_moves_traffic_between_the_deployments_of_the_one_endpoint(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    ws.finish_candidate(EP, DEP)
    record = advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge())
    canary = dict(record.get("canary"))
    canary["until"] = canary["started_at"]
    ws.metrics[EP] = {"default": DeploymentMetrics(9, 0, 100.0), DEP: DeploymentMetrics(9, 0, 100.0)}
    assert advance(ctx.ledger.update(record, canary=canary), ctx).state == R.ROLLOUT_PROMOTED
    assert ws.endpoints[EP].traffic == {DEP: 100}

    done = rollback(MODEL, "1", ctx=context(settings=ctx.settings, ledger=ctx.ledger, backend=ws))
    assert (done.state, done.endpoint) == ("redeploying", EP), "back inside the same endpoint, never another one"
    assert ws.calls["begin_deploy"] == 0 and ws.endpoints[EP].traffic == {DEP: 100}, "version 2 serves meanwhile"
    v1_dep = deployment_name_for("1")
    ws.finish_candidate(EP, v1_dep)
    assert advance_all(ctx, judge=StandInJudge(promote=False)) == 0  # a rollback is not judged
    assert ws.endpoints[EP].traffic == {v1_dep: 100} and (EP, DEP) not in ws.deployments
    route = ctx.ledger.get(R.ROUTE, MODEL)
    assert (route.get("endpoint"), route.get("model_version")) == (EP, "1")
    assert ctx.ledger.get(R.ENDPOINT, EP).get("model") == f"{MODEL}:1"


def test_a_rejected_candidate_forced_on_by_an_operator_is_redeployed_and_canaried(world) -> None:  # noqa: ANN001
    ctx, ws = world
    start(ctx)
    ws.finish_candidate(EP, DEP)
    assert advance(ctx.ledger.get(R.ROLLOUT, V2.ref), ctx, judge=StandInJudge(promote=False)).state == R.ROLLOUT_REJECTED
    assert advance_all(ctx, judge=StandInJudge(promote=False)) == 0  # nothing more while the verdict stands
    # `cli promote --force` (shared.evaluation): the evaluation record says promoted now
    ctx.ledger.create(R.EVALUATION, V2.ref, R.EVAL_PROMOTED, reason="forced by an operator", decided_by="operator")
    assert advance_all(ctx, judge=StandInJudge(promote=True)) == 1
    assert ctx.ledger.get(R.ROLLOUT, V2.ref).state == R.ROLLOUT_DEPLOYING and (EP, DEP) in ws.deployments
    ws.finish_candidate(EP, DEP)
    advance_all(ctx, judge=StandInJudge(promote=True))
    assert ctx.ledger.get(R.ROLLOUT, V2.ref).state == R.ROLLOUT_CANARY
    assert ws.endpoints[EP].traffic == {"default": 90, DEP: 10}


# --- the first version of a collection: the absolute floors before any traffic ---------------------------------

V1 = ModelRef(MODEL, "1", "job-1", "base-model")


@pytest.fixture
def first(storage_settings: Settings, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """No version served yet: version 1 registered, its own endpoint deployed and ready; the
    evaluation's judge_candidate stood in for (``judge.promote`` says what it decides)."""
    import shared.evaluation

    settings = dataclasses.replace(storage_settings, rollout_candidates=True, endpoint_followups=False)
    settings, ledger, ws = install_workspace(settings)
    ledger.create(R.JOB, "job-1", R.JOB_COMPLETED, collection="support")
    ledger.create(R.MODEL, V1.ref, R.MODEL_REGISTERED, job_name="job-1")
    ctx = Context(settings, ledger, ws)
    judge = StandInJudge()
    monkeypatch.setattr(shared.evaluation, "judge_candidate", judge)
    started, ep = start_deployment(V1, ctx, reason="job job-1 completed")
    assert started and ws.calls["begin_deploy"] == 1
    ws.finish_deployment(ep)
    return ctx, ws, judge, ep


def settle(ctx: Context, ep: str, **kw: Any) -> Counter:
    summary: Counter = Counter()
    lifecycle.settle_provisioning(ctx.ledger.get(R.ENDPOINT, ep), ctx, summary, **kw)
    return summary


def test_a_first_version_below_the_floors_never_takes_traffic_and_its_endpoint_is_deleted(first) -> None:  # noqa: ANN001
    ctx, ws, judge, ep = first
    judge.promote = False
    settle(ctx, ep)
    assert [c["champion"] for c in judge.calls] == [None], "judged once, against the floors (no champion)"
    assert judge.calls[0]["answerers"][1] is None and judge.calls[0]["collection"] == "support"
    assert ws.traffic_calls == [], "it never took traffic"
    assert ctx.ledger.get(R.ENDPOINT, ep).state == R.ENDPOINT_DELETING and ws.calls["begin_delete_endpoint"] == 1
    model = ctx.ledger.get(R.MODEL, V1.ref)
    assert model.state == R.MODEL_REJECTED and "first version rejected by evaluation" in model.get("rejected_reason")
    assert ctx.ledger.get(R.ROUTE, MODEL) is None


def test_a_first_version_meeting_the_floors_serves(first) -> None:  # noqa: ANN001
    ctx, ws, judge, ep = first
    settle(ctx, ep, evaluate=False)  # a client's request settling it: never judges, waits
    assert judge.calls == [] and ws.traffic_calls == [] and ctx.ledger.get(R.ENDPOINT, ep).state == R.ENDPOINT_PROVISIONING
    settle(ctx, ep)
    assert len(judge.calls) == 1 and ws.traffic_calls == [(ep, None)]
    assert ctx.ledger.get(R.ENDPOINT, ep).state == EP_SUCCEEDED
    assert ctx.ledger.get(R.ROUTE, MODEL).get("model_version") == "1"
    assert ctx.ledger.get(R.ENDPOINT, ep).get("first_version_verdict")["promote"] is True


def test_the_champion_redeployed_from_zero_is_not_judged_again(first) -> None:  # noqa: ANN001
    ctx, ws, judge, ep = first
    ctx.ledger.create(R.ROUTE, MODEL, R.ROUTE_SET, endpoint=ep, model_version="1")  # it served before (scale from zero)
    judge.promote = False
    settle(ctx, ep)
    assert judge.calls == [] and ws.traffic_calls == [(ep, None)]
    assert ctx.ledger.get(R.ENDPOINT, ep).state == EP_SUCCEEDED
