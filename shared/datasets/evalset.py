"""A collection's held-out evaluation set: carved from its corpus by the conversation digest.

Corpus mode judges every new model of a collection against the one serving
(:mod:`shared.evaluation`) on conversations neither was trained on. They are carved here, while
the corpus is built (:func:`shared.datasets.corpus.build_corpus`):

* a conversation whose digest lies in the top ``EVAL_FRACTION`` of the digest space is an eval
  candidate (the test split takes the bottom ``TEST_FRACTION``, so the two never meet);
* of the candidates, the ``EVAL_MAX_CONVERSATIONS`` with the highest digests are the eval set
  (``eval.jsonl`` beside ``train.jsonl``); the other candidates are trained on like any conversation.

It depends only on the digests, so it is the same whatever file a conversation arrived in and in
whatever order the files are read. As the corpus grows, a new conversation with a higher digest
can push the lowest one out of a full set (into train); one pushed out never comes back, since
the set's lowest digest only rises. So no conversation a collection's earlier models trained on
is ever in a later eval set (as long as no dataset is retired: a retired dataset's conversations
leave the corpus and can let lower digests back in).

Golden files: blobs a user drops under ``<collection>/eval/`` are prepared like any upload (every
line validated, the report written) and their dataset goes to state ``eval`` instead of
``accepted``: never pending, never in a corpus, never trained on; their conversations are added
to the collection's eval set.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

EVAL_FILE = "eval.jsonl"
GOLDEN_FOLDER = "eval"


def eval_threshold(eval_fraction: float) -> int | None:
    """A conversation whose 128-bit digest is at or above this is an eval candidate (None: no carving).

    The mirror of :func:`shared.datasets.chat_data.split_threshold` (which takes the bottom of the
    digest space for test): the top ``eval_fraction`` of the space.
    """
    if eval_fraction <= 0:
        return None
    return (1 << 128) - (int(eval_fraction * (1 << 64)) << 64)


def is_golden_blob(blob_name: str) -> bool:
    """``<collection>/eval/<file>``: a golden evaluation file, validated like any upload, never trained on."""
    parts = blob_name.replace("\\", "/").lstrip("/").split("/")
    return len(parts) >= 3 and parts[1].lower() == GOLDEN_FOLDER and bool(parts[-1])


class EvalCarver:
    """Keeps the ``cap`` highest-digest eval candidates seen so far (memory: ``cap`` conversations).

    :meth:`offer` returns True when the conversation is taken (kept, or already known to go to
    train: a candidate pushed out of a full set, or one below the set's lowest digest, is handed to
    ``to_train`` at once, in stream order, so the output is the same bytes for the same sources).
    """

    def __init__(self, eval_fraction: float, cap: int, to_train: Callable[[int, bytes], None]):
        self.threshold = eval_threshold(eval_fraction) if cap > 0 else None
        self.cap = cap
        self._to_train = to_train
        self._kept: list[tuple[int, bytes]] = []  # min-heap by digest (digests are distinct: de-duplicated)
        self.candidates = 0

    def offer(self, digest: int, raw: bytes) -> bool:
        if self.threshold is None or digest < self.threshold:
            return False
        self.candidates += 1
        if len(self._kept) < self.cap:
            heapq.heappush(self._kept, (digest, raw))
        elif digest > self._kept[0][0]:
            out = heapq.heapreplace(self._kept, (digest, raw))
            self._to_train(*out)
        else:
            self._to_train(digest, raw)
        return True

    def kept(self) -> list[bytes]:
        """The eval set, highest digest first."""
        return [raw for _, raw in sorted(self._kept, reverse=True)]
