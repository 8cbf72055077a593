"""Judging a candidate: the ``evaluation`` record, its report, the operators' promote and reject.

This module owns the ledger kind ``evaluation`` (id ``<model name>:<version>``, as ``model/<id>``):

    ""          -> evaluating            judge_candidate claims it (a lease: EVAL_TIME_BUDGET_S + 120 s)
    evaluating  -> evaluating            a call resumes (its lease expired, or the budget ran out)
    evaluating  -> promoted | rejected   the promotion rule decided (decided_by "rule")
    rejected    -> promoted              ``cli promote NAME:VERSION`` (rule re-applied) or ``--force``
    promoted    -> rejected              ``cli reject NAME:VERSION``
    ""          -> promoted | rejected   an operator decides for a model never evaluated

Every write is ETag-conditional, so redelivered or concurrent calls decide once; the rollout
(:mod:`shared.deployment` / F2's canary) acts on the state. The report of each candidate is the
blob ``<prepared>/evaluations/<model name>/<version>/report.json`` (eval set with sources, every
answer of both models with its scores, aggregates, rules, decision).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from shared.evaluation import decision as D
from shared.evaluation.answers import Answerer, AnswerStore, collect_answers, evaluation_prefix
from shared.evaluation.evalset import EvalSet, judged_set
from shared.ledger import ConflictError, Ledger, Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R

if TYPE_CHECKING:
    from shared.context import Context
    from shared.settings import Settings

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
LEASE_SLACK_S = 120
BY_RULE, BY_OPERATOR = "rule", "operator"


@dataclasses.dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    metrics: dict[str, Any]  # {"candidate": {...}, "champion": {...} | None}
    report_blob: str | None
    decided: bool = True  # False: not decided yet (budget spent, or another worker evaluates): call again


def model_name_of(settings: Settings, collection: str) -> str:
    from shared.datasets.collections import model_name_for

    return model_name_for(settings, collection) if settings.training_mode == "corpus" else settings.model_name


def verdict_of(record: Record) -> Verdict:
    return Verdict(record.state == R.EVAL_PROMOTED, record.get("reason") or "", record.get("metrics") or {},
                   record.get("report_blob"), decided=record.state in (R.EVAL_PROMOTED, R.EVAL_REJECTED))


def decision_for(ledger: Ledger, model_id: str) -> Verdict | None:
    """The stored verdict of ``name:version`` (None: never evaluated)."""
    record = ledger.get(R.EVALUATION, model_id)
    return verdict_of(record) if record is not None else None


def _candidate_corpus(ledger: Ledger, model_id: str) -> str | None:
    model = ledger.get(R.MODEL, model_id)
    job = ledger.get(R.JOB, model.get("job_name")) if model is not None and model.get("job_name") else None
    return job.get("corpus_id") if job is not None else None


def _champion_version(ledger: Ledger, model_name: str, candidate_version: str) -> str | None:
    route = ledger.get(R.ROUTE, model_name)
    version = route.get("model_version") if route is not None else None
    return str(version) if version and str(version) != candidate_version else None


def _claim(ledger: Ledger, model_id: str, claim: str, settings: Settings, base: dict[str, Any]) -> Record | None:
    """Our claim on evaluating ``model_id``; the record itself when already decided; None when another
    worker's claim is live."""
    lease = timedelta(seconds=settings.eval_time_budget_s + LEASE_SLACK_S)

    def attempt() -> Record | None:
        record = ledger.get(R.EVALUATION, model_id)
        now = utcnow()
        if record is None:
            created = ledger.create(R.EVALUATION, model_id, R.EVAL_EVALUATING, claim=claim, claimed_at=iso(now),
                                    calls=1, started_at=iso(now), **base)
            if created is None:
                raise ConflictError(f"evaluation/{model_id} created concurrently")
            return created
        if record.state != R.EVAL_EVALUATING:
            return record
        claimed_at = parse_iso(record.get("claimed_at"))
        if record.get("claim") and claimed_at is not None and now - claimed_at < lease:
            return None
        return ledger.update(record, R.EVAL_EVALUATING, claim=claim, claimed_at=iso(now),
                             calls=int(record.get("calls") or 0) + 1, **base)

    return retry_on_conflict(attempt, f"evaluation/{model_id} claim")


