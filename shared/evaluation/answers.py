"""Asking candidate and champion for their answers: bounded parallelism, a time budget, resumable.

Every answer is appended to a blob as soon as it arrives
(``<prepared>/evaluations/<model name>/<version>/answers.jsonl``, an append blob: one block per
answer), so a worker that dies mid-run loses at most the answers in flight: the next call reads
the blob and asks only for what is missing. The first stored line of an (item, role) wins, so a
line written twice (two workers after a lease expired) changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from shared.evaluation.evalset import EvalItem
    from shared.settings import Settings

log = logging.getLogger(__name__)

Answerer = Callable[[list[dict[str, str]]], str]
EVALUATIONS_PREFIX = "evaluations/"
ERROR_CHARS = 300


def evaluation_prefix(model_id: str) -> str:
    name, _, version = model_id.rpartition(":")
    return f"{EVALUATIONS_PREFIX}{name}/{version}/"


class AnswerStore:
    """The answers of one evaluation, in an append blob (or in memory for unit tests: ``blob=None``)."""

    def __init__(self, blob: Any | None):
        self._blob = blob
        self._lock = threading.Lock()
        self._memory: list[bytes] = []
        self._created = False

    @classmethod
    def for_model(cls, settings: Settings, model_id: str) -> AnswerStore:
        from shared.storage import blob_service

        return cls(blob_service(settings).get_blob_client(settings.prepared_container,
                                                          evaluation_prefix(model_id) + "answers.jsonl"))

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(role, item id) -> stored answer (the first line for each)."""
        if self._blob is None:
            data = b"".join(self._memory)
        else:
            from azure.core.exceptions import ResourceNotFoundError

            try:
                data = self._blob.download_blob().readall()
                self._created = True
            except ResourceNotFoundError:
                data = b""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for line in data.splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn line cannot happen with one block per line, but never trust storage
            out.setdefault((entry["role"], entry["id"]), entry)
        return out

    def append(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry) + b"\n"
        with self._lock:
            if self._blob is None:
                self._memory.append(line)
                return
            if not self._created:
                from azure.core.exceptions import ResourceExistsError

                try:
                    self._blob.create_append_blob(if_none_match="*")
                except ResourceExistsError:
                    pass
                self._created = True
            self._blob.append_block(line)


def collect_answers(items: Sequence[EvalItem], answerers: dict[str, Answerer], store: AnswerStore, *,
                    parallelism: int, budget_s: float, clock: Callable[[], float] = time.monotonic,
                    ) -> tuple[dict[tuple[str, str], dict[str, Any]], bool]:
    """Every (role, item) answered and stored; returns (answers, complete).

    At most ``parallelism`` calls are in flight; none is started after ``budget_s`` seconds (the
    ones in flight finish and are stored): ``complete`` is then False and a later call resumes.
    A call that raises is stored as an error (a deployment that fails on eval data is judged on it).
    """
    answers = store.load()
    todo = [(role, item) for item in items for role in answerers if (role, item.id) not in answers]
    if not todo:
        return answers, True
    deadline = clock() + budget_s
    pending: Iterator[tuple[str, EvalItem]] = iter(todo)
    started = 0

    def ask(role: str, item: EvalItem) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            text = answerers[role](item.prompt)
            if not isinstance(text, str):
                raise TypeError(f"the {role} answered {type(text).__name__}, not text")
            entry: dict[str, Any] = {"answer": text, "error": None}
        except Exception as exc:  # noqa: BLE001 - stored as this answer's outcome
            entry = {"answer": None, "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
        entry.update(role=role, id=item.id, latency_s=round(time.perf_counter() - t0, 3))
        store.append(entry)
        return entry

    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="eval-answer") as pool:
        in_flight: set[Future[dict[str, Any]]] = set()
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < parallelism and clock() < deadline:
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                    break
                in_flight.add(pool.submit(ask, *nxt))
                started += 1
            if not in_flight:
                break
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                entry = future.result()
                answers.setdefault((entry["role"], entry["id"]), entry)
    complete = started == len(todo)
    if not complete:
        log.info("evaluation: time budget of %.0f s spent with %d of %d answers missing; the next call resumes",
                 budget_s, len(todo) - started, len(todo))
    return answers, complete
