"""The two answer callables the evaluation asks: candidate and champion, each pinned to its own
deployment of the one endpoint (header ``azureml-model-deployment``), through the backend's real
scoring target (local: the endpoint's router; Azure ML: the endpoint's scoring URI)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from shared.backends.base import MLBackend

Answerer = Callable[[list[dict]], str]


class AnswerError(RuntimeError):
    """A deployment did not answer an eval conversation (the evaluation retries or records it)."""


def deployment_answerer(backend: MLBackend, endpoint: str, deployment: str, *, max_new_tokens: int,
                        client: httpx.Client | None = None) -> Answerer:
    """messages -> the deployment's greedy answer (Azure ML's scoring contract)."""
    http = client or httpx.Client()

    def answer(messages: list[dict]) -> str:
        target = backend.get_scoring_target(endpoint, deployment=deployment)
        body = {"input_data": {"input_string": [{"role": m["role"], "content": m["content"]} for m in messages],
                               "parameters": {"max_new_tokens": max_new_tokens, "temperature": 0.0, "do_sample": False}},
                "params": {}}
        try:
            reply = http.post(target.url, json=body, headers=target.headers(), timeout=target.timeout_s)
        except httpx.HTTPError as exc:
            raise AnswerError(f"deployment {deployment} of {endpoint}: {type(exc).__name__}") from None
        if reply.status_code != 200:
            raise AnswerError(f"deployment {deployment} of {endpoint} answered HTTP {reply.status_code}")
        try:
            output = reply.json().get("output")
        except ValueError:
            output = None
        if not isinstance(output, str):
            raise AnswerError(f"deployment {deployment} of {endpoint} answered without an output string")
        return output

    return answer
