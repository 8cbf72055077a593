"""HTTP triggers: the lifecycle dashboard (HTML, or JSON with ``?format=json``) and a dataset's report.

FUNCTION auth like the other routes: open ``/api/dashboard?code=<function key>``; the page's
links and its auto-refresh carry the key on. ``?refresh=N`` sets the refresh interval
(seconds, 2 to 3600; 0 turns it off).
"""

import azure.functions as func

from shared.observability import dashboard as view

bp = func.Blueprint()


def _refresh(req: func.HttpRequest) -> int | None:
    raw = req.params.get("refresh")
    if raw is None or not raw.strip().isdigit():
        return view.DEFAULT_REFRESH_S
    value = int(raw)
    return None if value == 0 else min(max(value, 2), 3600)


def _answer(page: view.Page) -> func.HttpResponse:
    headers = {"Cache-Control": "no-store"}
    return func.HttpResponse(page.body, status_code=page.status, mimetype=page.mimetype, charset="utf-8", headers=headers)


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    return _answer(view.dashboard_page(code=req.params.get("code"), refresh_s=_refresh(req),
                                       as_json=req.params.get("format") == "json"))


@bp.route(route="dashboard/report", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard_report(req: func.HttpRequest) -> func.HttpResponse:
    return _answer(view.report_page(req.params.get("dataset") or "", code=req.params.get("code")))
