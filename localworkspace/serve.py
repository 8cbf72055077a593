"""A local online endpoint: MLflow's own scoring server app plus Azure ML's scoring contract.

``python -m localworkspace.serve --model-uri models:/NAME/VERSION --tracking-uri URI --port P
--activity-file F [--host 127.0.0.1] [--deployment default]``; the key comes from the
environment variable ``LOCAL_ENDPOINT_KEY`` (never the command line, which ``ps`` shows).

Routes: ``/ping`` and ``/health`` (open; the workspace's health check), ``/invocations``
(MLflow's contract), ``POST /score`` (Azure ML's contract: ``{"input_data": {"input_string":
[messages], "parameters": {...}}, "params": {}}`` -> ``{"output": ..., "finish_reason": ...,
"usage": {...}}``; with ``Accept: text/event-stream`` the answer is server-sent events, one
``{"output": "<new text>"}`` per decoded token as it is generated, a last one with
``finish_reason`` and ``usage``, then ``[DONE]``). Everything but the health routes needs ``Authorization: Bearer <key>``.
Each scoring request writes the time to the activity file: the endpoint's own activity metric.

A client that disconnects stops its generation (as vLLM aborts a request whose client left): a
stopping criterion checked at every token step sees the request's stop flag, which the
disconnect sets (:mod:`localworkspace.disconnect`); a request still waiting for the model when
its client left never starts generating.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the route's annotations here

log = logging.getLogger("localworkspace.serve")

KEY_ENV = "LOCAL_ENDPOINT_KEY"
OPEN_PATHS = frozenset({"/ping", "/health"})
DEFAULT_MAX_NEW_TOKENS = 256
STREAM_TOKEN_TIMEOUT_S = 120.0  # longest wait for the next token (another request may hold the model)
LOCK_POLL_S = 0.05  # a request waiting for the model checks this often whether its client left


class ScoreRequestError(ValueError):
    """The /score body does not follow the contract."""


def chat_request_from_azure(body: Any, max_new_tokens_cap: int = 1024) -> dict[str, Any]:
    """Azure ML scoring body -> the MLflow chat model's input (messages + OpenAI-style params)."""
    if not isinstance(body, dict) or not isinstance(body.get("input_data"), dict):
        raise ScoreRequestError("body must be a JSON object with an 'input_data' object")
    input_data = body["input_data"]
    messages = input_data.get("input_string")
    if not isinstance(messages, list) or not messages:
        raise ScoreRequestError("input_data.input_string must be a non-empty list of chat messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ScoreRequestError("every message needs string 'role' and 'content'")
        if m["role"] not in {"system", "user", "assistant"}:
            raise ScoreRequestError(f"unknown role {m['role']!r}")
    params = input_data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ScoreRequestError("input_data.parameters must be an object")
    try:
        max_new_tokens = int(params.get("max_new_tokens", params.get("max_tokens", DEFAULT_MAX_NEW_TOKENS)))
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
    except (TypeError, ValueError):
        raise ScoreRequestError("max_new_tokens, temperature and top_p must be numbers") from None
    if not 1 <= max_new_tokens <= max_new_tokens_cap:
        raise ScoreRequestError(f"max_new_tokens must be between 1 and {max_new_tokens_cap}")
    do_sample = params.get("do_sample")
    do_sample = bool(do_sample) if do_sample is not None else temperature > 0 and "temperature" in params
    request: dict[str, Any] = {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_new_tokens,
    }
    generation: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        # transformers rejects temperature 0 when sampling; greedy is what 0 means.
        generation["temperature"] = max(temperature, 1e-3)
        generation["top_p"] = min(max(top_p, 1e-3), 1.0)
    return {"data": request, "generation": generation}


def azure_response(completion: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style chat.completion -> Azure ML's ``{"output": ...}`` (+ finish_reason, usage)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return {
        "output": message.get("content", ""),
        "finish_reason": choice.get("finish_reason"),
        "usage": completion.get("usage") or {},
    }


class Stopped(Exception):
    """The request's client left before its generation started."""


def stop_when(stop: threading.Event) -> Any:
    """A transformers stopping criterion: every sequence is done once ``stop`` is set (checked
    after each token step, so an abandoned request costs at most one more step)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


class ChatScorer:
    """Runs the chat model; one generation at a time (two would only thrash the CPU)."""

    def __init__(self, pyfunc_model: Any) -> None:
        self.pyfunc_model = pyfunc_model
        self._lock = threading.Lock()

    def complete(self, data: dict[str, Any], generation: dict[str, Any],
                 stop: threading.Event | None = None) -> dict[str, Any]:
        """One generation; ``stop`` set (the client left) ends it after the current token step,
        or before it starts while it waits for the model (:class:`Stopped`)."""
        # The transformers flavor's own predict takes generation kwargs (do_sample, top_p, ...)
        # as params and hands them to the pipeline; the pyfunc wrapper would drop params the
        # chat signature does not declare.
        impl = self.pyfunc_model._model_impl
        params = dict(generation)
        if stop is not None:
            params["stopping_criteria"] = stop_when(stop)
            while not self._lock.acquire(timeout=LOCK_POLL_S):
                if stop.is_set():
                    raise Stopped()
        else:
            self._lock.acquire()
        try:
            if stop is not None and stop.is_set():
                raise Stopped()
            result = impl.predict(dict(data), params=params)
        finally:
            self._lock.release()
        return result[0] if isinstance(result, list) else result

    def stream(self, data: dict[str, Any], generation: dict[str, Any],
               stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """The same generation, piece by piece: transformers' TextIteratorStreamer gets each token
        as ``generate`` makes it (generation runs on its own thread); the last piece carries the
        finish reason and usage of the whole completion."""
        from transformers import TextIteratorStreamer

        impl = self.pyfunc_model._model_impl
        streamer = TextIteratorStreamer(impl.pipeline.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=STREAM_TOKEN_TIMEOUT_S)
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                outcome["completion"] = self.complete(data, {**generation, "streamer": streamer}, stop)
            except Exception as exc:  # noqa: BLE001 - reported to the client as the stream's end
                outcome["error"] = exc
                streamer.end()

        worker = threading.Thread(target=generate, name="generate-stream", daemon=True)
        worker.start()
        for text in streamer:
            if text:
                yield {"output": text}
        worker.join()
        if isinstance(outcome.get("error"), Stopped):
            raise outcome["error"]
        if "error" in outcome:
            log.error("generation failed: %s", outcome["error"], exc_info=outcome["error"])
            raise outcome["error"]
        final = azure_response(outcome["completion"])
        yield {"output": "", "finish_reason": final["finish_reason"], "usage": final["usage"]}


class RequireKey:
    """Pure ASGI middleware (a BaseHTTPMiddleware would stand between the routes and the client's
    ``http.disconnect``): every path but the health routes needs the key, and records activity."""

    def __init__(self, app: Any, key: str, activity_file: Path) -> None:
        self.app = app
        self.key = key
        self.expected = f"Bearer {key}".encode()
        self.activity_file = activity_file

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"), b"")
            if not self.key or not hmac.compare_digest(given, self.expected):
                from fastapi.responses import JSONResponse

                reply = JSONResponse({"error": "missing or invalid key"}, status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
                await reply(scope, receive, send)
                return
            record_activity(self.activity_file)
        await self.app(scope, receive, send)


def build_app(pyfunc_model: Any, key: str, activity_file: Path, max_new_tokens_cap: int = 1024):  # noqa: ANN201
    from fastapi.responses import JSONResponse
    from mlflow.pyfunc import scoring_server
    from starlette.concurrency import run_in_threadpool

    from localworkspace.disconnect import ClientGone, ClosingStreamingResponse, unless_gone

    app = scoring_server.init(pyfunc_model)
    scorer = ChatScorer(pyfunc_model)
    app.add_middleware(RequireKey, key=key, activity_file=activity_file)

    @app.post("/score")
    async def score(request: Request):  # noqa: ANN202
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not valid JSON"}, status_code=400)
        try:
            chat = chat_request_from_azure(body, max_new_tokens_cap)
        except ScoreRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        stop = threading.Event()
        if "text/event-stream" in request.headers.get("accept", ""):
            return ClosingStreamingResponse(_sse(scorer.stream(chat["data"], chat["generation"], stop), stop),
                                            media_type="text/event-stream", on_close=stop.set)
        try:
            completion = await unless_gone(request.receive,
                                           run_in_threadpool(scorer.complete, chat["data"], chat["generation"], stop),
                                           on_gone=stop.set)
        except (ClientGone, Stopped):
            log.info("the client left before its answer was ready: generation stopped")
            return JSONResponse({"error": "the client closed the request"}, status_code=499)
        except Exception as exc:
            log.error("generation failed: %s", exc, exc_info=True)
            return JSONResponse({"error": f"generation failed: {type(exc).__name__}"}, status_code=500)
        return JSONResponse(azure_response(completion))

    return app


_END = object()


async def _sse(pieces: Iterator[dict[str, Any]], stop: threading.Event) -> AsyncIterator[bytes]:
    """Pieces -> server-sent events; a failure mid-stream ends it with an error event. Each piece
    is awaited on a worker thread; when the client leaves (Starlette cancels this), ``stop`` ends
    the generation and the thread still waiting for its next token is let go."""
    import anyio.to_thread

    try:
        while True:
            piece = await anyio.to_thread.run_sync(next, pieces, _END, abandon_on_cancel=True)
            if piece is _END:
                break
            yield b"data: " + json.dumps(piece).encode() + b"\n\n"
    except Stopped:
        return
    except Exception as exc:  # noqa: BLE001 - the status line is sent: tell the client in the stream
        yield b"data: " + json.dumps({"error": f"generation failed: {type(exc).__name__}"}).encode() + b"\n\n"
        return
    finally:
        stop.set()  # read to its end or not: nothing generates for this request any more
    yield b"data: [DONE]\n\n"


def record_activity(activity_file: Path) -> None:
    from shared.clock import now_iso

    tmp = activity_file.with_suffix(".tmp")
    tmp.write_text(now_iso(), encoding="utf-8")
    os.replace(tmp, activity_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localworkspace.serve")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--activity-file", required=True)
    parser.add_argument("--max-new-tokens-cap", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(f"{KEY_ENV} is not set: refusing to serve without a key", file=sys.stderr)
        return 2

    import mlflow
    import uvicorn

    # It warns on every request that params override the saved inference config: that is the intent.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.tracking_uri)
    log.info("loading %s", args.model_uri)
    model = mlflow.pyfunc.load_model(args.model_uri)
    app = build_app(model, key, Path(args.activity_file), args.max_new_tokens_cap)
    log.info("serving on http://%s:%d", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
