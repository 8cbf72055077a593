"""A collection's training corpus: the union of its datasets' prepared files, de-duplicated.

Corpus mode (``TRAINING_MODE=corpus``) trains each job on every accepted, not retired dataset
of a collection. The corpus is built from the datasets' prepared ``train.jsonl`` and
``test.jsonl`` (already validated and normalised), streamed one line at a time:

* a conversation that appears in several files is kept once (the same digest as preparation,
  :func:`shared.datasets.digest.conversation_digest`);
* every conversation is split again by the same rule as preparation
  (:func:`shared.datasets.preparation.split_threshold`): the split depends only on the digest, so a
  conversation lands in the same split whatever file it arrived in and whatever else is in the
  corpus. (The one exception: when the rule puts nothing in test, as for a corpus of a few
  conversations, the train conversation with the lowest digest is moved there, as
  preparation does for a tiny file; the manifest says so.)

Memory stays flat in the corpus size apart from the de-duplication index (one 128-bit digest
per distinct conversation, about 100 bytes each in a Python set). Outputs go under
``<prepared>/corpora/<collection>/<corpus id>/`` (``train.jsonl``, ``test.jsonl``,
``manifest.json`` written last; ``eval.jsonl``, the held-out set of :mod:`shared.datasets.evalset`,
never trained on). The corpus id is derived from the set of dataset ids (and the test fraction
and eval-set rule), so the same set is built once: a manifest already there is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import xxhash

from shared.datasets.evalset import EVAL_FILE, EvalCarver, HeldOut, read_held_out, stream_order, write_held_out
from shared.datasets.preparation import WRITE_BUFFER_BYTES, split_threshold
from shared.datasets.schema import LineError, normalise_conversation
from shared.datasets.uploads import READ_BUFFER_BYTES, ChunkStream

if TYPE_CHECKING:
    from shared.ledger import Record
    from shared.settings import Settings

CORPORA_PREFIX = "corpora/"
MANIFEST = "manifest.json"
_COPY_BYTES = 1 << 20


class CorpusError(ValueError):
    """A prepared file is not what preparation writes (names the dataset, file and line)."""


def corpus_id_for(dataset_ids: Iterable[str], test_fraction: float, eval_fraction: float = 0.0, eval_max: int = 0) -> str:
    """``c-<20 hex>``: the same set of datasets (and split and eval-set rules) always gives the same id."""
    ids = sorted(set(dataset_ids))
    rules = [f"test_fraction={test_fraction!r}"]
    if eval_max > 0:  # (no eval set: the id corpora had before there was one)
        rules.append(f"eval_fraction={eval_fraction!r} eval_max={eval_max}")
    material = "\n".join([*rules, *ids]).encode()
    return "c-" + hashlib.sha256(material).hexdigest()[:20]


def corpus_prefix(collection: str, corpus_id: str) -> str:
    return f"{CORPORA_PREFIX}{collection}/{corpus_id}/"


@dataclasses.dataclass
class CorpusBuild:
    """What :func:`build_corpus` wrote and counted."""

    train_path: Path
    test_path: Path
    rows: int = 0  # distinct conversations written (train + test + eval)
    train: int = 0
    test: int = 0
    eval: int = 0  # held out for evaluation (never trained on), shared.datasets.evalset
    eval_candidates: int = 0  # conversations in the eval bucket (the capped set + those sent to train)
    eval_kept: int = 0  # of ``eval``: held out by an earlier corpus of the collection (the rest are new picks)
    held_out: HeldOut | None = None  # the collection's held-out record after this corpus (shared.datasets.evalset)
    eval_path: Path | None = None
    duplicates: int = 0  # lines dropped because an earlier file (or line) had the conversation
    bytes_read: int = 0
    moved_to_test: bool = False
    per_dataset: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        return {"rows": self.rows, "train": self.train, "test": self.test, "eval": self.eval,
                "eval_candidates": self.eval_candidates, "eval_kept": self.eval_kept, "duplicates": self.duplicates,
                "bytes_read": self.bytes_read, "moved_to_test": self.moved_to_test, "per_dataset": self.per_dataset}


def build_corpus(sources: Iterable[tuple[str, str, BinaryIO]], out_dir: Path, test_fraction: float, *,
                 eval_fraction: float = 0.0, eval_max: int = 0, held_out: HeldOut | None = None) -> CorpusBuild:
    """Stream ``(dataset_id, file label, binary stream)`` sources into ``out_dir``/{train,test}.jsonl
    (and ``eval.jsonl``: the held-out set of :mod:`shared.datasets.evalset`, when ``eval_max`` > 0,
    given the collection's record ``held_out`` so far).

    Sources are read in the order given (callers pass datasets in
    :func:`shared.datasets.evalset.stream_order`, each dataset's train then test file), so the
    output is the same bytes for the same set of datasets and record.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    build = CorpusBuild(out_dir / "train.jsonl", out_dir / "test.jsonl", eval_path=out_dir / EVAL_FILE if eval_max > 0 else None)
    threshold = split_threshold(test_fraction)
    seen: set[int] = set()
    remember, known = seen.add, seen.__contains__
    loads, dumps, digest_of = orjson.loads, orjson.dumps, xxhash.xxh3_128_intdigest
    lowest: tuple[int, int, bytes] | None = None  # (digest, offset, line) of the lowest-digest train row
    train_offset = 0
    with open(build.train_path, "wb", buffering=WRITE_BUFFER_BYTES) as train, \
            open(build.test_path, "wb", buffering=WRITE_BUFFER_BYTES) as test:
        write_train, write_test = train.write, test.write

        def to_train(digest: int, raw: bytes) -> None:
            nonlocal lowest, train_offset
            if lowest is None or digest < lowest[0]:
                lowest = (digest, train_offset, raw)
            write_train(raw)
            train_offset += len(raw)
            build.train += 1

        carver = EvalCarver(eval_fraction, eval_max, to_train, held_out)
        streamed: list[str] = []
        offer_eval = carver.offer
        for dataset_id, label, stream in sources:
            counts = build.per_dataset.setdefault(dataset_id, {"rows": 0, "duplicates": 0})
            if dataset_id not in streamed:
                streamed.append(dataset_id)
            readline = stream.readline
            number = 0
            while raw := readline():
                number += 1
                build.bytes_read += len(raw)
                if raw.isspace():
                    continue
                try:
                    _, _, _, roles, contents, _, _ = normalise_conversation(loads(raw))
                except (orjson.JSONDecodeError, LineError) as exc:
                    raise CorpusError(f"dataset {dataset_id} {label} line {number}: not a prepared conversation ({exc})") from None
                digest = digest_of(dumps((roles, contents)))  # = conversation_digest(roles, contents)
                if known(digest):
                    build.duplicates += 1
                    counts["duplicates"] += 1
                    continue
                remember(digest)
                counts["rows"] += 1
                if raw[-1:] != b"\n":
                    raw += b"\n"
                if offer_eval(digest, raw, dataset_id):
                    continue  # held out (first: once held out, always), or sent to train by the carver
                if digest < threshold:
                    write_test(raw)
                    build.test += 1
                else:
                    to_train(digest, raw)
        if not build.test and lowest is not None and build.train >= 2:
            write_test(lowest[2])
            build.test, build.train, build.moved_to_test = 1, build.train - 1, True
    if build.moved_to_test and lowest is not None:
        _cut(build.train_path, lowest[1], len(lowest[2]))
    held = carver.kept()
    if build.eval_path is not None:
        with open(build.eval_path, "wb") as eval_file:
            eval_file.writelines(held)
    build.eval, build.eval_candidates, build.eval_kept = len(held), carver.candidates, carver.kept_again
    if eval_max > 0:
        build.held_out = carver.record(streamed)
    build.rows = build.train + build.test + build.eval
    return build


def _cut(path: Path, offset: int, length: int) -> None:
    """Remove ``length`` bytes at ``offset`` from a file, streaming (a rare, small case)."""
    tmp = path.with_suffix(".cut")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        remaining = offset
        while remaining:
            chunk = src.read(min(_COPY_BYTES, remaining))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
        src.seek(offset + length)
        shutil.copyfileobj(src, dst, _COPY_BYTES)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- in storage


def _blob_lines(container: Any, name: str) -> BinaryIO:
    """A prepared blob as a buffered stream of its chunks (never read whole)."""
    downloader = container.get_blob_client(name).download_blob()
    return io.BufferedReader(ChunkStream(downloader.chunks()), READ_BUFFER_BYTES)  # type: ignore[return-value]


def read_manifest(settings: Settings, collection: str, corpus_id: str) -> dict[str, Any] | None:
    from azure.core.exceptions import ResourceNotFoundError

    from shared.storage import blob_service

    blob = blob_service(settings).get_blob_client(settings.prepared_container, corpus_prefix(collection, corpus_id) + MANIFEST)
    try:
        return orjson.loads(blob.download_blob().readall())
    except ResourceNotFoundError:
        return None


def materialise_corpus(settings: Settings, collection: str, datasets: list[Record], corpus_id: str) -> dict[str, Any]:
    """Build (once) and upload the corpus of ``datasets``; return its manifest.

    A manifest already in storage means the corpus was built: it is returned as it is. The
    train/test blobs are uploaded before the manifest, so a crash in between rebuilds the
    same bytes on the next try.
    """
    from azure.storage.blob import ContentSettings

    from shared.ledger import iso, utcnow
    from shared.storage import blob_service, upload_file

    existing = read_manifest(settings, collection, corpus_id)
    if existing is not None:
        return existing
    container = blob_service(settings).get_container_client(settings.prepared_container)
    held_before = read_held_out(settings, collection) if settings.eval_max_conversations > 0 else None
    by_id = {r.id: r for r in datasets}
    ordered = [by_id[i] for i in stream_order(list(by_id), held_before)]

    def sources() -> Iterator[tuple[str, str, BinaryIO]]:
        for record in ordered:
            for key in ("train_blob", "test_blob"):
                name = record.get(key)
                if not name:
                    raise CorpusError(f"dataset {record.id} has no {key} (state {record.state})")
                stream = _blob_lines(container, name)
                try:
                    yield record.id, name, stream
                finally:
                    stream.close()

    prefix = corpus_prefix(collection, corpus_id)
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        build = build_corpus(sources(), Path(tmp), settings.test_fraction, eval_fraction=settings.eval_fraction,
                             eval_max=settings.eval_max_conversations, held_out=held_before)
        manifest = {
            "collection": collection,
            "corpus_id": corpus_id,
            "dataset_ids": sorted(by_id),
            "train_blob": prefix + "train.jsonl",
            "test_blob": prefix + "test.jsonl",
            "test_fraction": settings.test_fraction,
            "eval_blob": prefix + EVAL_FILE if build.eval_path else None,
            "eval_rule": {"eval_fraction": settings.eval_fraction, "eval_max": settings.eval_max_conversations},
            "counts": build.counts(),
            "built_at": iso(utcnow()),
        }
        upload_file(container, manifest["train_blob"], build.train_path)
        upload_file(container, manifest["test_blob"], build.test_path)
        if build.eval_path is not None:
            upload_file(container, manifest["eval_blob"], build.eval_path)
        if build.held_out is not None:  # before the manifest: a crash in between rebuilds the same corpus
            write_held_out(settings, collection, build.held_out)
    container.upload_blob(prefix + MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2), overwrite=True,
                          content_settings=ContentSettings(content_type="application/json"))
    return manifest
