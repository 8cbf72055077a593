"""An uploaded chat data blob becomes a prepared dataset and, when accepted, a fine-tuning job.

The flow for one blob (``prepare_uploaded_blob``), safe to run any number of times for the
same upload (blob triggers deliver at least once; a host restart replays them):

1. Stream the blob through ``shared.datasets.preparation`` into local spool files, hashing the raw bytes.
2. The dataset id is the sanitised blob name, a hash of the exact blob name and the content hash
   (``dataset_id_for``): the same content at the same blob is the same dataset, changed content a
   new dataset version, and the same content in two blobs (two collections) two datasets. The
   raw upload is only read. A blob whose folder is not a canonical collection name is refused
   (rejected, with the reason in its report and ``status``), never folded into another collection.
3. ``dataset/<id>`` is created "received" (or found as an earlier delivery left it). While it
   is "received", the outputs are uploaded to ``<prepared>/datasets/<id>/`` (deterministic
   bytes: overwriting after a crash is harmless) and the record moves to "accepted" or
   "rejected" exactly once (ETag-conditional).
4. ``TRAINING_MODE=upload``: an accepted dataset is submitted once, alone: a delivery claims the submission with a conditional
   write, submits through the ML backend, records ``job/<name>`` "submitted" and moves the
   dataset to "submitted". A claim left by a crashed delivery expires after
   ``SUBMIT_CLAIM_LEASE_SECONDS`` so a later delivery (or ``reconcile``, through
   ``submit_pending_datasets``) finishes it.

   ``TRAINING_MODE=corpus`` (the default): an accepted dataset joins its collection's next
   corpus (the blob's first folder, :mod:`shared.datasets.collections`); when that is due and
   allowed, one job trains on the whole corpus (:mod:`shared.training.submission`).

Only infrastructure errors raise (so the host retries, then poisons); bad data is an outcome.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest, MLBackend
from shared.context import Context
from shared.datasets.collections import canonical_collection_of, folder_problem
from shared.datasets.evalset import is_golden_blob
from shared.datasets.outcome import DatasetOutcome
from shared.datasets.preparation import PreparedData, prepare_stream
from shared.datasets.uploads import ChunkStream, detect_format, strip_format_suffix
from shared.ledger import DATASET, JOB, ConflictError, Ledger, Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R
from shared.settings import Settings
from shared.storage import upload_file

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

DATASET_TAG = "dataset-id"
SOURCE_BLOB_TAG = "source-blob"
# A submission claimed longer ago than this is taken to have died with its worker. Far longer
# than any submit call takes, so two live deliveries never both submit.
_MAX_STEM = 48
_NOT_ID_CHARS = re.compile(r"[^a-z0-9]+")


def dataset_id_for(blob_name: str, content_sha256: str, *, name_hex: int = 12) -> str:
    """``<sanitised name>-<12 hex of the blob name's SHA-256>-<16 hex of the content's>``.

    Lowercase letters, digits, hyphens: blob names are untrusted, so every character outside
    [a-z0-9] (slashes, backslashes, dots, control characters) becomes a hyphen and the id can
    never escape ``datasets/<id>/``; it is a valid ledger key, Azure ML tag value and path
    segment. The sanitised stem is for people (and folds names: ``team-a/data`` and
    ``team/a-data``); the hash of the exact name keeps every blob, hence every collection, apart.
    ``name_hex=64`` is the fallback :func:`_dataset_id_of_blob` uses should 48 bits ever collide.
    """
    stem = _NOT_ID_CHARS.sub("-", strip_format_suffix(blob_name).lower()).strip("-")
    stem = stem[-_MAX_STEM:].strip("-") or "dataset"  # keep the end: the file name says the most
    name_hash = hashlib.sha256(blob_name.encode("utf-8", "surrogatepass")).hexdigest()[:name_hex]
    return f"{stem}-{name_hash}-{content_sha256[:16]}"


def legacy_dataset_id_for(blob_name: str, content_sha256: str) -> str:
    """The id datasets had before issue 26.2 (``<sanitised name>-<16 hex of the content hash>``):
    records under it keep working for their own blob."""
    stem = _NOT_ID_CHARS.sub("-", strip_format_suffix(blob_name).lower()).strip("-")
    stem = stem[-_MAX_STEM:].strip("-") or "dataset"
    return f"{stem}-{content_sha256[:16]}"


def _dataset_id_of_blob(ledger: Ledger, blob_name: str, content_sha256: str) -> str:
    """The dataset id of this blob's content: an existing record of this very blob (also under the
    legacy id), else the first free id. A record of another blob is never reused (it would drop
    this upload silently); should every candidate belong to other blobs, ConflictError says so."""
    legacy = legacy_dataset_id_for(blob_name, content_sha256)
    record = ledger.get(DATASET, legacy)
    if record is not None and record.get("blob_name") == blob_name:
        return legacy
    candidates = (dataset_id_for(blob_name, content_sha256), dataset_id_for(blob_name, content_sha256, name_hex=64))
    for dataset_id in candidates:
        record = ledger.get(DATASET, dataset_id)
        if record is None or record.get("blob_name") == blob_name:
            return dataset_id
    raise ConflictError(f"dataset ids {', '.join(candidates)} all belong to other blobs; {blob_name!r} is not recorded")


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/"


def prepare_uploaded_blob(blob: BlobClient, ctx: Context) -> DatasetOutcome:
    """Prepare the uploaded blob, record it, and submit a fine-tune when it is accepted (idempotent)."""
    from azure.core.exceptions import ResourceNotFoundError

    s = ctx.settings
    name = blob.blob_name
    fmt = detect_format(name)
    if fmt is None:
        return DatasetOutcome("ignored", name)
    with tempfile.TemporaryDirectory(prefix="prepare-chat-data-") as tmp:
        try:
            downloader = blob.download_blob()
        except ResourceNotFoundError:
            return DatasetOutcome("missing", name)
        problem = folder_problem(name)
        collection = None if problem else canonical_collection_of(name)
        # Leakage is checked against the collection's held-out evaluation set (issue 24), not for
        # a golden file (it is that set) or a refused folder.
        held_out = None if problem or is_golden_blob(name) else held_out_for(ctx, collection or "default")
        # chunks() streams the blob in pieces (pinned to the version it started on): never readall.
        prepared = prepare_stream(ChunkStream(downloader.chunks()), fmt, Path(tmp), s, source_name=name,  # type: ignore[arg-type]
                                  collection=collection, held_out=held_out)
        if problem:  # refused, with the full report of the data all the same
            data_reasons = [] if prepared.accepted else prepared.report["decision"]["reasons"]
            prepared.report["decision"] = {"accepted": False, "reasons": [problem, *data_reasons]}
        dataset_id = _dataset_id_of_blob(ctx.ledger, name, prepared.content_sha256)
        return _record_prepared(ctx, name, dataset_id, prepared)


def _record_prepared(ctx: Context, blob_name: str, dataset_id: str, prepared: PreparedData) -> DatasetOutcome:
    s, ledger = ctx.settings, ctx.ledger
    prefix = dataset_prefix(dataset_id)
    record = ledger.get(DATASET, dataset_id)
    if record is None:
        record = ledger.create(
            DATASET, dataset_id, R.DATASET_RECEIVED, blob_name=blob_name, content_sha256=prepared.content_sha256,
            size_bytes=prepared.size_bytes, format=prepared.report["source"]["format"], prefix=prefix,
            collection=None if folder_problem(blob_name) else canonical_collection_of(blob_name),
        ) or ledger.get(DATASET, dataset_id)
        if record is None:
            raise ConflictError(f"dataset/{dataset_id} vanished while being created")
    if record.get("blob_name") != blob_name:  # another blob created it first, just now: the retry picks the next id
        raise ConflictError(f"dataset/{dataset_id} was just recorded for blob {record.get('blob_name')!r}, not {blob_name!r}")
    decided_now = False
    if record.state == R.DATASET_RECEIVED:
        report = {**prepared.report, "dataset": {"id": dataset_id, "prefix": prefix, "blob_name": blob_name}}
        blobs = _upload_outputs(s, prefix, prepared, report)
        blobs.update(_quality_fields(prepared))
        if prepared.accepted and is_golden_blob(blob_name):  # <collection>/eval/...: evaluated on, never trained on
            moved = ledger.transition(DATASET, dataset_id, [R.DATASET_RECEIVED], R.DATASET_EVAL, counts=prepared.counts,
                                      accepted_at=iso(utcnow()), purpose="eval", **blobs)
        elif prepared.accepted:
            moved = ledger.transition(DATASET, dataset_id, [R.DATASET_RECEIVED], R.DATASET_ACCEPTED, counts=prepared.counts,
                                      accepted_at=iso(utcnow()), **blobs)
        else:
            moved = ledger.transition(DATASET, dataset_id, [R.DATASET_RECEIVED], R.DATASET_REJECTED, counts=prepared.counts,
                                      report_blob=blobs["report_blob"], quality=blobs.get("quality"),
                                      error="; ".join(prepared.report["decision"]["reasons"]))
        decided_now = moved is not None
        record = moved or ledger.get(DATASET, dataset_id) or record
        log.info("dataset %s: %s (%d valid, %d invalid, %d duplicates)", dataset_id, record.state,
                 prepared.counts["valid"], prepared.counts["invalid"], prepared.counts["duplicates"])
    reasons = tuple(prepared.report["decision"]["reasons"])
    if record.state == R.DATASET_REJECTED:
        return DatasetOutcome("rejected" if decided_now else "already_rejected", blob_name, dataset_id,
                              reasons=reasons, counts=prepared.counts)
    if record.state in (R.DATASET_EVAL, R.DATASET_RETIRED):
        return DatasetOutcome(record.state if decided_now else f"already_{record.state}", blob_name, dataset_id,
                              reasons=reasons, counts=prepared.counts)
    if s.training_mode == "corpus":  # the collection's next corpus job (coalesced, guarded)
        from shared.training.submission import submit_for_dataset

        outcome = submit_for_dataset(record, ctx)
    else:  # upload mode: this file alone, at once (as before collections)
        outcome = submit_accepted_dataset(dataset_id, ctx)
    return dataclasses.replace(outcome, blob_name=blob_name, reasons=reasons, counts=prepared.counts)


def held_out_for(ctx: Context, collection: str) -> list[list[dict[str, str]]] | None:
    """The collection's held-out evaluation set (``shared.evaluation.held_out_conversations``, issue
    24) for the quality gate's leakage check; None when the evaluation package does not offer it."""
    import shared.evaluation as evaluation

    loader = getattr(evaluation, "held_out_conversations", None)
    if loader is None:
        return None
    conversations = loader(ctx, collection)
    return list(conversations) if conversations is not None else None


