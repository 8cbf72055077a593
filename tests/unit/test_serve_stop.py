"""The local model server stops a generation whose client left (issue 29), at the next token step.

A stand-in for the MLflow transformers model runs "token steps" the way ``generate`` does: after
each step it asks the stopping criteria it was given whether to stop. The real model on the real
stack is in tests/faults/test_faults_hangups.py (its CPU falls idle once the clients are gone).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from localworkspace.serve import ChatScorer, Stopped

MAX_STEPS = 1000


class SteppingModel:
    """``_model_impl.predict`` of a generation of up to MAX_STEPS token steps."""

    def __init__(self, on_step: Any = None) -> None:
        self.steps = 0
        self.calls = 0
        self.on_step = on_step or (lambda step: None)

    def predict(self, data: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls += 1
        criteria = params.get("stopping_criteria") or []
        ids = torch.zeros((1, 4), dtype=torch.long)
        for step in range(1, MAX_STEPS + 1):
            self.steps = step
            self.on_step(step)
            if any(bool(c(ids, None).all()) for c in criteria):
                break
        return [{"choices": [{"message": {"content": "x" * self.steps}, "finish_reason": "stop"}], "usage": {}}]


def scorer(model: SteppingModel) -> ChatScorer:
    return ChatScorer(SimpleNamespace(_model_impl=model))


def test_a_generation_stops_one_step_after_its_client_left() -> None:
    stop = threading.Event()
    model = SteppingModel(on_step=lambda step: stop.set() if step == 3 else None)  # the client leaves during step 3
    scorer(model).complete({"messages": []}, {"do_sample": False}, stop)
    assert model.steps == 3  # the check after step 3 sees it: no step for nobody
    unwatched = SteppingModel()
    scorer(unwatched).complete({"messages": []}, {"do_sample": False})
    assert unwatched.steps == MAX_STEPS  # without a stop flag it runs to its end, as before


def test_a_request_waiting_for_the_model_never_starts_once_its_client_left() -> None:
    model = SteppingModel()
    chat = scorer(model)
    stop = threading.Event()
    failures: list[BaseException] = []

    def waiting() -> None:
        try:
            chat.complete({"messages": []}, {}, stop)
        except BaseException as exc:  # noqa: BLE001 - checked below
            failures.append(exc)

    with chat._lock:  # another generation holds the model
        thread = threading.Thread(target=waiting)
        thread.start()
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()  # it gave up waiting for the model
    assert len(failures) == 1 and isinstance(failures[0], Stopped)
    assert model.calls == 0


def test_stopped_streams_end_without_an_error() -> None:
    stop = threading.Event()
    model = SteppingModel()
    chat = scorer(model)
    stop.set()

    class Tokenizer:
        def decode(self, *args: Any, **kwargs: Any) -> str:
            return ""

    model.pipeline = SimpleNamespace(tokenizer=Tokenizer())
    with pytest.raises(Stopped):
        list(chat.stream({"messages": []}, {}, stop))
    assert model.calls == 0
