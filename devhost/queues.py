"""Queue triggers by polling storage queues, as the Functions host's queue listener does.

Per poll each queue-triggered function receives up to ``batchSize`` messages, hidden while they
run; a message whose function succeeds is deleted; one whose function fails becomes visible again
after ``visibilityTimeout`` (host.json, default 0) for another try, and once it was dequeued
``maxDequeueCount`` times (default 5) it moves to ``<queue>-poison``. Messages are base64, the
trigger's default ``messageEncoding``; the function gets a ``func.QueueMessage`` with the id,
body, dequeue count, times and pop receipt, as from the worker. A message sent with a visibility
delay is not seen before it, which is what the endpoint follow-ups rely on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage

from devhost.app_index import IndexedFunction, resolve_expressions, resolve_setting
from devhost.invocation import Invoker
from shared.settings import Settings
from shared.storage import queue_client

log = logging.getLogger(__name__)

HOST_STORAGE = "AzureWebJobsStorage"
PROCESSING_VISIBILITY_S = 600  # hidden this long while the function runs (the host renews it; we run shorter)


@dataclasses.dataclass(frozen=True)
class _Watch:
    function: IndexedFunction
    queue: Any  # QueueClient
    poison: Any  # QueueClient of <queue>-poison


class QueueTriggerPoller:
    """Polls the queues of a host's queue triggers and invokes their functions."""

    def __init__(
        self,
        functions: list[IndexedFunction],
        *,
        invoker: Invoker,
        settings: Settings,
        interval_s: float,
        batch_size: int = 16,
        max_dequeue_count: int = 5,
        visibility_timeout_s: float = 0.0,
    ) -> None:
        self._invoker = invoker
        self._interval_s = interval_s
        self._batch_size = max(1, min(32, batch_size))
        self._max_dequeue_count = max(1, max_dequeue_count)
        self._visibility_timeout_s = max(0, int(visibility_timeout_s))
        self._watches = []
        for fn in functions:
            name = resolve_expressions(fn.trigger["queueName"], settings)
            connection = fn.trigger.get("connection")
            self._watches.append(_Watch(fn, self._queue(name, connection, settings), self._queue(f"{name}-poison", connection, settings)))
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self._batch_size, thread_name_prefix="queue-trigger")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _queue(name: str, connection: str | None, settings: Settings) -> Any:
        if not connection or connection == HOST_STORAGE:
            return queue_client(name, settings)
        from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy, QueueClient

        return QueueClient.from_connection_string(
            resolve_setting(connection, settings), name,
            message_encode_policy=BinaryBase64EncodePolicy(), message_decode_policy=BinaryBase64DecodePolicy(),
        )

    @property
    def watched(self) -> list[tuple[str, str]]:
        return [(w.function.name, w.queue.queue_name) for w in self._watches]

    def start(self) -> None:
        if not self._watches:
            return
        self._thread = threading.Thread(target=self._run, name="queue-trigger-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for watch in self._watches:
                if self._stop.is_set():
                    break
                try:
                    self._poll(watch)
                except AzureError:
                    log.warning("polling queue %s failed", watch.queue.queue_name, exc_info=True)
            self._stop.wait(self._interval_s)

    def _poll(self, watch: _Watch) -> None:
        try:
            messages = list(watch.queue.receive_messages(max_messages=self._batch_size,
                                                         visibility_timeout=PROCESSING_VISIBILITY_S))
        except ResourceNotFoundError:
            with_suppressed_exists(watch.queue.create_queue)
            return
        futures = [self._executor.submit(self._handle, watch, m) for m in messages[: self._batch_size]]
        concurrent.futures.wait(futures)

    def _handle(self, watch: _Watch, message: Any) -> None:
        value = QueueMessage(
            id=message.id, body=message.content, dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on, insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt,
        )
        try:
            self._invoker.call(watch.function, value, reason=f"New queue message detected on '{watch.queue.queue_name}'")
        except Exception:  # logged by the invoker
            self._failed(watch, message)
            return
        try:
            watch.queue.delete_message(message)
        except ResourceNotFoundError:  # its pop receipt expired and someone else took it
            log.warning("queue message %s was taken over before it could be deleted", message.id)

    def _failed(self, watch: _Watch, message: Any) -> None:
        if message.dequeue_count >= self._max_dequeue_count:
            with_suppressed_exists(watch.poison.create_queue)
            watch.poison.send_message(message.content)
            watch.queue.delete_message(message)
            log.error("message %s on %s failed %d times: moved to %s", message.id, watch.queue.queue_name,
                      message.dequeue_count, watch.poison.queue_name)
            return
        watch.queue.update_message(message, visibility_timeout=self._visibility_timeout_s)

    def run_on_demand(self, fn: IndexedFunction, body: bytes) -> None:
        """POST /admin/functions/NAME: the input as one message body, invoked at once."""
        self._invoker.call(fn, QueueMessage(id="on-demand", body=body, dequeue_count=1), reason="Manually triggered")


def with_suppressed_exists(create: Any) -> None:
    try:
        create()
    except ResourceExistsError:
        pass