def _quality_fields(prepared: PreparedData) -> dict[str, Any]:
    """What the ledger keeps of the quality report and the forecast (for ``status``, the dashboard, the spend guard)."""
    quality = prepared.report.get("quality") or {}
    forecast = prepared.report.get("forecast") or {}
    return {"quality": {**(quality.get("counts") or {}), "policy": quality.get("policy")} if quality else None,
            "forecast_usd": forecast.get("usd"), "forecast_tokens": forecast.get("tokens")}


def _upload_outputs(s: Settings, prefix: str, prepared: PreparedData, report: dict[str, Any]) -> dict[str, str]:
    """Upload report (always) and train/test (when accepted) under the dataset's prefix."""
    from azure.storage.blob import ContentSettings

    from shared.storage import blob_service

    container = blob_service(s).get_container_client(s.prepared_container)
    blobs = {"report_blob": prefix + "report.json"}
    if prepared.accepted:
        blobs["train_blob"] = prefix + "train.jsonl"
        blobs["test_blob"] = prefix + "test.jsonl"
        upload_file(container, blobs["train_blob"], prepared.train_path)
        upload_file(container, blobs["test_blob"], prepared.test_path)
    container.upload_blob(blobs["report_blob"], orjson.dumps(report, option=orjson.OPT_INDENT_2), overwrite=True,
                          content_settings=ContentSettings(content_type="application/json"))
    return blobs


