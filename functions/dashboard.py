"""HTTP triggers: the lifecycle dashboard (HTML, or JSON with ``?format=json``) and a dataset's report.

FUNCTION auth like the other routes: open ``/api/dashboard?code=<function key>``; the page's
links and its auto-refresh carry the key on. ``?refresh=N`` sets the refresh interval
(seconds, 2 to 3600; 0 turns it off).

FastAPI request/response types, like every HTTP function of this app: once one function streams
(``chat_completions``), Azure Functions serves the whole app's HTTP triggers as HTTP streams.
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from shared.observability import dashboard as view

bp = func.Blueprint()


def _refresh(req: Request) -> int | None:
    raw = req.query_params.get("refresh")
    if raw is None or not raw.strip().isdigit():
        return view.DEFAULT_REFRESH_S
    value = int(raw)
    return None if value == 0 else min(max(value, 2), 3600)


def _answer(page: view.Page) -> Response:
    media_type = page.mimetype if "charset" in page.mimetype else f"{page.mimetype}; charset=utf-8"
    body = page.body.encode("utf-8") if isinstance(page.body, str) else page.body
    return Response(body, status_code=page.status, media_type=media_type, headers={"Cache-Control": "no-store"})


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def dashboard(req: Request) -> Response:
    params = req.query_params
    page = await run_in_threadpool(view.dashboard_page, code=params.get("code"), refresh_s=_refresh(req),
                                   as_json=params.get("format") == "json")
    return _answer(page)


@bp.route(route="dashboard/report", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def dashboard_report(req: Request) -> Response:
    params = req.query_params
    page = await run_in_threadpool(view.report_page, params.get("dataset") or "", code=params.get("code"))
    return _answer(page)
