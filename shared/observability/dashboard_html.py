"""The dashboard's pages as HTML: Jinja2 templates (``templates/`` beside this module), autoescaped.

Every value of the view model is escaped where a template prints it; only the charts
(:mod:`shared.observability.charts`, which escape their own labels) and the templates' own
macros are inserted as markup. The page needs no JavaScript (``<meta http-equiv=refresh>``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup

from shared.ledger import iso, parse_iso, utcnow
from shared.observability import charts
from shared.rollout.view import canary_text, figures_text, metrics_text

DEFAULT_REFRESH_S = 15
# Per model, the latest chains are drawn in full (curves, lines); older ones are one table row each.
CHAINS_DRAWN = 8
QUALITY_KINDS = ("personal_data", "secrets", "special_tokens", "near_duplicates", "leaks")
COUNT_KINDS = ("lines", "valid", "invalid", "duplicates", "train", "test")
REPORT_SHOWN_CHARS = 200_000

Link = Callable[[str, dict[str, str]], str]


def _defined(fn: Callable[[Any], str]) -> Callable[[Any], str]:
    """A filter that reads a missing field (Jinja's Undefined) as None, as ``dict.get`` would."""

    @functools.wraps(fn)
    def filter_(value: Any) -> str:
        return fn(None if isinstance(value, Undefined) else value)

    return filter_


@_defined
def when(value: str | None) -> str:
    dt = parse_iso(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


@_defined
def duration(minutes: float | None) -> str:
    if minutes is None:
        return "-"
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 60:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


@_defined
def money(value: Any) -> str:
    return "-" if value is None else f"${float(value):,.2f}"


@_defined
def fixed(value: Any) -> str:
    """Hours and the like: two decimals, a missing value as 0."""
    return f"{float(value or 0):.2f}"


def loss(value: float) -> str:
    return f"{value:.3f}"


def count_text(counts: dict[str, Any]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in COUNT_KINDS if k in counts)


def quality_text(quality: dict[str, Any]) -> str:
    return ", ".join(f"{quality.get(k) or 0} {k.replace('_', ' ')}" for k in QUALITY_KINDS)


def quality_found(quality: dict[str, Any]) -> bool:
    return any(quality.get(k) for k in QUALITY_KINDS)


def final_metrics(job: dict[str, Any]) -> dict[str, Any]:
    """A job's recorded metrics, overridden by its curve's final figures."""
    return {**(job.get("metrics") or {}), **((job.get("curve") or {}).get("final") or {})}


def loss_chart(job: dict[str, Any]) -> Markup:
    curve = job["curve"]
    series = {k: [(float(x), float(y)) for x, y in pts] for k, pts in curve["series"].items() if k in ("train_loss", "eval_loss")}
    final = {**job.get("metrics", {}), **curve["final"]}
    markers = {"base test loss": final.get("base_test_loss"), "fine-tuned test loss": final.get("test_loss")}
    return Markup(charts.line_chart(series, title=f"loss of {job['id']}", markers=markers))  # charts escape their own text


def usage_chart(usage: dict[str, Any]) -> Markup:
    start, end = parse_iso(usage["start"]), parse_iso(usage["end"])
    rows = [{"name": r["name"], "hours": {parse_iso(h): n for h, n in r["hours"].items()},
             "alive": [(parse_iso(a), parse_iso(b)) for a, b in r["alive"]],
             "deleted": [(parse_iso(at), label) for at, label in r["deleted"]]} for r in usage["rows"]]
    return Markup(charts.usage_timeline(rows, start=start, end=end,  # type: ignore[arg-type]
                                        title="Endpoint requests per hour and janitor deletions"))


def environment(autoescape: bool = True) -> Environment:
    """The templates' environment; ``autoescape`` is a parameter only so a test can show what it guards."""
    env = Environment(loader=PackageLoader("shared.observability", "templates"),
                      autoescape=select_autoescape(["html"], default_for_string=True) if autoescape else False)
    env.filters.update(when=when, duration=duration, money=money, fixed=fixed, loss=loss)
    env.globals.update(nan=float("nan"), count_text=count_text, quality_text=quality_text, quality_found=quality_found,
                       final_metrics=final_metrics, loss_chart=loss_chart, usage_chart=usage_chart,
                       metrics_text=metrics_text, canary_text=canary_text, figures_text=figures_text)
    return env


ENV = environment()


def _refresh_url(link: Link, refresh_s: int | None) -> str:
    return link("dashboard", {"refresh": str(refresh_s)} if refresh_s else {})


def render_dashboard(view: dict[str, Any], *, link: Link, refresh_s: int | None = DEFAULT_REFRESH_S) -> str:
    return ENV.get_template("dashboard.html").render(
        view=view, link=link, chains_drawn=CHAINS_DRAWN, title="lifecycle dashboard", refresh_s=refresh_s,
        refresh_url=_refresh_url(link, refresh_s), generated=view["generated_at"])


def render_unavailable(error: str, *, link: Link, refresh_s: int | None = DEFAULT_REFRESH_S) -> str:
    return ENV.get_template("unavailable.html").render(
        error=error, title="storage unreachable", refresh_s=refresh_s, refresh_url=_refresh_url(link, refresh_s),
        generated=iso(utcnow()) or "")


def render_report(dataset_id: str, report: dict[str, Any] | None, *, link: Link) -> str:
    shown = json.dumps(report, indent=2)[:REPORT_SHOWN_CHARS] if report is not None else ""
    return ENV.get_template("report.html").render(
        dataset_id=dataset_id, report=report, report_json=shown, link=link, title=f"report of {dataset_id}",
        refresh_s=None, refresh_url=None, generated=iso(utcnow()) or "")