def submit_accepted_dataset(dataset_id: str, ctx: Context) -> DatasetOutcome:
    """Submit the fine-tune for an accepted dataset, exactly once across deliveries and workers."""
    s, ledger = ctx.settings, ctx.ledger
    claim = uuid.uuid4().hex

    def attempt() -> DatasetOutcome | Record:
        record = ledger.get(DATASET, dataset_id)
        if record is None:
            raise LookupError(f"dataset/{dataset_id} is not in the ledger")
        blob_name = record.get("blob_name", "")
        if record.state == R.DATASET_SUBMITTED:
            return DatasetOutcome("already_submitted", blob_name, dataset_id, job_name=record.get("job_name"))
        if record.state != R.DATASET_ACCEPTED:
            return DatasetOutcome(f"already_{record.state}", blob_name, dataset_id)
        if _claim_is_live(record, s):
            return DatasetOutcome("submission_in_progress", blob_name, dataset_id)
        return ledger.update(record, submit_claim=claim, submit_claimed_at=iso(utcnow()))

    claimed = retry_on_conflict(attempt, f"dataset/{dataset_id} submission claim")
    if isinstance(claimed, DatasetOutcome):
        return claimed
    return _submit(s, ledger, ctx.backend, claimed, claim)


def _claim_is_live(record: Record, s: Settings) -> bool:
    """A submission claim is honoured for SUBMIT_CLAIM_LEASE_SECONDS: longer than any submission
    takes, so a live delivery is never doubled; after it, a crashed delivery's claim is taken over."""
    claimed_at = parse_iso(record.get("submit_claimed_at"))
    lease = timedelta(seconds=s.submit_claim_lease_s)
    return bool(record.get("submit_claim")) and claimed_at is not None and utcnow() - claimed_at < lease


