"""The promotion rule, written to be read.

A candidate is promoted only when

1. it keeps every rule of its collection (``EVAL_RULES``), and
2. against a champion: its primary metric (``EVAL_PRIMARY_METRIC``) is not below the champion's
   by more than ``EVAL_MARGIN``;
   the first version of a collection (no champion): every floor of ``EVAL_FLOORS`` is met.

A rejection names every reason that holds (each broken rule, and the metric when it is worse
too), so a report says whether the rule or the metric or both rejected a candidate.

An empty eval set (no carved and no golden conversations) cannot judge anything: the candidate is
promoted and the reason says it went unjudged (the canary still guards it).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, rules: dict[str, dict[str, Any]], *,
           primary: str, margin: float, floors: dict[str, float]) -> Decision:
    """``candidate`` / ``champion``: the aggregates of :func:`shared.evaluation.metrics.aggregate`;
    ``rules``: :func:`shared.evaluation.rules.check_rules` of the candidate's answers."""
    if not candidate.get("items"):
        return Decision(True, "no evaluation conversations: nothing to judge on (promoted unjudged)")
    broken = [(name, r) for name, r in rules.items() if not r["passed"]]
    problems = [f"rule {name!r} kept by {r['kept']}/{r['total']} answers (needs {r['min_pass_rate']:.0%}; "
                f"e.g. {', '.join(x[:12] for x in r['failures'][:3])})" for name, r in broken]
    kept = f"all {len(rules)} rules kept; " if rules else ""
    if champion is None:
        missing = [m for m in floors if candidate.get(m) is None]
        if missing:
            return Decision(False, "rejected: " + "; ".join(
                [*problems, f"first version, but metric(s) {missing} of EVAL_FLOORS were not measured"]))
        below = [f"{m} {_fmt(candidate[m])} < floor {_fmt(f)}" for m, f in floors.items() if candidate[m] < f]
        if below:
            problems.append("first version below the floors: " + ", ".join(below))
        if problems:
            return Decision(False, "rejected: " + "; ".join(problems))
        met = ", ".join(f"{m} {_fmt(candidate[m])} >= {_fmt(f)}" for m, f in floors.items()) or "no floors set"
        return Decision(True, f"promoted: {kept}first version meets the floors ({met})")
    ours, theirs = candidate.get(primary), champion.get(primary)
    if ours is None or theirs is None:
        return Decision(False, "rejected: " + "; ".join([*problems, f"primary metric {primary!r} not measured for the "
                                                                    f"{'candidate' if ours is None else 'champion'}"]))
    delta = ours - theirs
    figures = f"{primary} {_fmt(ours)} vs champion {_fmt(theirs)} ({delta:+.4f}, margin {margin:.4f})"
    if delta < -margin - 1e-9:  # (float noise: 0.38 - 0.40 is -0.020000000000000018)
        problems.append(f"worse than the champion beyond the margin: {figures}")
    if problems:  # every reason is named: a broken rule does not hide the metric (nor the other way round)
        return Decision(False, "rejected: " + "; ".join(problems))
    return Decision(True, f"promoted: {kept}not worse than the champion beyond the margin: {figures}")
