"""The human form of ``status``: :func:`render_status` turns :func:`shared.observability.status.collect_status`'s
JSON into the tables ``python -m shared.cli status`` prints (datasets, jobs, models, endpoints,
rollouts, collections, evaluation, the janitor's last run, stalled triggers)."""

from __future__ import annotations

from typing import Any

from shared.ledger import parse_iso
from shared.rollout.view import canary_text, figures_text, metrics_text


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        scalars = [f"{k}={v}" for k, v in value.items() if isinstance(v, int | float | str)]
        return " ".join(scalars[:4]) or "-"
    return str(value)


def _duration(minutes: float | None) -> str:
    if minutes is None:
        return "-"
    if minutes < 60:
        return f"{minutes:.0f}m"
    hours, mins = divmod(int(minutes), 60)
    return f"{hours}h{mins:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _short_time(value: str | None) -> str:
    dt = parse_iso(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell, so the output reads as a table in any terminal."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _section(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    body = format_table(headers, rows) if rows else "  (none)"
    return f"{title} ({len(rows)})\n{body}"


def _split_counts(counts: dict[str, Any] | None) -> str | None:
    if not counts or counts.get("valid") is None:
        return None
    return f"{counts.get('valid')}/{counts.get('train', '-')}/{counts.get('test', '-')}"


def _progress_cell(progress: dict[str, Any] | None) -> str | None:
    if not progress:
        return None
    total = f"/{progress['total_steps']}" if progress.get("total_steps") else ""
    text = f"step {progress['step']}{total}"
    if progress.get("loss") is not None:
        text += f" loss {progress['loss']:.3f}"
    if progress.get("eta_s") is not None:
        minutes, seconds = divmod(int(progress["eta_s"]), 60)
        text += f" ETA {minutes}m{seconds:02d}s" if minutes else f" ETA {seconds}s"
    return text


def _quality_cell(quality: dict[str, Any] | None) -> str:
    """``pii 2 secrets 1 tokens 0 near-dup 3 leaks 0`` (the data quality gate's counts)."""
    if not quality:
        return "-"
    short = (("personal_data", "pii"), ("secrets", "secrets"), ("special_tokens", "tokens"),
             ("near_duplicates", "near-dup"), ("leaks", "leaks"))
    return " ".join(f"{label} {quality.get(key) or 0}" for key, label in short)


def render_status(status: dict[str, Any]) -> str:
    parts = []
    backend = status["backend"]
    if not backend["reachable"]:
        parts.append(f"note: backend {backend['name']!r} unreachable ({backend['error']}); showing the ledger only")
    parts.append(_section("Datasets", ["id", "state", "valid/train/test", "invalid", "quality", "job", "updated", "error"], [
        [d["id"], d["state"], _split_counts(d["counts"]), (d["counts"] or {}).get("invalid"), _quality_cell(d.get("quality")),
         d["job_name"], _short_time(d["updated_at"]), d["error"]] for d in status["datasets"]]))
    parts.append(_section("Jobs", ["id", "state", "progress", "dataset", "model", "updated", "error"], [
        [j["id"], j["state"], _progress_cell(j.get("progress")), j["dataset_id"], j["model"] or j["model_name"],
         _short_time(j["updated_at"]), j["error"]]
        for j in status["jobs"]]))
    parts.append(_section("Models", ["id", "state", "job", "endpoint", "serving", "error"], [
        [m["id"], m["state"], m["job_name"], m["endpoint"], m["serving"], m["error"]] for m in status["models"]]))
    parts.append(_section("Endpoints", ["name", "state", "backend", "model", "active", "last activity", "idle", "janitor"], [
        [e["name"], e["state"], e["backend_state"], e["model"], e["active"], _short_time(e["last_activity"]),
         _duration(e["idle_minutes"]),
         (e["janitor_verdict"] or {}).get("action") or (e["delete_reason"] and f"deleted: {e['delete_reason']}")]
        for e in status["endpoints"]]))
    parts.append(_render_collections(status))
    if status.get("rollouts"):
        parts.append(_section("Rollouts (candidate beside the champion)", [
            "candidate", "state", "champion", "evaluation: candidate | champion", "canary: candidate | champion", "decision"], [
            [r["id"], r["state"], r["champion_version"],
             (metrics_text((r["evaluation"] or {}).get("candidate")) + " | " + metrics_text((r["evaluation"] or {}).get("champion")))
             if r["evaluation"] else r.get("evaluation_note"),
             (f"{canary_text(r)}: " + figures_text((r["canary"] or {}).get("figures"), "candidate") + " | "
              + figures_text((r["canary"] or {}).get("figures"), "champion")) if r["canary"] else None,
             r["reason"]] for r in status["rollouts"]]))
    evaluation = _render_evaluation(status)
    if evaluation:
        parts.append(evaluation)
    unwell = [e for e in status["endpoints"] if e.get("health") in {"healing", "stopped", "suspect"}]
    if unwell:
        parts.append(_section("Unhealthy endpoints", ["name", "health", "state", "attempts", "next attempt", "since", "reason"], [
            [e["name"], e["health"], e["state"], e.get("heal_attempts") or 0, _short_time(e.get("heal_next_at")),
             _short_time(e.get("unhealthy_since")),
             e.get("heal_stopped_reason") or e.get("unhealthy_reason") or e.get("error")]
            for e in unwell]))
    for t in status.get("triggers") or []:
        parts.append(f"BLOB TRIGGER {str(t.get('state', '')).upper()}: {t.get('function')} on {t.get('container')} "
                     f"(host {t.get('host_id')}, since {_short_time(t.get('since'))}, reported {_short_time(t.get('updated_at'))})\n"
                     f"  {t.get('reason')}\n  fix: {t.get('fix')}")
    janitor = status["janitor"]
    policy = janitor["policy"]
    line = (f"Janitor: idle threshold {policy['idle_minutes']:g} min, grace {policy['grace_minutes']:g} min, "
            f"keep_latest {_cell(policy['keep_latest'])}, dry run {_cell(policy['dry_run'])}, schedule {policy['schedule']!r}")
    last = janitor["last"]
    if last is None:
        line += "\n  last run: never"
    else:
        line += f"\n  last run: {_short_time(last.get('ran_at'))} ({last.get('state')})"
        if last.get("error"):
            line += f" error: {last['error']}"
        else:
            verb = "would delete" if last.get("dry_run") else "deleted"
            chosen = last.get("would_delete") if last.get("dry_run") else last.get("deleted")
            failed = [f["name"] for f in last.get("failed") or []]
            line += (f": {verb} {_cell(', '.join(chosen or []))}; failed {_cell(', '.join(failed))}; "
                     f"unknown {_cell(', '.join(last.get('unknown') or []))}; "
                     f"estimated {last.get('hours_saved') or 0:.1f} instance-hours, ${last.get('cost_saved') or 0:.2f} saved")
    parts.append(line)
    return "\n\n".join(parts)



def _render_evaluation(status: dict[str, Any]) -> str:
    lines = []
    for c in status.get("collections") or []:
        view = c.get("evaluation") or {}
        counts = view.get("eval_set") or {}
        line = (f"  {c['id']}: eval set {counts.get('carved', 0)} carved"
                + (f" (corpus {counts['carved_from']})" if counts.get("carved_from") else "")
                + f" + {counts.get('golden', 0)} golden"
                + (f" ({', '.join(counts['golden_datasets'])})" if counts.get("golden_datasets") else ""))
        last = view.get("last_decision")
        if last:
            primary = last.get("primary_metric")
            figures = "".join(f", {who} {primary} {(last.get(who) or {}).get(primary):.3f}"
                              for who in ("candidate", "champion") if (last.get(who) or {}).get(primary) is not None)
            line += (f"\n    last decision: {last['model']} {last['state']}"
                     + (f" by {last['decided_by']}" if last.get("decided_by") else "") + f"{figures}: {last.get('reason')}")
        lines.append(line)
    return "Evaluation\n" + "\n".join(lines) if lines else ""


def _render_collections(status: dict[str, Any]) -> str:
    training = status.get("training") or {}
    guard = training.get("guard") or {}
    budget = guard.get("budget_usd")
    head = (f"Training: mode {training.get('mode')}, coalesce {training.get('coalesce_seconds')} s; "
            f"running jobs {guard.get('running_jobs')} (max {guard.get('max_running_jobs') or 'no limit'}); "
            f"spent ${guard.get('spent_usd') or 0:.2f} in {guard.get('month')}"
            + (f" of ${budget:.2f}" if budget is not None else " (no budget)"))
    table = _section("Collections", ["collection", "state", "model", "datasets", "pending", "due", "running job", "serving", "waiting"], [
        [c["id"], c["state"], c["model_name"], len(c["datasets"]), ", ".join(c["pending"]) or "-", _short_time(c["due_at"]),
         c["running_job"], c["serving_model"] or c["serving_endpoint"], c["held_reason"] or c["waiting_reason"]]
        for c in status.get("collections") or []])
    return f"{head}\n{table}"