def _submit(s: Settings, ledger: Ledger, backend: MLBackend, record: Record, claim: str) -> DatasetOutcome:
    dataset_id = record.id
    blob_name = record.get("blob_name", "")
    tags = {MANAGED_BY_TAG: MANAGED_BY_VALUE, DATASET_TAG: dataset_id, SOURCE_BLOB_TAG: blob_name[:256]}
    request = FineTuneRequest(dataset_id=dataset_id, train_blob=record.get("train_blob"), test_blob=record.get("test_blob"),
                              model_name=s.model_name, tags=tags, params=dict(s.finetune_params))
    try:
        job_name = backend.submit_finetune(request)
    except Exception as exc:
        # Release the claim so the retry (host redelivery or the reconcile timer) can submit.
        ledger.merge(DATASET, dataset_id, submit_claim=None, submit_claimed_at=None, error=f"submission failed: {exc}"[:500])
        raise
    ledger.create(JOB, job_name, R.JOB_SUBMITTED, dataset_id=dataset_id, model_name=s.model_name, base_model=s.base_model_name,
                  backend=getattr(backend, "name", s.ml_backend), tags=tags, submitted_at=iso(utcnow()),
                  train_blob=request.train_blob, test_blob=request.test_blob)
    moved = ledger.transition(DATASET, dataset_id, [R.DATASET_ACCEPTED], R.DATASET_SUBMITTED, job_name=job_name,
                              submitted_at=iso(utcnow()), submit_claim=None, error=None)
    if moved is None:  # cannot happen while our claim is live; say so loudly if it does
        log.warning("dataset %s left 'accepted' while job %s was being submitted (claim %s)", dataset_id, job_name, claim)
    log.info("dataset %s submitted as job %s (model %s)", dataset_id, job_name, s.model_name)
    return DatasetOutcome("submitted", blob_name, dataset_id, job_name=job_name)


def submit_pending_datasets(ctx: Context) -> list[DatasetOutcome]:
    """Upload mode: finish submissions a crashed delivery left behind (accepted, no live claim).
    For the reconcile timer. In corpus mode accepted datasets wait for their collection's job
    (:func:`shared.training.submission.submit_due_collections`): nothing is done here."""
    s, ledger = ctx.settings, ctx.ledger
    if s.training_mode != "upload":
        return []
    outcomes = []
    for record in ledger.list(DATASET, [R.DATASET_ACCEPTED]):
        if not _claim_is_live(record, s):
            outcomes.append(submit_accepted_dataset(record.id, ctx))
    return outcomes
