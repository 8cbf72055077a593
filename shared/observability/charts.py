"""Inline SVG charts for the dashboard: no JavaScript, no library, readable without colour.

Every chart is a self-contained ``<svg>`` string with a ``<title>`` (screen readers, hover) and
text labels for its axes; numbers are escaped and formatted here, never by the browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

# Colours with enough contrast on white; series are also told apart by dash pattern and legend.
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2")


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def line_chart(series: dict[str, Sequence[tuple[float, float]]], *, title: str, x_label: str = "step",
               y_label: str = "loss", markers: dict[str, float] | None = None, width: int = 420, height: int = 180) -> str:
    """Lines (x, y) per named series, plus horizontal reference lines (``markers``: label -> y).

    An empty chart (no point at all) says so in words instead of drawing empty axes.
    """
    markers = {k: v for k, v in (markers or {}).items() if v is not None}
    points = [p for pts in series.values() for p in pts]
    if not points and not markers:
        return (f'<svg class="chart empty" role="img" width="{width}" height="40" viewBox="0 0 {width} 40">'
                f'<title>{escape(title)}: no data yet</title>'
                f'<text x="8" y="24" font-size="12" fill="#57606a">{escape(title)}: no data yet</text></svg>')
    left, right, top, bottom = 48, 12, 22, 34
    pw, ph = width - left - right, height - top - bottom
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] + list(markers.values())
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.08
    y0, y1 = max(y0 - pad, 0.0) if y0 >= 0 else y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="system-ui, sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>',
           f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#d0d7de"/>']
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" fill="#57606a">{_fmt(yv)}</text>')
    for xv in (x0, x1):
        out.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#57606a">{_fmt(xv)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#57606a">{escape(x_label)}</text>')
    out.append(f'<text x="10" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#57606a" '
               f'transform="rotate(-90 10 {top + ph / 2:.1f})">{escape(y_label)}</text>')
    legend_x = left + 4
    for i, (name, pts) in enumerate(series.items()):
        colour, dash = COLOURS[i % len(COLOURS)], DASHES[i % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle class="series" data-series="{escape(name)}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        elif pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline class="series" data-series="{escape(name)}" points="{path}" fill="none" '
                       f'stroke="{colour}" stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{legend_x}" y="{top + 12 + 12 * i}" fill="{colour}">{escape(name)}</text>')
    for j, (name, yv) in enumerate(markers.items()):
        colour = COLOURS[(len(series) + j) % len(COLOURS)]
        out.append(f'<line class="marker" data-marker="{escape(name)}" x1="{left}" x2="{left + pw}" y1="{sy(yv):.1f}" '
                   f'y2="{sy(yv):.1f}" stroke="{colour}" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{left + pw - 4}" y="{sy(yv) - 3:.1f}" text-anchor="end" fill="{colour}">'
                   f'{escape(name)} {_fmt(yv)}</text>')
    out.append("</svg>")
    return "".join(out)


def usage_timeline(rows: Sequence[dict], *, start: datetime, end: datetime, title: str, width: int = 1300) -> str:
    """Requests per hour of each endpoint on one time axis, with its lifetime and the janitor's deletions.

    ``rows``: dicts with ``name``, ``hours`` ({datetime of the hour: requests}), ``alive`` (list of
    (from, to) datetimes the endpoint existed), ``deleted`` (list of (datetime, label)).
    """
    left, right, top, row_h, axis_h = 170, 16, 24, 30, 26
    height = top + row_h * max(len(rows), 1) + axis_h
    pw = width - left - right
    span = max((end - start).total_seconds(), 1.0)

    def sx(t: datetime) -> float:
        return left + min(max((t - start).total_seconds() / span, 0.0), 1.0) * pw

    peak = max([n for r in rows for n in r["hours"].values()] + [1])
    hour_w = max(pw * 3600 / span - 1, 1.0)
    out = [f'<svg class="chart timeline" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="system-ui, sans-serif" font-size="11">', f'<title>{escape(title)}</title>',
           f'<text x="4" y="14" font-size="12" font-weight="600">{escape(title)}</text>']
    if not rows:
        out.append(f'<text x="{left}" y="{top + 18}" fill="#57606a">no endpoints in this period</text>')
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">{escape(row["name"][:26])}</text>')
        for a, b in row["alive"]:
            x_a, x_b = sx(a), sx(b)
            if x_b > x_a:
                out.append(f'<rect class="alive" x="{x_a:.1f}" y="{y + row_h - 8}" width="{x_b - x_a:.1f}" height="4" fill="#d0d7de">'
                           f'<title>up {escape(a.strftime("%m-%d %H:%M"))} to {escape(b.strftime("%m-%d %H:%M"))}</title></rect>')
        for hour, n in sorted(row["hours"].items()):
            if n <= 0 or hour + timedelta(hours=1) < start or hour > end:
                continue
            h = max((row_h - 10) * n / peak, 1.5)
            out.append(f'<rect class="requests" x="{sx(hour):.1f}" y="{y + row_h - 8 - h:.1f}" width="{hour_w:.1f}" '
                       f'height="{h:.1f}" fill="#1f6feb"><title>{escape(hour.strftime("%m-%d %H:00"))}: {n} requests</title></rect>')
        for at, label in row["deleted"]:
            x = sx(at)
            out.append(f'<path class="deletion" d="M{x:.1f},{y + 4} l5,8 l-10,0 z" fill="#d1242f"><title>{escape(label)}</title></path>')
    axis_y = top + row_h * max(len(rows), 1) + 4
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{axis_y}" y2="{axis_y}" stroke="#8c959f"/>')
    ticks = 6
    for k in range(ticks + 1):
        t = start + (end - start) * k / ticks
        anchor = "start" if k == 0 else "end" if k == ticks else "middle"
        out.append(f'<text x="{sx(t):.1f}" y="{axis_y + 14}" text-anchor="{anchor}" fill="#57606a">'
                   f'{escape(t.strftime("%m-%d %H:%M"))}</text>')
    out.append(f'<text x="{left + pw}" y="14" text-anchor="end" fill="#57606a">bars: requests/hour (peak {peak}); '
               f'grey: endpoint up; red: deleted by the janitor</text>')
    out.append("</svg>")
    return "".join(out)
