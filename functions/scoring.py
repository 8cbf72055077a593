"""HTTP triggers for client apps: Azure ML's scoring contract and OpenAI-compatible chat completions.

Clients never see endpoint names, URIs or keys: the routes find the model's live endpoint.
Handlers only translate HTTP <-> :mod:`shared.scoring.scorer`; every refusal is a JSON error.

The official ``openai`` client works unchanged. It sends its ``api_key`` as
``Authorization: Bearer``, while Functions checks the function key in ``x-functions-key`` (or
``?code=``), so pass the function key as a default header::

    client = openai.OpenAI(base_url="http://127.0.0.1:7071/api/v1", api_key="unused",
                           default_headers={"x-functions-key": FUNCTION_KEY})
    client.chat.completions.create(model="<fine-tuned model name>", messages=[...])
"""

import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func
import orjson

from shared.observability import telemetry
from shared.scoring import scorer as scoring
from shared.scoring.contract import ScoringError, internal_error_body

log = logging.getLogger(__name__)

bp = func.Blueprint()


def _json(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(orjson.dumps(payload), status_code=status, headers=headers, mimetype="application/json")


def _answer(compute: Callable[[], dict[str, Any]]) -> func.HttpResponse:
    try:
        return _json(compute())
    except ScoringError as exc:
        return _json(exc.body(), exc.status, exc.headers())
    except Exception:
        # Full detail goes to the logs only: responses never carry stack traces, keys or URIs.
        log.exception("scoring failed unexpectedly")
        return _json(internal_error_body(), 500)


@bp.route(route="score", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def score(req: func.HttpRequest) -> func.HttpResponse:
    with telemetry.scoring_span("score", req.get_body()):
        return _answer(lambda: scoring.score(req.get_body()))


@bp.route(route="v1/chat/completions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def chat_completions(req: func.HttpRequest) -> func.HttpResponse:
    with telemetry.scoring_span("chat_completions", req.get_body()):
        return _answer(lambda: scoring.chat_completion(req.get_body()))


@bp.route(route="v1/models", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_models(req: func.HttpRequest) -> func.HttpResponse:
    return _answer(scoring.list_models)
