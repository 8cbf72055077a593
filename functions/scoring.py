"""HTTP triggers for client apps: Azure ML's scoring contract and OpenAI-compatible chat completions.

Clients never see endpoint names, URIs or keys: the routes find the model's live endpoint.
Handlers only translate HTTP <-> :mod:`shared.scoring.scorer`; every refusal is a JSON error.

The handlers take and return FastAPI types (``azurefunctions-extensions-http-fastapi``): that is
how Azure Functions Python streams HTTP responses (``stream: true`` answers as server-sent
events), and once one function streams the whole app's HTTP triggers use these types (app
setting ``PYTHON_ENABLE_INIT_INDEXING=1``). The scoring work is blocking (pooled urllib3), so it
runs on a worker thread, never on the event loop; a client that goes away (or the worker's
cancellation when it does) aborts the upstream call at once (:mod:`shared.scoring.hangup`).

The official ``openai`` client works unchanged. It sends its ``api_key`` as
``Authorization: Bearer``, while Functions checks the function key in ``x-functions-key`` (or
``?code=``), so pass the function key as a default header::

    client = openai.OpenAI(base_url="http://127.0.0.1:7071/api/v1", api_key="unused",
                           default_headers={"x-functions-key": FUNCTION_KEY})
    client.chat.completions.create(model="<fine-tuned model name>", messages=[...])
    for chunk in client.chat.completions.create(model=..., messages=[...], stream=True): ...
"""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import orjson
from azurefunctions.extensions.http.fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from shared.observability import telemetry
from shared.scoring import scorer as scoring
from shared.scoring.answers import SSE_MEDIA_TYPE
from shared.scoring.contract import ScoringError, internal_error_body, read_request_body
from shared.scoring.hangup import Abort, RelayResponse, call_unless_gone
from shared.settings import get_settings

log = logging.getLogger(__name__)

bp = func.Blueprint()


def _json(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


async def _answer(req: Request, compute: Callable[[Abort], dict[str, Any] | Iterator[bytes]]) -> Response:
    abort = Abort()
    try:
        result = await call_unless_gone(req.receive, lambda: compute(abort), abort)
    except ScoringError as exc:
        return _json(exc.body(), exc.status, exc.headers())
    except Exception:
        # Full detail goes to the logs only: responses never carry stack traces, keys or URIs.
        log.exception("scoring failed unexpectedly")
        return _json(internal_error_body(), 500)
    if isinstance(result, dict):
        return _json(result)
    # Server-sent events; no proxy buffering, so each token reaches the client when it is made.
    return RelayResponse(result, abort, get_settings().scoring_stream_idle_s, media_type=SSE_MEDIA_TYPE,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _scoring_call(req: Request, name: str,
                        compute: Callable[[bytes, Abort], dict[str, Any] | Iterator[bytes]]) -> Response:
    """Read the body within its size limit (413 before an oversized body is read), then score it."""
    try:
        body = await read_request_body(req, get_settings())
    except ScoringError as exc:
        return _json(exc.body(), exc.status, exc.headers())
    with telemetry.scoring_span(name, body):
        return await _answer(req, lambda abort: compute(body, abort))


@bp.route(route="score", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def score(req: Request) -> Response:
    return await _scoring_call(req, "score", lambda body, abort: scoring.score(body, abort=abort))


@bp.route(route="v1/chat/completions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def chat_completions(req: Request) -> Response:
    return await _scoring_call(req, "chat_completions", lambda body, abort: scoring.chat_completion(body, abort=abort))


@bp.route(route="v1/models", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_models(req: Request) -> Response:
    try:
        return _json(await run_in_threadpool(scoring.list_models))
    except ScoringError as exc:
        return _json(exc.body(), exc.status, exc.headers())
    except Exception:
        log.exception("listing models failed unexpectedly")
        return _json(internal_error_body(), 500)
