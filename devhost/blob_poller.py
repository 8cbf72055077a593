"""Blob triggers by polling storage, with the real host's receipts and poison queue.

Each poll lists the watched container, and every blob whose name matches the trigger path and
whose (name, ETag) has no completed receipt is handed to a bounded worker pool. Receipts are blobs
in ``azure-webjobs-hosts``, laid out after the WebJobs SDK's receipts
(``blobreceipts/<host id>/<function id>/<etag>/<container>/<blob name>``), so each version of a
blob runs once, also across host restarts. A failed invocation counts on the receipt's metadata and
is retried on a later poll; at ``poisonBlobThreshold`` failures a message goes to queue
``webjobs-blobtrigger-poison`` and the blob version is not tried again.

``source=func.BlobSource.EVENT_GRID`` triggers are polled the same way: locally the poll stands in
for the Event Grid subscription that delivers BlobCreated events in Azure.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.functions.blob import InputStream
from azure.storage.blob import BlobProperties, BlobServiceClient

from devhost.app_index import IndexedFunction, resolve_expressions, resolve_setting
from devhost.blob_listing import ListingResult, list_container
from devhost.blob_names import name_problem
from devhost.invocation import Invoker
from shared.observability import stalled_triggers
from shared.settings import Settings
from shared.storage import WEBJOBS_HOSTS_CONTAINER, blob_service
from shared.storage import queue_service as storage_queue_service

log = logging.getLogger(__name__)

POISON_QUEUE = "webjobs-blobtrigger-poison"
HOST_STORAGE = "AzureWebJobsStorage"
_RECEIPT_SUCCEEDED = "Succeeded"
_RECEIPT_FAILED = "Failed"
_RECEIPT_POISONED = "Poisoned"
_PARAM = re.compile(r"\{([^{}]+)\}")
# A stalled trigger is logged (ERROR) at most this often, and its health record refreshed.
STALL_REPORT_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class BlobTriggerPath:
    """A resolved trigger path ``container/pattern``; ``{name}`` may span virtual folders."""

    container: str
    prefix: str  # the literal start of the pattern: listed with name_starts_with
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, path: str) -> BlobTriggerPath:
        container, _, blob_pattern = path.strip("/").partition("/")
        if not container or "{" in container:
            raise ValueError(f"blob trigger path {path!r} must start with a literal container name")
        regex, last = [], 0
        for m in _PARAM.finditer(blob_pattern):
            regex.append(re.escape(blob_pattern[last : m.start()]))
            regex.append(f"(?P<{m.group(1)}>.+?)")
            last = m.end()
        regex.append(re.escape(blob_pattern[last:]))
        first = _PARAM.search(blob_pattern)
        prefix = blob_pattern[: first.start()] if first else blob_pattern
        pattern = "".join(regex) if blob_pattern else ".+"
        return cls(container, prefix, re.compile(pattern, re.DOTALL))

    def match(self, blob_name: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(blob_name)
        return None if m is None else m.groupdict()


@dataclasses.dataclass(frozen=True)
class _Watch:
    function: IndexedFunction
    path: BlobTriggerPath
    service: BlobServiceClient


def _sdk_binding(param_type: Any) -> str | None:
    """Which SDK type the function asks for through azurefunctions-extensions-bindings-blob."""
    if not isinstance(param_type, type):
        return None
    try:
        from azurefunctions.extensions.bindings import blob as sdk
    except ImportError:
        return None
    for kind in ("BlobClient", "ContainerClient", "StorageStreamDownloader"):
        if issubclass(param_type, getattr(sdk, kind)):
            return kind
    return None


def _quoted(etag: str) -> str:
    """Listing returns ETags bare, properties quoted: use the quoted (HTTP) form everywhere."""
    return f'"{etag.strip(chr(34))}"'


def _blob_type(props: BlobProperties) -> str:
    return str(getattr(props.blob_type, "value", props.blob_type) or "BlockBlob")


class BlobTriggerPoller:
    """Polls the containers of a host's blob triggers and invokes their functions."""

    def __init__(
        self,
        functions: list[IndexedFunction],
        *,
        invoker: Invoker,
        settings: Settings,
        host_id: str,
        interval_s: float,
        poison_threshold: int,
        max_parallelism: int,
    ) -> None:
        self._invoker = invoker
        self._settings = settings
        self._host_id = host_id
        self._interval_s = interval_s
        self._poison_threshold = poison_threshold
        self._services: dict[str, BlobServiceClient] = {}
        self._watches = [
            _Watch(
                fn,
                BlobTriggerPath.parse(resolve_expressions(fn.trigger["path"], settings)),
                self._service(fn.trigger.get("connection")),
            )
            for fn in functions
        ]
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_parallelism, thread_name_prefix="blob-trigger")
        self._lock = threading.Lock()
        self._completed: set[tuple[str, str, str, str]] = set()  # (function, container, blob, etag)
        self._in_flight: set[tuple[str, str, str, str]] = set()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._missing_containers: set[str] = set()
        self._failures: dict[tuple[str, str, str, str], int] = {}  # failed attempts per blob version
        self._health: dict[str, tuple[tuple[str, str], float, str | None]] = {}  # container -> (state, reason), reported, since
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watched(self) -> list[tuple[str, str]]:
        """(function name, resolved path) of every watched trigger."""
        return [(w.function.name, f"{w.path.container}/{w.function.trigger['path'].partition('/')[2]}") for w in self._watches]

    def _service(self, connection: str | None) -> BlobServiceClient:
        connection = connection or HOST_STORAGE
        if connection not in self._services:
            if connection == HOST_STORAGE:
                self._services[connection] = blob_service(self._settings)
            else:
                self._services[connection] = BlobServiceClient.from_connection_string(resolve_setting(connection, self._settings))
        return self._services[connection]

    # --- lifecycle

    def start(self) -> None:
        if not self._watches:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="blob-trigger-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop polling and wait up to ``timeout_s`` for running invocations; False if some still run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            futures = set(self._futures)
        for f in futures:
            f.cancel()
        _, running = concurrent.futures.wait(futures, timeout=timeout_s)
        if running:
            log.warning("%d blob trigger invocation(s) still running at shutdown", len(running))
            self._executor.shutdown(wait=False, cancel_futures=True)
            return False
        self._executor.shutdown(wait=True, cancel_futures=True)
        return True

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a storage hiccup must not end polling
                log.warning("blob trigger poll failed", exc_info=True)
            self._stop.wait(self._interval_s)

    # --- polling

    def poll_once(self) -> int:
        """List every watched container once; the number of blob versions handed to workers."""
        handed = 0
        for watch in self._watches:
            try:
                listing = list_container(
                    watch.service.get_container_client(watch.path.container), watch.path.prefix or None
                )
            except ResourceNotFoundError:
                if watch.path.container not in self._missing_containers:
                    self._missing_containers.add(watch.path.container)
                    log.warning("container %s of blob trigger %s does not exist (yet)", watch.path.container, watch.function.name)
                continue
            self._missing_containers.discard(watch.path.container)
            self._report_health(watch, listing)
            for props in listing.blobs:
                if self._stop.is_set():
                    return handed
                if watch.path.match(props.name) is None:
                    continue
                key = (watch.function.name, watch.path.container, props.name, _quoted(props.etag))
                with self._lock:
                    if key in self._completed or key in self._in_flight:
                        continue
                    self._in_flight.add(key)
                self._submit(self._process, watch, props, key)
                handed += 1
        return handed

    def _report_health(self, watch: _Watch, listing: ListingResult) -> None:
        """Say what blocks a trigger: in the log (ERROR, repeated while it lasts) and in the health record."""
        fn, container = watch.function.name, watch.path.container
        if listing.stalled:
            state = stalled_triggers.STALLED
            reason = (
                f"listing container {container} fails after blob {listing.last_listed!r}: {listing.stalled}; "
                "no blob sorted after it is triggered"
            )
            fix = (
                "a blob name holding a control character makes the storage emulator's listing fail: delete that blob "
                "(by its exact name), or stop Azurite and remove its data folder; `make upload` refuses such names"
            )
        elif listing.hidden:
            state = stalled_triggers.DEGRADED
            reason = (
                f"{len(listing.hidden)} blob name(s) in {container} cannot be listed by the storage emulator "
                f"({', '.join(repr(n) for n in listing.hidden[:5])}); they are found by bisecting the listing on every poll"
            )
            fix = "rename or delete those blobs; `make upload` refuses such names"
        else:
            state, reason, fix = stalled_triggers.OK, "", ""
        previous = self._health.get(container)
        now = time.monotonic()
        changed = previous is None or previous[0] != (state, reason)
        if not changed and (state != stalled_triggers.STALLED or now - previous[1] < STALL_REPORT_EVERY_S):
            return
        if state == stalled_triggers.STALLED:
            log.error("blob trigger %s STALLED: %s. Fix: %s", fn, reason, fix)
        elif state == stalled_triggers.DEGRADED:
            log.warning("blob trigger %s: %s. Fix: %s", fn, reason, fix)
        elif previous is not None:
            log.info("blob trigger %s: container %s lists normally again", fn, container)
        since = previous[2] if previous is not None and not changed else stalled_triggers.iso(stalled_triggers.utcnow())
        self._health[container] = ((state, reason), now, since)
        if previous is None and state == stalled_triggers.OK:
            return  # nothing was ever wrong: no record to write
        stalled_triggers.write(
            self._settings,
            self._host_id,
            {"function": fn, "container": container, "state": state, "reason": reason, "fix": fix,
             "unlistable": listing.hidden, "since": since},
        )

    def _submit(self, target: Callable[..., Any], *args: Any) -> None:
        try:
            future = self._executor.submit(target, *args)
        except RuntimeError:  # shut down meanwhile
            return
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _process(self, watch: _Watch, props: BlobProperties, key: tuple[str, str, str, str]) -> None:
        try:
            self._process_version(watch, props, key)
        except Exception as exc:  # a bug of the poller itself: count it like a failed attempt
            log.warning(
                "blob trigger %s: could not process %s/%s", watch.function.name, watch.path.container, props.name, exc_info=True
            )
            self._failed_attempt(watch, props, key, None, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _process_version(self, watch: _Watch, props: BlobProperties, key: tuple[str, str, str, str]) -> None:
        fn, container, name, etag = watch.function, watch.path.container, props.name, _quoted(props.etag)
        receipt = self._receipt_client(fn, container, name, etag)
        try:
            status, failures = self._read_receipt(receipt)
        except AzureError as exc:
            self._failed_attempt(watch, props, key, None, f"its receipt cannot be read: {_storage_refusal(exc)}")
            return
        with self._lock:
            failures = max(failures, self._failures.get(key, 0))
        if status in (_RECEIPT_SUCCEEDED, _RECEIPT_POISONED):
            self._mark_completed(key)
            return
        if failures >= self._poison_threshold:
            self._poison(watch, props, receipt, failures)
            self._mark_completed(key)
            return
        try:
            value = self._trigger_value(watch, props)
        except (ResourceNotFoundError, ResourceModifiedError):
            return  # deleted or overwritten since it was listed: the next poll sees the new state
        except AzureError as exc:  # the storage refuses this blob (e.g. a name it cannot address)
            self._failed_attempt(watch, props, key, receipt, f"storage refused reading it: {_storage_refusal(exc)}", failures)
            return
        try:
            self._invoker.call(fn, value, reason=f"New blob detected: {container}/{name}")
        except Exception as exc:  # the invoker logged the function's failure
            self._failed_attempt(watch, props, key, receipt, f"the function failed: {type(exc).__name__}", failures, quiet=True)
            return
        with self._lock:
            self._failures.pop(key, None)
        self._write_receipt(receipt, _RECEIPT_SUCCEEDED, failures)
        self._mark_completed(key)

    def _failed_attempt(
        self, watch: _Watch, props: BlobProperties, key: tuple[str, str, str, str], receipt: Any, why: str,
        prior: int = 0, quiet: bool = False,
    ) -> None:
        """Count one failed attempt of a blob version (one log line); poison it at the threshold.

        Counted in memory too, so a version whose receipt cannot be written still reaches the
        poison queue (a restarted host counts again from the receipt, or from zero)."""
        with self._lock:
            failures = max(prior, self._failures.get(key, 0)) + 1
            self._failures[key] = failures
        if not quiet:
            log.warning(
                "blob trigger %s: attempt %d of %d for %s/%r (ETag %s) failed: %s",
                watch.function.name, failures, self._poison_threshold, watch.path.container, props.name, props.etag, why,
            )
        if failures >= self._poison_threshold:
            try:
                self._poison(watch, props, receipt, failures)
            except AzureError as exc:  # tried again on the next poll
                log.warning("could not move blob %r to queue %s: %s", props.name, POISON_QUEUE, _storage_refusal(exc))
                return
            self._mark_completed(key)
            with self._lock:
                self._failures.pop(key, None)
        elif receipt is not None:
            self._write_receipt(receipt, _RECEIPT_FAILED, failures)

    def _mark_completed(self, key: tuple[str, str, str, str]) -> None:
        with self._lock:
            self._completed.add(key)

    def _trigger_value(self, watch: _Watch, props: BlobProperties) -> Any:
        """What the worker passes for this binding: an SDK client, bytes, str or an InputStream."""
        container, name = watch.path.container, props.name
        blob = watch.service.get_blob_client(container, name)
        sdk_kind = _sdk_binding(watch.function.param_type)
        if sdk_kind == "BlobClient":
            # The real host reads the blob's properties before it invokes: a blob the storage
            # refuses (403, 400) fails here, as a counted attempt, not inside the function.
            blob.get_blob_properties(etag=_quoted(props.etag), match_condition=MatchConditions.IfNotModified)
            return blob
        if sdk_kind == "ContainerClient":
            return watch.service.get_container_client(container)
        if sdk_kind == "StorageStreamDownloader":
            return blob.download_blob(etag=_quoted(props.etag), match_condition=MatchConditions.IfNotModified)
        data = blob.download_blob(etag=_quoted(props.etag), match_condition=MatchConditions.IfNotModified).readall()
        if watch.function.param_type is bytes:
            return data
        if watch.function.param_type is str:
            return data.decode("utf-8")
        settings = props.content_settings
        return InputStream(
            data=data,
            name=f"{container}/{name}",
            uri=blob.url,
            length=props.size,
            blob_properties={
                "ContentLength": props.size,
                "ContentType": settings.content_type if settings else None,
                "ETag": _quoted(props.etag),
                "LastModified": props.last_modified.isoformat() if props.last_modified else None,
                "BlobType": _blob_type(props),
            },
            metadata=dict(props.metadata or {}),
        )

    # --- receipts and poison queue

    def _receipt_client(self, fn: IndexedFunction, container: str, name: str, etag: str) -> Any:
        # A name storage cannot address or list (blob_names.name_problem) would make the receipt
        # as unusable as the blob: such receipts are kept under a digest of the name instead.
        if name_problem(name) is not None:
            name = "~sha256/" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        receipt = f"blobreceipts/{self._host_id}/{fn.function_id}/{etag.strip(chr(34))}/{container}/{name}"
        return blob_service(self._settings).get_blob_client(WEBJOBS_HOSTS_CONTAINER, receipt)

    @staticmethod
    def _read_receipt(receipt: Any) -> tuple[str | None, int]:
        try:
            metadata = receipt.get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            return None, 0
        return metadata.get("status"), int(metadata.get("failurecount", "0"))

    @staticmethod
    def _write_receipt(receipt: Any, status: str, failures: int) -> None:
        try:
            receipt.upload_blob(b"", overwrite=True, metadata={"status": status, "failurecount": str(failures)})
        except AzureError as exc:
            log.warning("could not write blob receipt %r: %s", receipt.blob_name, _storage_refusal(exc))

    def _poison(self, watch: _Watch, props: BlobProperties, receipt: Any | None, failures: int) -> None:
        message = {
            "Type": "BlobTrigger",
            "FunctionId": watch.function.function_id,
            "BlobType": _blob_type(props),
            "ContainerName": watch.path.container,
            "BlobName": props.name,
            "ETag": _quoted(props.etag),
        }
        queue = queue_service(self._settings).get_queue_client(POISON_QUEUE)
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        # The WebJobs SDK writes queue messages base64-encoded (its default message encoding).
        queue.send_message(base64.b64encode(json.dumps(message).encode()).decode())
        if receipt is not None:
            self._write_receipt(receipt, _RECEIPT_POISONED, failures)
        log.warning(
            "blob %s/%r (ETag %s) failed %d times in %s: moved to queue %s",
            watch.path.container,
            props.name,
            props.etag,
            failures,
            watch.function.name,
            POISON_QUEUE,
        )

    # --- on demand (POST /admin/functions/NAME {"input": "container/blob"})

    def run_on_demand(self, fn: IndexedFunction, blob_path: Any) -> None:
        watch = next((w for w in self._watches if w.function.name == fn.name), None)
        if watch is None:
            raise ValueError(f"{fn.name!r} is not a polled blob trigger")
        if not isinstance(blob_path, str) or "/" not in blob_path:
            raise ValueError('input must be the blob path "container/blob name"')
        container, _, name = blob_path.partition("/")
        target = dataclasses.replace(watch, path=dataclasses.replace(watch.path, container=container))

        def run() -> None:
            try:
                props = target.service.get_blob_client(container, name).get_blob_properties()
                self._invoker.call(fn, self._trigger_value(target, props), reason="Manually triggered")
            except Exception:
                log.debug("on-demand run of %s failed", fn.name, exc_info=True)

        self._submit(run)


def _storage_refusal(exc: AzureError) -> str:
    """One line for an expected storage refusal (no traceback): status, error code, first message line."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    message = (str(getattr(exc, "message", None) or exc).splitlines() or [""])[0][:200]
    parts = [type(exc).__name__, str(status) if status else "", str(code) if code else ""]
    return " ".join(p for p in parts if p) + f": {message}"


def queue_service(settings: Settings) -> Any:
    """Queue client of the host storage: shared.storage's, so the endpoint and identity follow the
    same ``AzureWebJobsStorage__*`` rule as the blob and table clients."""
    return storage_queue_service(settings)


def read_poison_messages(settings: Settings, max_messages: int = 32) -> list[dict[str, Any]]:
    """Peek at the poison queue's messages (decoded), for tests and the demo."""
    queue = queue_service(settings).get_queue_client(POISON_QUEUE)
    try:
        peeked = queue.peek_messages(max_messages=max_messages)
    except ResourceNotFoundError:
        return []
    return [json.loads(base64.b64decode(m.content)) for m in peeked]
