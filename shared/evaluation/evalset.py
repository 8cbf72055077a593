"""Reading a collection's eval set from storage: the corpus's carved ``eval.jsonl`` + golden files.

The carving itself happens while the corpus is built (:mod:`shared.datasets.evalset`); this module
only reads what was written, so it is the one place that says which conversations a model of a
collection is judged on and where each came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from shared.datasets.chat_data import conversation_digest
from shared.ledger import records as R

if TYPE_CHECKING:
    from shared.ledger import Ledger, Record
    from shared.settings import Settings

CARVED = "carved"
GOLDEN = "golden"


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One eval conversation: the context the model answers (every message before the last
    assistant turn) and the reference answer (that turn)."""

    id: str  # 32 hex: the conversation digest (stable across files and corpora)
    source: str  # carved | golden
    origin: str  # corpus id or golden dataset id
    prompt: list[dict[str, str]]
    reference: str
    messages: list[dict[str, str]]  # the whole conversation as prepared

    @property
    def query(self) -> str:
        """The last user turn (what the judge's relevance evaluator is asked about)."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    collection: str
    items: tuple[EvalItem, ...]
    corpus_id: str | None
    golden_datasets: tuple[str, ...]

    def counts(self) -> dict[str, Any]:
        carved = sum(1 for i in self.items if i.source == CARVED)
        return {"total": len(self.items), CARVED: carved, GOLDEN: len(self.items) - carved,
                "corpus_id": self.corpus_id, "golden_datasets": list(self.golden_datasets)}


def item_of(messages: list[dict[str, str]], source: str, origin: str) -> EvalItem | None:
    """An eval item from a prepared conversation (None when it has no assistant turn to compare)."""
    last = max((k for k, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        return None
    digest = conversation_digest([m["role"] for m in messages], [m["content"] for m in messages])
    return EvalItem(f"{digest:032x}", source, origin, [dict(m) for m in messages[:last]], messages[last]["content"],
                    [dict(m) for m in messages])


def _lines(settings: Settings, blob_name: str) -> Iterator[dict[str, Any]]:
    from azure.core.exceptions import ResourceNotFoundError

    from shared.storage import blob_service

    blob = blob_service(settings).get_blob_client(settings.prepared_container, blob_name)
    try:
        data = blob.download_blob().readall()  # capped: EVAL_MAX_CONVERSATIONS lines, or a golden file
    except ResourceNotFoundError:
        return
    for line in data.splitlines():
        if line.strip():
            yield orjson.loads(line)


def latest_corpus_id(ledger: Ledger, collection: str) -> str | None:
    """The corpus of the collection's most recently submitted job (its eval set is the newest)."""
    record = ledger.get(R.COLLECTION, collection)
    if record is not None and record.get("last_corpus_id"):
        return str(record.get("last_corpus_id"))
    jobs = sorted((j for j in ledger.list(R.JOB) if j.get("collection") == collection and j.get("corpus_id")),
                  key=lambda j: j.get("submitted_at") or "")
    return str(jobs[-1].get("corpus_id")) if jobs else None


def golden_datasets(ledger: Ledger, collection: str) -> list[Record]:
    from shared.training.submission import dataset_collection

    return sorted((d for d in ledger.list(R.DATASET, [R.DATASET_EVAL]) if dataset_collection(d) == collection),
                  key=lambda d: d.id)


def load_eval_set(settings: Settings, ledger: Ledger, collection: str, corpus_id: str | None = None) -> EvalSet:
    """The eval set of ``collection``: the carved set of ``corpus_id`` (default: its latest corpus)
    and every golden file of the collection, each conversation once (by digest)."""
    from shared.datasets.corpus import corpus_prefix
    from shared.datasets.evalset import EVAL_FILE

    corpus_id = corpus_id or latest_corpus_id(ledger, collection)
    items: dict[str, EvalItem] = {}
    if corpus_id:
        for row in _lines(settings, corpus_prefix(collection, corpus_id) + EVAL_FILE):
            item = item_of(row["messages"], CARVED, corpus_id)
            if item is not None:
                items.setdefault(item.id, item)
    golden = golden_datasets(ledger, collection)
    for record in golden:
        for key in ("train_blob", "test_blob"):
            if record.get(key):
                for row in _lines(settings, record.get(key)):
                    item = item_of(row["messages"], GOLDEN, record.id)
                    if item is not None:
                        items.setdefault(item.id, item)
    return EvalSet(collection, tuple(items.values()), corpus_id, tuple(d.id for d in golden))


def held_out_conversations(settings: Settings, collection: str, ledger: Ledger | None = None) -> list[list[dict[str, str]]]:
    """The collection's eval conversations as ultrachat ``messages`` lists ([] when it has none yet):
    for leakage checks against training data (:mod:`shared.datasets.quality`)."""
    from shared.ledger import Ledger

    ledger = ledger or Ledger.from_settings(settings)
    return [item.messages for item in load_eval_set(settings, ledger, collection).items]
