"""judge_candidate on real storage (Azurite): answers stored as they come, a crashed run resumed,
the evaluation record and report, the operators' promote and reject."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from shared.backends import use_backend
from shared.context import Context
from shared.datasets.collections import model_name_for
from shared.evaluation import decision_for, evaluation_view, judge_candidate
from shared.evaluation.answers import AnswerStore
from shared.ledger import Ledger, iso, utcnow
from shared.ledger import records as R
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.settings import Settings, use_settings
from shared.storage import blob_service
from tests.fakes.evaluation import data, prepare_trigger
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage

COLLECTION = "support-bot"


class WorkerDied(BaseException):
    """What a killed worker looks like to the code after it: nothing runs, no except handler."""


@pytest.fixture
def world(storage_settings: Settings) -> tuple[Settings, Ledger, str]:
    """A collection whose corpus (and its carved eval set) was submitted, and a registered candidate version 2."""
    s = storage_settings.replace(training_mode="corpus", coalesce_s=0, max_running_jobs=0, eval_fraction=0.3,
                                 eval_max_conversations=12, eval_parallelism=2,
                                 eval_rules={COLLECTION: [{"must": "arr!", "name": "pirate"}]})
    use_settings(s)
    backend = InMemoryWorkspace()
    use_backend(backend, s)
    prepare_trigger()(_upload(s, f"{COLLECTION}/day1.jsonl", data(0, 120)))
    (request,) = backend.requests
    ledger = Ledger.from_settings(s)
    model_id = f"{model_name_for(s, COLLECTION)}:2"
    ledger.create(R.MODEL, model_id, R.MODEL_REGISTERED, job_name="ftjob-001")
    assert ledger.get(R.JOB, "ftjob-001").get("corpus_id") == request.corpus_id
    return s, ledger, model_id


def _upload(s: Settings, name: str, body: bytes) -> Any:
    client = blob_service(s).get_blob_client(s.chat_data_container, name)
    client.upload_blob(body, overwrite=True)
    return client


def ctx_of(s: Settings, ledger: Ledger) -> Context:
    return Context(s, ledger, None)  # type: ignore[arg-type]  # judging needs no ML backend


def pirate(calls: list[str], *, die_after: int | None = None):
    """The candidate: the house style (the reference is '<2i>, arr!')."""

    def answer(messages: list[dict]) -> str:
        if die_after is not None and len(calls) >= die_after:
            raise WorkerDied
        calls.append(messages[-1]["content"])
        n = int(messages[-1]["content"].split()[2])
        return f"{2 * n}, arr!"

    return answer


def plain(messages: list[dict]) -> str:
    n = int(messages[-1]["content"].split()[2])
    return f"{2 * n}."


def test_a_crashed_evaluation_resumes_from_the_stored_answers_and_decides_once(world) -> None:
    s, ledger, model_id = world
    calls: list[str] = []
    with pytest.raises(WorkerDied):
        judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2",
                        answer_candidate=pirate(calls, die_after=5), answer_champion=plain, champion_version="1")
    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_EVALUATING and record.get("claim")  # the dead worker's claim
    stored = AnswerStore.for_model(s, model_id).load()
    assert sum(1 for role, _ in stored if role == "candidate") == 5  # every answer given before the crash is stored

    # within the lease: another call does not evaluate twice
    busy = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2",
                           answer_candidate=pirate(calls), answer_champion=plain, champion_version="1")
    assert not busy.decided and "another worker" in busy.reason and len(calls) == 5

    ledger.update(record, claimed_at=iso(utcnow() - timedelta(hours=1)))  # the lease expires
    verdict = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2",
                              answer_candidate=pirate(calls), answer_champion=plain, champion_version="1")
    assert verdict.decided and verdict.promote, verdict.reason
    assert len(calls) == 12 and len(set(calls)) == 12  # the 5 stored answers were not asked again
    assert verdict.metrics["candidate"]["items"] == 12 and verdict.metrics["candidate"]["rouge_l"] == pytest.approx(1.0)
    assert verdict.metrics["champion"]["rouge_l"] < verdict.metrics["candidate"]["rouge_l"]
    assert "not worse than the champion" in verdict.reason
    orjson.dumps(verdict.metrics)  # JSON-serialisable (the rollout copies it)

    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_PROMOTED and record.get("decided_by") == "rule" and record.get("calls") == 2
    assert record.get("eval_counts")["carved"] == 12 and record.get("champion_version") == "1"
    report = orjson.loads(blob_service(s).get_blob_client(s.prepared_container, verdict.report_blob).download_blob().readall())
    assert report["eval_set"]["carved"] == 12 and len(report["items"]) == 12
    assert {i["candidate"]["answer"] for i in report["items"]} == {i["reference"] for i in report["items"]}
    assert report["rules"]["pirate"]["passed"] and report["decision"]["promote"]

    again = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2",
                            answer_candidate=pirate(calls), answer_champion=plain)
    assert again == verdict and len(calls) == 12  # decided: the stored verdict, no model call
    assert decision_for(ledger, model_id) == verdict


def test_a_candidate_that_breaks_a_rule_is_rejected_and_an_operator_can_overrule(world, capsys) -> None:
    from shared.cli.commands import main

    s, ledger, model_id = world
    verdict = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2",
                              answer_candidate=plain, answer_champion=None)
    assert not verdict.promote and "rule 'pirate' kept by 0/12 answers" in verdict.reason
    assert ledger.get(R.EVALUATION, model_id).state == R.EVAL_REJECTED

    assert main(["promote", model_id]) == 1  # the rule still fails on the stored answers
    assert "still fails the rule" in capsys.readouterr().out
    assert ledger.get(R.EVALUATION, model_id).state == R.EVAL_REJECTED
    use_settings(s.replace(eval_rules={}))  # the operator drops the rule: the stored answers pass now
    assert main(["promote", model_id]) == 0
    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_PROMOTED and record.get("decided_by") == "operator"
    assert record.get("reason").startswith("re-judged by an operator: promoted: first version meets the floors")

    assert main(["reject", model_id, "--reason", "customers complained"]) == 0
    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_REJECTED and record.get("reason") == "rejected by an operator: customers complained"
    assert main(["promote", model_id, "--force"]) == 0
    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_PROMOTED and record.get("forced") is True
    assert main(["promote", "no-such-model:1"]) == 1 and "not in the ledger" in capsys.readouterr().out
    assert main(["promote", "no-version"]) == 1

    view = evaluation_view(s, ledger)[COLLECTION]
    assert view["eval_set"] == {"carved": 12, "carved_from": record.get("corpus_id"), "carved_kept": 0, "golden": 0,
                                 "golden_datasets": []}
    assert view["last_decision"]["state"] == R.EVAL_PROMOTED and view["last_decision"]["decided_by"] == "operator"
    assert view["last_decision"]["candidate"]["items"] == 12

    status = collect_status(s, ledger, InMemoryWorkspace())
    (item,) = status["collections"]
    assert item["evaluation"] == view
    text = render_status(status)
    assert f"{COLLECTION}: eval set 12 carved (corpus {record.get('corpus_id')}) + 0 golden" in text
    assert f"last decision: {model_id} promoted by operator, candidate rouge_l" in text


def test_the_time_budget_leaves_a_resumable_evaluation(world) -> None:
    s, ledger, model_id = world
    s = s.replace(eval_time_budget_s=5, eval_parallelism=1)
    now = [0.0]
    calls: list[str] = []
    slow_pirate = pirate(calls)

    def answer(messages: list[dict]) -> str:
        now[0] += 1.0
        return slow_pirate(messages)

    first = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2", answer_candidate=answer,
                            answer_champion=None, clock=lambda: now[0])
    assert not first.decided and "5 of 12 answers" in first.reason
    record = ledger.get(R.EVALUATION, model_id)
    assert record.state == R.EVAL_EVALUATING and not record.get("claim")  # released: the next call goes on at once
    second = judge_candidate(ctx_of(s.replace(eval_time_budget_s=100), ledger), collection=COLLECTION,
                             candidate_version="2", answer_candidate=answer, answer_champion=None, clock=lambda: now[0])
    assert second.decided and second.promote and len(calls) == 12


UNRELATED = "Please remember that the parking permits are renewed at the front desk."


def _bad_batch(first: int, last: int) -> bytes:
    import json

    return b"".join(json.dumps({"prompt": f"Tell me {i} and {i} together?", "messages": [
        {"role": "user", "content": f"Tell me {i} and {i} together?"},
        {"role": "assistant", "content": UNRELATED}]}).encode() + b"\n" for i in range(first, last))


def test_a_bad_batch_never_votes_for_its_own_model(storage_settings: Settings) -> None:
    """The held-out set is kept as the corpus grows (a record beside the corpora), and a candidate is judged
    on the champion's set: a bad batch that lands in a set below its cap is left out of its own judgment."""
    from shared.datasets.evalset import read_held_out

    s = storage_settings.replace(training_mode="corpus", coalesce_s=0, max_running_jobs=0, eval_fraction=0.3,
                                 eval_max_conversations=40, eval_parallelism=2, eval_margin=0.02)
    use_settings(s)
    backend = InMemoryWorkspace()
    use_backend(backend, s)
    ledger = Ledger.from_settings(s)
    prepare_trigger()(_upload(s, f"{COLLECTION}/day1.jsonl", data(0, 40)))
    ledger.transition(R.JOB, "ftjob-001", [R.JOB_SUBMITTED], R.JOB_COMPLETED, ended_at=iso(utcnow()))
    prepare_trigger()(_upload(s, f"{COLLECTION}/batch-b.jsonl", _bad_batch(0, 160)))
    first, second = backend.requests
    name = model_name_for(s, COLLECTION)
    ledger.create(R.MODEL, f"{name}:1", R.MODEL_REGISTERED, job_name="ftjob-001")
    ledger.create(R.MODEL, f"{name}:2", R.MODEL_REGISTERED, job_name="ftjob-002")
    c1, c2 = (ledger.get(R.JOB, j).get("corpus_counts") for j in ("ftjob-001", "ftjob-002"))
    assert 0 < c1["eval"] < 40 and c2["eval_kept"] == c1["eval"] < c2["eval"] == 40  # kept, then filled from the batch
    held = read_held_out(s, COLLECTION)
    assert held is not None and len(held.digests) == 40 and len(held.datasets) == 2

    def parrot(messages: list[dict]) -> str:  # the candidate learned the bad batch
        return UNRELATED

    verdict = judge_candidate(ctx_of(s, ledger), collection=COLLECTION, candidate_version="2", answer_candidate=parrot,
                              answer_champion=pirate([]), champion_version="1")
    assert not verdict.promote and "worse than the champion beyond the margin: rouge_l" in verdict.reason, verdict.reason
    report = orjson.loads(blob_service(s).get_blob_client(s.prepared_container, verdict.report_blob).download_blob().readall())
    assert report["eval_set"]["carved"] == c1["eval"] and report["eval_set"]["left_out"] == 40 - c1["eval"]
    assert report["eval_set"]["champion_corpus_id"] == first.corpus_id and report["eval_set"]["corpus_id"] == second.corpus_id
    assert UNRELATED not in {i["reference"] for i in report["items"]}
