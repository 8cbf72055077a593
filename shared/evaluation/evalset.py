"""Reading a collection's eval set from storage: the corpus's carved ``eval.jsonl`` + golden files.

The carving itself happens while the corpus is built (:mod:`shared.datasets.evalset`); this module
only reads what was written, so it is the one place that says which conversations a model of a
collection is judged on and where each came from.

A candidate is judged against the champion on the champion's eval set (:func:`judged_set`): the
carved conversations of the champion's corpus that the candidate's corpus still holds out (all
of them unless a dataset was retired: a conversation once held out stays held out), plus the
golden files. Conversations the candidate's corpus added to the set (from its new data, while the
set was below its cap) are left out until the next candidate: a new batch never votes for the
model trained on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from shared.datasets.digest import conversation_digest
from shared.ledger import records as R

if TYPE_CHECKING:
    from shared.context import Context
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
    champion_corpus_id: str | None = None  # judged on the champion's set (:func:`judged_set`)
    left_out: int = 0  # the candidate's held-out conversations not in the champion's set

    def counts(self) -> dict[str, Any]:
        carved = sum(1 for i in self.items if i.source == CARVED)
        return {"total": len(self.items), CARVED: carved, GOLDEN: len(self.items) - carved,
                "corpus_id": self.corpus_id, "golden_datasets": list(self.golden_datasets),
                "champion_corpus_id": self.champion_corpus_id, "left_out": self.left_out}


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


def judged_set(settings: Settings, ledger: Ledger, collection: str, corpus_id: str | None,
               champion_corpus_id: str | None) -> EvalSet:
    """What a candidate of ``corpus_id`` is judged on against a champion of ``champion_corpus_id``:
    its carved conversations that the champion's corpus held out too, and the golden files. Its
    own set when there is no champion corpus, the same corpus, or a champion corpus without carved
    conversations (an eval set turned on since: nothing older to compare on)."""
    own = load_eval_set(settings, ledger, collection, corpus_id)
    if not champion_corpus_id or not corpus_id or champion_corpus_id == corpus_id:
        return own
    theirs = _carved_ids(settings, collection, champion_corpus_id)
    if not theirs:
        return own
    items = tuple(i for i in own.items if i.source != CARVED or i.id in theirs)
    return dataclasses.replace(own, items=items, champion_corpus_id=champion_corpus_id,
                               left_out=len(own.items) - len(items))


def _carved_ids(settings: Settings, collection: str, corpus_id: str) -> set[str]:
    from shared.datasets.corpus import corpus_prefix
    from shared.datasets.evalset import EVAL_FILE

    ids = set()
    for row in _lines(settings, corpus_prefix(collection, corpus_id) + EVAL_FILE):
        item = item_of(row["messages"], CARVED, corpus_id)
        if item is not None:
            ids.add(item.id)
    return ids


def held_out_conversations(ctx: Context, collection: str) -> list[list[dict[str, str]]]:
    """The collection's eval conversations as ultrachat ``messages`` lists ([] when it has none yet):
    for leakage checks against training data (:mod:`shared.datasets.quality`)."""
    return [item.messages for item in load_eval_set(ctx.settings, ctx.ledger, collection).items]
