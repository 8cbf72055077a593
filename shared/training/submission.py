"""Corpus mode: submit one job per collection for everything accepted so far, once, guarded.

Who calls it: the blob trigger after a dataset is accepted (:func:`submit_for_dataset`; with
``COALESCE_SECONDS=0`` that submits at once), the scheduled delivery at the window's due time
(:mod:`shared.training.due`: queue ``collection-submissions``), and the ``reconcile`` timer
(:func:`submit_due_collections`), the safety net: windows whose message was lost, jobs that
ended with data waiting, submissions the spend guard held back, and submissions a crashed delivery left.

What waits is derived from the ledger, never from a flag that a crash could lose: a
collection's pending data is its datasets in ``accepted`` (in no submitted corpus yet). The
``collection/<name>`` record summarises it for ``status`` (``pending``/``idle``, due time,
why it waits) and holds the submission claim: a delivery claims the submission with an
ETag-conditional write (honoured ``SUBMIT_CLAIM_LEASE_SECONDS``, as for uploads), builds the
corpus (:mod:`shared.datasets.corpus`), submits it, records ``job/<name>`` with the lineage
(collection, corpus id, dataset ids), then moves the corpus's accepted datasets to
``submitted``. An accepted dataset a recorded job already lists is only moved (a crash after
the job record), so the same set of datasets is never submitted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import datetime
from typing import Any

from shared.backends.base import (
    COLLECTION_TAG,
    CORPUS_TAG,
    DATASET_IDS_TAG,
    LOCAL_INSTANCE_TYPE,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    FineTuneRequest,
    MLBackend,
)
from shared.context import Context, context
from shared.datasets.collections import collection_of, model_name_for
from shared.datasets.corpus import corpus_id_for, materialise_corpus
from shared.datasets.outcome import DatasetOutcome
from shared.ledger import ConflictError, Ledger, Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R
from shared.settings import Settings
from shared.training import due
from shared.training import policy as P

log = logging.getLogger(__name__)

IN_CORPUS = (R.DATASET_ACCEPTED, R.DATASET_SUBMITTED)


@dataclasses.dataclass(frozen=True)
class CollectionOutcome:
    """What one attempt for a collection did: ``action`` is a policy action (``submit`` -> ``submitted``)."""

    collection: str
    action: str
    reason: str
    due_at: datetime | None = None
    job_name: str | None = None
    corpus_id: str | None = None
    dataset_ids: tuple[str, ...] = ()


# --------------------------------------------------------------------------- facts


def dataset_collection(record: Record) -> str:
    return record.get("collection") or collection_of(record.get("blob_name") or "")


def _accepted_at(record: Record) -> datetime:
    return parse_iso(record.get("accepted_at")) or parse_iso(record.updated_at) or utcnow()


def collection_facts(name: str, datasets: list[Record], jobs: list[Record], record: Record | None,
                     ignore_claim: str | None = None) -> P.CollectionFacts:
    pending = tuple(P.Pending(d.id, _accepted_at(d)) for d in datasets
                    if d.state == R.DATASET_ACCEPTED and dataset_collection(d) == name)
    running = tuple(j.id for j in jobs if j.state == R.JOB_SUBMITTED and j.get("collection") == name)
    claimed_at = None
    if record is not None and record.get("submit_claim") and record.get("submit_claim") != ignore_claim:
        claimed_at = parse_iso(record.get("submit_claimed_at"))
    return P.CollectionFacts(name, pending, running, claimed_at)


def finetune_instance(settings: Settings) -> tuple[str, int]:
    """(instance type the price table is keyed by, instance count) of a job submitted now."""
    if settings.ml_backend == "local":
        return LOCAL_INSTANCE_TYPE, 1
    try:
        nodes = max(int(settings.finetune_params.get("num_nodes_finetune", 1)), 1)
    except (TypeError, ValueError):
        nodes = 1
    return settings.finetune_compute or settings.finetune_instance_type, nodes


def _hourly(settings: Settings, instance_type: str, count: int) -> float | None:
    price = settings.instance_hourly_prices.get(instance_type)
    try:
        return None if price is None else float(price) * count
    except (TypeError, ValueError):
        return None


def job_costs(jobs: list[Record], settings: Settings, now: datetime, backend: MLBackend | None = None,
              ledger: Ledger | None = None) -> tuple[P.JobCost, ...]:
    """This month's jobs with their real run times.

    A job's run times come from the backend (``JobInfo.started_at`` / ``ended_at``) and are
    recorded on the job once it ended (``run_started_at`` / ``run_ended_at``), so a finished
    job costs one backend call ever. A running job the backend reports without a start is
    queued (costs nothing yet); when the backend cannot say, the submission time is used (an
    upper bound: queueing is counted).
    """
    month = P.month_start(now)
    default_type, default_count = finetune_instance(settings)
    costs = []
    for job in jobs:
        running = job.state == R.JOB_SUBMITTED
        ended = None if running else (parse_iso(job.get("run_ended_at")) or parse_iso(job.get("ended_at"))
                                      or parse_iso(job.updated_at))
        if ended is not None and ended < month:
            continue
        started = parse_iso(job.get("run_started_at"))
        if started is None:
            started, ended = _backend_times(job, backend, ledger, ended)
        instance_type = job.get("instance_type") or default_type
        count = int(job.get("instance_count") or default_count)
        costs.append(P.JobCost(job.id, started, ended, _hourly(settings, instance_type, count), instance_type))
    return tuple(costs)


def _backend_times(job: Record, backend: MLBackend | None, ledger: Ledger | None,
                   ended: datetime | None) -> tuple[datetime | None, datetime | None]:
    running = job.state == R.JOB_SUBMITTED
    submitted = parse_iso(job.get("submitted_at"))
    if backend is None:
        return submitted, ended
    try:
        info = backend.get_job(job.id)
    except Exception:  # noqa: BLE001 - the budget falls back to the submission time
        log.info("job %s: run times not readable from the backend; counting from its submission", job.id, exc_info=True)
        return submitted, ended
    started = info.started_at
    if not running:
        ended = info.ended_at or ended
        started = started or submitted
        if ledger is not None and started is not None:
            ledger.annotate(R.JOB, job.id, run_started_at=iso(started), run_ended_at=iso(ended))
    return started, ended


def forecast_usd(datasets: list[Record], name: str) -> float:
    """The cost forecast of the collection's next corpus job: the sum of its members' preparation
    forecasts (``forecast_usd`` on each dataset record, issue 26's quality report)."""
    return float(sum(d.get("forecast_usd") or 0.0 for d in datasets if d.state in IN_CORPUS and dataset_collection(d) == name))


def guard_facts(jobs: list[Record], settings: Settings, now: datetime, backend: MLBackend | None = None,
                ledger: Ledger | None = None, forecast: float = 0.0) -> P.GuardFacts:
    running = sum(1 for j in jobs if j.state == R.JOB_SUBMITTED)
    next_type, next_count = finetune_instance(settings)
    costs: tuple[P.JobCost, ...] = ()
    if settings.finetune_budget_usd is not None:  # run times are read only when a budget needs them
        costs = job_costs(jobs, settings, now, backend, ledger)
    return P.GuardFacts(running_jobs=running, max_running_jobs=settings.max_running_jobs,
                        budget_usd=settings.finetune_budget_usd, jobs=costs,
                        next_hourly_usd=_hourly(settings, next_type, next_count), next_instance_type=next_type,
                        next_forecast_usd=forecast)


# --------------------------------------------------------------------------- acting


def submit_for_dataset(record: Record, ctx: Context, *, now: datetime | None = None) -> DatasetOutcome:
    """After a dataset is accepted (or redelivered): advance its collection; say what happened to it."""
    ledger = ctx.ledger
    blob_name = record.get("blob_name", "")
    if record.state != R.DATASET_ACCEPTED:
        return DatasetOutcome(f"already_{record.state}", blob_name, record.id, job_name=record.get("job_name"))
    outcome = advance_collection(dataset_collection(record), ctx, now=now)
    if outcome.action == "submitted" and record.id in outcome.dataset_ids:
        return DatasetOutcome("submitted", blob_name, record.id, job_name=outcome.job_name)
    fresh = ledger.get(R.DATASET, record.id)
    if fresh is not None and fresh.state != R.DATASET_ACCEPTED:  # someone else's job took it meanwhile
        return DatasetOutcome(f"already_{fresh.state}", blob_name, record.id, job_name=fresh.get("job_name"))
    status = outcome.action if outcome.action != P.NOTHING else "pending"
    return DatasetOutcome(status, blob_name, record.id, reasons=(outcome.reason,))


def advance_collection(name: str, ctx: Context, *, now: datetime | None = None, submit: bool = True) -> CollectionOutcome:
    """Decide for one collection and act: record why it waits, or claim and submit its corpus
    (``submit=False``: only bring the collection record up to date)."""
    s, ledger, backend = ctx.settings, ctx.ledger, ctx.backend
    clock = now or utcnow()
    datasets, jobs = ledger.list(R.DATASET), ledger.list(R.JOB)
    if _finish_moves(ledger, name, datasets, jobs):
        datasets = ledger.list(R.DATASET)
    record = ledger.get(R.COLLECTION, name)
    decision = P.decide(collection_facts(name, datasets, jobs, record),
                        guard_facts(jobs, s, clock, backend, ledger, forecast_usd(datasets, name)),
                        clock, coalesce_s=s.coalesce_s, lease_s=s.submit_claim_lease_s)
    if decision.action == P.SUBMIT and not submit:
        decision = P.Decision(P.WAIT, "due: submitted by the next delivery or reconcile run", decision.due_at)
    if decision.action != P.SUBMIT:
        _record_waiting(ledger, name, decision, s)
        return CollectionOutcome(name, decision.action, decision.reason, decision.due_at)

    claim = uuid.uuid4().hex
    claimed = retry_on_conflict(lambda: _claim(ledger, name, claim, clock, s), f"collection/{name} submission claim")
    if claimed is None:
        return CollectionOutcome(name, P.IN_PROGRESS, "another delivery is submitting the collection's corpus", decision.due_at)
    try:
        # The facts again, now that the claim is ours: a submission that finished meanwhile counts.
        datasets, jobs = ledger.list(R.DATASET), ledger.list(R.JOB)
        decision = P.decide(collection_facts(name, datasets, jobs, claimed, ignore_claim=claim),
                            guard_facts(jobs, s, clock, backend, ledger, forecast_usd(datasets, name)),
                            clock, coalesce_s=s.coalesce_s, lease_s=s.submit_claim_lease_s)
        if decision.action != P.SUBMIT:
            _release(ledger, name, claim)
            _record_waiting(ledger, name, decision, s)
            return CollectionOutcome(name, decision.action, decision.reason, decision.due_at)
        outcome = _submit_corpus(s, ledger, backend, name, datasets, jobs, clock)
    except Exception as exc:
        _release(ledger, name, claim, error=f"submission failed: {exc}"[:500])
        raise
    _settle(ledger, name, claim, outcome)
    return outcome


def _claim(ledger: Ledger, name: str, claim: str, now: datetime, s: Settings) -> Record | None:
    record = ledger.get(R.COLLECTION, name)
    fields = {"submit_claim": claim, "submit_claimed_at": iso(now)}
    if record is None:
        created = ledger.create(R.COLLECTION, name, R.COLLECTION_PENDING, **fields)
        if created is None:
            raise ConflictError(f"collection/{name} created concurrently")
        return created
    if record.get("submit_claim") and P.claim_is_live(parse_iso(record.get("submit_claimed_at")), now, s.submit_claim_lease_s):
        return None
    return ledger.update(record, R.COLLECTION_PENDING, **fields)


def _release(ledger: Ledger, name: str, claim: str, **fields: Any) -> None:
    def attempt() -> None:
        record = ledger.get(R.COLLECTION, name)
        if record is not None and record.get("submit_claim") == claim:
            ledger.update(record, submit_claim=None, submit_claimed_at=None, **fields)

    retry_on_conflict(attempt, f"collection/{name} claim release")


def _record_waiting(ledger: Ledger, name: str, decision: P.Decision, s: Settings) -> None:
    """Keep ``collection/<name>`` true for status: pending (due, why) or idle. Written only on change.
    Whoever records a new due time of an open window schedules its submission (:mod:`shared.training.due`)."""
    pending = decision.action != P.NOTHING
    wanted = {"due_at": iso(decision.due_at) if pending else None,
              "waiting": decision.action if pending else None,
              "waiting_reason": decision.reason if pending else None,
              "held_reason": decision.reason if decision.action == P.HOLD else None}
    if decision.action == P.IN_PROGRESS:
        return  # the claimant writes the outcome

    def attempt() -> bool:  # True: this write opened a window (or moved its due time)
        record = ledger.get(R.COLLECTION, name)
        state = R.COLLECTION_PENDING if pending else R.COLLECTION_IDLE
        if record is None:
            if pending and ledger.create(R.COLLECTION, name, state, **wanted) is None:
                raise ConflictError(f"collection/{name} created concurrently")
            return pending
        if record.get("submit_claim") and not pending:
            return False
        if record.state == state and all(record.get(k) == v for k, v in wanted.items()):
            return False
        ledger.update(record, state, **wanted)
        return (record.get("waiting"), record.get("due_at")) != (wanted["waiting"], wanted["due_at"])

    if retry_on_conflict(attempt, f"collection/{name} status") and decision.action == P.WAIT and decision.due_at:
        due.schedule(name, decision.due_at, s)


def _submit_corpus(s: Settings, ledger: Ledger, backend: MLBackend | None, name: str, datasets: list[Record],
                   jobs: list[Record], now: datetime) -> CollectionOutcome:
    """Build and submit the corpus. Never the same set twice: every accepted dataset here is in no
    recorded job (``_finish_moves`` ran first), so the set, hence the corpus id, is new."""
    from shared.backends import get_backend

    members = sorted((d for d in datasets if d.state in IN_CORPUS and dataset_collection(d) == name), key=lambda d: d.id)
    ids = tuple(d.id for d in members)
    corpus_id = corpus_id_for(ids, s.test_fraction, s.eval_fraction, s.eval_max_conversations)
    pending_ids = tuple(d.id for d in members if d.state == R.DATASET_ACCEPTED)
    manifest = materialise_corpus(s, name, members, corpus_id)
    backend = backend or get_backend(s)
    request = corpus_request(s, name, corpus_id, ids, manifest)
    model_name, tags = request.model_name, request.tags
    job_name = backend.submit_finetune(request)
    instance_type, count = finetune_instance(s)
    ledger.create(R.JOB, job_name, R.JOB_SUBMITTED, dataset_id=request.dataset_id, collection=name, corpus_id=corpus_id,
                  dataset_ids=list(ids), model_name=model_name, base_model=s.base_model_name,
                  backend=getattr(backend, "name", s.ml_backend), tags=tags, submitted_at=iso(utcnow()),
                  train_blob=request.train_blob, test_blob=request.test_blob, corpus_counts=manifest.get("counts"),
                  instance_type=instance_type, instance_count=count)
    _mark_submitted(ledger, pending_ids, job_name, corpus_id)
    counts = manifest.get("counts") or {}
    log.info("collection %s: corpus %s (%d datasets, %s rows) submitted as job %s (model %s)", name, corpus_id, len(ids),
             counts.get("rows"), job_name, model_name)
    return CollectionOutcome(name, "submitted", f"{len(ids)} datasets, {counts.get('rows')} conversations",
                             job_name=job_name, corpus_id=corpus_id, dataset_ids=ids)


def corpus_request(s: Settings, collection: str, corpus_id: str, dataset_ids: tuple[str, ...],
                   manifest: dict[str, Any]) -> FineTuneRequest:
    """The fine-tune of a corpus: its files, the collection's model name, the lineage tags."""
    tags = {MANAGED_BY_TAG: MANAGED_BY_VALUE, COLLECTION_TAG: collection, CORPUS_TAG: corpus_id,
            DATASET_IDS_TAG: ",".join(dataset_ids)}
    return FineTuneRequest(dataset_id=f"{collection}-{corpus_id}", train_blob=manifest["train_blob"],
                           test_blob=manifest["test_blob"], model_name=model_name_for(s, collection), tags=tags,
                           params=dict(s.finetune_params), collection=collection, corpus_id=corpus_id,
                           dataset_ids=tuple(dataset_ids))


def _finish_moves(ledger: Ledger, name: str, datasets: list[Record], jobs: list[Record]) -> bool:
    """Accepted datasets a recorded job already trains on (its delivery died before moving them)."""
    taken = {d: j for j in jobs if j.get("collection") == name for d in (j.get("dataset_ids") or [])}
    left = [d for d in datasets if d.state == R.DATASET_ACCEPTED and d.id in taken and dataset_collection(d) == name]
    for d in left:
        job = taken[d.id]
        log.warning("dataset %s: job %s trains on it but it was never marked submitted; finishing", d.id, job.id)
        _mark_submitted(ledger, (d.id,), job.id, job.get("corpus_id") or "")
    return bool(left)


def _mark_submitted(ledger: Ledger, dataset_ids: tuple[str, ...], job_name: str, corpus_id: str) -> None:
    for dataset_id in dataset_ids:
        ledger.transition(R.DATASET, dataset_id, [R.DATASET_ACCEPTED], R.DATASET_SUBMITTED, job_name=job_name,
                          corpus_id=corpus_id, submitted_at=iso(utcnow()), error=None)


def _settle(ledger: Ledger, name: str, claim: str, outcome: CollectionOutcome) -> None:
    """Release the claim, record the job, and say whether data still waits (arrived meanwhile)."""

    def attempt() -> None:
        record = ledger.get(R.COLLECTION, name)
        if record is None or record.get("submit_claim") != claim:
            return
        waiting = any(d.state == R.DATASET_ACCEPTED and dataset_collection(d) == name for d in ledger.list(R.DATASET))
        state = R.COLLECTION_PENDING if waiting else R.COLLECTION_IDLE
        ledger.update(record, state, submit_claim=None, submit_claimed_at=None, last_job=outcome.job_name,
                      last_corpus_id=outcome.corpus_id, last_submitted_at=iso(utcnow()), error=None, held_reason=None,
                      due_at=record.get("due_at") if waiting else None,
                      waiting=P.WAIT_FOR_JOB if waiting else None,
                      waiting_reason=f"job {outcome.job_name} of the collection is running" if waiting else None)

    retry_on_conflict(attempt, f"collection/{name} settle")


def pending_collections(ledger: Ledger) -> list[str]:
    """Collections with data waiting (accepted datasets) or a pending record (e.g. a stale claim)."""
    names = {dataset_collection(d) for d in ledger.list(R.DATASET, [R.DATASET_ACCEPTED])}
    names |= {r.id for r in ledger.list(R.COLLECTION, [R.COLLECTION_PENDING])}
    return sorted(names)


def submit_due_collections(ctx: Context, *, now: datetime | None = None) -> list[CollectionOutcome]:
    """For the reconcile timer: advance every collection with data waiting (corpus mode only)."""
    if ctx.settings.training_mode != "corpus":
        return []
    return [advance_collection(name, ctx, now=now) for name in pending_collections(ctx.ledger)]


# --------------------------------------------------------------------------- retire


def retire_dataset(dataset_id: str, ctx: Context) -> tuple[str, Record | None]:
    """Leave a dataset out of every later corpus (a golden eval file: out of the eval set); its raw
    upload, prepared files and report stay.

    Returns ``(what happened, record)``: ``retired``, ``already_retired``, ``missing`` or
    ``not_trainable`` (received or rejected: never in a corpus).
    """
    s, ledger = ctx.settings, ctx.ledger
    moved = ledger.transition(R.DATASET, dataset_id, (*IN_CORPUS, R.DATASET_EVAL), R.DATASET_RETIRED, retired_at=iso(utcnow()))
    if moved is None:
        current = ledger.get(R.DATASET, dataset_id)
        if current is None:
            return "missing", None
        return ("already_retired" if current.state == R.DATASET_RETIRED else "not_trainable"), current
    name = dataset_collection(moved)
    if s.training_mode == "corpus":
        advance_collection(name, ctx, submit=False)  # e.g. nothing left pending: idle
    log.info("dataset %s retired from collection %s", dataset_id, name)
    return "retired", moved


def cli_datasets(args: Any) -> int:
    """``python -m shared.cli datasets retire ID``: 0 retired (or already), 1 unknown or not trainable."""
    if args.datasets_command == "retire":
        what, record = retire_dataset(args.dataset_id, ctx=context())
        if what == "missing":
            print(f"dataset {args.dataset_id!r} is not in the ledger (see `python -m shared.cli status`)")
            return 1
        if what == "not_trainable":
            print(f"dataset {args.dataset_id!r} is {record.state if record else '?'}: it is in no corpus, nothing to retire")
            return 1
        collection = dataset_collection(record) if record is not None else "?"
        verb = "retired" if what == "retired" else "was already retired"
        print(f"dataset {args.dataset_id} {verb}: left out of collection {collection!r}'s next corpus "
              "(its upload and report stay)")
        return 0
    return 1


# --------------------------------------------------------------------------- status


def _endpoint_model(ledger: Ledger, endpoint: str | None) -> str | None:
    record = ledger.get(R.ENDPOINT, endpoint) if endpoint else None
    return record.get("model") if record is not None else None


def collections_status(settings: Settings, ledger: Ledger, now: datetime) -> dict[str, Any]:
    """``status``'s ``training`` object: the mode, the spend guard now, and one item per collection
    (datasets in the corpus, what is pending and when it is due or why it is held, the running
    job, the model that serves). Read from the ledger only (no backend call)."""
    datasets, jobs = ledger.list(R.DATASET), ledger.list(R.JOB)
    records = {r.id: r for r in ledger.list(R.COLLECTION)}
    routes = {r.id: r for r in ledger.list(R.ROUTE)}
    guard = guard_facts(jobs, settings, now)
    spent, unknown = P.month_spend(job_costs(jobs, settings, now), now)
    names = sorted(records.keys() | {dataset_collection(d) for d in datasets if d.state in (*IN_CORPUS, R.DATASET_RETIRED)})
    if settings.training_mode != "corpus":
        names = []  # upload mode: one job per file, no collections to show
    items = []
    for name in names:
        record = records.get(name)
        mine = sorted((d for d in datasets if dataset_collection(d) == name), key=lambda d: d.id)
        own_jobs = sorted((j for j in jobs if j.get("collection") == name), key=lambda j: j.get("submitted_at") or "")
        running = [j.id for j in own_jobs if j.state == R.JOB_SUBMITTED]
        model_name = model_name_for(settings, name)
        route = routes.get(model_name)
        fields = record.fields if record is not None else {}
        items.append({
            "id": name,
            "name": name,
            "state": record.state if record is not None else (R.COLLECTION_PENDING if any(
                d.state == R.DATASET_ACCEPTED for d in mine) else R.COLLECTION_IDLE),
            "model_name": model_name,
            "datasets": [d.id for d in mine if d.state in IN_CORPUS],
            "pending": [d.id for d in mine if d.state == R.DATASET_ACCEPTED],
            "retired": [d.id for d in mine if d.state == R.DATASET_RETIRED],
            "due_at": fields.get("due_at"),
            "waiting": fields.get("waiting"),
            "waiting_reason": fields.get("waiting_reason"),
            "held_reason": fields.get("held_reason"),
            "running_job": running[0] if running else None,
            "last_job": own_jobs[-1].id if own_jobs else None,
            "last_corpus_id": own_jobs[-1].get("corpus_id") if own_jobs else None,
            "serving_endpoint": route.get("endpoint") if route is not None else None,
            "serving_model": _endpoint_model(ledger, route.get("endpoint")) if route is not None else None,
            "error": fields.get("error"),
        })
    return {
        "mode": settings.training_mode,
        "coalesce_seconds": settings.coalesce_s,
        "guard": {"running_jobs": guard.running_jobs, "max_running_jobs": settings.max_running_jobs,
                  "budget_usd": settings.finetune_budget_usd, "month": f"{P.month_start(now):%Y-%m}",
                  "spent_usd": round(spent, 4), "unpriced_jobs": unknown},
        "collections": items,
    }
