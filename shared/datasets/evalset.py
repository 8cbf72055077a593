"""A collection's held-out evaluation set: carved from its corpus by the conversation digest, and kept.

Corpus mode judges every new model of a collection against the one serving
(:mod:`shared.evaluation`) on conversations neither was trained on. They are carved here, while
the corpus is built (:func:`shared.datasets.corpus.build_corpus`):

* a conversation whose digest lies in the top ``EVAL_FRACTION`` of the digest space is eligible
  (the test split takes the bottom ``TEST_FRACTION``, so the two never meet);
* a conversation held out once stays held out: every corpus of the collection holds out again
  each conversation of its :class:`HeldOut` record (whatever file it now arrives in);
* the cap (``EVAL_MAX_CONVERSATIONS``) is filled by the earliest eligible conversations: those of
  datasets the record has not seen yet, in the order the corpus streams them (datasets the record
  knows first, in the order it saw them; then the new ones by id); an eligible conversation of a
  dataset the record has seen but did not hold out was trained on, and stays in train;
* every other conversation is trained on: the training split excludes exactly the held-out ones.

So a later batch never displaces the set an earlier model was judged on; it adds to the set only
while the set is below its cap. The record (``corpora/<collection>/held-out.json``: the rule, the
datasets seen in order, the held-out digests) is written before the corpus's manifest, so a crash
in between rebuilds the same corpus, and it survives restarts. A change of the rule
(``EVAL_FRACTION`` or ``EVAL_MAX_CONVERSATIONS``) starts a new record. Without a record (the
collection's first corpus, or the blob lost) the set is the first ``cap`` eligible conversations
in stream order. One limit: a conversation of a retired dataset that arrives again in a new dataset
counts as new (its first copy left the corpus with the retired one).

Golden files: blobs a user drops under ``<collection>/eval/`` are prepared like any upload (every
line validated, the report written) and their dataset goes to state ``eval`` instead of
``accepted``: never pending, never in a corpus, never trained on; their conversations are added
to the collection's eval set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from shared.settings import Settings

EVAL_FILE = "eval.jsonl"
HELD_OUT_FILE = "held-out.json"
GOLDEN_FOLDER = "eval"


def eval_threshold(eval_fraction: float) -> int | None:
    """A conversation whose 128-bit digest is at or above this is an eval candidate (None: no carving).

    The mirror of :func:`shared.datasets.preparation.split_threshold` (which takes the bottom of the
    digest space for test): the top ``eval_fraction`` of the space.
    """
    if eval_fraction <= 0:
        return None
    return (1 << 128) - (int(eval_fraction * (1 << 64)) << 64)


def is_golden_blob(blob_name: str) -> bool:
    """``<collection>/eval/<file>``: a golden evaluation file, validated like any upload, never trained on."""
    parts = blob_name.replace("\\", "/").lstrip("/").split("/")
    return len(parts) >= 3 and parts[1].lower() == GOLDEN_FOLDER and bool(parts[-1])


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """What a collection held out so far: the rule, the datasets its corpora carved (in the order
    they were first carved) and the digests (32 hex) of every conversation held out, in that order."""

    eval_fraction: float
    eval_max: int
    datasets: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()

    def matches(self, eval_fraction: float, eval_max: int) -> bool:
        return (self.eval_fraction, self.eval_max) == (eval_fraction, eval_max)

    def as_dict(self) -> dict[str, Any]:
        return {"eval_fraction": self.eval_fraction, "eval_max": self.eval_max, "datasets": list(self.datasets),
                "digests": list(self.digests)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOut:
        return cls(float(data["eval_fraction"]), int(data["eval_max"]), tuple(data.get("datasets") or ()),
                   tuple(data.get("digests") or ()))


def stream_order(dataset_ids: list[str], held: HeldOut | None) -> list[str]:
    """The order a corpus reads its datasets in: those the record saw first (in its order), then the new ones by id."""
    present = set(dataset_ids)
    known = [d for d in (held.datasets if held else ()) if d in present]
    return known + sorted(present - set(known))


class EvalCarver:
    """Picks a corpus's held-out conversations as it streams (memory: the held-out ones).

    :meth:`offer` returns True when the conversation is taken (held out, or known to go to train:
    an eligible conversation past the cap, or of a dataset the record saw, is handed to
    ``to_train`` at once, so the output is the same bytes for the same sources and record).
    """

    def __init__(self, eval_fraction: float, cap: int, to_train: Callable[[int, bytes], None],
                 held: HeldOut | None = None):
        self.threshold = eval_threshold(eval_fraction) if cap > 0 else None
        self.cap = cap
        self._rule = (eval_fraction, cap)
        held = held if held is not None and held.matches(eval_fraction, cap) else None  # a new rule: a new record
        self._before = held
        self._to_train = to_train
        self._held = {int(d, 16) for d in held.digests} if held else set()
        self._seen_datasets = set(held.datasets) if held else set()
        self._kept_again: list[tuple[int, bytes]] = []  # held out before: always held out again
        self._new: list[tuple[int, bytes]] = []  # new picks, in stream order
        self.candidates = 0

    def offer(self, digest: int, raw: bytes, dataset_id: str = "") -> bool:
        if self.threshold is None:
            return False
        if digest in self._held:  # (whatever its digest: the rule is the record's)
            self.candidates += 1
            self._kept_again.append((digest, raw))
            while self._new and len(self._kept_again) + len(self._new) > self.cap:
                self._to_train(*self._new.pop())  # the latest new pick gives way
            return True
        if digest < self.threshold:
            return False
        self.candidates += 1
        if dataset_id in self._seen_datasets or len(self._kept_again) + len(self._new) >= self.cap:
            self._to_train(digest, raw)
        else:
            self._new.append((digest, raw))
        return True

    def kept(self) -> list[bytes]:
        """The eval set: what was held out before, then the new picks, each in stream order."""
        return [raw for _, raw in self._kept_again + self._new]

    @property
    def kept_again(self) -> int:
        return len(self._kept_again)

    def record(self, dataset_ids: list[str]) -> HeldOut:
        """The record after this corpus (``dataset_ids`` in stream order): every digest held out before
        (in this corpus or not) and the new picks."""
        old = self._before
        datasets = list(old.datasets) if old else []
        datasets += [d for d in dataset_ids if d not in set(datasets)]
        digests = list(old.digests) if old else []
        digests += [f"{d:032x}" for d, _ in self._new]
        return HeldOut(*self._rule, tuple(datasets), tuple(digests))


# --------------------------------------------------------------------------- in storage


def held_out_blob(collection: str) -> str:
    """The collection's :class:`HeldOut` record, beside its corpora (``corpora/<collection>/``)."""
    return f"corpora/{collection}/{HELD_OUT_FILE}"


def read_held_out(settings: Settings, collection: str) -> HeldOut | None:
    from azure.core.exceptions import ResourceNotFoundError

    from shared.storage import blob_service

    blob = blob_service(settings).get_blob_client(settings.prepared_container, held_out_blob(collection))
    try:
        return HeldOut.from_dict(orjson.loads(blob.download_blob().readall()))
    except ResourceNotFoundError:
        return None


def write_held_out(settings: Settings, collection: str, held: HeldOut) -> None:
    """Overwrite the record (one writer per collection: the submission's claim on the collection)."""
    from azure.storage.blob import ContentSettings

    from shared.storage import blob_service

    blob_service(settings).get_blob_client(settings.prepared_container, held_out_blob(collection)).upload_blob(
        orjson.dumps(held.as_dict(), option=orjson.OPT_INDENT_2), overwrite=True,
        content_settings=ContentSettings(content_type="application/json"))