def _release(ledger: Ledger, model_id: str, claim: str, **fields: Any) -> None:
    def attempt() -> None:
        record = ledger.get(R.EVALUATION, model_id)
        if record is not None and record.state == R.EVAL_EVALUATING and record.get("claim") == claim:
            ledger.update(record, claim=None, claimed_at=None, **fields)

    retry_on_conflict(attempt, f"evaluation/{model_id} release")


def score_answers(settings: Settings, evalset: EvalSet, answers: dict[tuple[str, str], dict[str, Any]],
                  roles: list[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(aggregates per role, per-item rows of the report)."""
    from shared.evaluation.metrics import aggregate, item_scores, judge_config, judge_scores, probe_judge

    judge = judge_config(settings)
    judge_error = probe_judge(judge) if judge is not None else None
    if judge_error is not None:
        log.warning("evaluation: the judge model is not usable (%s); offline metrics only", judge_error)
        judge = None
    rows: list[dict[str, Any]] = []
    per_role: dict[str, list[dict[str, Any]]] = {role: [] for role in roles}
    for item in evalset.items:
        row: dict[str, Any] = {"id": item.id, "source": item.source, "origin": item.origin, "prompt": item.prompt,
                               "reference": item.reference}
        for role in roles:
            entry = answers[(role, item.id)]
            scores: dict[str, Any] = item_scores(entry.get("answer"), item.reference)
            if judge is not None:
                try:
                    scores.update(judge_scores(judge, item.query, entry.get("answer"), item.reference))
                except Exception as exc:  # noqa: BLE001 - a judge outage leaves the offline metrics
                    log.warning("evaluation: the judge model failed on item %s: %s; no judge for the rest", item.id[:12], exc)
                    judge_error = f"{type(exc).__name__}: {exc}"[:300]
                    judge = None
            per_role[role].append(scores)
            row[role] = {"answer": entry.get("answer"), "error": entry.get("error"), "latency_s": entry.get("latency_s"),
                         "scores": scores}
        rows.append(row)
    references = [i.reference for i in evalset.items]
    figures = {role: aggregate([answers[(role, i.id)].get("answer") for i in evalset.items], references, per_role[role])
               for role in roles}
    if judge_error is not None:  # judged items would compare unevenly: judge figures only when every item was judged
        for role in roles:
            figures[role].pop("judge_similarity", None)
            figures[role].pop("judge_relevance", None)
            figures[role]["judge_error"] = judge_error
    return figures, rows


def _rules_of(settings: Settings, collection: str) -> Any:
    from shared.evaluation.rules import rules_for

    return rules_for(settings.eval_rules, collection)


def _decide(settings: Settings, collection: str, evalset_ids: list[str], answers: dict[tuple[str, str], dict[str, Any]],
            figures: dict[str, dict[str, Any]]) -> tuple[D.Decision, dict[str, Any]]:
    from shared.evaluation.rules import check_rules

    rules = check_rules(_rules_of(settings, collection), [(i, answers[(CANDIDATE, i)].get("answer")) for i in evalset_ids])
    verdict = D.decide(figures[CANDIDATE], figures.get(CHAMPION), rules, primary=settings.eval_primary_metric,
                       margin=settings.eval_margin, floors={k: float(v) for k, v in settings.eval_floors.items()})
    return verdict, rules


def _policy(settings: Settings) -> dict[str, Any]:
    return {"primary_metric": settings.eval_primary_metric, "margin": settings.eval_margin, "floors": settings.eval_floors,
            "judge": bool(settings.eval_judge_endpoint and settings.eval_judge_model)}


def judge_candidate(ctx: Context, *, collection: str, candidate_version: str, answer_candidate: Answerer,
                    answer_champion: Answerer | None, champion_version: str | None = None,
                    clock: Callable[[], float] = time.monotonic) -> Verdict:
    """Evaluate ``candidate_version`` of the collection's model (against the champion when
    ``answer_champion`` is given, else against the floors), decide, record; idempotent.

    Returns the stored verdict at once when the candidate was decided before. ``decided=False``
    when the time budget ran out (answers so far are stored; call again) or another worker holds
    the evaluation.
    """
    s, ledger = ctx.settings, ctx.ledger
    model_name = model_name_of(s, collection)
    model_id = f"{model_name}:{candidate_version}"
    existing = ledger.get(R.EVALUATION, model_id)
    if existing is not None and existing.state != R.EVAL_EVALUATING:
        return verdict_of(existing)
    if answer_champion is not None:
        champion_version = champion_version or _champion_version(ledger, model_name, candidate_version)
    else:
        champion_version = None
    corpus_id = _candidate_corpus(ledger, model_id)
    champion_corpus = _candidate_corpus(ledger, f"{model_name}:{champion_version}") if champion_version else None
    base = {"collection": collection, "model_name": model_name, "version": candidate_version,
            "champion_version": champion_version, "corpus_id": corpus_id, "champion_corpus_id": champion_corpus}
    claim = uuid.uuid4().hex
    claimed = _claim(ledger, model_id, claim, s, base)
    if claimed is None:
        return Verdict(False, "another worker is evaluating this candidate", {}, None, decided=False)
    if claimed.state != R.EVAL_EVALUATING:
        return verdict_of(claimed)
    try:
        evalset = judged_set(s, ledger, collection, corpus_id, champion_corpus)
        answerers = {CANDIDATE: answer_candidate}
        if answer_champion is not None:
            answerers[CHAMPION] = answer_champion
        store = AnswerStore.for_model(s, model_id)
        answers, complete = collect_answers(evalset.items, answerers, store, parallelism=s.eval_parallelism,
                                            budget_s=s.eval_time_budget_s, clock=clock)
        counts = evalset.counts()
        wanted = len(evalset.items) * len(answerers)
        got = sum(1 for role in answerers for i in evalset.items if (role, i.id) in answers)
        if not complete:
            reason = f"evaluation incomplete: {got} of {wanted} answers within EVAL_TIME_BUDGET_S; the next call resumes"
            _release(ledger, model_id, claim, eval_counts=counts, answered=got, wanted=wanted, reason=reason)
            return Verdict(False, reason, {}, None, decided=False)
        roles = list(answerers)
        figures, rows = score_answers(s, evalset, answers, roles)
        decision, rules = _decide(s, collection, [i.id for i in evalset.items], answers, figures)
        metrics = {CANDIDATE: figures[CANDIDATE], CHAMPION: figures.get(CHAMPION)}
        report_blob = evaluation_prefix(model_id) + "report.json"
        report = {"model": model_id, "collection": collection, "candidate_version": candidate_version,
                  "champion_version": champion_version, "eval_set": counts, "policy": _policy(s), "metrics": metrics,
                  "rules": rules, "decision": {"promote": decision.promote, "reason": decision.reason},
                  "items": rows, "written_at": iso(utcnow())}
        _write_report(s, report_blob, report)
    except Exception as exc:
        _release(ledger, model_id, claim, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    state = R.EVAL_PROMOTED if decision.promote else R.EVAL_REJECTED

    def settle() -> Record | None:
        record = ledger.get(R.EVALUATION, model_id)
        if record is None or record.state != R.EVAL_EVALUATING or record.get("claim") != claim:
            return record  # someone decided meanwhile (an operator, or a worker that took over our lease)
        return ledger.update(record, state, claim=None, claimed_at=None, reason=decision.reason, metrics=metrics,
                             rules=rules, report_blob=report_blob, eval_counts=counts, answered=got, wanted=wanted,
                             decided_at=iso(utcnow()), decided_by=BY_RULE, error=None)

    final = retry_on_conflict(settle, f"evaluation/{model_id} decision")
    if final is None:
        raise ConflictError(f"evaluation/{model_id} vanished while being decided")
    log.info("evaluation %s: %s (%s)", model_id, final.state, final.get("reason"))
    return verdict_of(final)


def _write_report(settings: Settings, name: str, report: dict[str, Any]) -> None:
    from azure.storage.blob import ContentSettings

    from shared.storage import blob_service

    blob_service(settings).get_blob_client(settings.prepared_container, name).upload_blob(
        orjson.dumps(report, option=orjson.OPT_INDENT_2), overwrite=True,
        content_settings=ContentSettings(content_type="application/json"))


# --------------------------------------------------------------------------- operators


def promote(settings: Settings, ledger: Ledger, model_id: str, *, force: bool = False) -> tuple[bool, str]:
    """``cli promote``: a rejected candidate promoted when the rule passes now on its stored answers
    (e.g. after EVAL_MARGIN or EVAL_RULES changed), or unconditionally with ``force``."""
    if ledger.get(R.MODEL, model_id) is None:
        return False, f"model {model_id} is not in the ledger (see `python -m shared.cli status`)"
    record = ledger.get(R.EVALUATION, model_id)
    if record is not None and record.state == R.EVAL_PROMOTED:
        return True, f"{model_id} is already promoted: {record.get('reason')}"
    if force:
        reason = f"promoted by an operator (--force); the evaluation had said: {record.get('reason') if record else 'never evaluated'}"
        return _operator_decision(ledger, model_id, record, R.EVAL_PROMOTED, reason, forced=True)
    if record is None or record.state == R.EVAL_EVALUATING or not record.get("metrics"):
        state = "never evaluated" if record is None else ("still being evaluated" if record.state == R.EVAL_EVALUATING
                                                         else "evaluated without metrics")
        return False, f"{model_id} is {state}: nothing to re-judge (use --force to promote it anyway)"
    collection = record.get("collection")
    answers = AnswerStore.for_model(settings, model_id).load()
    ids = sorted({i for role, i in answers if role == CANDIDATE})
    metrics = record.get("metrics") or {}
    figures = {CANDIDATE: metrics.get(CANDIDATE) or {}}
    if metrics.get(CHAMPION):
        figures[CHAMPION] = metrics[CHAMPION]
    decision, rules = _decide(settings, collection, ids, answers, figures)
    if not decision.promote:
        return False, f"{model_id} still fails the rule: {decision.reason} (use --force to promote it anyway)"
    return _operator_decision(ledger, model_id, record, R.EVAL_PROMOTED, f"re-judged by an operator: {decision.reason}",
                              rules=rules)


def reject(settings: Settings, ledger: Ledger, model_id: str, *, reason: str = "") -> tuple[bool, str]:
    """``cli reject``: the candidate never gets (or stops getting) traffic; the rollout acts on it."""
    if ledger.get(R.MODEL, model_id) is None:
        return False, f"model {model_id} is not in the ledger (see `python -m shared.cli status`)"
    record = ledger.get(R.EVALUATION, model_id)
    if record is not None and record.state == R.EVAL_REJECTED:
        return True, f"{model_id} is already rejected: {record.get('reason')}"
    why = f"rejected by an operator{': ' + reason if reason else ''}"
    return _operator_decision(ledger, model_id, record, R.EVAL_REJECTED, why)


def _operator_decision(ledger: Ledger, model_id: str, seen: Record | None, state: str, reason: str, **fields: Any) -> tuple[bool, str]:
    name, _, version = model_id.rpartition(":")
    if seen is None:
        created = ledger.create(R.EVALUATION, model_id, state, model_name=name, version=version, reason=reason,
                                decided_at=iso(utcnow()), decided_by=BY_OPERATOR, **fields)
        if created is None:
            return False, f"{model_id} was being evaluated meanwhile: run the command again"
        return True, f"{model_id}: {state} ({reason})"
    try:
        ledger.update(seen, state, reason=reason, decided_at=iso(utcnow()), decided_by=BY_OPERATOR, claim=None,
                      claimed_at=None, **fields)
    except ConflictError:
        return False, f"{model_id} changed meanwhile: run the command again"
    return True, f"{model_id}: {state} ({reason})"


def cli_decide(args: Any) -> int:
    """``python -m shared.cli promote NAME:VERSION [--force]`` / ``reject NAME:VERSION [--reason ...]``:
    0 done (or already so), 1 refused (the message says why)."""
    from shared.settings import get_settings

    s = get_settings()
    ledger = Ledger.from_settings(s)
    if ":" not in args.model or not args.model.rpartition(":")[2]:
        print(f"{args.model!r}: give the model as NAME:VERSION (see `python -m shared.cli status`)")
        return 1
    if args.command == "promote":
        ok, message = promote(s, ledger, args.model, force=args.force)
    else:
        ok, message = reject(s, ledger, args.model, reason=args.reason or "")
    print(message)
    return 0 if ok else 1


# --------------------------------------------------------------------------- views


def eval_counts(ledger: Ledger, collection: str, *, jobs: list[Record] | None = None,
                datasets: list[Record] | None = None) -> dict[str, Any]:
    """How many eval conversations the collection has and where from, read from the ledger only
    (the latest corpus job's counts, of them how many an earlier corpus held out too, and the
    golden datasets' valid counts)."""
    from shared.training.submission import dataset_collection

    jobs = ledger.list(R.JOB) if jobs is None else jobs
    datasets = ledger.list(R.DATASET, [R.DATASET_EVAL]) if datasets is None else datasets
    mine = sorted((j for j in jobs if j.get("collection") == collection and j.get("corpus_id")),
                  key=lambda j: j.get("submitted_at") or "")
    latest = mine[-1] if mine else None
    counts = (latest.get("corpus_counts") or {}) if latest is not None else {}
    carved, kept = int(counts.get("eval") or 0), int(counts.get("eval_kept") or 0)
    golden = sorted((d for d in datasets if d.state == R.DATASET_EVAL and dataset_collection(d) == collection),
                    key=lambda d: d.id)
    return {"carved": carved, "carved_from": latest.get("corpus_id") if latest is not None else None,
            "carved_kept": kept,  # of carved: held out by an earlier corpus too (shared.datasets.evalset)
            "golden": sum(int((d.get("counts") or {}).get("valid") or 0) for d in golden),
            "golden_datasets": [d.id for d in golden]}


def _brief(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {k: metrics[k] for k in ("items", "errors", "f1", "rouge_l", "bleu", "chrf", "judge_similarity",
                                    "judge_relevance", "mean_chars") if k in metrics}


def evaluation_view(settings: Settings, ledger: Ledger, collections: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per collection: eval counts and sources, and the last decision (candidate vs champion figures,
    state, reason, who decided): the view model of ``status`` and the dashboard."""
    records = ledger.list(R.EVALUATION)
    jobs, datasets = ledger.list(R.JOB), ledger.list(R.DATASET, [R.DATASET_EVAL])
    names = set(collections or []) | {r.get("collection") for r in records if r.get("collection")}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        mine = sorted((r for r in records if r.get("collection") == name), key=lambda r: r.updated_at)
        last = mine[-1] if mine else None
        decision = None
        if last is not None:
            metrics = last.get("metrics") or {}
            decision = {"model": last.id, "version": last.get("version"), "champion_version": last.get("champion_version"),
                        "state": last.state, "reason": last.get("reason"), "decided_by": last.get("decided_by"),
                        "decided_at": last.get("decided_at"), "report_blob": last.get("report_blob"),
                        "primary_metric": settings.eval_primary_metric,
                        "candidate": _brief(metrics.get(CANDIDATE)), "champion": _brief(metrics.get(CHAMPION)),
                        "answered": last.get("answered"), "wanted": last.get("wanted")}
        out[name] = {"eval_set": eval_counts(ledger, name, jobs=jobs, datasets=datasets), "last_decision": decision}
    return out
