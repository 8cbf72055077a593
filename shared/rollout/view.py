"""What ``status`` and the dashboard show of rollouts: per collection, champion against candidate
(the evaluation's metrics), the canary's live figures, and the decision with its reason."""

from __future__ import annotations

from typing import Any

from shared.ledger import Ledger
from shared.ledger import records as R

SHOWN = 20  # most recent rollouts


def rollout_items(ledger: Ledger) -> list[dict[str, Any]]:
    records = sorted(ledger.list(R.ROLLOUT), key=lambda r: r.updated_at or "", reverse=True)[:SHOWN]
    items = []
    for r in records:
        verdict = r.get("verdict") or {}
        metrics = verdict.get("metrics") or {}
        canary = r.get("canary") or {}
        items.append({
            "id": r.id, "state": r.state, "model_name": r.get("model_name"), "version": r.get("version"),
            "collection": r.get("collection"), "endpoint": r.get("endpoint"), "deployment": r.get("deployment"),
            "champion_version": r.get("champion_version"), "champion_deployment": r.get("champion_deployment"),
            "evaluation": {"promote": verdict.get("promote"), "reason": verdict.get("reason"),
                           "candidate": metrics.get("candidate"), "champion": metrics.get("champion"),
                           "report_blob": verdict.get("report_blob")} if verdict else None,
            "evaluation_note": r.get("evaluation_note"),
            "canary": ({"percent": canary.get("percent"), "started_at": canary.get("started_at"),
                        "until": canary.get("until"), "figures": canary.get("figures")} if canary else None),
            "reason": r.get("reason"), "started_at": r.get("started_at"), "decided_at": r.get("decided_at"),
            "deleted_deployment": r.get("deleted_deployment"),
        })
    return items


def canary_text(item: dict[str, Any]) -> str:
    """``10% until 12:04:05Z`` while the canary runs, ``10%, 12:00:05Z-12:03:41Z`` once decided, ``-`` without one."""
    canary = item.get("canary") or {}
    if not canary:
        return "-"
    def hms(value: Any) -> str:
        return str(value or "")[11:19] + "Z" if value else "?"
    if item.get("state") == R.ROLLOUT_CANARY:
        return f"{canary.get('percent')}% until {hms(canary.get('until'))}"
    return f"{canary.get('percent')}%, {hms(canary.get('started_at'))}-{hms(item.get('decided_at'))}"


def figures_text(figures: dict[str, Any] | None, role: str) -> str:
    f = (figures or {}).get(role) or {}
    if not f:
        return "-"
    rate = f.get("error_rate")
    p95 = f.get("p95_ms")
    return (f"{f.get('requests', 0)} req, {f.get('errors', 0)} err"
            + (f" ({rate:.0%})" if rate is not None else "") + (f", p95 {p95:.0f} ms" if p95 is not None else ""))


def metrics_text(values: dict[str, Any] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, int | float) else f"{k} {v}" for k, v in sorted(values.items())
                     if not isinstance(v, dict | list))[:120]
