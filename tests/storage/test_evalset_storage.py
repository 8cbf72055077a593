"""The eval set on real storage (Azurite): carved into the corpus, golden files never trained on."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.backends import use_backend
from shared.context import context
from shared.datasets.evalset import eval_threshold
from shared.evaluation import held_out_conversations, load_eval_set
from shared.ledger import DATASET, Ledger, utcnow
from shared.ledger import records as R
from shared.settings import Settings, use_settings
from shared.training.submission import retire_dataset, submit_due_collections
from tests.fakes.evaluation import data, prepare_trigger, prepared_lines
from tests.fakes.uploads import conv, upload
from tests.fakes.workspace import InMemoryWorkspace

pytestmark = pytest.mark.storage


@pytest.fixture
def trigger() -> Any:
    return prepare_trigger()


@pytest.fixture
def settings(storage_settings: Settings) -> Settings:
    return storage_settings.replace(training_mode="corpus", coalesce_s=0, max_running_jobs=0,
                                    eval_fraction=0.2, eval_max_conversations=8)


def test_carved_and_golden_eval_conversations_are_never_trained_on(settings: Settings, trigger) -> None:
    backend = InMemoryWorkspace()
    s = settings
    use_settings(s)
    use_backend(backend, s)
    ledger = Ledger.from_settings(s)
    golden = b"".join(conv(i) for i in range(1000, 1012))
    trigger(upload(s, "support-bot/eval/golden.jsonl", golden))
    (record,) = ledger.list(DATASET)
    assert record.state == R.DATASET_EVAL and record.get("purpose") == "eval"
    assert backend.requests == [] and submit_due_collections(context(settings=s), now=utcnow() + timedelta(seconds=120)) == []  # never pending, no job

    trigger(upload(s, "support-bot/day1.jsonl", data(0, 200)))
    (request,) = backend.requests
    assert record.id not in request.dataset_ids
    trained = {json.loads(x)["prompt"] for x in prepared_lines(s, request.train_blob) + prepared_lines(s, request.test_blob)}
    manifest_eval = prepared_lines(s, f"corpora/support-bot/{request.corpus_id}/eval.jsonl")
    assert len(manifest_eval) == 8 and len(trained) == 192
    assert not any(f"What is {i} plus" in p for p in trained for i in range(1000, 1012))

    evalset = load_eval_set(s, ledger, "support-bot")
    counts = evalset.counts()
    assert counts == {"total": 20, "carved": 8, "golden": 12, "corpus_id": request.corpus_id,
                      "golden_datasets": [record.id], "champion_corpus_id": None, "left_out": 0}
    assert not {i.prompt[-1]["content"] for i in evalset.items} & trained
    assert all(int(i.id, 16) >= eval_threshold(0.2) for i in evalset.items if i.source == "carved")
    assert {i.reference for i in evalset.items if i.source == "golden"} == {f"{2 * i}, arr!" for i in range(1000, 1012)}
    conversations = held_out_conversations(context(settings=s), "support-bot")
    assert len(conversations) == 20 and all(c[-1]["role"] == "assistant" for c in conversations)
    assert held_out_conversations(context(settings=s), "nothing-here") == []

    assert retire_dataset(record.id, context(settings=s))[0] == "retired"  # a golden file can be retired from the eval set
    assert load_eval_set(s, ledger, "support-bot").counts()["golden"] == 0
